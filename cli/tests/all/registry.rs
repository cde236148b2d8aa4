//! Components in an OCI registry, against a real one: Debian's `docker-registry` on loopback
//! with one user, and a real `thaw serve`. `thaw push` publishes a manifest's function and a
//! bare .wasm; `thaw deploy oci://` deploys by tag and by digest, with credentials from the
//! flags, stdin or a Docker config file; refused credentials, a missing tag, a blob tampered
//! with in the registry's storage and an artifact that is no component are each a clear error
//! that deploys nothing. An artifact written the way Spin writes its component layers (by
//! hand here, over the distribution API) deploys too.

use std::process::{Output, Stdio};

use sha2::Digest as _;
use thaw_harness::Registry;
use thaw_test_functions as wasm;

use crate::support::{TestServer, client, thaw_command};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-for-the-tests";

/// `thaw ARGS` aimed at `server`, with `env` set and `stdin` written; its output.
fn thaw(server: &TestServer, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut command = thaw_command(server, args);
    // Never the machine's own Docker credentials.
    command
        .env("DOCKER_CONFIG", server.data_dir.join("no-docker-config"))
        .env_remove("THAW_REGISTRY_PASSWORD");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts that the command failed, saying `says`.
fn refused(output: &Output, says: &str) {
    assert!(!output.status.success(), "{}", text(output));
    assert!(text(output).contains(says), "{}", text(output));
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The one line `thaw push` prints, `pushed REF (oci://HOST/REPO@sha256:…)`: the pinned ref.
fn pinned(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(output));
    let out = String::from_utf8_lossy(&output.stdout);
    let pinned = out
        .trim()
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no pinned reference in {out:?}"));
    assert!(pinned.contains("@sha256:"), "{pinned}");
    pinned.to_owned()
}

async fn body(server: &TestServer, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn function_names(server: &TestServer) -> Vec<String> {
    server
        .admin()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Pushes an artifact over the distribution API itself: each blob by a monolithic upload,
/// then the manifest under `tag`. For artifacts `thaw push` would never write.
async fn push_raw(
    registry: &Registry,
    repo: &str,
    tag: &str,
    config: (&str, &[u8]),
    layers: &[(&str, &[u8])],
) {
    let http = client();
    let base = format!("http://{}/v2/{repo}", registry.address);
    let mut descriptors = Vec::new();
    for (media_type, bytes) in std::iter::once(&config).chain(layers) {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let started = http
            .post(format!("{base}/blobs/uploads/"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", registry.address)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{url}{sep}digest={digest}"))
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
        descriptors.push(serde_json::json!({
            "mediaType": media_type, "digest": digest, "size": bytes.len(),
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": descriptors[1..],
    });
    let put = http
        .put(format!("{base}/manifests/{tag}"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn components_are_pushed_to_and_deployed_from_an_oci_registry() {
    let Some(registry) = Registry::start(USER, PASSWORD) else {
        return;
    };
    let server = TestServer::start();
    let at = |path: &str| format!("oci://{}/{path}", registry.address);
    let password = [("THAW_REGISTRY_PASSWORD", PASSWORD)];

    // Refused credentials: none, then a wrong password. Each names the registry, and the
    // registry holds nothing afterwards.
    let out = thaw(
        &server,
        &["push", wasm::HELLO, &at("fns/hello:v1")],
        &[],
        "",
    );
    assert!(!out.status.success());
    // No Docker config is no credentials, said without a warning.
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "the registry {} wants credentials",
            registry.address
        )),
        "{}",
        text(&out)
    );
    let out = thaw(
        &server,
        &[
            "push",
            wasm::HELLO,
            &at("fns/hello:v1"),
            "--registry-user",
            USER,
        ],
        &[("THAW_REGISTRY_PASSWORD", "wrong")],
        "",
    );
    refused(&out, "refused the credentials of \"alice\"");
    let out = thaw(
        &server,
        &["deploy", &at("fns/hello:v1"), "--registry-user", USER],
        &password,
        "",
    );
    refused(&out, "does not exist");

    // A manifest's function, pushed by tag (password from the environment).
    let project = tempfile::tempdir().unwrap();
    let manifest = project.path().join("thaw.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[function]]\nname = \"greeter\"\nwasm = {:?}\n",
            wasm::HELLO
        ),
    )
    .unwrap();
    let pushed = pinned(&thaw(
        &server,
        &[
            "push",
            manifest.to_str().unwrap(),
            &at("fns/greeter:v1"),
            "--registry-user",
            USER,
        ],
        &password,
        "",
    ));

    // Deployed by tag (password from stdin): it serves, and its version says where it came
    // from, pinned to the digest the push printed.
    let out = thaw(
        &server,
        &[
            "deploy",
            &at("fns/greeter:v1"),
            "--registry-user",
            USER,
            "--registry-password-stdin",
        ],
        &[],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        body(&server, "/greeter").await,
        (200, "Hello, world!\n".into())
    );
    let versions = thaw(&server, &["versions", "greeter"], &[], "");
    assert!(
        text(&versions).contains(&format!("from {pushed}")),
        "{}",
        text(&versions)
    );

    // By digest, with the credentials `docker login` would have left.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    std::fs::write(
        docker.path().join("config.json"),
        serde_json::json!({ "auths": { registry.address.clone(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    let docker_env = [("DOCKER_CONFIG", docker.path().to_str().unwrap())];
    let out = thaw(
        &server,
        &["deploy", &pushed, "--name", "pinned", "--route", "/pinned"],
        &docker_env,
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    // A wrong password there is refused naming where it came from.
    let stale = tempfile::tempdir().unwrap();
    let wrong = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:stale"),
    );
    std::fs::write(
        stale.path().join("config.json"),
        serde_json::json!({ "auths": { registry.address.clone(): { "auth": wrong } } }).to_string(),
    )
    .unwrap();
    let out = thaw(
        &server,
        &["deploy", &pushed, "--name", "stale"],
        &[("DOCKER_CONFIG", stale.path().to_str().unwrap())],
        "",
    );
    refused(&out, "(from the Docker config");
    assert_eq!(
        body(&server, "/pinned").await,
        (200, "Hello, world!\n".into())
    );

    // A digest the registry does not have is not found; a reference that is not one is a
    // clear error. Neither deploys.
    let missing = format!("{}0", &pushed[..pushed.len() - 1]);
    let missing = if missing == pushed {
        format!("{}1", &pushed[..pushed.len() - 1])
    } else {
        missing
    };
    let out = thaw(
        &server,
        &["deploy", &missing, "--name", "missing"],
        &docker_env,
        "",
    );
    refused(&out, "does not exist");
    for bad in [
        "oci://",
        "oci://fns/hello:v1",
        "oci:/127.0.0.1/fns/hello:v1",
    ] {
        let out = thaw(&server, &["deploy", bad, "--name", "bad"], &docker_env, "");
        assert!(!out.status.success());
        assert!(
            text(&out).contains("is not an OCI reference")
                || text(&out).contains("an OCI reference is written oci://"),
            "{}",
            text(&out)
        );
    }

    // A bare .wasm pushed, then its layer tampered with in the registry's storage (one byte,
    // same length): the pull is refused naming both digests, and nothing is deployed.
    pinned(&thaw(
        &server,
        &[
            "push",
            wasm::ECHO,
            &at("fns/echo:v1"),
            "--registry-user",
            USER,
        ],
        &password,
        "",
    ));
    let layer_digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(wasm::ECHO).unwrap()))
    );
    let blob = registry.blob_path(&layer_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let out = thaw(
        &server,
        &["deploy", &at("fns/echo:v1"), "--name", "tampered"],
        &docker_env,
        "",
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("does not match its digest") && said.contains(&layer_digest),
        "{said}"
    );

    // Wrong credentials on a deploy: refused, nothing deployed.
    let out = thaw(
        &server,
        &[
            "deploy",
            &at("fns/greeter:v1"),
            "--name",
            "intruder",
            "--registry-user",
            USER,
        ],
        &[("THAW_REGISTRY_PASSWORD", "wrong")],
        "",
    );
    refused(&out, "refused the credentials of \"alice\"");

    // Spin's layer media type for a component, in a single-layer artifact: deployed. A
    // container-like artifact of two layers: refused, naming what it holds.
    let hello = std::fs::read(wasm::HELLO).unwrap();
    push_raw(
        &registry,
        "fns/spin-hello",
        "v1",
        ("application/vnd.wasm.config.v0+json", b"{}"),
        &[("application/vnd.wasm.content.layer.v1+wasm", &hello)],
    )
    .await;
    let out = thaw(
        &server,
        &["deploy", &at("fns/spin-hello:v1")],
        &docker_env,
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        body(&server, "/spin-hello").await,
        (200, "Hello, world!\n".into())
    );
    push_raw(
        &registry,
        "fns/image",
        "v1",
        ("application/vnd.oci.image.config.v1+json", b"{}"),
        &[
            ("application/vnd.oci.image.layer.v1.tar", b"not wasm"),
            ("application/wasm", &hello),
        ],
    )
    .await;
    let out = thaw(&server, &["deploy", &at("fns/image:v1")], &docker_env, "");
    refused(&out, "is not a single Wasm component");

    // A Spin application's artifact: its component alone would lose the app's routes,
    // variables and grants, so it is refused, pointing at its spin.toml.
    push_raw(
        &registry,
        "fns/spin-app",
        "v1",
        ("application/vnd.fermyon.spin.application.v1+config", b"{}"),
        &[("application/vnd.wasm.content.layer.v1+wasm", &hello)],
    )
    .await;
    let out = thaw(
        &server,
        &["deploy", &at("fns/spin-app:v1")],
        &docker_env,
        "",
    );
    refused(&out, "is a Spin application");

    let mut names = function_names(&server).await;
    names.sort();
    assert_eq!(names, ["greeter", "pinned", "spin-hello"]);
}
