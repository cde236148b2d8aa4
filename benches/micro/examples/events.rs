//! The events benchmark: what an asynchronous invocation, a queue trigger and a schedule cost.
//! Everything real, on loopback: a release `thaw serve`, Debian's `nats-server -js`, the
//! events test function (functions/events), and a [`Collector`] the function reports to.
//!
//! ```text
//! cargo build --release -p thaw-cli
//! cargo run --release -p thaw-benches --example events -- [ROUNDS] [MESSAGES]
//! ```
//!
//! - **Enqueue rate**: `Prefer: respond-async` requests answered 202 (each durably stored)
//!   per second, from 1 and from 32 concurrent clients; per round, `MESSAGES` requests; on a
//!   host with the embedded queue and, alternating, on one with `--queue nats://`.
//! - **Enqueue → handler start**: from a 202 to the function's report of that invocation
//!   arriving at the collector (the report is the handler's first act, one loopback POST),
//!   one invocation at a time; p50 and p99 over `MESSAGES` invocations.
//! - **NATS throughput**: `MESSAGES` messages in a JetStream stream, consumed by thaw with a
//!   no-op function (16 places: the default), from the consumer's first acknowledgement until
//!   it has acknowledged all (the deploy and the trigger's start are not counted); beside
//!   it, a plain async-nats pull consumer in this process fetching 16 at a time and
//!   acknowledging each, on the same stream, as the baseline; and the same function over
//!   HTTP from 16 concurrent clients, the ceiling the request path sets.
//! - **Schedule lag**: a schedule every second for 30 s; from each tick to its report; p50
//!   and p99.
//!
//! Rounds alternate nothing (each measures one thing in its own way); the spread is the
//! min..max over rounds.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use thaw_harness::process::{serve_command, wait_ready_line};
use thaw_harness::{Collector, Killed, Nats};

const TOKEN: &str = "bench-admin-token-0123456789";

struct Host {
    _process: Killed,
    url: String,
    admin: String,
}

fn start(thaw: &std::path::Path, dir: &std::path::Path, nats_flag: &str, nats: &str) -> Host {
    let mut child = serve_command(thaw, dir)
        .args([nats_flag, nats])
        .env("THAW_ADMIN_TOKEN", TOKEN)
        .env("THAW_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting thaw serve");
    let stdout = child.stdout.take().unwrap();
    let ready = wait_ready_line(stdout, Duration::from_secs(60)).expect("thaw serve is ready");
    Host {
        _process: Killed(child),
        url: format!("http://{}", ready.functions),
        admin: format!("http://{}", ready.admin),
    }
}

async fn deploy(host: &Host, name: &str, spec: serde_json::Value) {
    let wasm = std::fs::read(thaw_test_functions::EVENTS).unwrap();
    let form = reqwest::multipart::Form::new()
        .part("wasm", reqwest::multipart::Part::bytes(wasm))
        .text("spec", spec.to_string());
    let r = reqwest::Client::new()
        .put(format!("{}/v1/functions/{name}", host.admin))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "deploy: {}",
        r.text().await.unwrap()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn spread(values: &mut [f64]) -> String {
    values.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:.0}, min {:.0}, max {:.0}",
        values[values.len() / 2],
        values[0],
        values[values.len() - 1]
    )
}

/// Accepts `n` invocations from `clients` concurrent clients; the 202s per second.
async fn enqueue_rate(host: &Host, n: usize, clients: usize) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("{}/sink", host.url);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        let share = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let r = client
                    .post(&url)
                    .header("prefer", "respond-async")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// What the benchmark measures with: the rounds and messages per round from the command line.
struct Run {
    rounds: usize,
    messages: usize,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let run = Run {
        rounds: args.get(1).map_or(5, |a| a.parse().unwrap()),
        messages: args.get(2).map_or(2000, |a| a.parse().unwrap()),
    };
    let thaw = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/thaw");
    assert!(
        thaw.exists(),
        "build it first: cargo build --release -p thaw-cli"
    );
    let nats = Nats::start().expect("nats-server (scripts/install-services)");
    let dir = tempfile::tempdir().unwrap();
    let host = start(&thaw, dir.path(), "--events-nats", &nats.url());
    let collector = Collector::start().await;

    deploy_sinks(&host, &collector).await;
    measure_enqueue_rates(&thaw, &nats, &host, &run).await;
    measure_handler_start(&host, &collector, run.messages).await;
    let (mut thaw_rates, mut native_rates) = measure_nats(&host, &nats, &run).await;
    let mut http_rates = measure_http_ceiling(&host, &run).await;
    println!(
        "the same function over HTTP, 16 clients: {} requests/s",
        spread(&mut http_rates)
    );
    let ratios: Vec<f64> = thaw_rates
        .iter()
        .zip(&native_rates)
        .map(|(t, n)| t / n)
        .collect();
    println!(
        "NATS, thaw no-op function: {} messages/s",
        spread(&mut thaw_rates)
    );
    println!(
        "NATS, native pull consumer: {} messages/s",
        spread(&mut native_rates)
    );
    println!("NATS, thaw / native per round: {:.2?}", ratios);
    measure_schedule_lag(&host, &collector).await;
}

/// A sink that does nothing (the enqueue rate), and one that reports (the latencies).
async fn deploy_sinks(host: &Host, collector: &Collector) {
    deploy(
        host,
        "sink",
        serde_json::json!({"route": "/sink", "async": {"max_queued": 1000000}}),
    )
    .await;
    let reporting = serde_json::json!({
        "route": "/report",
        "allowed_outbound_hosts": [collector.url],
        "config": {"report": collector.url},
    });
    deploy(host, "report", reporting).await;
}

/// The enqueue rate from 1 and 32 clients, on `host` and, side by side, on a host whose
/// queue is on NATS JetStream (`--queue`), started here and stopped at the end.
async fn measure_enqueue_rates(thaw: &std::path::Path, nats: &Nats, host: &Host, run: &Run) {
    let shared_dir = tempfile::tempdir().unwrap();
    let shared = start(thaw, shared_dir.path(), "--queue", &nats.url());
    deploy(
        &shared,
        "sink",
        serde_json::json!({"route": "/sink", "async": {"max_queued": 1000000}}),
    )
    .await;
    for clients in [1, 32] {
        let (mut rates, mut shared_rates) = (Vec::new(), Vec::new());
        for _ in 0..run.rounds {
            rates.push(enqueue_rate(host, run.messages, clients).await);
            shared_rates.push(enqueue_rate(&shared, run.messages, clients).await);
        }
        println!(
            "async enqueue, {clients} client(s): {} per second (data directory); {} (--queue nats)",
            spread(&mut rates),
            spread(&mut shared_rates)
        );
    }
    drop(shared);
}

/// Enqueue → handler start, one at a time.
async fn measure_handler_start(host: &Host, collector: &Collector, messages: usize) {
    let client = reqwest::Client::new();
    let mut lags = Vec::with_capacity(messages);
    for _ in 0..messages {
        let r = client
            .post(format!("{}/report", host.url))
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        let answered = SystemTime::now();
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let started = Instant::now();
        loop {
            let seen = collector
                .received
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(_, line)| line.contains(&id))
                .map(|(at, _)| *at);
            if let Some(at) = seen {
                lags.push(at.duration_since(answered).unwrap_or_default());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "invocation {id} never ran"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    lags.sort();
    println!(
        "async 202 → handler start: p50 {}, p99 {} ({} invocations)",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.99)),
        lags.len()
    );
}

/// NATS: thaw's trigger against a plain consumer, on the same stream contents; the rates
/// per round, thaw's then the native consumer's.
async fn measure_nats(host: &Host, nats: &Nats, run: &Run) -> (Vec<f64>, Vec<f64>) {
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats_client);
    let mut thaw_rates = Vec::new();
    let mut native_rates = Vec::new();
    for round in 0..run.rounds {
        let stream = format!("BENCH{round}");
        fill_stream(&js, &stream, round, run.messages).await;
        native_rates.push(native_consumer_rate(&js, &stream, run.messages).await);
        thaw_rates.push(thaw_trigger_rate(host, &js, &stream, round, run.messages).await);
    }
    (thaw_rates, native_rates)
}

/// Creates `stream` on subject `bench{round}` and publishes `messages` messages to it.
async fn fill_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    round: usize,
    messages: usize,
) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![format!("bench{round}")],
        ..Default::default()
    })
    .await
    .unwrap();
    for batch in (0..messages).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::new();
        for _ in batch {
            acks.push(
                js.publish(format!("bench{round}"), "x".into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// The baseline: a native pull consumer, 16 in flight, acking each; messages per second.
async fn native_consumer_rate(
    js: &async_nats::jetstream::Context,
    stream: &str,
    messages: usize,
) -> f64 {
    let native = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("native".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut done = 0;
    use futures::StreamExt as _;
    while done < messages {
        let mut batch = native.fetch().max_messages(16).messages().await.unwrap();
        while let Some(message) = batch.next().await {
            message.unwrap().ack().await.unwrap();
            done += 1;
        }
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

/// thaw: a no-op function on the same stream, timed from its first acknowledgement (the
/// deploy and the trigger's start, up to a second, are not consumption); messages per second.
async fn thaw_trigger_rate(
    host: &Host,
    js: &async_nats::jetstream::Context,
    stream: &str,
    round: usize,
    messages: usize,
) -> f64 {
    let name = format!("noop{round}");
    let mut first: Option<(Instant, usize)> = None;
    deploy(
        host,
        &name,
        serde_json::json!({"route": format!("/{name}"), "trigger": {"nats": {"stream": stream}}}),
    )
    .await;
    loop {
        let mut consumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&format!("thaw-{name}"))
            .await;
        if let Ok(consumer) = &mut consumer {
            let info = consumer.info().await.unwrap();
            let acked = info.ack_floor.stream_sequence as usize;
            if first.is_none() && acked > 0 {
                first = Some((Instant::now(), acked));
            }
            if acked >= messages {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (started, acked) = first.expect("acknowledged");
    (messages - acked) as f64 / started.elapsed().as_secs_f64()
}

/// The ceiling the request path sets: the same no-op function over HTTP from 16 clients
/// at once (16: the trigger's delivery places), `messages` requests per round.
async fn measure_http_ceiling(host: &Host, run: &Run) -> Vec<f64> {
    deploy(
        host,
        "noop-http",
        serde_json::json!({"route": "/noop-http"}),
    )
    .await;
    let mut http_rates = Vec::new();
    for _ in 0..run.rounds {
        let client = reqwest::Client::new();
        let url = format!("{}/noop-http", host.url);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..16 {
            let (client, url) = (client.clone(), url.clone());
            let share = run.messages / 16 + usize::from(c < run.messages % 16);
            tasks.push(tokio::spawn(async move {
                for _ in 0..share {
                    let r = client.post(&url).body("x").send().await.unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        http_rates.push(run.messages as f64 / started.elapsed().as_secs_f64());
    }
    http_rates
}

/// Schedule lag: a schedule every second for 30 s; from each tick to its report.
async fn measure_schedule_lag(host: &Host, collector: &Collector) {
    let ticking = serde_json::json!({
        "route": "/tick",
        "schedule": ["* * * * * *"],
        "allowed_outbound_hosts": [collector.url],
        "config": {"report": collector.url},
    });
    deploy(host, "tick", ticking).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut ticks: Vec<Duration> = collector
        .received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, line)| {
            let ms: u64 = line
                .strip_prefix("dev.thaw.schedule.tick ")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            at.duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .ok()
        })
        .collect();
    ticks.sort();
    println!(
        "schedule tick → handler: p50 {}, p99 {} ({} ticks)",
        ms(percentile(&ticks, 0.5)),
        ms(percentile(&ticks, 0.99)),
        ticks.len()
    );
}
