//! `thaw remove`: undeploy a function.

use crate::commands::Target;
use anyhow::Context as _;

/// `thaw remove` flags.
#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// Name of the function
    pub name: String,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Removes the function; requests already running on it finish.
pub async fn execute(args: RemoveArgs) -> anyhow::Result<()> {
    args.target
        .client()?
        .remove(&args.name)
        .await
        .with_context(|| format!("removing {}", args.name))?;
    println!("removed {}", args.name);
    Ok(())
}
