//! SQL latency on the embedded database, side by side in one run:
//! - the floor: a native point query with rusqlite on the same file (a prepared, cached
//!   statement, no confinement);
//! - thaw's store alone, in-process: a point query and an insert through a connection as a
//!   guest gets it (authorizer, quota, progress handler; an insert commits with an fsync);
//! - a guest's call over loopback HTTP: functions/todo behind a real listener, one kept-
//!   alive connection: `GET /tour/sql?q=SELECT title FROM item WHERE id = N` (open, query,
//!   answer), an insert, and `GET /tour/config?key=missing` (the same request without SQL:
//!   the HTTP and guest cost the SQL rows include).
//!
//! Postgres rows, when Debian's Postgres is installed (started here on loopback, `fsync=off`):
//! - the floor: a native `tokio-postgres` point query on one kept connection;
//! - a native point query on a new connection each time (what a per-request connection
//!   costs, spin#3030);
//! - a Spin app's point query over HTTP (functions/spin-app `/pg-count`, a WASIp3 guest: open
//!   from the function's pool, query, answer), beside the same app answering from its variable
//!   (`/var`: the HTTP and guest cost without a database).
//!
//! The table holds 10,000 rows. Prints medians with p10, p90 and p99 in microseconds, and the
//! requests per second of the one connection (samples over their total time).
//!
//! Then the same requests under concurrency (a second table): `CLIENTS` clients at once, each
//! one request after another, over HTTP for the guests (one kept-alive connection each) and
//! natively for the floor (the native floor spreads its clients over 4 kept connections, the
//! Spin app's pool size; a new connection each time is what a guest without a host pool pays
//! at least): requests per second of all of them together, with each request's p50 and p99.
//!
//! Run: `cargo run --release -p thaw-benches --example sql` (`-- 5000` for more samples).

use std::sync::Arc;
use std::time::{Duration, Instant};

use thaw_benches::{BenchPlatform, Setup, quantile_us, timed};
use thaw_runtime::spec::FunctionSpec;
use thaw_runtime::sql::{SqlQuota, Value};

const ROWS: i64 = 10_000;

/// Clients at once in the concurrency rows.
const CLIENTS: usize = 16;

/// A row of the concurrency table.
struct Concurrent {
    name: String,
    samples: Vec<Duration>,
    wall: Duration,
}

fn concurrency_summary(rows: &[Concurrent]) {
    println!();
    println!("| row ({CLIENTS} clients at once) | requests/s | p50 µs | p99 µs | n |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let mut s = row.samples.clone();
        s.sort();
        let at = |q: f64| quantile_us(&s, q);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            row.name,
            s.len() as f64 / row.wall.as_secs_f64(),
            at(0.5),
            at(0.99),
            s.len()
        );
    }
}

/// [`CLIENTS`] tasks, each making `per_client` calls one after another (after one call each
/// to warm up): every call's latency, and the wall time of them all.
async fn concurrently<F, Fut>(name: &str, per_client: usize, call: F) -> Concurrent
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let warm: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(call.clone()(c)))
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_client);
                for k in 0..per_client {
                    let t = Instant::now();
                    call(c * per_client + k).await;
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Concurrent {
        name: name.to_owned(),
        samples,
        wall: started.elapsed(),
    }
}

/// A GET that must answer `want`, as a `'static` call for [`concurrently`].
fn getter(
    http: &reqwest::Client,
    url: impl Fn(usize) -> String + Clone + Send + Sync + 'static,
    want: u16,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone + Send + 'static {
    let http = http.clone();
    move |i| {
        let (http, url) = (http.clone(), url(i));
        Box::pin(async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), want);
            let body = r.bytes().await.unwrap();
            assert!(!body.starts_with(b"error"), "{body:?}");
        })
    }
}

struct Row {
    name: String,
    samples: Vec<Duration>,
}

fn summary(rows: &[Row]) {
    println!("| row | median µs | p10 | p90 | p99 | per s (one at a time) | n |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let mut s = row.samples.clone();
        s.sort();
        let at = |q: f64| quantile_us(&s, q);
        let total: Duration = s.iter().sum();
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            row.name,
            at(0.5),
            at(0.1),
            at(0.9),
            at(0.99),
            s.len() as f64 / total.as_secs_f64(),
            s.len()
        );
    }
}

fn timed_blocking(n: usize, mut call: impl FnMut(usize)) -> Vec<Duration> {
    for i in 0..n / 10 {
        call(i);
    }
    (0..n)
        .map(|i| {
            let started = Instant::now();
            call(i);
            started.elapsed()
        })
        .collect()
}

/// A pseudo-random id in the table, the same sequence in every row.
fn id(i: usize) -> i64 {
    (i as i64).wrapping_mul(7919) % ROWS + 1
}

fn in_process(platform: &thaw_runtime::control::Platform, n: usize, rows: &mut Vec<Row>) {
    // The quota every function gets by default.
    let limits = thaw_runtime::spec::LimitsSpec::default()
        .resolve(&thaw_runtime::spec::LimitDefaults::default());
    let quota = SqlQuota::of(&limits);
    let function: Arc<str> = Arc::from("tour");
    let db = platform.sql().database(&function, "default", &[]).unwrap();
    let mut lease = db.connect().unwrap();
    lease
        .execute(
            "CREATE TABLE item (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
            &[],
            &quota,
        )
        .unwrap();
    lease.execute("BEGIN", &[], &quota).unwrap();
    for i in 1..=ROWS {
        lease
            .execute(
                "INSERT INTO item VALUES (?, ?)",
                &[Value::Integer(i), Value::Text(format!("item {i}"))],
                &quota,
            )
            .unwrap();
    }
    lease.execute("COMMIT", &[], &quota).unwrap();

    let path = platform.data_dir().sql().join("tour/default.sqlite");
    let native = rusqlite::Connection::open(&path).unwrap();
    let mut statement = native
        .prepare("SELECT title FROM item WHERE id = ?")
        .unwrap();
    rows.push(Row {
        name: "native rusqlite point query, prepared once (the floor)".into(),
        samples: timed_blocking(n, |i| {
            let title: String = statement.query_row([id(i)], |r| r.get(0)).unwrap();
            std::hint::black_box(title);
        }),
    });
    rows.push(Row {
        name: "thaw store point query, in-process".into(),
        samples: timed_blocking(n, |i| {
            let (result, _) = lease
                .execute(
                    "SELECT title FROM item WHERE id = ?",
                    &[Value::Integer(id(i))],
                    &quota,
                )
                .unwrap();
            assert_eq!(result.rows.len(), 1);
        }),
    });
    rows.push(Row {
        name: "thaw store insert (fsync), in-process".into(),
        samples: timed_blocking(n, |i| {
            lease
                .execute(
                    "INSERT INTO item (title) VALUES (?)",
                    &[Value::Text(format!("new {i}"))],
                    &quota,
                )
                .unwrap();
        }),
    });
}

async fn over_http(
    platform: &Arc<thaw_runtime::control::Platform>,
    n: usize,
    rows: &mut Vec<Row>,
    concurrent: &mut Vec<Concurrent>,
) {
    let (addr, stop) = thaw_benches::serve_on_loopback(platform.clone()).await;
    let base = format!("http://{addr}/tour");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let get = |url: String, want: u16| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), want);
            r.bytes().await.unwrap();
        }
    };
    rows.push(Row {
        name: "guest point query over HTTP".into(),
        samples: timed(n, |i| {
            get(
                format!(
                    "{base}/sql?q=SELECT%20title%20FROM%20item%20WHERE%20id%20%3D%20{}",
                    id(i)
                ),
                200,
            )
        })
        .await,
    });
    rows.push(Row {
        name: "guest insert (fsync) over HTTP".into(),
        samples: timed(n, |i| {
            get(
                format!("{base}/sql?q=INSERT%20INTO%20item%20(title)%20VALUES%20('h{i}')"),
                200,
            )
        })
        .await,
    });
    rows.push(Row {
        name: "guest without SQL over HTTP".into(),
        samples: timed(n, |_| get(format!("{base}/config?key=missing"), 404)).await,
    });
    let many = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let at = base.clone();
    let query = move |i| {
        format!(
            "{at}/sql?q=SELECT%20title%20FROM%20item%20WHERE%20id%20%3D%20{}",
            id(i)
        )
    };
    concurrent.push(
        concurrently(
            "guest point query over HTTP (embedded)",
            n / CLIENTS,
            getter(&many, query, 200),
        )
        .await,
    );
    let at = base.clone();
    concurrent.push(
        concurrently(
            "guest without SQL over HTTP",
            n / CLIENTS,
            getter(&many, move |_| format!("{at}/config?key=missing"), 404),
        )
        .await,
    );
    let _ = stop.send(true);
}

async fn postgres(
    platform: &Arc<thaw_runtime::control::Platform>,
    pg: &thaw_harness::Postgres,
    n: usize,
    rows: &mut Vec<Row>,
    concurrent: &mut Vec<Concurrent>,
) {
    let (native, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    native
        .batch_execute(
            "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL); \
             INSERT INTO counter SELECT g, g FROM generate_series(1, 10000) g",
        )
        .await
        .unwrap();
    let point = native
        .prepare("SELECT n FROM counter WHERE id = $1")
        .await
        .unwrap();
    rows.push(Row {
        name: "postgres: native point query, one kept connection (the floor)".into(),
        samples: timed(n, |i| {
            let (native, point) = (&native, &point);
            async move {
                let row = native.query_one(point, &[&(id(i) as i32)]).await.unwrap();
                std::hint::black_box(row.get::<_, i64>(0));
            }
        })
        .await,
    });
    rows.push(Row {
        name: "postgres: native point query, a new connection each".into(),
        samples: timed(n / 4, |i| {
            let url = pg.url.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let task = tokio::spawn(connection);
                let row = client
                    .query_one("SELECT n FROM counter WHERE id = $1", &[&(id(i) as i32)])
                    .await
                    .unwrap();
                std::hint::black_box(row.get::<_, i64>(0));
                drop(client);
                let _ = task.await;
            }
        })
        .await,
    });
    let wasm = thaw_test_functions::read(thaw_test_functions::SPIN_APP);
    let spec = FunctionSpec {
        route: Some("/spin-app".into()),
        allowed_outbound_hosts: vec!["postgres://127.0.0.1:*".into()],
        config: [(
            "db_url".to_owned(),
            thaw_runtime::config::ConfigValue::Value(pg.url.clone()),
        )]
        .into(),
        ..Default::default()
    };
    platform
        .deploy("spin-app", spec, wasm.into())
        .await
        .unwrap();
    let (addr, stop) = thaw_benches::serve_on_loopback(platform.clone()).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("http://{addr}/spin-app{path}"));
        async move {
            let body = http.get(url).send().await.unwrap().text().await.unwrap();
            assert!(!body.starts_with("error"), "{body}");
        }
    };
    rows.push(Row {
        name: "postgres: Spin app point query over HTTP (the function's pool)".into(),
        samples: timed(n, |_| get("/pg-count")).await,
    });
    rows.push(Row {
        name: "postgres: the same Spin app without a database over HTTP".into(),
        samples: timed(n, |_| get("/var?name=db_url")).await,
    });

    let mut kept = Vec::new();
    for _ in 0..4 {
        let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let point = client
            .prepare("SELECT n FROM counter WHERE id = $1")
            .await
            .unwrap();
        kept.push((client, point));
    }
    let kept = Arc::new(kept);
    concurrent.push(
        concurrently(
            "postgres: native point query, 4 kept connections (the floor)",
            n / CLIENTS,
            move |i| {
                let kept = kept.clone();
                async move {
                    let (client, point) = &kept[i % kept.len()];
                    let row = client.query_one(point, &[&(id(i) as i32)]).await.unwrap();
                    std::hint::black_box(row.get::<_, i64>(0));
                }
            },
        )
        .await,
    );
    let url = pg.url.clone();
    concurrent.push(
        concurrently(
            "postgres: native point query, a new connection each",
            n / CLIENTS / 4,
            move |i| {
                let url = url.clone();
                async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    let task = tokio::spawn(connection);
                    let row = client
                        .query_one("SELECT n FROM counter WHERE id = $1", &[&(id(i) as i32)])
                        .await
                        .unwrap();
                    std::hint::black_box(row.get::<_, i64>(0));
                    drop(client);
                    let _ = task.await;
                }
            },
        )
        .await,
    );
    let many = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    for (name, path) in [
        (
            "postgres: Spin app point query over HTTP (the function's pool of 4)",
            "/pg-count",
        ),
        (
            "postgres: the same Spin app without a database over HTTP",
            "/var?name=db_url",
        ),
    ] {
        let url = format!("http://{addr}/spin-app{path}");
        concurrent
            .push(concurrently(name, n / CLIENTS, getter(&many, move |_| url.clone(), 200)).await);
    }
    let _ = stop.send(true);
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench = BenchPlatform::new(Setup {
        on_demand: false,
        warm: 4,
        server_timing: false,
        fast_deploy: false,
    });
    let platform = bench.platform.clone();
    let mut rows = Vec::new();
    let mut concurrent = Vec::new();
    rt.block_on(async {
        let wasm = thaw_test_functions::read(thaw_test_functions::TODO);
        let spec = FunctionSpec {
            route: Some("/tour".into()),
            ..Default::default()
        };
        platform.deploy("tour", spec, wasm.into()).await.unwrap();
    });
    in_process(&platform, n, &mut rows);
    rt.block_on(over_http(&platform, n, &mut rows, &mut concurrent));
    // Skipped (and said so) without Debian's Postgres.
    if let Some(pg) = thaw_harness::Postgres::start() {
        rt.block_on(postgres(&platform, &pg, n, &mut rows, &mut concurrent));
    }
    summary(&rows);
    concurrency_summary(&concurrent);
}
