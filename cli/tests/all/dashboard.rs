//! The dashboard in a real browser: Debian's headless Chromium, driven over the W3C WebDriver
//! protocol by its chromedriver (started here on a free loopback port). It logs in with the
//! admin token, finds the deployed function and its split, sees the charts fill after
//! traffic, changes the split and rolls back from the page, and each change takes effect on
//! the data plane.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use thaw_test_functions as wasm;

use crate::support::{Killed, TestServer, client, free_port, route, service_binaries};

/// A headless Chromium session through a chromedriver on `port`.
async fn browser(port: u16, profile: &std::path::Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    let mut args = vec![
        "--headless=new".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1400,1250".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    // Chromium's sandbox needs user namespaces, which a root CI container does not give.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        args.push("--no-sandbox".to_owned());
    }
    let mut options = serde_json::json!({ "args": args });
    // Debian's /usr/bin/chromium is a shell wrapper; the driver wants the browser itself.
    if std::path::Path::new("/usr/lib/chromium/chromium").is_file() {
        options["binary"] = "/usr/lib/chromium/chromium".into();
    }
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    // The driver takes a moment to listen.
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot start a Chromium session: {last:?}");
}

/// Clicks the element `locator` finds.
async fn click(page: &Client, locator: Locator<'_>) {
    page.find(locator).await.unwrap().click().await.unwrap();
}

/// Polls `check` every 200 ms until it returns `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..150 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The split the page shows for `api`.
async fn shown_split(page: &Client) -> Option<String> {
    page.find(Locator::Css(r#"tr[data-function="api"]"#))
        .await
        .ok()?
        .attr("data-traffic")
        .await
        .ok()?
}

async fn served_split(server: &TestServer) -> String {
    let admin = server.admin();
    let versions = admin.typed().versions("api").await.unwrap();
    versions.traffic.to_string()
}

async fn requests(server: &TestServer, n: usize) -> [usize; 2] {
    let http = client();
    let mut counts = [0; 2];
    for _ in 0..n {
        let r = http
            .get(format!("{}/api", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        counts[usize::from(r.headers()["x-thaw-version"] == "v2")] += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_watch_traffic_and_change_the_split_from_the_dashboard() {
    let Some([driver]) = service_binaries(["chromedriver"], "chromium-driver") else {
        return;
    };
    let server = TestServer::start();
    server.deploy("api", wasm::HELLO, route("/api")).await;
    let admin = server.admin();
    admin
        .typed()
        .deploy_canary(
            "api",
            &route("/api"),
            thaw_test_functions::read(wasm::ECHO).into(),
            Some(20),
        )
        .await
        .unwrap();

    let port = free_port();
    let _driver = Killed(
        std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    let profile = tempfile::tempdir().unwrap();
    let page = browser(port, profile.path()).await;
    let ui = format!("{}/ui", server.admin_url);

    // Logged out: the login form. A wrong token is refused, and the page says so.
    page.goto(&ui).await.unwrap();
    let token_field = page.wait().for_element(Locator::Id("token")).await.unwrap();
    token_field.send_keys("not-the-token-at-all").await.unwrap();
    click(&page, Locator::Id("login-button")).await;
    eventually("the refusal", || async {
        let denied = page.find(Locator::Id("denied")).await.ok()?;
        denied.is_displayed().await.ok()?.then_some(())
    })
    .await;

    // The right token: a session cookie, HttpOnly and SameSite=Strict; no token in the URL.
    let token_field = page.find(Locator::Id("token")).await.unwrap();
    token_field.send_keys(&server.token()).await.unwrap();
    click(&page, Locator::Id("login-button")).await;
    let split = eventually("the function's row", || shown_split(&page)).await;
    assert_eq!(split, "v1=80 v2=20");
    let url = page.current_url().await.unwrap();
    assert!(!url.as_str().contains(&server.token()), "{url}");
    let cookie = page.get_named_cookie("thaw_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    // (fantoccini does not re-export the cookie crate's SameSite; its Debug form is stable.)
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");

    // The cookie alone opens reads, but a change needs the page's x-thaw-ui header too.
    let with_cookie = |method, path: &str| {
        client()
            .request(method, format!("{}{path}", server.admin_url))
            .header("cookie", format!("thaw_session={}", cookie.value()))
    };
    let read = with_cookie(reqwest::Method::GET, "/v1/functions")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let forged = with_cookie(reqwest::Method::POST, "/v1/functions/api/promote")
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        401,
        "a cross-site form cannot change anything"
    );
    assert_eq!(served_split(&server).await, "v1=80 v2=20");

    // Traffic: the request-rate chart and the start-latency chart get data.
    requests(&server, 200).await;
    let peak: f64 = eventually("a request rate above 0", || async {
        let peak = page
            .find(Locator::Id("rate"))
            .await
            .ok()?
            .attr("data-peak")
            .await
            .ok()??
            .parse()
            .ok()?;
        (peak > 0.0).then_some(peak)
    })
    .await;
    assert!(peak > 0.0);
    let bars = page.find_all(Locator::Css("#latency rect")).await.unwrap();
    assert!(!bars.is_empty(), "the start-latency chart has bars");

    // A function that logs and runs into its timeout: its lines in the log panel when
    // chosen, its limit hit in the table.
    let spec = thaw_runtime::spec::FunctionSpec {
        limits: thaw_runtime::spec::LimitsSpec {
            timeout_ms: Some(300),
            ..Default::default()
        },
        ..Default::default()
    };
    server.deploy("faults", wasm::FAULTS, spec).await;
    let logged = client()
        .get(format!(
            "{}/faults/log?lines=3&tag=shown-on-the-dashboard",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(logged.status(), 200);
    let looped = client()
        .get(format!("{}/faults/loop", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(looped.status(), 504);
    eventually("the limit hit in the table", || async {
        let text = page
            .find(Locator::Id("limits"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("timeout").then_some(())
    })
    .await;
    // A scheduled function and an asynchronous invocation: the events tables show them.
    let scheduled = thaw_runtime::spec::FunctionSpec {
        schedule: vec![thaw_runtime::event_spec::ScheduleSpec::utc("*/2 * * * * *")],
        ..Default::default()
    };
    server.deploy("nightly", wasm::EVENTS, scheduled).await;
    let accepted = client()
        .post(format!("{}/nightly", server.url))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    for (table, wanted) in [("schedules", "*/2 * * * * * UTC"), ("queues", "nightly")] {
        eventually("the events tables", || async {
            let text = page
                .find(Locator::Id(table))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(wanted).then_some(())
        })
        .await;
    }
    click(
        &page,
        Locator::Css(r#"#log-function option[value="faults"]"#),
    )
    .await;
    eventually("the function's log lines", || async {
        let text = page
            .find(Locator::Id("logs"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("shown-on-the-dashboard").then_some(())
    })
    .await;

    // Change the split from the page: it takes effect on the data plane.
    page.find(Locator::Css(r#"tr[data-function="api"] input[name=split]"#))
        .await
        .unwrap()
        .send_keys("v1=50 v2=50")
        .await
        .unwrap();
    click(
        &page,
        Locator::Css(r#"tr[data-function="api"] button[data-action=split]"#),
    )
    .await;
    eventually("the page to show the new split", || async {
        (shown_split(&page).await? == "v1=50 v2=50").then_some(())
    })
    .await;
    assert_eq!(served_split(&server).await, "v1=50 v2=50");
    let [v1, v2] = requests(&server, 100).await;
    assert_eq!((v1, v2), (50, 50), "100 requests split as set");

    if let Ok(path) = std::env::var("THAW_DASHBOARD_SCREENSHOT") {
        std::fs::write(path, page.screenshot().await.unwrap()).unwrap();
    }

    // Roll back from the page: all traffic to v1.
    click(
        &page,
        Locator::Css(r#"tr[data-function="api"] button[data-action=rollback]"#),
    )
    .await;
    eventually("the rollback", || async {
        (shown_split(&page).await? == "v1=100").then_some(())
    })
    .await;
    assert_eq!(requests(&server, 20).await, [20, 0]);

    // Log out: the session is gone, for the page and for its cookie.
    click(&page, Locator::Css("#logout button")).await;
    // The token field is always in the page, hidden while logged in: wait until it shows
    // (the logout was answered and the page reloaded), not merely until it exists.
    eventually("the login form after logout", || async {
        let field = page.find(Locator::Id("token")).await.ok()?;
        field.is_displayed().await.ok()?.then_some(())
    })
    .await;
    let after = with_cookie(reqwest::Method::GET, "/v1/functions")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    page.close().await.unwrap();
}
