//! `thaw list`: the deployed functions.

use crate::client::AdminClient;
use crate::commands::Target;

/// `thaw list` flags.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print the full JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Prints one line per function.
pub async fn execute(args: ListArgs) -> anyhow::Result<()> {
    let functions = AdminClient::new(&args.target.admin).list().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&functions)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<28} {:>4} {:>10} {:>9}",
        "NAME", "KIND", "ROUTE", "GEN", "REQUESTS", "FAILURES"
    );
    for f in &functions {
        println!(
            "{:<24} {:<10} {:<28} {:>4} {:>10} {:>9}",
            f["name"].as_str().unwrap_or("?"),
            f["kind"].as_str().unwrap_or("?"),
            f["route"].as_str().unwrap_or("?"),
            f["generation"].as_u64().unwrap_or(0),
            f["requests"].as_u64().unwrap_or(0),
            f["failures"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}
