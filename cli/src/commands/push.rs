//! `thaw push`: publish a function's component to an OCI registry (see [`crate::registry`]).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::registry::{OciRef, RegistryArgs};
use thaw_runtime::manifest::Manifest;

/// `thaw push` flags.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// A thaw.toml manifest (its function's wasm is published) or a .wasm file
    pub path: PathBuf,
    /// Where: oci://HOST/REPO:TAG
    pub reference: String,
    /// With a manifest of several functions: the one to publish
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// With a manifest: run the function's build command first
    #[arg(long)]
    pub build: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Publishes and prints the reference pinned to the pushed manifest's digest.
pub async fn execute(args: PushArgs) -> anyhow::Result<()> {
    let reference = OciRef::parse(&args.reference).unwrap_or_else(|| {
        Err(anyhow::anyhow!(
            "{:?} is not an OCI reference: write oci://HOST/REPO:TAG",
            args.reference
        ))
    })?;
    anyhow::ensure!(
        reference.0.digest().is_none(),
        "{reference}: push to a tag (oci://HOST/REPO:TAG); the registry names the digest"
    );
    let (wasm_path, title) = if args.path.extension().is_some_and(|e| e == "toml") {
        let manifest = Manifest::load(&args.path)?;
        let function = match (&args.function, manifest.functions.as_slice()) {
            (Some(name), functions) => functions
                .iter()
                .find(|f| &f.name == name)
                .with_context(|| format!("{} has no function {name:?}", args.path.display()))?,
            (None, [only]) => only,
            (None, functions) => anyhow::bail!(
                "{} has {} functions; name one with --function ({})",
                args.path.display(),
                functions.len(),
                functions
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let Some(wasm) = &function.wasm else {
            anyhow::bail!(
                "function {:?} has no component (it is source, or static files only): a registry \
                 holds components; deploy it with `thaw deploy`",
                function.name
            );
        };
        if function.assets.is_some() {
            eprintln!(
                "thaw: warning: {}'s assets are not published; a registry artifact holds its \
                 component only",
                function.name
            );
        }
        if args.build
            && let Some(command) = &function.build
        {
            manifest.run_build(command)?;
        }
        (manifest.base.join(wasm), function.name.clone())
    } else {
        let title = args
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("function")
            .to_owned();
        (args.path.clone(), title)
    };
    let wasm =
        std::fs::read(&wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    anyhow::ensure!(
        wasm.starts_with(b"\0asm"),
        "{} is not WebAssembly",
        wasm_path.display()
    );
    let pinned = crate::registry::push(&reference, &args.registry, wasm, &title).await?;
    println!("pushed {reference} ({pinned})");
    Ok(())
}
