//! `thaw list`: the deployed functions, with how their requests started.

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

/// Prints one line per function: its route and kind, the version(s) serving it, requests and failures, how requests got
/// their instances (pool hit / fresh / from disk / compiled), the p50/p99 of start and
/// handler time in microseconds, and what its requests cost: guest CPU per request (p50/p99,
/// µs) and in all (ms), and the peak linear memory of their instances (p50/p99, KiB).
pub async fn execute(args: ListArgs) -> anyhow::Result<()> {
    let functions = args.target.client()?.list().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&functions)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<9} {:<20} {:<13} {:>9} {:>6} {:>4} {:>23} {:>15} {:>15} {:>13} {:>10} {:>15}",
        "NAME",
        "KIND",
        "ROUTE",
        "TRAFFIC",
        "REQUESTS",
        "FAILED",
        "WARM",
        "HIT/FRESH/DISK/COMPILE",
        "START µs 50/99",
        "HANDLER µs 50/99",
        "CPU µs 50/99",
        "CPU ms",
        "PEAK KiB 50/99"
    );
    let n = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
    for f in &functions {
        let start = |kind: &str| n(f.starts.get(kind).copied());
        println!(
            "{:<20} {:<9} {:<20} {:<13} {:>9} {:>6} {:>4} {:>23} {:>15} {:>15} {:>13} {:>10} {:>15}",
            f.name,
            crate::commands::deploy::kind_of(f),
            f.route,
            match f.traffic.shares() {
                [only] => format!("v{}", only.version),
                _ => f.traffic.to_string(),
            },
            f.requests,
            f.failures,
            f.warm_instances,
            format!(
                "{}/{}/{}/{}",
                start("pool-hit"),
                start("fresh"),
                start("disk"),
                start("compile")
            ),
            format!("{}/{}", n(f.start_us.p50), n(f.start_us.p99)),
            format!("{}/{}", n(f.handler_us.p50), n(f.handler_us.p99)),
            format!("{}/{}", n(f.cpu_us.p50), n(f.cpu_us.p99)),
            format!("{:.1}", f.cpu_us_total as f64 / 1e3),
            format!("{}/{}", n(f.peak_memory_kib.p50), n(f.peak_memory_kib.p99)),
        );
    }
    Ok(())
}
