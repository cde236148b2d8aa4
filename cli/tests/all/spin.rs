//! Spin applications on thaw, unchanged: functions/spin-app, built with the real spin-sdk 7
//! crate (WASIp3; the async `spin:sqlite`, `spin:variables` and `spin:key-value` functions,
//! an outbound request), deployed with `thaw deploy` on its own `spin.toml`, answers what its
//! code says it returns.

use std::path::Path;

use crate::support::{TestServer, client, thaw_command};

async fn call(server: &TestServer, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}/spin-app{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spin_sdk_app_deploys_from_its_spin_toml_and_runs_unchanged() {
    // The manifest's `api_token` is a required secret: thaw reads it as `env:API_TOKEN`.
    let server = TestServer::start_with_env(&[], &[("THAW_SECRET_API_TOKEN", "s3cret")]);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/spin-app/spin.toml");
    // The test functions are built by thaw-test-functions' build script, where the
    // manifest's `source` points.
    let _ = thaw_test_functions::SPIN_APP;
    let out = thaw_command(&server, &["deploy", manifest.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("not supported"),
        "every key is taken over: {stderr}"
    );

    let up = crate::support::upstream().await;
    let upstream = format!("/fetch?url=http://127.0.0.1:{up}/");
    for (path, want) in [
        ("/count", "count 0"),
        ("/add?name=ada", "added 1"),
        ("/add?name=grace", "added 2"),
        ("/list", "ada\ngrace\n"),
        ("/count", "count 2"),
        ("/var?name=greeting", "hello from spin.toml"),
        ("/var?name=token", "s3cret"),
        ("/var?name=missing", "error: Error::Undefined(\"missing\")"),
        (
            "/var?name=Bad-Name",
            "error: Error::InvalidName(\"Bad-Name\")",
        ),
        ("/visit", "visits 1"),
        ("/visit", "visits 2"),
        ("/keys", "visits\n"),
        (upstream.as_str(), "status 200"),
    ] {
        let (status, body) = call(&server, path).await;
        assert_eq!((status, body.as_str()), (200, want), "{path}");
    }
    let (status, body) = call(&server, "/bad").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("error: ") && body.contains("no such table"),
        "{body}"
    );
    // Outbound hosts are the manifest's: loopback only.
    let (status, body) = call(&server, "/fetch?url=http://192.0.2.1/").await;
    assert_eq!(status, 200);
    assert!(body.contains("HttpRequestDenied"), "{body}");
    // The app's store and database are the function's: thaw's tools read them.
    let out = thaw_command(&server, &["kv", "get", "spin-app", "visits"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");
    let out = thaw_command(
        &server,
        &["sql", "spin-app", "SELECT name FROM people ORDER BY id"],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "name\nada\ngrace\n");
    // The environment is the manifest's.
    let info = server.admin().get("spin-app").await.unwrap();
    assert_eq!(info["spec"]["env"]["MODE"], "test", "{info}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spin_manifest_thaw_cannot_honour_is_refused_before_anything_is_deployed() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n\
         [[trigger.http]]\nroute = \"/users/:id\"\ncomponent = \"users\"\n\
         [component.users]\nsource = \"users.wasm\"\n",
    )
    .unwrap();
    let out = thaw_command(&server, &["deploy", manifest.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`:param` segments are not supported"),
        "{stderr}"
    );
    assert!(server.admin().list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spin_app_importing_an_interface_thaw_does_not_offer_is_refused_naming_it() {
    let server = TestServer::start();
    let refused = server
        .admin()
        .deploy(
            "redis-app",
            &Default::default(),
            thaw_test_functions::read(thaw_test_functions::SPIN_REDIS).into(),
        )
        .await
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("spin:redis/redis@3.0.0"), "{message}");
    assert!(server.admin().list().await.unwrap().is_empty());
}
