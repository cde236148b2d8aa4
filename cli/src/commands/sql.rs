//! `thaw sql`: run a statement on a function's SQL database, or dump it, as an operator, in
//! the function's scope and under its quota (through the admin API).

use std::io::Write as _;

use anyhow::Context as _;

use crate::commands::Target;

/// `thaw sql` flags.
#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// The function
    pub name: String,
    /// One SQL statement (not with --dump)
    #[arg(required_unless_present = "dump", conflicts_with = "dump")]
    pub statement: Option<String>,
    /// The database [default: default]
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
    /// Print the database as SQL text that rebuilds it (schema, then rows as INSERTs)
    #[arg(long)]
    pub dump: bool,
    /// Print the answer as the admin API's JSON
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Runs `thaw sql`.
pub async fn execute(args: SqlArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let (name, db) = (args.name.as_str(), args.db.as_deref());
    let mut out = std::io::stdout().lock();
    if args.dump {
        let text = client
            .sql_dump(name, db)
            .await
            .with_context(|| format!("dumping the database of {name}"))?;
        out.write_all(&text)?;
        return Ok(());
    }
    let statement = args.statement.as_deref().unwrap_or_default();
    let answer = client
        .sql(name, db, statement)
        .await
        .with_context(|| format!("running the statement on {name}"))?;
    if args.json {
        serde_json::to_writer_pretty(&mut out, &answer)?;
        writeln!(out)?;
        return Ok(());
    }
    if !answer.columns.is_empty() {
        // A column name is the function's text too (an alias it chose).
        let names: Vec<String> = answer
            .columns
            .iter()
            .map(|name| thaw_runtime::guest::log::escape_bytes(name.as_bytes()))
            .collect();
        writeln!(out, "{}", names.join(" | "))?;
    }
    for row in &answer.rows {
        let cells: Vec<String> = row.iter().map(cell).collect();
        writeln!(out, "{}", cells.join(" | "))?;
    }
    if answer.columns.is_empty() {
        writeln!(
            out,
            "changes: {}, last insert rowid: {}",
            answer.changes, answer.last_insert_rowid
        )?;
    }
    Ok(())
}

/// A value as a table cell: text as it is but with control characters escaped (a value a
/// function stored cannot drive the terminal), NULL, numbers, blobs as hex.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(text) => thaw_runtime::guest::log::escape_bytes(text.as_bytes()),
        serde_json::Value::Object(blob) => match blob.get("hex") {
            Some(serde_json::Value::String(hex)) => format!("x'{hex}'"),
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}
