//! `thaw versions`, `thaw rollback`, `thaw traffic`, `thaw promote`: a function's kept
//! versions and which of them serve (see `thaw_runtime::control::versions`).

use anyhow::Context as _;
use thaw_runtime::api::VersionsInfo;
use thaw_runtime::traffic::{TrafficSplit, parse_version};

use crate::commands::Target;

/// `thaw versions` flags.
#[derive(clap::Args, Debug)]
pub struct VersionsArgs {
    /// The function
    pub name: String,
    /// Print the full JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// `thaw rollback` flags.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The function
    pub name: String,
    /// The version to serve all traffic (v3 or 3) [default: the one before the newest
    /// version that takes traffic]
    #[arg(value_parser = parse_version)]
    pub version: Option<u64>,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// `thaw traffic` flags.
#[derive(clap::Args, Debug)]
pub struct TrafficArgs {
    /// The function
    pub name: String,
    /// Shares as VERSION=PERCENT adding up to 100, e.g. `v4=80 v5=20`; a version at 0 is
    /// reachable only by pinning it (request header x-thaw-version)
    #[arg(required = true, value_name = "VERSION=PERCENT")]
    pub shares: Vec<String>,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// `thaw promote` flags.
#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    /// The function
    pub name: String,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Lists the kept versions.
pub async fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let info = args
        .target
        .client()?
        .versions(&args.name)
        .await
        .with_context(|| format!("listing the versions of {}", args.name))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_versions(&info);
    }
    Ok(())
}

/// Sends all traffic to one version.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let info = args
        .target
        .client()?
        .rollback(&args.name, args.version)
        .await
        .with_context(|| format!("rolling back {}", args.name))?;
    print_versions(&info);
    Ok(())
}

/// Sets a split.
pub async fn traffic(args: TrafficArgs) -> anyhow::Result<()> {
    let split = TrafficSplit::parse_args(&args.shares)?;
    let info = args
        .target
        .client()?
        .set_traffic(&args.name, &split)
        .await
        .with_context(|| format!("setting the traffic of {} to {split}", args.name))?;
    print_versions(&info);
    Ok(())
}

/// Sends all traffic to the newest version.
pub async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let info = args
        .target
        .client()?
        .promote(&args.name)
        .await
        .with_context(|| format!("promoting the newest version of {}", args.name))?;
    print_versions(&info);
    Ok(())
}

/// One line per version: digest, age, share, whether loaded, requests.
fn print_versions(info: &VersionsInfo) {
    println!("{}: {}", info.name, info.traffic);
    println!(
        "{:<8} {:<14} {:>10} {:<20} {:>7} {:<7} {:>9}",
        "VERSION", "DIGEST", "AGE", "ROUTE", "TRAFFIC", "LOADED", "REQUESTS"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for v in &info.versions {
        println!(
            "{:<8} {:<14} {:>10} {:<20} {:>7} {:<7} {:>9}",
            format!("v{}", v.version),
            &v.digest[..v.digest.len().min(12)],
            age(now_ms.saturating_sub(v.deployed_at_ms) / 1000),
            v.route,
            v.percent.map_or("-".to_owned(), |p| format!("{p}%")),
            if v.loaded { "yes" } else { "no" },
            v.requests,
        );
        if let Some(origin) = &v.origin {
            println!("{:<8} from {origin}", "");
        }
    }
}

/// `42s`, `5m`, `3h`, `2d` ago.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}
