//! `thaw cluster`: the node's view of its cluster (etcd's state and the members).

use crate::commands::Target;

/// `thaw cluster` flags.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Print the full JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Prints the node's name, whether it reaches etcd, and one line per member.
pub async fn execute(args: ClusterArgs) -> anyhow::Result<()> {
    let status = args.target.client()?.cluster().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "node {}, etcd {}, {}",
        status.node,
        status.etcd,
        if status.synced {
            "synced"
        } else {
            "not synced yet"
        }
    );
    println!(
        "{:<24} {:<24} {:<24} {:>6}  ENGINE",
        "MEMBER", "FUNCTIONS", "ADMIN", "SLOTS"
    );
    for m in &status.members {
        println!(
            "{:<24} {:<24} {:<24} {:>6}  {}",
            m.id,
            m.functions,
            m.admin,
            m.instance_slots,
            &m.engine[..12.min(m.engine.len())]
        );
    }
    Ok(())
}
