//! Configuration and state: `wasi:config` (values and secrets) and `wasi:keyvalue` on the
//! embedded store and on a real Redis (Debian's `redis-server`, started here on a free
//! loopback port), with the guest `functions/capabilities`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use thaw_harness::Redis;
use thaw_runtime::config::{ConfigValue, SecretRef};
use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, client, route, thaw_command};

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let r = server.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn set(server: &TestServer, path: &str, value: &[u8]) -> u16 {
    client()
        .post(format!("{}{path}", server.url))
        .body(value.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn config_values_and_secrets_reach_the_guest_and_nothing_else() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("db-password"), "file-secret-value\n").unwrap();
    let mut server = TestServer::start_with_env(
        &["--secrets-dir", secrets.path().to_str().unwrap()],
        &[("THAW_SECRET_API_KEY", "env-secret-value")],
    );
    let spec = FunctionSpec {
        route: Some("/cap".into()),
        config: [
            ("hello".to_owned(), ConfigValue::Value("world".into())),
            (
                "api_key".to_owned(),
                ConfigValue::Secret {
                    secret: SecretRef::Env("API_KEY".into()),
                },
            ),
            (
                "db_password".to_owned(),
                ConfigValue::Secret {
                    secret: SecretRef::File("db-password".into()),
                },
            ),
        ]
        .into(),
        ..Default::default()
    };
    server.deploy("cap", wasm::CAPABILITIES, spec.clone()).await;
    assert_eq!(
        get(&server, "/cap/config-hello").await,
        (200, "world".into())
    );
    assert_eq!(
        get(&server, "/cap/config/api_key").await,
        (200, "env-secret-value".into())
    );
    assert_eq!(
        get(&server, "/cap/config/db_password").await,
        (200, "file-secret-value".into())
    );
    assert_eq!(
        get(&server, "/cap/config/missing").await,
        (404, "none".into())
    );

    // The secrets are references everywhere but in the guest.
    let listed = thaw_command(&server, &["list", "--json"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("env:API_KEY") && listed.contains("file:db-password"));
    for place in [listed.to_string(), server.log()] {
        assert!(!place.contains("env-secret-value") && !place.contains("file-secret-value"));
    }
    let record = std::fs::read_to_string(server.data_dir.join("functions/cap.json")).unwrap();
    assert!(!record.contains("secret-value"), "{record}");

    // A secret the host does not have: 400 naming it, and the deployed version serves on.
    for (secret, needle) in [
        (SecretRef::Env("NOPE".into()), "THAW_SECRET_NOPE is not set"),
        (SecretRef::File("nope".into()), "file:nope"),
    ] {
        let mut bad = spec.clone();
        bad.config
            .insert("x".into(), ConfigValue::Secret { secret });
        let e = server
            .admin()
            .typed()
            .deploy(
                "cap",
                &bad,
                thaw_test_functions::read(wasm::CAPABILITIES).into(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
        // The message names what to fix.
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert_eq!(
        get(&server, "/cap/config-hello").await,
        (200, "world".into())
    );
    let versions = server.admin().typed().versions("cap").await.unwrap();
    assert_eq!(
        versions.versions.len(),
        1,
        "refused deploys make no version"
    );

    serves_without_a_secret_gone_at_restart(&mut server, secrets.path()).await;
}

/// A secret gone when the host starts again: the function serves, without that key.
async fn serves_without_a_secret_gone_at_restart(
    server: &mut TestServer,
    secrets: &std::path::Path,
) {
    std::fs::remove_file(secrets.join("db-password")).unwrap();
    server.kill_and_restart(1);
    assert_eq!(
        get(server, "/cap/config/db_password").await,
        (404, "none".into())
    );
    assert_eq!(
        get(server, "/cap/config-hello").await,
        (200, "world".into())
    );
    assert!(server.log().contains("serving without its secrets"));
    assert!(!server.log().contains("secret-value"));
}

/// The key-value tests, run on the embedded store and on Redis.
async fn state_survives_and_stays_apart(mut server: TestServer) {
    server
        .deploy("cap", wasm::CAPABILITIES, route("/cap"))
        .await;
    server
        .deploy("other", wasm::CAPABILITIES, route("/other"))
        .await;
    a_counter_and_operators_keys_reach_the_guest(&server).await;
    functions_never_see_each_others_keys(&server).await;

    // A redeploy keeps the state.
    server
        .deploy("cap", wasm::CAPABILITIES, route("/cap"))
        .await;
    assert_eq!(get(&server, "/cap/count").await, (200, "4".into()));

    concurrent_increments_lose_nothing(&server).await;
    acknowledged_increments_survive_kill_9(&mut server).await;

    // Removing a function removes its state.
    server.admin().remove("other").await.unwrap();
    server
        .deploy("other", wasm::CAPABILITIES, route("/other"))
        .await;
    assert_eq!(get(&server, "/other/count").await, (200, "1".into()));
}

/// A counter across requests; operators seed and read the store, and the guest sees it
/// (wasmtime's keyvalue program).
async fn a_counter_and_operators_keys_reach_the_guest(server: &TestServer) {
    // A counter across requests.
    for n in 1..=3 {
        assert_eq!(get(server, "/cap/count").await, (200, n.to_string()));
    }
    // Operators seed and read the store; the guest sees it (wasmtime's keyvalue program).
    let out = thaw_command(server, &["kv", "set", "cap", "hello", "world"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(server, "/cap/kv-hello").await, (200, "world".into()));
    let out = thaw_command(server, &["kv", "get", "cap", "visits"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3");
    assert_eq!(set(server, "/cap/set?bucket=b1&key=k", b"in b1").await, 204);
    let out = thaw_command(server, &["kv", "list", "cap", "b1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\n");
}

/// Two functions never see each other's keys, whatever bucket they open.
async fn functions_never_see_each_others_keys(server: &TestServer) {
    assert_eq!(
        get(server, "/other/get?key=hello").await,
        (404, "none".into())
    );
    assert_eq!(
        get(server, "/other/get?bucket=b1&key=k").await,
        (404, "none".into())
    );
    assert_eq!(get(server, "/other/count").await, (200, "1".into()));
    assert_eq!(
        get(server, "/cap/get?bucket=a/b&key=k").await,
        (500, "no-such-store".into())
    );
}

/// 32 clients incrementing at once lose no increment.
async fn concurrent_increments_lose_nothing(server: &TestServer) {
    let http = client();
    let url = format!("{}/cap/count", server.url);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        get(server, "/cap/count").await,
        (200, (4 + 160 + 1).to_string())
    );
}

/// kill -9 in the middle of acknowledged increments: none of them is lost.
async fn acknowledged_increments_survive_kill_9(server: &mut TestServer) {
    let http = client();
    let url = format!("{}/cap/count", server.url);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let before: usize = get(server, "/cap/get?key=visits").await.1.parse().unwrap();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, acknowledged) = (http.clone(), url.clone(), acknowledged.clone());
            tokio::spawn(async move {
                loop {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill in the middle: once increments are being acknowledged (a fixed sleep could end
    // before the first one on a slow machine, and test nothing).
    crate::support::eventually(
        "acknowledged increments before the kill",
        std::time::Duration::from_secs(20),
        || {
            let acknowledged = acknowledged.clone();
            async move { acknowledged.load(Ordering::SeqCst) >= 20 }
        },
    )
    .await;
    server.kill_and_restart(1);
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    assert!(
        acknowledged > 0,
        "some increments were acknowledged before the kill"
    );
    let after: usize = get(server, "/cap/get?key=visits").await.1.parse().unwrap();
    assert!(
        after >= before + acknowledged && after <= before + acknowledged + 8,
        "{acknowledged} acknowledged increments after {before}: the counter is {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_state_survives_redeploys_restarts_and_kill_9() {
    state_survives_and_stays_apart(TestServer::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_state_survives_redeploys_restarts_and_kill_9() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = TestServer::start_with(&["--keyvalue", &redis.url]);
    state_survives_and_stays_apart(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_quotas_refuse_the_write_count_the_hit_and_spare_the_others() {
    quotas(TestServer::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_quotas_refuse_the_write_count_the_hit_and_spare_the_others() {
    let Some(redis) = Redis::start() else {
        return;
    };
    quotas(TestServer::start_with(&["--keyvalue", &redis.url])).await;
}

/// Value size, key count and bytes quotas, on one store.
async fn quotas(server: TestServer) {
    let spec = FunctionSpec {
        route: Some("/small".into()),
        limits: LimitsSpec {
            kv_max_value_kib: Some(1),
            kv_max_keys: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("small", wasm::CAPABILITIES, spec).await;
    server
        .deploy("big", wasm::CAPABILITIES, route("/big"))
        .await;

    let (status, body) = {
        let r = client()
            .post(format!("{}/small/set?key=a", server.url))
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 500);
    assert!(
        body.starts_with("other: over the function's key-value quota kv_max_value_kib: "),
        "{body}"
    );
    assert_eq!(get(&server, "/small/get?key=a").await, (404, "none".into()));
    assert_eq!(set(&server, "/small/set?key=a", b"1").await, 204);
    assert_eq!(set(&server, "/small/set?key=b", b"2").await, 204);
    assert_eq!(set(&server, "/small/set?key=c", b"3").await, 500);
    // Replacing a key is not a new key.
    assert_eq!(set(&server, "/small/set?key=a", b"11").await, 204);
    let small = server.admin().get("small").await.unwrap();
    assert_eq!(small["limit_hits"]["kv_value_size"], 1);
    assert_eq!(small["limit_hits"]["kv_keys"], 1);
    // The other function is unaffected.
    assert_eq!(set(&server, "/big/set?key=c", &vec![b'x'; 4096]).await, 204);
    assert_eq!(set(&server, "/big/set?key=d", b"4").await, 204);
    assert_eq!(get(&server, "/big/list").await, (200, "c\nd".into()));

    // Deleting makes room for a new key; a counter created by increment counts as a key.
    assert_eq!(get(&server, "/small/delete?key=b").await.0, 204);
    assert_eq!(get(&server, "/small/count").await, (200, "1".into()));
    assert_eq!(set(&server, "/small/set?key=c", b"3").await, 500);
    let small = server.admin().get("small").await.unwrap();
    assert_eq!(small["limit_hits"]["kv_keys"], 2);

    // A guest holding buckets open without end gets an error, not more host memory; the
    // next request (a new instance) opens buckets again.
    assert_eq!(
        get(&server, "/small/open-many?n=250").await,
        (200, "250".into())
    );
    let (status, body) = get(&server, "/small/open-many?n=5000").await;
    assert_eq!(status, 500);
    assert!(body.contains("buckets open at once"), "{body}");
    assert_eq!(
        get(&server, "/small/open-many?n=10").await,
        (200, "10".into())
    );

    // Bytes: a function at 1 MiB can replace a value with a smaller one, but not add a key,
    // not even one with an empty value.
    let spec = FunctionSpec {
        route: Some("/bytes".into()),
        limits: LimitsSpec {
            kv_max_mib: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("bytes", wasm::CAPABILITIES, spec).await;
    let almost = vec![b'x'; (1 << 20) - 16];
    assert_eq!(set(&server, "/bytes/set?key=a", &almost).await, 204);
    assert_eq!(
        set(&server, "/bytes/set?key=a-much-longer-key", b"").await,
        500
    );
    assert_eq!(set(&server, "/bytes/set?key=a", &almost[..100]).await, 204);
    assert_eq!(
        set(&server, "/bytes/set?key=a-much-longer-key", b"").await,
        204
    );
    let bytes = server.admin().get("bytes").await.unwrap();
    assert_eq!(bytes["limit_hits"]["kv_bytes"], 1);
}
