//! Spin applications on thaw, unchanged: functions/spin-app, built with the real spin-sdk 7
//! crate (WASIp3; the async `spin:sqlite`, `spin:variables` and `spin:key-value` functions,
//! an outbound request), deployed with `thaw deploy` on its own `spin.toml`, answers what its
//! code says it returns.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

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
    // The manifest's `db_url` too; this test does not reach Postgres (see the one below).
    let server = TestServer::start_with_env(
        &[],
        &[
            ("THAW_SECRET_API_TOKEN", "s3cret"),
            ("THAW_SECRET_DB_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("THAW_SECRET_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
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
    // A file the manifest names that is not there: named, before anything is sent.
    for (component, names) in [
        ("[component.users]\nsource = \"users.wasm\"\n", "users.wasm"),
        (
            "[component.users]\nsource = \"users.wasm\"\nfiles = [{ source = \"static\", destination = \"/s\" }]\n",
            "static",
        ),
    ] {
        std::fs::write(
            &manifest,
            format!(
                "spin_manifest_version = 2\n[application]\nname = \"x\"\n\
                 [[trigger.http]]\nroute = \"/users/...\"\ncomponent = \"users\"\n{component}"
            ),
        )
        .unwrap();
        let out = thaw_command(&server, &["deploy", manifest.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(names), "{names}: {stderr}");
    }
    // A component variable that refers to an application variable the manifest does not
    // declare: named, before anything is sent (the wasm is there this time).
    std::fs::copy(thaw_test_functions::SPIN_APP, dir.path().join("users.wasm")).unwrap();
    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n\
         [variables]\ngreeting = { default = \"hi\" }\n\
         [[trigger.http]]\nroute = \"/users/...\"\ncomponent = \"users\"\n\
         [component.users]\nsource = \"users.wasm\"\n\
         [component.users.variables]\ntoken = \"{{ api_tokn }}\"\n",
    )
    .unwrap();
    let out = thaw_command(&server, &["deploy", manifest.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("api_tokn"), "{stderr}");
    assert!(server.admin().list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spin_app_importing_an_interface_thaw_does_not_offer_is_refused_naming_it() {
    let server = TestServer::start();
    let refused = server
        .admin()
        .deploy(
            "mqtt-app",
            &Default::default(),
            thaw_test_functions::read(thaw_test_functions::SPIN_MQTT).into(),
        )
        .await
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("spin:mqtt/mqtt@3.0.0"), "{message}");
    assert!(server.admin().list().await.unwrap().is_empty());
}

/// 32 clients each calling the Spin app's `path` 5 times at once; the answers that do not
/// start with `ok_prefix`.
async fn thirty_two_clients_five_times(
    server: &TestServer,
    path: &str,
    ok_prefix: &'static str,
) -> Vec<String> {
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let url = format!("{}/spin-app{path}", server.url);
            tokio::spawn(async move {
                let http = client();
                let mut failed = Vec::new();
                for _ in 0..5 {
                    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
                    if !body.starts_with(ok_prefix) {
                        failed.push(body);
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    failed
}

/// Deploys functions/spin-app from its spin.toml on `server`.
fn deploy_spin_app(server: &TestServer) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/spin-app/spin.toml");
    let _ = thaw_test_functions::SPIN_APP;
    let out = thaw_command(server, &["deploy", manifest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Spin app on a real Postgres (Debian's, started here on loopback), its address a
/// secret: values of each mapped type; 32 clients incrementing one row lose nothing; 128
/// requests at once never hold more than the pool's 4 connections (`pg_stat_activity`); with
/// Postgres down a request gets a typed connection error within the acquire timeout, the host
/// stays healthy, and Postgres back means the function works again.
#[tokio::test(flavor = "multi_thread")]
async fn a_spin_app_uses_postgres_through_the_hosts_pool() {
    let Some(mut pg) = thaw_harness::Postgres::start() else {
        return;
    };
    let server = TestServer::start_with_env(
        &[],
        &[
            ("THAW_SECRET_API_TOKEN", "s3cret"),
            ("THAW_SECRET_DB_URL", &pg.url),
            ("THAW_SECRET_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    deploy_spin_app(&server);
    assert_eq!(call(&server, "/pg-setup").await, (200, "ready".into()));
    assert_eq!(
        call(&server, "/pg-types").await,
        (
            200,
            "Some(true) Some(7) Some(8) Some(9) Some(1.5) Some(\"text\") Some([1, 2]) Some(\"bound\") Some(None)"
                .into()
        )
    );

    // Spin's datetime is UTC without a zone: a timestamptz column gets that instant, and one
    // written with another offset comes back in UTC; `timestamp` is seconds since the epoch.
    assert_eq!(
        call(&server, "/pg-times").await,
        (
            200,
            "DbValue::Date((2024, 2, 29)) DbValue::Time((23, 59, 58, 5000)) \
             DbValue::Datetime((2024, 2, 29, 12, 30, 0, 0)) DbValue::Datetime((2024, 2, 29, 12, 30, 0, 0)) \
             DbValue::Uuid(\"67e55044-10b1-426f-9247-bb680e5fe0c8\") \
             DbValue::Datetime((1970, 1, 2, 0, 0, 0, 0)) DbValue::Datetime((2024, 2, 29, 10, 0, 0, 0))"
                .into()
        )
    );
    let (_, bad) = call(&server, "/pg-bad-date").await;
    assert!(
        bad.starts_with("error: ")
            && bad.contains("BadParameter")
            && bad.contains("not a valid date"),
        "{bad}"
    );

    assert_eq!(
        thirty_two_clients_five_times(&server, "/pg-incr", "n ").await,
        Vec::<String>::new()
    );
    assert_eq!(call(&server, "/pg-count").await, (200, "n 160".into()));

    connections_stay_within_the_pool(&server, &pg).await;

    pg.stop();
    let started = Instant::now();
    let (status, body) = call(&server, "/pg-count").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("error: ") && body.contains("ConnectionFailed"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the error took {:?}, past the 2 s acquire timeout and the request's own",
        started.elapsed()
    );
    assert_eq!(
        call(&server, "/count").await,
        (200, "count 0".into()),
        "the host is healthy"
    );
    pg.restart();
    thaw_harness::eventually(
        "the function reaches Postgres again",
        Duration::from_secs(30),
        || {
            let server = &server;
            async move { call(server, "/pg-count").await.1 == "n 160" }
        },
    )
    .await;
}

/// 128 requests each holding a connection for 200 ms: Postgres never sees more than the
/// function's pool (4, `pg_max_connections`' default) from thaw, and every request is served.
async fn connections_stay_within_the_pool(server: &TestServer, pg: &thaw_harness::Postgres) {
    let (observer, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (done, most) = (done.clone(), most.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let row = observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'thaw'",
                        &[],
                    )
                    .await
                    .unwrap();
                most.fetch_max(row.get::<_, i64>(0), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let requests: Vec<_> = (0..128)
        .map(|_| {
            let url = format!("{}/spin-app/pg-sleep?ms=200", server.url);
            tokio::spawn(async move {
                client()
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let slept = answers.iter().filter(|a| *a == "slept").count();
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&most),
        "{most} connections from thaw at once"
    );
    // Requests that waited past the 2 s acquire timeout get the typed error, and those
    // the host could not give an instance slot within its queue timeout a 503: no hang.
    for a in answers.iter().filter(|a| *a != "slept") {
        assert!(
            a.contains("pg_acquire_ms") || a.contains("all instances are busy"),
            "{a}"
        );
    }
    assert!(slept >= 32, "only {slept} of 128 were served");
}

/// The Spin app on a real Redis (Debian's, on loopback), its address a secret: each command
/// of spin-sdk's `redis` answers as Redis does; 32 clients incrementing one key lose nothing,
/// over the one connection the function's requests share (Redis's `CLIENT LIST`); a command
/// that would change that connection for the others is refused, as is an address outside
/// `allowed_outbound_hosts`; with Redis down a request gets an error within the outbound
/// timeout and the host stays healthy; Redis back, the function works again.
#[tokio::test(flavor = "multi_thread")]
async fn a_spin_app_uses_redis_where_its_manifest_allows() {
    let Some(mut redis) = thaw_harness::Redis::start() else {
        return;
    };
    let server = TestServer::start_with_env(
        &[],
        &[
            ("THAW_SECRET_API_TOKEN", "s3cret"),
            ("THAW_SECRET_DB_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("THAW_SECRET_REDIS_URL", &redis.url),
        ],
    );
    deploy_spin_app(&server);
    assert_eq!(
        call(&server, "/redis-tour").await,
        (
            200,
            "get Some(\"v\")\nsadd 3\nsrem 1\nmembers a,c\ndel 1\ngone None\n\
             execute int 1, bytes f, bytes 42\npublished\n"
                .into()
        )
    );

    assert_eq!(
        thirty_two_clients_five_times(&server, "/redis-incr", "hits ").await,
        Vec::<String>::new()
    );
    assert_eq!(call(&server, "/redis-incr").await, (200, "hits 161".into()));
    let observer = redis::Client::open(redis.url.as_str()).unwrap();
    let mut observer = observer.get_multiplexed_async_connection().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut observer)
        .await
        .unwrap();
    assert_eq!(
        clients.lines().count(),
        2,
        "the function's one shared connection and this observer: {clients}"
    );

    let (_, wrong) = call(&server, "/redis-wrongtype").await;
    assert!(
        wrong.starts_with("error: ") && wrong.contains("TypeError"),
        "{wrong}"
    );
    let (_, multi) = call(&server, "/redis-multi").await;
    assert!(multi.contains("MULTI is refused on thaw"), "{multi}");
    let (_, denied) = call(&server, "/redis-denied").await;
    assert!(
        denied
            .contains("redis://10.255.255.1:6379 is not in the function's allowed_outbound_hosts"),
        "{denied}"
    );

    redis.stop();
    let started = Instant::now();
    let (status, body) = call(&server, "/redis-incr").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("error: "), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the error took {:?}, past the outbound timeout",
        started.elapsed()
    );
    assert_eq!(
        call(&server, "/count").await,
        (200, "count 0".into()),
        "the host is healthy"
    );
    redis.restart();
    thaw_harness::eventually(
        "the function reaches Redis again",
        Duration::from_secs(30),
        || {
            let server = &server;
            async move { call(server, "/redis-incr").await.1 == "hits 1" }
        },
    )
    .await;
}

/// `sslmode=require` in the address: the host speaks TLS to Postgres and verifies the
/// server's certificate against its trust store (`SSL_CERT_FILE` here: the test CA), which
/// Postgres's own `pg_stat_ssl` confirms; a host that does not trust the certificate's CA
/// gets a typed connection error naming the certificate, and serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_spin_app_reaches_postgres_over_verified_tls() {
    let Some((pg, ca)) = thaw_harness::Postgres::start_with_tls() else {
        return;
    };
    let address = format!("{}?sslmode=require", pg.url);
    let trusting = TestServer::start_with_env(
        &[],
        &[
            ("THAW_SECRET_API_TOKEN", "s3cret"),
            ("THAW_SECRET_DB_URL", &address),
            ("THAW_SECRET_REDIS_URL", "redis://127.0.0.1:1"),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ],
    );
    deploy_spin_app(&trusting);
    assert_eq!(call(&trusting, "/pg-setup").await, (200, "ready".into()));
    assert_eq!(call(&trusting, "/pg-incr").await, (200, "n 1".into()));
    let (observer, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let encrypted: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'thaw' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "thaw's connections to Postgres use TLS");

    let untrusting = TestServer::start_with_env(
        &[],
        &[
            ("THAW_SECRET_API_TOKEN", "s3cret"),
            ("THAW_SECRET_DB_URL", &address),
            ("THAW_SECRET_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    deploy_spin_app(&untrusting);
    let (status, body) = call(&untrusting, "/pg-count").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("ConnectionFailed") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
    assert_eq!(call(&untrusting, "/count").await, (200, "count 0".into()));
}
