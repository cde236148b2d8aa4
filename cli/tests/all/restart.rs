//! Persistence: after `kill -9` every function serves again from its artifact, without
//! compiling; a damaged or missing artifact is detected and rebuilt.

use thaw_test_functions as wasm;

use crate::support::{TestServer, route};

fn artifact_dir(server: &TestServer) -> std::path::PathBuf {
    let engines: Vec<_> = std::fs::read_dir(server.data_dir.join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(engines.len(), 1, "one engine configuration: {engines:?}");
    engines[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_kill_serves_everything_without_compiling() {
    let mut server = TestServer::start();
    let hello = server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    server.deploy("wc", wasm::WORDCOUNT, route("/cgi/wc")).await;
    assert_eq!(server.admin().status().await.unwrap()["compilations"], 3);

    server.kill_and_restart(1);
    assert_eq!(server.admin().status().await.unwrap()["functions"], 3);
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(server.get("/echo?status=201").await.status(), 201);
    assert_eq!(server.get("/cgi/wc").await.status(), 200);
    assert_eq!(
        server.admin().get("hello").await.unwrap()["loaded_from"],
        "artifact"
    );
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["compilations"], 0, "a restart compiles nothing");
    assert_eq!(status["artifact_loads"], 3);

    // Corrupt hello's artifact in the middle of its code, delete echo's: both are rebuilt
    // from the stored wasm, the log says why, and everything serves.
    let digest = hello["digest"].as_str().unwrap();
    let dir = artifact_dir(&server);
    let hello_artifact = dir.join(format!("{digest}.cwasm"));
    let mut bytes = std::fs::read(&hello_artifact).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&hello_artifact, bytes).unwrap();
    let echo_digest = server.admin().get("echo").await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(dir.join(format!("{echo_digest}.cwasm"))).unwrap();
    // A temp file as an interrupted write would leave it.
    std::fs::write(server.data_dir.join("tmp/999.0.tmp"), b"torn").unwrap();

    server.kill_and_restart(2);
    assert_eq!(server.get("/hello").await.status(), 200);
    assert_eq!(server.get("/echo?status=202").await.status(), 202);
    assert_eq!(server.get("/cgi/wc").await.status(), 200);
    let log = server.log();
    assert!(log.contains("is corrupt"), "corruption is reported:\n{log}");
    assert!(
        log.contains("is missing"),
        "a missing artifact is reported:\n{log}"
    );
    assert!(log.contains("rebuilding it from the stored wasm"), "{log}");
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["artifact_rebuilds"], 2);
    assert_eq!(status["compilations"], 2);
    assert_eq!(status["artifact_loads"], 1);
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(server.get("/echo?status=202").await.status(), 202);
    assert!(
        !server.data_dir.join("tmp/999.0.tmp").exists(),
        "temp files are cleaned up"
    );

    // And the rebuilt artifacts are good: the next restart compiles nothing again.
    server.kill_and_restart(3);
    for path in ["/hello", "/echo", "/cgi/wc"] {
        assert_eq!(server.get(path).await.status(), 200);
    }
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["compilations"], 0);
    assert_eq!(status["artifact_loads"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_record_is_skipped_and_the_rest_serve() {
    let mut server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    std::fs::write(server.data_dir.join("functions/echo.json"), b"{ torn").unwrap();
    server.kill_and_restart(1);
    assert!(server.log().contains("skipping damaged function record"));
    assert_eq!(server.get("/hello").await.status(), 200);
    assert_eq!(server.get("/echo").await.status(), 404);
}

/// After a restart the scrub checks each artifact once, in the background; a load after it
/// reads no whole file (no further check). An artifact rewritten after the scrub has a new
/// stamp, so its load checks it again, finds the damage and rebuilds: it is never run.
#[tokio::test(flavor = "multi_thread")]
async fn the_start_up_scrub_checks_once_and_a_later_rewrite_is_still_caught() {
    let mut server = TestServer::start_with(&["--load", "lazy"]);
    let hello = server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    server.deploy("echo", wasm::ECHO, Default::default()).await;
    server.kill_and_restart(1);
    let status = server
        .wait_for(None, "the scrub", |s| s["artifacts_unchecked"] == 0)
        .await;
    assert_eq!(status["artifact_checks"], 2, "one check per artifact");
    assert_eq!(status["functions_loaded"], 0, "lazy: nothing loaded yet");
    assert_eq!(server.get("/echo").await.status(), 200);
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["artifact_loads"], 1);
    assert_eq!(status["artifact_checks"], 2, "the load did not check again");

    // Damage hello's artifact now, after the scrub: same length, other bytes.
    let dir = artifact_dir(&server);
    let path = dir.join(format!("{}.cwasm", hello["digest"].as_str().unwrap()));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["artifact_checks"], 3);
    assert_eq!(status["artifact_rebuilds"], 1);
    assert_eq!(status["compilations"], 1);
    assert!(server.log().contains("is corrupt"), "{}", server.log());
}

/// A WASIp3 component compiles on the engine with the component model's concurrency, a
/// WASIp2 component and a CGI module on the one without (see `engine::concurrency`); the
/// artifact's name says which, so a restart loads each on its engine without compiling.
#[tokio::test(flavor = "multi_thread")]
async fn each_artifact_restarts_on_the_engine_that_compiled_it() {
    let mut server = TestServer::start();
    let digest = |f: &serde_json::Value| f["digest"].as_str().unwrap().to_owned();
    let hello = digest(
        &server
            .deploy("hello", wasm::HELLO, Default::default())
            .await,
    );
    let p3 = digest(&server.deploy("p3", wasm::P3, route("/p3")).await);
    let wc = digest(&server.deploy("wc", wasm::WORDCOUNT, route("/cgi/wc")).await);
    let dir = artifact_dir(&server);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    names.sort();
    let mut expected = vec![
        format!("{hello}.cwasm"),
        format!("{p3}.concurrent.cwasm"),
        format!("{wc}.cwasm"),
    ];
    expected.sort();
    assert_eq!(names, expected);

    server.kill_and_restart(1);
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(
        server.get("/p3/hello").await.text().await.unwrap(),
        "Hello, WASI!"
    );
    assert_eq!(server.get("/cgi/wc").await.status(), 200);
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["compilations"], 0, "a restart compiles nothing");
    assert_eq!(status["artifact_loads"], 3);
    assert_eq!(status["artifact_rebuilds"], 0);
}
