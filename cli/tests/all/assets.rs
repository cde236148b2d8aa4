//! Static assets against a real `thaw serve`, deployed with `thaw deploy --assets DIR`: files
//! served without the guest (content types, ETag and Last-Modified with 304s, ranges with 206
//! and 416, precompressed siblings by Accept-Encoding, index files, the SPA fallback), the
//! function answering everything else, `run_function_first`, the assets surviving a restart
//! and following the function's versions, and every way out of the asset root refused: dot
//! segments and encoded ones in the request, links and `..` in the upload, a bundle over its
//! size limit.

use std::path::Path;

use reqwest::header;
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, deploy_multipart, raw_exchange, thaw_command};

fn write(dir: &Path, path: &str, bytes: &[u8]) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `thaw deploy` of `wasm` as `name` at `route` with `extra` flags; its success and output.
fn deploy(
    server: &TestServer,
    name: &str,
    wasm: &str,
    route: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec!["deploy", wasm, "--name", name, "--route", route];
    args.extend_from_slice(extra);
    let output = thaw_command(server, &args).output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", server.url));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

fn big() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn assets_are_served_without_the_guest_and_never_outside_their_root() {
    let mut server = TestServer::start();
    let site = tempfile::tempdir().unwrap();
    write(site.path(), "index.html", b"<h1>home</h1>");
    write(site.path(), "app.js", b"console.log('plain')");
    write(site.path(), "app.js.br", b"BROTLI-BYTES");
    write(site.path(), "app.js.gz", b"GZIP-BYTES");
    write(site.path(), "docs/index.html", b"<h1>docs</h1>");
    write(site.path(), "style.css", b"body{}");
    write(site.path(), "big.bin", &big());
    let hello = wasm::HELLO;
    let (ok, out) = deploy(
        &server,
        "site",
        hello,
        "/site",
        &["--assets", site.path().to_str().unwrap(), "--spa"],
    );
    assert!(ok, "{out}");

    // Files, with their types and validators.
    let r = get(&server, "/site/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(r.headers()[header::ACCEPT_RANGES], "bytes");
    let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
    let modified = r.headers()[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.text().await.unwrap(), "<h1>home</h1>");
    let r = get(&server, "/site/style.css", &[]).await;
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
    for dir in ["/site/docs", "/site/docs/"] {
        assert_eq!(
            get(&server, dir, &[]).await.text().await.unwrap(),
            "<h1>docs</h1>"
        );
    }

    // 304s: by ETag, and by date when no ETag is asked about.
    let r = get(&server, "/site/", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = get(&server, "/site/", &[("if-modified-since", &modified)]).await;
    assert_eq!(r.status(), 304);
    let r = get(
        &server,
        "/site/",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &modified),
        ],
    )
    .await;
    assert_eq!(r.status(), 200, "If-None-Match decides when present");

    // Precompressed siblings by Accept-Encoding, br first; q=0 refuses one.
    for (accept, body, encoding) in [
        ("br, gzip", "BROTLI-BYTES", Some("br")),
        ("gzip", "GZIP-BYTES", Some("gzip")),
        ("gzip;q=0, identity", "console.log('plain')", None),
        ("", "console.log('plain')", None),
    ] {
        let r = get(&server, "/site/app.js", &[("accept-encoding", accept)]).await;
        assert_eq!(r.headers()[header::VARY], "accept-encoding");
        assert_eq!(
            r.headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap()),
            encoding,
            "{accept}"
        );
        assert_eq!(r.text().await.unwrap(), body, "{accept}");
    }

    // Ranges.
    let content = big();
    let r = get(&server, "/site/big.bin", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 10-19/1048576");
    assert_eq!(r.bytes().await.unwrap(), content[10..20]);
    let r = get(&server, "/site/big.bin", &[("range", "bytes=-5")]).await;
    assert_eq!(r.bytes().await.unwrap(), content[content.len() - 5..]);
    let r = get(&server, "/site/big.bin", &[("range", "bytes=2000000-")]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */1048576");
    let r = get(
        &server,
        "/site/big.bin",
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "If-Range with another ETag: the whole file"
    );
    assert_eq!(r.bytes().await.unwrap().len(), content.len());

    // Everything else is the function's; a navigation to no file is the SPA's index.
    let r = get(
        &server,
        "/site/app/settings",
        &[("accept", "text/html,*/*")],
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "<h1>home</h1>");
    let r = get(
        &server,
        "/site/api/users",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
    let r = client()
        .post(format!("{}/site/app.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "Hello, world!\n",
        "POST is the function's"
    );
    // No instance ever started for an asset: the function counted only its own requests,
    // and the assets theirs (in /metrics).
    let info = server.admin().get("site").await.unwrap();
    assert_eq!(info["requests"], 2, "{info}");
    let metrics = client()
        .get(format!("{}/metrics", server.admin_url))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"thaw_asset_responses_total{function="site""#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no asset counter in {metrics}"));
    assert_eq!(
        served, 16,
        "every asset answer above, 304s and 416 included"
    );

    // No way out of the root: dot segments, encoded ones, backslashes.
    for target in [
        "/site/../etc/passwd",
        "/site/%2e%2e/%2e%2e/etc/passwd",
        "/site/..%2f..%2fetc/passwd",
        "/site/%2e%2e%5c..%5cetc",
        "/site/docs/..;/index.html",
    ] {
        let answer = raw_exchange(
            &server,
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }

    // A symbolic link in the directory: the CLI refuses it by name; nothing changes.
    let linked = tempfile::tempdir().unwrap();
    write(linked.path(), "index.html", b"x");
    std::os::unix::fs::symlink("/etc/passwd", linked.path().join("passwd")).unwrap();
    let (ok, out) = deploy(
        &server,
        "site",
        hello,
        "/site",
        &["--assets", linked.path().to_str().unwrap()],
    );
    assert!(
        !ok && out.contains("passwd") && out.contains("symbolic link"),
        "{out}"
    );

    // Uploads written by hand: a link entry, a `..` path, and a bundle over 64 MiB are each
    // a 400 naming the problem, and the version serving stays.
    let tar_with = |path: &str, kind: tar::EntryType, size: usize| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size as u64);
        header.set_mode(0o644);
        let bytes = path.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &vec![b'x'; size][..]).unwrap();
        builder.into_inner().unwrap()
    };
    for (archive, says) in [
        (tar_with("passwd", tar::EntryType::Symlink, 0), "a link"),
        (
            tar_with("../../etc/cron.d/x", tar::EntryType::Regular, 4),
            "'..'",
        ),
        (
            tar_with("huge.bin", tar::EntryType::Regular, (64 << 20) + 1),
            "over the limit of 64 MiB",
        ),
    ] {
        let response = client()
            .put(format!("{}/v1/functions/site", server.admin_url))
            .bearer_auth(server.token())
            .multipart(
                reqwest::multipart::Form::new()
                    .text("spec", r#"{"route": "/site"}"#)
                    .part(
                        "wasm",
                        reqwest::multipart::Part::bytes(thaw_test_functions::read(wasm::HELLO)),
                    )
                    .part("assets", reqwest::multipart::Part::bytes(archive)),
            )
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(says), "{says}: {body}");
    }
    // A spec that claims a digest of its own is refused: the files must come with it.
    let response = deploy_multipart(
        &server,
        "site",
        &format!(
            r#"{{"route": "/site", "assets": {{"digest": "{}"}}}}"#,
            "0".repeat(64)
        ),
        wasm::HELLO,
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        get(&server, "/site/", &[]).await.text().await.unwrap(),
        "<h1>home</h1>"
    );

    // A new version's assets replace the old ones; a restart serves them from the store.
    write(site.path(), "index.html", b"<h1>v2</h1>");
    let (ok, out) = deploy(
        &server,
        "site",
        hello,
        "/site",
        &["--assets", site.path().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert_eq!(
        get(&server, "/site/", &[]).await.text().await.unwrap(),
        "<h1>v2</h1>"
    );
    server.kill_and_restart(2);
    assert_eq!(
        get(&server, "/site/", &[]).await.text().await.unwrap(),
        "<h1>v2</h1>"
    );
    assert_eq!(
        get(&server, "/site/big.bin", &[])
            .await
            .bytes()
            .await
            .unwrap()
            .len(),
        1 << 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_run_function_first_assets_answer_only_the_functions_404s() {
    let server = TestServer::start();
    let site = tempfile::tempdir().unwrap();
    write(site.path(), "index.html", b"<h1>home</h1>");
    write(site.path(), "todos", b"a file the function shadows");
    let todo = wasm::TODO;
    let (ok, out) = deploy(
        &server,
        "app",
        todo,
        "/app",
        &[
            "--assets",
            site.path().to_str().unwrap(),
            "--run-function-first",
        ],
    );
    assert!(ok, "{out}");
    // The function answers /todos itself (an empty list), so its file is never served.
    let r = get(&server, "/app/todos", &[]).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, String::new())
    );
    // It answers 404 to /index.html: the asset answers instead.
    assert_eq!(
        get(&server, "/app/index.html", &[])
            .await
            .text()
            .await
            .unwrap(),
        "<h1>home</h1>"
    );
    // A 404 with no asset behind it stays the function's.
    let r = get(&server, "/app/nothing-here", &[]).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (404, "no such path".into())
    );
}

/// A function of static files only: deployed with no wasm (`thaw deploy --assets DIR`, or a
/// manifest's `assets` alone, also at start-up with `thaw serve --deploy`), it serves its
/// files, answers every other path 404 itself, and never starts an instance; what would run
/// code is refused naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_of_static_files_only_never_starts_a_guest() {
    let site = tempfile::tempdir().unwrap();
    write(site.path(), "index.html", b"<h1>only files</h1>");
    write(site.path(), "app.js", b"console.log(1)");
    let manifest = site.path().join("thaw.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[function]]\nname = \"docs\"\nroute = \"/docs\"\nassets = {{ dir = {:?} }}\n",
            site.path().display().to_string()
        ),
    )
    .unwrap();
    let server = TestServer::start_with(&["--deploy", manifest.to_str().unwrap()]);
    let dir = site.path().to_str().unwrap();
    let output = thaw_command(
        &server,
        &[
            "deploy", "--assets", dir, "--name", "site", "--route", "/site", "--spa",
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("deployed site (assets) at /site"), "{said}");

    for prefix in ["/site", "/docs"] {
        let r = get(&server, &format!("{prefix}/app.js"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "console.log(1)");
        let r = get(&server, &format!("{prefix}/"), &[]).await;
        assert_eq!(r.text().await.unwrap(), "<h1>only files</h1>");
        // No file, no guest: the host's own 404, to any method.
        let r = get(&server, &format!("{prefix}/missing.css"), &[]).await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.text().await.unwrap(), "no such file\n");
        let r = client()
            .post(format!("{}{prefix}/form", server.url))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    // The SPA's page for a navigation.
    let r = get(&server, "/site/some/page", &[("accept", "text/html")]).await;
    assert_eq!(r.text().await.unwrap(), "<h1>only files</h1>");

    // Not one request reached an instance, and none was started or kept warm.
    for name in ["site", "docs"] {
        let f = server.admin().get(name).await.unwrap();
        assert_eq!(f["requests"], 0, "{f}");
        assert_eq!(f["warm_instances"], 0, "{f}");
    }
    let list = thaw_command(&server, &["list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("site ") && l.contains(" assets ")),
        "{list}"
    );

    // What would run the (absent) code is refused, naming the field; nothing changes.
    for (flag, field) in [
        (&["--run-function-first"][..], "assets.run_function_first"),
        (&["--schedule", "* * * * *"][..], "schedule"),
    ] {
        let mut args = vec![
            "deploy", "--assets", dir, "--name", "site", "--route", "/site",
        ];
        args.extend_from_slice(flag);
        let output = thaw_command(&server, &args).output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            said.contains(&format!("{field}: a function of static assets only")),
            "{said}"
        );
    }
    let versions = server.admin().typed().versions("site").await.unwrap();
    assert_eq!(versions.versions.len(), 1);
}
