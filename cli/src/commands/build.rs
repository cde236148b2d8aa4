//! `thaw build`: run a manifest's build commands.

use std::path::PathBuf;

use thaw_runtime::manifest::Manifest;

/// `thaw build` flags.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The manifest
    #[arg(default_value = "thaw.toml")]
    pub manifest: PathBuf,
}

/// Runs each distinct build command of the manifest once.
pub fn execute(args: BuildArgs) -> anyhow::Result<()> {
    Manifest::load(&args.manifest)?.build()
}
