//! `thaw invocations` and `thaw schedules`: what events did, and replaying dead letters.

use thaw_runtime::api::{InvocationInfo, InvocationQuery};

use crate::commands::Target;

/// `thaw invocations` flags.
#[derive(clap::Args, Debug)]
pub struct InvocationsArgs {
    /// NAME (list a function's invocations), or get|retry|discard ID
    #[arg(required = true, num_args = 1..=2, value_name = "NAME | ACTION ID")]
    pub args: Vec<String>,
    /// Only dead letters (invocations that failed for good)
    #[arg(long)]
    pub failed: bool,
    /// At most this many, newest first
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Lists, shows, retries or discards invocations.
pub async fn execute(args: InvocationsArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    match args.args.as_slice() {
        [name] => {
            let query = InvocationQuery {
                failed: args.failed,
                limit: Some(args.limit),
            };
            let list = client.invocations(name, &query).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<32} {:<9} {:>8} {:>6} {:<24} {:<30} ERROR",
                "ID", "STATE", "ATTEMPTS", "STATUS", "ACCEPTED", "PATH"
            );
            for i in &list.invocations {
                print_row(i);
            }
        }
        [action, id] => match action.as_str() {
            "get" => println!(
                "{}",
                serde_json::to_string_pretty(&client.invocation(id).await?)?
            ),
            "retry" => {
                let info = client.retry_invocation(id).await?;
                println!("{} queued again", info.id);
            }
            "discard" => {
                client.discard_invocation(id).await?;
                println!("{id} discarded");
            }
            other => anyhow::bail!("{other:?} is not get, retry or discard"),
        },
        _ => unreachable!("clap takes one or two values"),
    }
    Ok(())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn print_row(i: &InvocationInfo) {
    let state = serde_json::to_value(i.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "{:<32} {:<9} {:>8} {:>6} {:<24} {:<30} {}",
        i.id,
        state,
        i.attempts,
        i.status.map_or("-".into(), |s| s.to_string()),
        time(i.enqueued_ms),
        i.path,
        // A function's text in the terminal: escaped, as `thaw logs` does.
        i.error
            .as_deref()
            .map_or_else(String::new, |e| e.escape_debug().to_string()),
    );
}

/// `thaw schedules` flags.
#[derive(clap::Args, Debug)]
pub struct SchedulesArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Lists every schedule.
pub async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let list = args.target.client()?.schedules().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<18} {:<14} {:<21} {:<21} {:>6} {:>6} {:>7}",
        "FUNCTION", "CRON", "TZ", "NEXT", "LAST", "STATUS", "RUNS", "SKIPPED"
    );
    for s in &list.schedules {
        println!(
            "{:<20} {:<18} {:<14} {:<21} {:<21} {:>6} {:>6} {:>7}",
            s.function,
            s.cron,
            s.tz,
            s.next_ms.map_or("-".into(), time),
            s.last_ms.map_or("-".into(), time),
            s.last_status.map_or("-".into(), |v| v.to_string()),
            s.runs,
            s.skipped,
        );
    }
    Ok(())
}
