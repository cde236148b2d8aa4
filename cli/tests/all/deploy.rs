//! The admin API's life cycle and its refusals.

use thaw_runtime::spec::{FunctionSpec, LimitsSpec};
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, deploy_multipart, deploy_raw, error_code, route};

#[tokio::test(flavor = "multi_thread")]
async fn deploy_list_get_invoke_redeploy_remove() {
    let server = TestServer::start();
    let admin = server.admin();
    assert!(admin.list().await.unwrap().is_empty());

    let spec = FunctionSpec {
        env: [("GREETING".to_string(), "Hi".to_string())].into(),
        ..Default::default()
    };
    let created = deploy_multipart(
        &server,
        "hello",
        &serde_json::to_string(&spec).unwrap(),
        wasm::HELLO,
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(created["generation"], 1);
    assert_eq!(created["kind"], "component");
    assert_eq!(created["route"], "/hello");

    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hi, world!\n"
    );

    let listed = admin.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "hello");
    let got = admin.get("hello").await.unwrap();
    assert_eq!(got["spec"]["env"]["GREETING"], "Hi");
    assert_eq!(got["requests"], 1);

    // Redeploy: same name, new spec: 200, generation 2, new behaviour.
    let spec = FunctionSpec {
        env: [("GREETING".to_string(), "Howdy".to_string())].into(),
        ..Default::default()
    };
    let replaced = deploy_multipart(
        &server,
        "hello",
        &serde_json::to_string(&spec).unwrap(),
        wasm::HELLO,
    )
    .await;
    assert_eq!(replaced.status(), 200);
    assert_eq!(
        replaced.json::<serde_json::Value>().await.unwrap()["generation"],
        2
    );
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Howdy, world!\n"
    );

    // Remove: 204, then the route is gone, the name is gone, a second remove is 404.
    let removed = server
        .admin_request(reqwest::Method::DELETE, "/v1/functions/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(server.get("/hello").await.status(), 404);
    assert!(admin.get("hello").await.is_err());
    let again = server
        .admin_request(reqwest::Method::DELETE, "/v1/functions/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    let status = admin.status().await.unwrap();
    assert_eq!(status["functions"], 0);
    assert_eq!(status["allocator"], "pooling");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_modules_are_refused_and_the_old_version_keeps_serving() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;

    let (status, body) = deploy_raw(&server, "hello", b"definitely not wasm".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("not a WebAssembly binary"), "{body}");

    let mut truncated = wasm::read(wasm::HELLO);
    truncated.truncate(truncated.len() / 2);
    let (status, body) = deploy_raw(&server, "hello", truncated).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid WebAssembly"), "{body}");

    let unknown_import = wat::parse_str(
        r#"(component (import "example:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    let (status, body) = deploy_raw(&server, "hello", unknown_import).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("example:missing/thing"),
        "the import is named: {body}"
    );

    let no_handler = wat::parse_str("(component)").unwrap();
    let (status, body) = deploy_raw(&server, "hello", no_handler).await;
    assert_eq!(status, 400);
    assert!(body.contains("incoming-handler"), "{body}");

    let reactor = wat::parse_str(r#"(module (func (export "not_start")))"#).unwrap();
    let (status, body) = deploy_raw(&server, "hello", reactor).await;
    assert_eq!(status, 400);
    assert!(body.contains("_start"), "{body}");

    let unknown_core_import = wat::parse_str(
        r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#,
    )
    .unwrap();
    let (status, body) = deploy_raw(&server, "hello", unknown_core_import).await;
    assert_eq!(status, 400);
    assert!(body.contains("launch_missiles"), "{body}");

    // Through all of that, the first version kept serving and kept its generation.
    let r = server.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
    assert_eq!(server.admin().get("hello").await.unwrap()["generation"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_and_routes() {
    let server = TestServer::start();
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;

    // A bad name, a bad route, an out-of-range limit, an unknown spec field: 400s.
    let (status, body) = deploy_raw(&server, "Bad.Name", wasm::read(wasm::HELLO)).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid function name"), "{body}");
    for (spec, reason) in [
        (r#"{"route": "no-slash"}"#, "must start with '/'"),
        (r#"{"limits": {"memory_mib": 999999}}"#, "memory_mib"),
        (r#"{"limits": {"timeout_ms": 0}}"#, "timeout_ms"),
        (r#"{"rout": "/x"}"#, "unknown field"),
    ] {
        let r = deploy_multipart(&server, "other", spec, wasm::HELLO).await;
        assert_eq!(r.status(), 400, "{spec}");
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{spec}: {text}");
    }

    // Taking another function's route is a conflict.
    let err = server
        .admin()
        .deploy("thief", &route("/hello"), wasm::read(wasm::ECHO).into())
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(ErrorCode::RouteTaken), "{err:#}");

    // Unknown paths are 404; prefixes match on segment boundaries only.
    assert_eq!(server.get("/nope").await.status(), 404);
    assert_eq!(server.get("/hellothere").await.status(), 404);
    assert_eq!(server.get("/hello/there").await.status(), 200);
    assert_eq!(server.admin().list().await.unwrap().len(), 1);

    // A custom route, and a catch-all root route that longer routes still win over.
    server.deploy("root", wasm::ECHO, route("/")).await;
    let r = server.get("/anything/else").await;
    assert_eq!(r.headers()["x-echo-path"], "/anything/else");
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );

    let limits = FunctionSpec {
        limits: LimitsSpec {
            timeout_ms: Some(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let deployed = server.deploy("limited", wasm::HELLO, limits).await;
    assert_eq!(deployed["limits"]["timeout"], 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_address_space_for_the_pool_thaw_falls_back_to_on_demand() {
    // 24 GiB: plenty for a few on-demand instances, far too little for 32 pooled slots.
    let server = TestServer::start_with_address_space_limit(24 << 30);
    let status = server.admin().status().await.unwrap();
    assert_eq!(status["allocator"], "on-demand");
    assert!(
        status["allocator_reason"]
            .as_str()
            .unwrap()
            .contains("RLIMIT_AS"),
        "{status}"
    );
    assert!(
        server.log().contains("instance allocator: on-demand"),
        "said at start-up"
    );
    server
        .deploy("hello", wasm::HELLO, Default::default())
        .await;
    assert_eq!(
        server.get("/hello").await.text().await.unwrap(),
        "Hello, world!\n"
    );
}

/// Routes with host names: a request's host (any case, any port) goes to that host's routes
/// first, then to the wildcards from the most specific, then to the host-less routes; a host
/// with no route of its own is served by the host-less routes, and a path none of these match
/// is a 404. A route's host that is not a lower-case name, or has a port, is refused at
/// deploy naming it, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn routes_with_host_names_come_before_host_less_ones() {
    use thaw_runtime::config::ConfigValue;
    let server = TestServer::start();
    let spec = |route: &str, who: &str| FunctionSpec {
        route: Some(route.into()),
        config: [("who".to_owned(), ConfigValue::Value(who.into()))].into(),
        ..Default::default()
    };
    for (name, route) in [
        ("api", "api.example.com/v1"),
        ("wild", "*.example.com/v1"),
        ("deep", "*.eu.example.com/v1"),
        ("apex", "example.com"),
        ("plain", "/v1"),
    ] {
        server.deploy(name, wasm::SDK_TOUR, spec(route, name)).await;
    }
    let http = crate::support::client();
    for (host, path, want) in [
        ("api.example.com", "/v1", Some("api")),
        ("API.Example.com:8080", "/v1", Some("api")),
        ("api.example.com.", "/v1", Some("api")),
        ("shop.example.com", "/v1", Some("wild")),
        ("a.b.example.com", "/v1", Some("wild")),
        ("x.eu.example.com", "/v1", Some("deep")),
        ("example.com", "/v1", Some("apex")),
        ("other.org", "/v1", Some("plain")),
        ("127.0.0.1", "/v1", Some("plain")),
        // Empty labels make no subdomain.
        (".example.com", "/v1", Some("plain")),
        ("a..example.com", "/v1", Some("plain")),
        ("api.example.com", "/v2", None),
        ("other.org", "/v2", None),
    ] {
        let response = http
            .get(format!("{}{path}/config?key=who", server.url))
            .header("host", host)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        match want {
            Some(who) => assert_eq!((status, body.as_str()), (200, who), "{host}{path}"),
            None => assert_eq!(status, 404, "{host}{path}: {body}"),
        }
    }
    for (route, says) in [
        ("API.example.com/v1", "lower-case"),
        ("api.example.com:8080/v1", "no port"),
        ("*.localhost/v1", "host name with a dot"),
        ("hello", "must start with '/'"),
        ("example.com/", "without '/'"),
        ("127.0.0.1/x", "not an IP address"),
        ("api.example.com/v1/", "must not end with '/'"),
    ] {
        let e = server
            .admin()
            .deploy(
                "bad",
                &spec(route, "bad"),
                thaw_test_functions::read(wasm::SDK_TOUR).into(),
            )
            .await
            .unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.contains("400") && message.contains(says),
            "{route}: {message}"
        );
    }
    let e = server
        .admin()
        .deploy(
            "again",
            &spec("api.example.com/v1", "again"),
            thaw_test_functions::read(wasm::SDK_TOUR).into(),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("already served by function api"),
        "{e:#}"
    );
    assert_eq!(server.admin().list().await.unwrap().len(), 5);

    // An absolute-form target routes by its own host (RFC 9112 §3.2.2: Host is ignored).
    let agreed = crate::support::raw_exchange(
        &server,
        b"GET http://api.example.com/v1/config?key=who HTTP/1.1\r\nHost: API.example.com:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        agreed.starts_with("HTTP/1.1 200") && agreed.contains("\r\napi\r\n"),
        "{agreed}"
    );
    let differing = crate::support::raw_exchange(
        &server,
        b"GET http://api.example.com/v1/config?key=who HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        differing.starts_with("HTTP/1.1 200") && differing.contains("\r\napi\r\n"),
        "{differing}"
    );

    // `thaw invoke` calls a host route with its host; a wildcard's needs one named.
    let out = crate::support::thaw_command(&server, &["invoke", "api", "/config?key=who"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api", "{out:?}");
    let out = crate::support::thaw_command(&server, &["invoke", "wild", "/config?key=who"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-H 'Host: name.example.com'"),
        "{out:?}"
    );
    let out = crate::support::thaw_command(
        &server,
        &[
            "invoke",
            "wild",
            "/config?key=who",
            "-H",
            "Host: shop.example.com",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "wild", "{out:?}");
}
