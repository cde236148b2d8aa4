//! Per-function logs: what a guest prints is kept with its time, version and request, read
//! and followed with `thaw logs`, handed on across a redeploy, and bounded when a guest
//! floods it.

use std::io::{BufRead as _, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use thaw_test_functions as wasm;

use crate::support::{TestServer, thaw_command};

fn lines(output: &Output) -> Vec<String> {
    assert!(
        output.status.success(),
        "thaw logs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_functions_output_is_kept_read_followed_and_bounded() {
    let server = TestServer::start();
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    let answer = server.get("/faults/log?lines=3&tag=alpha").await;
    assert_eq!(answer.status(), 200);

    // Every line, in order, tagged with the version and one request id.
    let seen = lines(&thaw_command(&server, &["logs", "faults"]).output().unwrap());
    let alpha: Vec<&String> = seen.iter().filter(|l| l.contains("| alpha")).collect();
    assert_eq!(alpha.len(), 4, "{seen:?}");
    assert!(
        alpha[0].ends_with("stdout | alpha 0 xxxxxxxx"),
        "{}",
        alpha[0]
    );
    assert!(alpha[3].ends_with("stderr | alpha done"), "{}", alpha[3]);
    let request = |line: &str| line.split(' ').nth(2).unwrap().to_owned();
    assert!(alpha.iter().all(|l| l.split(' ').nth(1) == Some("v1")));
    assert!(alpha.iter().all(|l| request(l) == request(alpha[0])));
    assert_ne!(request(alpha[0]), "#0");

    following_prints_new_lines(&server).await;

    // A redeploy is a new version writing to the same log.
    server
        .deploy(
            "faults",
            wasm::FAULTS,
            thaw_runtime::spec::FunctionSpec {
                env: [("X".to_owned(), "2".to_owned())].into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(server.get("/faults/log?tag=gamma").await.status(), 200);
    let seen = lines(&thaw_command(&server, &["logs", "faults"]).output().unwrap());
    assert!(seen.iter().any(|l| l.contains("| alpha 0")), "{seen:?}");
    let last = seen.last().unwrap();
    assert!(
        last.contains(" v2 ") && last.ends_with("| gamma done"),
        "{last}"
    );
    let tail = lines(
        &thaw_command(&server, &["logs", "faults", "--tail", "2", "--since", "1h"])
            .output()
            .unwrap(),
    );
    assert_eq!(tail.len(), 2, "{tail:?}");

    // A flood: 3,000 lines of 1,000 bytes. The buffer keeps its bound and counts the rest.
    assert_eq!(
        server
            .get("/faults/log?lines=3000&bytes=1000&tag=flood")
            .await
            .status(),
        200
    );
    let admin = thaw_client::AdminClient::new(&server.admin_url, Some(server.token()));
    let mut kept_bytes = 0;
    let mut kept = 0;
    let (_, dropped) = admin
        .logs("faults", 0, 0, None, false, |entry| {
            kept += 1;
            kept_bytes += entry.text.len();
        })
        .await
        .unwrap();
    assert!(kept_bytes <= 1 << 20, "{kept_bytes} bytes kept");
    assert!(
        dropped >= 3000 - kept as u64,
        "{dropped} dropped, {kept} kept"
    );
    assert_eq!(
        server.get("/faults/ok").await.status(),
        200,
        "the host still serves"
    );

    // Errors: an unknown function, a bad parameter.
    let missing = thaw_command(&server, &["logs", "nope"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no function named"));
    let bad = crate::support::client()
        .get(format!(
            "{}/v1/functions/faults/logs?tail=x",
            server.admin_url
        ))
        .bearer_auth(server.token())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// Following: a line written after `thaw logs -f` started arrives.
async fn following_prints_new_lines(server: &TestServer) {
    let mut follower = thaw_command(server, &["logs", "faults", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(follower.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower is connected once it has had time to start; lines written before it
    // connected are excluded by --tail 0 and lines after arrive. Retry the write until one
    // arrives, so that a slow start cannot lose the test's line.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut followed = None;
    while followed.is_none() && Instant::now() < deadline {
        assert_eq!(server.get("/faults/log?tag=beta").await.status(), 200);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            followed = Some(line);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let followed = followed.expect("thaw logs -f printed a line written after it started");
    assert!(followed.contains("| beta"), "{followed}");
}

/// `--log-format json`: the host's own log is one JSON object per line, guest lines
/// included with their function, stream and request, and the admin token is not in it.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_log_in_json_is_one_object_per_line() {
    let server = TestServer::start_with(&["--log-format", "json"]);
    server
        .deploy("faults", wasm::FAULTS, Default::default())
        .await;
    assert_eq!(server.get("/faults/log?tag=json").await.status(), 200);
    let log = server.log();
    let objects: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(objects.iter().any(|o| o["message"] == "deployed"), "{log}");
    let guest = objects
        .iter()
        .find(|o| {
            o["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("json 0 "))
        })
        .unwrap_or_else(|| panic!("the guest's line: {log}"));
    assert_eq!(guest["function"], "faults");
    assert_eq!(guest["stream"], "stdout");
    assert!(guest["request"].as_u64().unwrap() > 0);
    assert!(
        !log.contains(&server.token()),
        "the token stays out of the log"
    );
}
