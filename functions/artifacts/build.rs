//! Builds the example functions in `functions/` to wasm and writes their paths as constants.
//!
//! wasmtime's test-programs pattern: a nested `cargo build` for the wasm targets, into a
//! target directory of its own (`target/guests`, the same one `functions/thaw.toml` builds
//! into, so the quick start and the tests share one build), release profile (guests are
//! small; their release build takes seconds and is what users deploy).

use std::path::{Path, PathBuf};
use std::process::Command;

/// (target, packages) — one cargo invocation each.
const BUILDS: &[(&str, &[&str])] = &[
    (
        "wasm32-wasip2",
        &[
            "hello",
            "orders",
            "markdown",
            "echo",
            "faults",
            "counter",
            "primes",
            "impure-init",
        ],
    ),
    ("wasm32-wasip1", &["wordcount"]),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let functions = manifest_dir.parent().unwrap().to_path_buf();
    let root = functions.parent().unwrap().to_path_buf();
    let target_dir = root.join("target").join("guests");

    for dir in [
        "hello",
        "orders",
        "markdown",
        "echo",
        "wordcount",
        "faults",
        "counter",
        "primes",
        "impure-init",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            functions.join(dir).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            functions.join(dir).join("Cargo.toml").display()
        );
    }
    for path in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", functions.join(path).display());
    }
    for path in [
        "sdk/src",
        "sdk/Cargo.toml",
        "sdk/macro/src",
        "sdk/macro/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut paths = String::new();
    for (target, packages) in BUILDS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&functions)
            .args(["build", "--release", "--target", target, "--target-dir"])
            .arg(&target_dir);
        for package in *packages {
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
        for package in *packages {
            // Cargo names a cdylib's file with underscores for dashes.
            let wasm = out.join(format!("{}.wasm", package.replace('-', "_")));
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
