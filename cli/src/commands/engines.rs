//! `thaw engines`: the host's language engines, and the function versions deployed on each.

use crate::commands::Target;

/// `thaw engines` flags.
#[derive(clap::Args, Debug)]
pub struct EnginesArgs {
    /// Print the full JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// One line per engine: its language (`-` for one the host no longer offers, kept for the
/// functions on it), digest, whether it is current and loaded, and its function versions. A
/// function moves to the current engine when it is redeployed.
pub async fn execute(args: EnginesArgs) -> anyhow::Result<()> {
    let engines = args.target.client()?.engines().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&engines)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<14} {:<8} {:<7} FUNCTIONS",
        "LANGUAGE", "DIGEST", "CURRENT", "LOADED"
    );
    for e in &engines {
        println!(
            "{:<8} {:<14} {:<8} {:<7} {}",
            e.language.map_or("-".to_owned(), |l| l.to_string()),
            &e.digest[..12.min(e.digest.len())],
            if e.current { "yes" } else { "no" },
            if e.loaded { "yes" } else { "no" },
            if e.functions.is_empty() {
                "-".to_owned()
            } else {
                e.functions.join(" ")
            },
        );
    }
    Ok(())
}
