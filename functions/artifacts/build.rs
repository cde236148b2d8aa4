//! Builds the example functions in `functions/` to wasm and writes their paths as constants.
//!
//! wasmtime's test-programs pattern: a nested `cargo build` for the wasm targets, into a
//! target directory of its own (`target/guests`, the same one `functions/thaw.toml` builds
//! into, so the quick start and the tests share one build), release profile (guests are
//! small; their release build takes seconds and is what users deploy).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target a guest builds for unless its `[package.metadata.thaw] target` says otherwise.
const DEFAULT_TARGET: &str = "wasm32-wasip2";

/// The guests, from `functions/Cargo.toml`'s `members`, grouped by target (one cargo
/// invocation per target). The members list is the one place a guest is registered.
fn guests(functions: &Path) -> Vec<(String, Vec<(String, bool)>)> {
    let read = |path: PathBuf| -> toml::Table {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.parse()
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    };
    let workspace = read(functions.join("Cargo.toml"));
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("functions/Cargo.toml lists workspace.members");
    let mut builds: Vec<(String, Vec<(String, bool)>)> = Vec::new();
    for member in members {
        let dir = member.as_str().expect("members are strings");
        let manifest = read(functions.join(dir).join("Cargo.toml"));
        let package = manifest["package"]["name"]
            .as_str()
            .expect("package.name")
            .to_owned();
        let target = manifest["package"]
            .get("metadata")
            .and_then(|m| m.get("thaw"))
            .and_then(|t| t.get("target"))
            .and_then(|t| t.as_str())
            .unwrap_or(DEFAULT_TARGET)
            .to_owned();
        // A command (`[[bin]]`) keeps its name's dashes; a cdylib's file has underscores.
        let package = (package, manifest.contains_key("bin"));
        println!(
            "cargo:rerun-if-changed={}",
            functions.join(dir).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            functions.join(dir).join("Cargo.toml").display()
        );
        match builds.iter_mut().find(|(t, _)| *t == target) {
            Some((_, packages)) => packages.push(package),
            None => builds.push((target, vec![package])),
        }
    }
    builds
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let functions = manifest_dir.parent().unwrap().to_path_buf();
    let root = functions.parent().unwrap().to_path_buf();
    let target_dir = root.join("target").join("guests");

    let builds = guests(&functions);
    for path in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", functions.join(path).display());
    }
    for path in [
        "sdk/src",
        "sdk/Cargo.toml",
        "sdk/macro/src",
        "sdk/macro/Cargo.toml",
        "sdk/wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut paths = String::new();
    for (target, packages) in &builds {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&functions)
            .args(["build", "--release", "--target", target, "--target-dir"])
            .arg(&target_dir);
        for (package, _) in packages {
            cmd.args(["-p", package]);
        }
        // Settings meant for the host build must not leak into the guest build: clippy's
        // wrapper, host rustflags, a target chosen for the host.
        for var in [
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_RUSTFLAGS",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("running cargo for the guest functions");
        if !status.success() {
            panic!(
                "building the example functions for {target} failed ({status}).\n\
                 If the target is missing: rustup target add wasm32-wasip1 wasm32-wasip2"
            );
        }
        let out = target_dir.join(target).join("release");
        for (package, command) in packages {
            let wasm = if *command {
                out.join(format!("{package}.wasm"))
            } else {
                out.join(format!("{}.wasm", package.replace('-', "_")))
            };
            assert!(wasm.exists(), "{} was not built", wasm.display());
            paths.push_str(&format!(
                "/// `functions/{package}` built for {target}.\npub const {}: &str = {:?};\n",
                package.to_uppercase().replace('-', "_"),
                wasm.display().to_string()
            ));
        }
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::write(Path::new(&out_dir).join("paths.rs"), paths).unwrap();
}
