//! The Dockerfile and the Kubernetes manifests, checked offline against the real binary:
//! every flag they pass exists and parses (a host starts with them), every environment
//! variable they set is one `thaw serve` reads, the probes' paths answer on the data
//! listener, the container ports are the ones the listen flags name, and the pod's grace
//! period covers the drain.

use std::path::PathBuf;
use std::process::Command;

use crate::support::TestServer;

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `--flag` or `--flag=value` tokens, with their values.
fn flags(text: &str) -> Vec<(String, Option<String>)> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '[' | ']'))
        .filter(|t| t.starts_with("--") && t.len() > 2 && t.as_bytes()[2].is_ascii_lowercase())
        .map(|t| match t.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (t.to_owned(), None),
        })
        .collect()
}

/// The number after `key:` on the first line that has it.
fn number_after(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerfile_and_manifests_use_what_thaw_has() {
    let help = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let manifest = repo_file("deploy/kubernetes/thaw.yaml");
    let dockerfile = repo_file("Dockerfile");
    let dockerfile_cmd: String = dockerfile
        .lines()
        .filter(|l| l.starts_with("CMD") || l.starts_with("ENTRYPOINT"))
        .collect();

    // thaw's own objects; the etcd that follows them has flags of its own.
    let thaw_objects = manifest.split("  name: thaw-etcd\n").next().unwrap();
    let manifest_flags = flags(
        &thaw_objects
            .lines()
            .filter(|l| l.trim_start().starts_with("- --"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(manifest_flags.len() >= 5, "{manifest_flags:?}");
    for (flag, _) in manifest_flags.iter().chain(&flags(&dockerfile_cmd)) {
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}="))
                || help.contains(&format!("{flag}\n")),
            "{flag} is not a `thaw serve` flag"
        );
    }
    for env in [
        "THAW_ADMIN_TOKEN",
        "THAW_LOG_FORMAT",
        "THAW_DATA_DIR",
        "THAW_CLUSTER_TOKEN",
        "THAW_NODE_ID",
        "THAW_ADVERTISE_HOST",
    ] {
        assert!(
            manifest.contains(env) || dockerfile.contains(env),
            "{env} is not used"
        );
        assert!(
            // Unwrapped: clap breaks long help lines anywhere between words.
            help.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&format!("env: {env}")),
            "`thaw serve` does not read {env}"
        );
    }

    // The ports: each listen flag's port is a declared container port and exposed.
    for (flag, value) in &manifest_flags {
        if flag.ends_with("listen") {
            let port = value.as_deref().unwrap().rsplit(':').next().unwrap();
            assert!(
                manifest.contains(&format!("containerPort: {port}")),
                "{flag}"
            );
            assert!(dockerfile.contains(port), "the Dockerfile exposes {port}");
        }
    }
    // The grace period covers the drain.
    let drain = manifest_flags
        .iter()
        .find(|(f, _)| f == "--drain-timeout-secs")
        .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
        .expect("the manifest sets the drain timeout");
    assert!(number_after(&manifest, "terminationGracePeriodSeconds:") > drain);

    // The cluster's etcd is the manifest's Service.
    assert!(manifest_flags.contains(&(
        "--cluster".to_owned(),
        Some("etcd=http://thaw-etcd:2379".to_owned())
    )));
    assert!(manifest.contains("name: thaw-etcd\nspec:\n  selector"));
    assert!(manifest.contains("containerPort: 2379"));

    // A host starts with the manifest's other flags (not the cluster's: no etcd here; the
    // cluster tests run nodes against a real one), and answers its probes.
    let kept: Vec<String> = manifest_flags
        .iter()
        .filter(|(f, _)| !f.ends_with("listen") && f != "--data-dir" && !f.starts_with("--cluster"))
        .map(|(f, v)| match v {
            Some(v) => format!("{f}={v}"),
            None => f.clone(),
        })
        .collect();
    let args: Vec<&str> = kept.iter().map(String::as_str).collect();
    let server = TestServer::start_with(&args);
    for probe in ["/healthz", "/readyz"] {
        assert!(
            manifest.contains(&format!("path: {probe}")),
            "{probe} probed"
        );
    }
    assert_eq!(server.get("/healthz").await.status(), 200);
}
