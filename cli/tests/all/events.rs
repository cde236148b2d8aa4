//! Events: asynchronous invocations (202, durable, retried, dead-lettered, replayed) and
//! schedules, on a real host with the events test function (functions/events), which
//! reports every delivery to a loopback [`Collector`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use thaw_runtime::api::{InvocationInfo, InvocationState};
use thaw_runtime::config::ConfigValue;
use thaw_runtime::event_spec::{AsyncSpec, ScheduleSpec};
use thaw_runtime::spec::FunctionSpec;
use thaw_test_functions as wasm;

use crate::support::{
    Collector, ErrorCode, TestServer, client, error_code, eventually, thaw_command,
};

/// The events function at `route`, reporting to `collector`.
fn reporting(route: &str, collector: &Collector) -> FunctionSpec {
    FunctionSpec {
        route: Some(route.into()),
        allowed_outbound_hosts: vec![collector.url.clone()],
        config: [(
            "report".to_owned(),
            ConfigValue::Value(collector.url.clone()),
        )]
        .into(),
        ..Default::default()
    }
}

/// `path` sent with `Prefer: respond-async`.
async fn post_async(server: &TestServer, path: &str) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.url))
        .header("prefer", "respond-async")
        .body("the data")
        .send()
        .await
        .expect("POST")
}

/// Accepts `path` asynchronously; returns the invocation as the 202 described it.
async fn accepted(server: &TestServer, path: &str) -> InvocationInfo {
    let r = post_async(server, path).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["preference-applied"], "respond-async");
    let info: InvocationInfo = r.json().await.unwrap();
    assert_eq!(location, format!("/v1/invocations/{}", info.id));
    info
}

/// Waits until invocation `id` is final, and returns its record.
async fn finished(server: &TestServer, id: &str) -> InvocationInfo {
    let admin = server.admin();
    thaw_harness::eventually_some("the invocation to end", Duration::from_secs(60), || {
        let admin = &admin;
        async move {
            let info = admin.typed().invocation(id).await.unwrap();
            info.state.is_final().then_some(info)
        }
    })
    .await
}

/// The attempts the collector saw for invocation `id`, with when each arrived.
fn deliveries(collector: &Collector, id: &str) -> Vec<(SystemTime, u32)> {
    collector
        .received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, line)| {
            let mut words = line.split(' ');
            let (_kind, seen, attempt) = (words.next()?, words.next()?, words.next()?);
            (seen == id).then(|| (*at, attempt.parse().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_invocation_is_answered_202_then_runs_and_its_result_is_read_at_its_location() {
    let collector = Collector::start().await;
    let server = TestServer::start();
    server
        .deploy("ev", wasm::EVENTS, reporting("/ev", &collector))
        .await;
    let info = accepted(&server, "/ev/orders?n=1").await;
    assert_eq!(info.state, InvocationState::Queued);
    assert_eq!(
        (info.function.as_str(), info.path.as_str()),
        ("ev", "/ev/orders?n=1")
    );
    let location = format!("{}/v1/invocations/{}", server.url, info.id);
    let result = thaw_harness::eventually_some("the result", Duration::from_secs(60), || {
        let location = location.clone();
        async move {
            let r = client().get(&location).send().await.ok()?;
            (r.status() != 202).then_some(r)
        }
    })
    .await;
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["thaw-invocation-state"], "succeeded");
    assert_eq!(
        result.text().await.unwrap(),
        format!("ran {} attempt 1\n", info.id)
    );
    assert_eq!(
        deliveries(&collector, &info.id).len(),
        1,
        "the function saw the event once, with its CloudEvents id"
    );
    let record = finished(&server, &info.id).await;
    assert_eq!(
        (record.state, record.attempts, record.status),
        (InvocationState::Succeeded, 1, Some(200))
    );

    // Without the preference, a request is answered as always, and is no event.
    let r = client()
        .post(format!("{}/ev", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "not an event\n");
    // An unknown id is a 404 on both listeners.
    assert_eq!(server.get("/v1/invocations/0123").await.status(), 404);
    let unknown = server.admin().typed().invocation("0123").await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound));

    // A callback outside the allow-list is refused before anything is stored ...
    let r = client()
        .post(format!("{}/ev", server.url))
        .header("prefer", "respond-async")
        .header("callback-url", "http://127.0.0.2:9/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // ... one inside it receives the result.
    let r = client()
        .post(format!("{}/ev?cb=1", server.url))
        .header("prefer", "respond-async")
        .header("callback-url", format!("{}/done", collector.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<InvocationInfo>().await.unwrap().id;
    let expected = format!("ran {id} attempt 1\n");
    eventually("the callback", Duration::from_secs(60), || {
        let seen = collector.lines().contains(&expected);
        async move { seen }
    })
    .await;
    let list = server
        .admin()
        .typed()
        .invocations("ev", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        list.invocations.len(),
        2,
        "the refused one was never stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_with_backoff_then_dead_lettered_and_replayed_on_demand() {
    let collector = Collector::start().await;
    let server = TestServer::start();
    let spec = FunctionSpec {
        async_policy: Some(AsyncSpec {
            max_attempts: Some(3),
            backoff_ms: Some(300),
            ..Default::default()
        }),
        ..reporting("/ev", &collector)
    };
    server.deploy("ev", wasm::EVENTS, spec).await;

    let flaky = a_flaky_invocation_is_retried_with_backoff(&server, &collector).await;
    let doomed = one_that_always_fails_is_dead_lettered(&server).await;
    let refused = a_4xx_is_not_retried(&server).await;
    let ids = InvocationIds {
        flaky: &flaky,
        doomed: &doomed,
        refused: &refused,
    };
    dead_letters_are_listed_and_replayed(&server, &collector, &ids).await;
    only_a_failed_one_is_retried_and_a_discard_removes_it(&server, &ids).await;
}

/// The ids of the invocations that succeeded on retry, that always failed and that were
/// refused with a 4xx.
struct InvocationIds<'a> {
    flaky: &'a str,
    doomed: &'a str,
    refused: &'a str,
}

/// Fails twice, then succeeds: three attempts, spaced by the backoff (300 ms, then 600 ms,
/// each with jitter down to half). Returns its id.
async fn a_flaky_invocation_is_retried_with_backoff(
    server: &TestServer,
    collector: &Collector,
) -> String {
    let flaky = accepted(server, "/ev?fail=2").await;
    let record = finished(server, &flaky.id).await;
    assert_eq!(
        (record.state, record.attempts),
        (InvocationState::Succeeded, 3)
    );
    let seen = deliveries(collector, &flaky.id);
    assert_eq!(seen.iter().map(|(_, a)| *a).collect::<Vec<_>>(), [1, 2, 3]);
    for (i, least) in [(1, 150), (2, 300)] {
        let gap = seen[i].0.duration_since(seen[i - 1].0).unwrap();
        assert!(
            gap >= Duration::from_millis(least),
            "retry {i} came {gap:?} after the attempt before; the backoff says at least {least} ms"
        );
    }
    flaky.id
}

/// Always fails: dead-lettered after its three attempts, its last answer kept. Returns its
/// id.
async fn one_that_always_fails_is_dead_lettered(server: &TestServer) -> String {
    let doomed = accepted(server, "/ev?fail=always").await;
    let record = finished(server, &doomed.id).await;
    assert_eq!(
        (record.state, record.attempts),
        (InvocationState::Failed, 3)
    );
    assert!(
        record.error.as_deref().unwrap().contains("attempt 3 of 3"),
        "{record:?}"
    );
    let r = server.get(&format!("/v1/invocations/{}", doomed.id)).await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["thaw-invocation-state"], "failed");
    doomed.id
}

/// A 4xx is the request's fault: not retried. Returns its id.
async fn a_4xx_is_not_retried(server: &TestServer) -> String {
    let refused = accepted(server, "/ev?status=404").await;
    let record = finished(server, &refused.id).await;
    assert_eq!(
        (record.state, record.attempts),
        (InvocationState::Failed, 1)
    );
    refused.id
}

/// `thaw invocations` lists the dead letters; `retry` replays one from attempt 1.
async fn dead_letters_are_listed_and_replayed(
    server: &TestServer,
    collector: &Collector,
    ids: &InvocationIds<'_>,
) {
    let out = thaw_command(server, &["invocations", "ev", "--failed"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(ids.doomed) && listed.contains(ids.refused),
        "{listed}"
    );
    assert!(!listed.contains(ids.flaky), "{listed}");
    let out = thaw_command(server, &["invocations", "retry", ids.doomed])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the replay's three attempts",
        Duration::from_secs(60),
        || {
            let n = deliveries(collector, ids.doomed).len();
            async move { n == 6 }
        },
    )
    .await;
    let record = finished(server, ids.doomed).await;
    assert_eq!(
        (record.state, record.attempts),
        (InvocationState::Failed, 3)
    );
}

/// A retry of one that did not fail is refused; a discard removes it.
async fn only_a_failed_one_is_retried_and_a_discard_removes_it(
    server: &TestServer,
    ids: &InvocationIds<'_>,
) {
    let again = server
        .admin()
        .typed()
        .retry_invocation(ids.flaky)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::WrongState));
    let out = thaw_command(server, &["invocations", "discard", ids.doomed])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server
            .get(&format!("/v1/invocations/{}", ids.doomed))
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_429_and_bad_event_settings_are_400s_naming_the_field() {
    let server = TestServer::start();
    let spec = FunctionSpec {
        route: Some("/slow".into()),
        async_policy: Some(AsyncSpec {
            max_queued: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    server.deploy("slow", wasm::EVENTS, spec).await;
    // Each takes 3 s: two fill the queue, the third is refused with a time to come back.
    for _ in 0..2 {
        accepted(&server, "/slow?sleep_ms=3000").await;
    }
    let r = post_async(&server, "/slow?sleep_ms=3000").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");

    let refused = |spec: FunctionSpec, field: &'static str| {
        let admin = server.admin();
        async move {
            let e = admin
                .deploy("bad", &spec, thaw_test_functions::read(wasm::EVENTS).into())
                .await
                .unwrap_err();
            assert_eq!(error_code(&e), Some(ErrorCode::BadRequest), "{e:#}");
            assert!(format!("{e:#}").contains(field), "{field} not named: {e:#}");
        }
    };
    let with_schedule = |cron: &str, tz: Option<&str>| FunctionSpec {
        schedule: vec![ScheduleSpec {
            cron: cron.into(),
            tz: tz.map(Into::into),
            catch_up: false,
        }],
        ..Default::default()
    };
    refused(with_schedule("61 * * * *", None), "schedule[0].cron").await;
    refused(
        with_schedule("0 3 * * *", Some("Mars/Olympus")),
        "schedule[0].tz",
    )
    .await;
    let policy = |spec: AsyncSpec| FunctionSpec {
        async_policy: Some(spec),
        ..Default::default()
    };
    refused(
        policy(AsyncSpec {
            max_attempts: Some(0),
            ..Default::default()
        }),
        "async.max_attempts",
    )
    .await;
    refused(
        policy(AsyncSpec {
            backoff_ms: Some(u64::MAX),
            ..Default::default()
        }),
        "async.backoff_ms",
    )
    .await;
    refused(crate::support::route("/v1/invocations"), "reserved").await;
    assert!(
        server.admin().typed().get("bad").await.is_err(),
        "nothing was deployed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_loses_no_invocation_that_was_answered_202() {
    const TOTAL: usize = 1000;
    let collector = Collector::start().await;
    let mut server = TestServer::start();
    server
        .deploy("ev", wasm::EVENTS, reporting("/ev", &collector))
        .await;
    let (url_tx, url_rx) = tokio::sync::watch::channel(server.url.clone());
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (ids, url) = (ids.clone(), url_rx.clone());
        senders.push(tokio::spawn(async move {
            let client = client();
            while ids.lock().unwrap().len() < TOTAL {
                let base = url.borrow().clone();
                let sent = client
                    .post(format!("{base}/ev"))
                    .header("prefer", "respond-async")
                    .body("x")
                    .send()
                    .await;
                // Refused or cut by the kill: not answered 202, so not promised.
                let Ok(r) = sent else { continue };
                if r.status() != 202 {
                    continue;
                }
                if let Ok(info) = r.json::<InvocationInfo>().await {
                    ids.lock().unwrap().push(info.id);
                }
            }
        }));
    }
    eventually(
        "half of the invocations accepted",
        Duration::from_secs(120),
        || {
            let n = ids.lock().unwrap().len();
            async move { n >= TOTAL / 2 }
        },
    )
    .await;
    let at_kill = ids.lock().unwrap().len();
    let delivered_at_kill = collector.lines().len();
    server.kill_and_restart(1);
    url_tx.send(server.url.clone()).unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let ids: Vec<String> = ids.lock().unwrap().clone();
    eventually(
        "every accepted invocation delivered",
        Duration::from_secs(120),
        || {
            let seen: std::collections::HashSet<String> = collector
                .lines()
                .iter()
                .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
                .collect();
            let all = ids.iter().all(|id| seen.contains(id));
            async move { all }
        },
    )
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in collector.lines() {
        *counts
            .entry(line.split(' ').nth(1).unwrap().to_owned())
            .or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{} accepted ({at_kill} before the kill, {delivered_at_kill} delivered by then); \
         {} deliveries, {duplicates} of them duplicates (attempts cut by the kill, run again)",
        ids.len(),
        counts.values().sum::<usize>()
    );
    assert!(ids.len() >= TOTAL);
}

/// `function`'s schedule as `GET /v1/schedules` shows it.
async fn schedule_of(server: &TestServer, function: &str) -> thaw_runtime::api::ScheduleInfo {
    let list = server.admin().typed().schedules().await.unwrap();
    list.schedules
        .into_iter()
        .find(|s| s.function == function)
        .expect("the schedule is listed")
}

/// The tick a schedule's delivery was for (its `ce-id` is `<tick ms>-<index>`), and when it
/// arrived.
fn ticks(collector: &Collector) -> Vec<(u64, SystemTime)> {
    collector
        .received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, line)| {
            let id = line
                .strip_prefix("dev.thaw.schedule.tick ")?
                .split(' ')
                .next()?;
            Some((id.split('-').next()?.parse().ok()?, *at))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_on_its_ticks_and_a_slow_run_skips_rather_than_overlaps() {
    let collector = Collector::start().await;
    let server = TestServer::start();
    let every_second = vec![ScheduleSpec::utc("* * * * * *")];
    let spec = FunctionSpec {
        schedule: every_second.clone(),
        ..reporting("/tick", &collector)
    };
    server.deploy("tick", wasm::EVENTS, spec).await;
    // Runs that take 2.5 s, on a schedule of one second.
    let slow = FunctionSpec {
        schedule: every_second,
        config: [("sleep_ms".to_owned(), ConfigValue::Value("2500".into()))].into(),
        route: Some("/slow".into()),
        ..Default::default()
    };
    server.deploy("slow", wasm::EVENTS, slow).await;
    eventually("five ticks", Duration::from_secs(60), || {
        let n = ticks(&collector).len();
        async move { n >= 5 }
    })
    .await;
    let mut lags: Vec<Duration> = ticks(&collector)
        .iter()
        .map(|(tick, at)| {
            at.duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(*tick))
                .unwrap_or_default()
        })
        .collect();
    lags.sort();
    eprintln!("tick → handler lags: {lags:?}");
    // The bound for a schedule's lateness (correctness, not speed: the bench
    // measures the lag itself).
    assert!(lags[lags.len() / 2] < Duration::from_secs(1), "{lags:?}");
    let distinct: std::collections::BTreeSet<u64> = ticks(&collector).iter().map(|t| t.0).collect();
    assert_eq!(
        distinct.len(),
        ticks(&collector).len(),
        "each tick ran once"
    );

    eventually(
        "a skipped tick of the slow schedule",
        Duration::from_secs(60),
        || {
            let admin = server.admin();
            async move {
                let list = admin.typed().schedules().await.unwrap();
                let slow = list
                    .schedules
                    .iter()
                    .find(|s| s.function == "slow")
                    .unwrap();
                slow.skipped >= 1 && slow.runs >= 1
            }
        },
    )
    .await;
    let out = thaw_command(&server, &["schedules"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("tick") && table.contains("* * * * * *") && table.contains("UTC"),
        "{table}"
    );
    let tick = schedule_of(&server, "tick").await;
    assert_eq!(tick.last_status, Some(200));
    assert!(tick.next_ms > tick.last_ms, "{tick:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tick_missed_while_down_runs_after_the_restart_only_with_catch_up() {
    let collector = Collector::start().await;
    let mut server = TestServer::start();
    let every_5_s = |catch_up| ScheduleSpec {
        cron: "*/5 * * * * *".into(),
        tz: None,
        catch_up,
    };
    for (name, catch_up) in [("catches-up", true), ("skips", false)] {
        let spec = FunctionSpec {
            schedule: vec![every_5_s(catch_up)],
            ..reporting(&format!("/{name}"), &collector)
        };
        server.deploy(name, wasm::EVENTS, spec).await;
    }
    // The ticks each function ran, by its event source.
    let ran = |name: &str| -> Vec<u64> {
        let source = format!("/thaw/schedules/{name}");
        collector
            .lines()
            .iter()
            .filter(|l| l.ends_with(&source))
            .filter_map(|l| l.split([' ', '-']).nth(1)?.parse().ok())
            .collect()
    };
    eventually("a first tick of both", Duration::from_secs(30), || {
        let both = !ran("catches-up").is_empty() && !ran("skips").is_empty();
        async move { both }
    })
    .await;
    server.kill9();
    let last = ran("catches-up").into_iter().max().unwrap();
    let missed = last + 5000;
    // Down until the next tick has passed.
    eventually(
        "the next tick to pass while down",
        Duration::from_secs(30),
        || {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap();
            async move { now.as_millis() as u64 > missed + 200 }
        },
    )
    .await;
    server.kill_and_restart(1);
    eventually(
        "the missed tick, caught up",
        Duration::from_secs(30),
        || {
            let caught = ran("catches-up").contains(&missed);
            async move { caught }
        },
    )
    .await;
    assert!(
        !ran("skips").contains(&missed),
        "without catch_up the missed tick is not run"
    );
    let skips = schedule_of(&server, "skips").await;
    assert!(skips.skipped >= 1, "{skips:?}");
    assert!(
        server
            .log()
            .contains("missed while the host was down; skipped"),
        "the skip is logged"
    );
}

/// With `--queue nats://`, two nodes share one queue on JetStream: invocations accepted by
/// one node that is then killed (`SIGKILL`) run on the other, which answers at each
/// `Location`; a dead letter is replayed through the other node's admin API.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_nats_queue_a_killed_node_loses_nothing_and_any_node_answers() {
    const TOTAL: usize = 200;
    let Some(nats) = thaw_harness::Nats::start() else {
        return;
    };
    let collector = Collector::start().await;
    let mut first = TestServer::start_with(&["--queue", &nats.url()]);
    let second = TestServer::start_with(&["--queue", &nats.url()]);
    let mut spec = reporting("/ev", &collector);
    spec.async_policy = Some(AsyncSpec {
        max_attempts: Some(2),
        backoff_ms: Some(50),
        ..Default::default()
    });
    first.deploy("ev", wasm::EVENTS, spec.clone()).await;

    // Accepted by the first node, each stored on JetStream before its 202, and run by it
    // alone (the second does not have the function yet). The last ones take 2 s each: the
    // kill finds them under way or still queued.
    let mut ids = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        let path = if i >= TOTAL - 20 {
            "/ev?sleep_ms=2000"
        } else {
            "/ev"
        };
        ids.push(accepted(&first, path).await.id);
    }
    first.kill9();
    let handled_by_first = distinct_ids(&collector).len();
    assert!(handled_by_first < TOTAL, "the kill left work to do");
    second.deploy("ev", wasm::EVENTS, spec.clone()).await;
    eventually(
        "every invocation delivered",
        Duration::from_secs(120),
        || {
            let seen = distinct_ids(&collector);
            let all = ids.iter().all(|id| seen.contains(id));
            async move { all }
        },
    )
    .await;
    eprintln!(
        "{TOTAL} accepted by the first node, {handled_by_first} handled there before its kill; \
         {} deliveries in all",
        collector.lines().len()
    );
    // The second node answers for every one, whichever node ran it.
    for id in &ids {
        let record = finished(&second, id).await;
        assert_eq!(record.state, InvocationState::Succeeded, "{record:?}");
    }
    // (One of the first accepted: long done before the kill, so run once.)
    let location = format!("{}/v1/invocations/{}", second.url, ids[1]);
    let r = client().get(location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("ran {} attempt 1\n", ids[1])
    );
    let list = second
        .admin()
        .typed()
        .invocations("ev", &Default::default())
        .await
        .unwrap();
    assert_eq!(list.invocations.len(), TOTAL);

    // One that always fails is dead-lettered after max_attempts, and replayed on demand.
    let doomed = accepted(&second, "/ev?fail=always").await.id;
    let record = finished(&second, &doomed).await;
    assert_eq!(
        (record.state, record.attempts),
        (InvocationState::Failed, 2),
        "{record:?}"
    );
    let replayed = second
        .admin()
        .typed()
        .retry_invocation(&doomed)
        .await
        .unwrap();
    assert_eq!(replayed.state, InvocationState::Queued);
    eventually("the replay's attempts", Duration::from_secs(60), || {
        let n = deliveries(&collector, &doomed).len();
        async move { n == 4 }
    })
    .await;
    let record = finished(&second, &doomed).await;
    assert_eq!(record.state, InvocationState::Failed, "{record:?}");
    second
        .admin()
        .typed()
        .discard_invocation(&doomed)
        .await
        .unwrap();
    assert_eq!(server_get_status(&second, &doomed).await, 404);
}

/// The invocation ids the collector saw delivered.
fn distinct_ids(collector: &Collector) -> std::collections::HashSet<String> {
    collector
        .lines()
        .iter()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .collect()
}

async fn server_get_status(server: &TestServer, id: &str) -> u16 {
    server
        .get(&format!("/v1/invocations/{id}"))
        .await
        .status()
        .as_u16()
}

/// A data directory holding invocations not yet run cannot start with `--queue` (they would
/// never run there): the refusal says why and changes nothing; started again without the
/// flag, the host runs them.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_invocations_waiting_refuses_to_start_with_a_nats_queue() {
    let Some(nats) = thaw_harness::Nats::start() else {
        return;
    };
    let collector = Collector::start().await;
    let mut server = TestServer::start();
    server
        .deploy("ev", wasm::EVENTS, reporting("/ev", &collector))
        .await;
    // Running when the host dies: stored as queued, to run again.
    let waiting = accepted(&server, "/ev?sleep_ms=3000").await.id;
    server.kill9();
    let refused = thaw_harness::process::serve_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_thaw")),
        &server.data_dir,
    )
    .args(["--queue", &nats.url()])
    .stdout(std::process::Stdio::null())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 asynchronous invocations not yet run")
            && stderr.contains("without --queue"),
        "{stderr}"
    );
    server.kill_and_restart(1);
    let record = finished(&server, &waiting).await;
    assert_eq!(record.state, InvocationState::Succeeded, "{record:?}");
}
