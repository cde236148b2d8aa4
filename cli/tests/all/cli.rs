//! The `thaw` CLI against a real server: deploy (file and manifest), list, invoke, remove,
//! errors with their cause chain and a non-zero exit, and `--help` with units and defaults.

use std::process::{Command, Output};

use thaw_test_functions as wasm;

use crate::support::{TestServer, thaw_command};

fn thaw(server: &TestServer, args: &[&str]) -> Output {
    thaw_command(server, args).output().expect("running thaw")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "thaw failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip() {
    let server = TestServer::start();
    let out = stdout(&thaw(
        &server,
        &[
            "deploy",
            wasm::HELLO,
            "--name",
            "greeter",
            "--route",
            "/greet",
            "-e",
            "GREETING=Hey",
            "--timeout-ms",
            "2000",
        ],
    ));
    assert!(
        out.contains("deployed greeter (component) at /greet, traffic v1=100"),
        "{out}"
    );

    let out = stdout(&thaw(&server, &["invoke", "greeter", "?name=cli"]));
    assert_eq!(out, "Hey, cli!\n");
    let out = stdout(&thaw(&server, &["invoke", "greeter", "-i"]));
    assert!(out.starts_with("HTTP/1.1 200 OK\n"), "{out}");
    assert!(
        out.contains("content-type: text/plain; charset=utf-8"),
        "{out}"
    );

    // A manifest with two functions, paths relative to the manifest.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm::ECHO, dir.path().join("echo.wasm")).unwrap();
    std::fs::copy(wasm::WORDCOUNT, dir.path().join("wc.wasm")).unwrap();
    let manifest = dir.path().join("thaw.toml");
    std::fs::write(
        &manifest,
        "[[function]]\nname = \"echo\"\nwasm = \"echo.wasm\"\n\n\
         [[function]]\nname = \"wc\"\nwasm = \"wc.wasm\"\nroute = \"/cgi/wc\"\nlimits = { timeout_ms = 1000 }\n",
    )
    .unwrap();
    let out = stdout(&thaw(&server, &["deploy", manifest.to_str().unwrap()]));
    assert!(
        out.contains("deployed echo (component") && out.contains("deployed wc (cgi"),
        "{out}"
    );
    let out = stdout(&thaw(
        &server,
        &["invoke", "wc", "-d", "a b c", "?format=json"],
    ));
    assert_eq!(out, "{\"lines\":1,\"words\":3,\"bytes\":5}\n");

    let out = stdout(&thaw(&server, &["list"]));
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("greeter") && l.contains("/greet")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("wc") && l.contains("cgi")),
        "{out}"
    );

    let out = stdout(&thaw(&server, &["remove", "greeter"]));
    assert_eq!(out, "removed greeter\n");

    // Errors: the cause chain on stderr, exit code 1.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"nope").unwrap();
    let failed = thaw(&server, &["deploy", garbage.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("error: deploying garbage"), "{stderr}");
    assert!(
        stderr.contains("caused by: 400 Bad Request: not a WebAssembly binary"),
        "{stderr}"
    );
    let failed = thaw(&server, &["invoke", "greeter"]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "invoking a removed function fails"
    );
}

#[test]
fn help_documents_units_and_defaults() {
    let output = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "--instance-slots <N>",
        "[default: 256]",
        "--queue-timeout-ms <MS>",
        "--default-memory-mib <MIB>",
        "[env: THAW_DATA_DIR=]",
    ] {
        assert!(
            help.contains(expected),
            "`thaw serve --help` lacks {expected:?}:\n{help}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["deploy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("--timeout-ms <MS>") && help.contains("--memory-mib <MIB>"),
        "{help}"
    );
}
