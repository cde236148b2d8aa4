//! A Spin app written against spin-sdk 7 (WASIp3 `wasi:http/handler@0.3.0` and the async
//! `spin:sqlite@3.1.0`, `spin:variables@3.0.0`, `spin:key-value@3.0.0` functions), unchanged
//! from what Spin runs: thaw's tests deploy it with its `spin.toml` and check its answers
//! against what this code says it returns.
//!
//! - `/add?name=N`: inserts N into `people` (created on first use) and answers `added <rowid>`;
//! - `/list`: the names, in order, one per line, read from the row stream;
//! - `/count`: `count <n>`;
//! - `/bad`: a failing statement; answers `error: <the error>`;
//! - `/var?name=V`: the variable's value, or `error: <the error>`;
//! - `/visit`: counts visits in the `default` key-value store and answers `visits <n>`;
//! - `/keys`: the store's keys, sorted, one per line;
//! - `/fetch?url=U`: GETs U and answers `status <code>`, or `error: <the error>`;
//! - `/pg-setup`: creates the Postgres table `counter` (at the variable `db_url`) with one row;
//! - `/pg-incr`: increments it and answers `n <new value>`; `/pg-count`: `n <value>`;
//! - `/pg-sleep?ms=N`: holds a Postgres connection for N ms (`pg_sleep`), answers `slept`;
//! - `/pg-types`: one row of every mapped type, as the SDK decodes it;
//! - `/pg-times`: dates, times, timestamps (with and without a zone) and a UUID, each as a
//!   parameter and back as the raw value; `/pg-bad-date`: 30 February as a parameter;
//! - `/redis-incr`: increments `hits` on the Redis at the variable `redis_url`, answers
//!   `hits <n>`;
//! - `/redis-tour`: set, get, sadd, srem, smembers, del, execute and publish, one line each;
//! - `/redis-wrongtype`: `sadd` on a string key: `error: <the error>`;
//! - `/redis-multi`: `execute("MULTI")`: `error: <the error>`;
//! - `/redis-denied`: opens a Redis outside `allowed_outbound_hosts`: `error: <the error>`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};

type Failed = Box<dyn std::error::Error>;

async fn people() -> Result<Connection, Failed> {
    let db = Connection::open_default().await?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        [],
    )
    .await?
    .result()
    .await?;
    Ok(db)
}

fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn sql(action: &str, query: &str) -> Result<String, Failed> {
    let db = people().await?;
    match action {
        "add" => {
            let name = param(query, "name").unwrap_or("nobody").to_owned();
            db.execute("INSERT INTO people (name) VALUES (?)", [Value::Text(name)])
                .await?
                .result()
                .await?;
            Ok(format!("added {}", db.last_insert_rowid().await))
        }
        "list" => {
            let mut rows = db
                .execute("SELECT name FROM people ORDER BY id", [])
                .await?;
            let mut names = String::new();
            while let Some(row) = rows.next().await {
                names.push_str(row.get::<&str>(0).unwrap_or("?"));
                names.push('\n');
            }
            rows.result().await?;
            Ok(names)
        }
        "count" => {
            let rows = db.execute("SELECT count(*) FROM people", []).await?;
            let rows = rows.collect().await?;
            let n: i64 = rows.first().and_then(|r| r.get(0)).unwrap_or(-1);
            Ok(format!("count {n}"))
        }
        _ => {
            let rows = db.execute("SELECT * FROM no_such_table", []).await?;
            rows.collect().await?;
            Ok("unexpected success".into())
        }
    }
}

async fn route(action: &str, query: &str) -> Result<String, Failed> {
    match action {
        "add" | "list" | "count" | "bad" => sql(action, query).await,
        "var" => Ok(spin_sdk::variables::get(param(query, "name").unwrap_or("")).await?),
        "visit" => {
            let store = Store::open_default().await?;
            let visits = match store.get("visits").await? {
                Some(n) => String::from_utf8_lossy(&n).parse::<u64>()? + 1,
                None => 1,
            };
            store.set("visits", visits.to_string()).await?;
            Ok(format!("visits {visits}"))
        }
        "keys" => {
            let store = Store::open_default().await?;
            let mut keys = store.get_keys().await.collect().await?;
            keys.sort();
            Ok(keys.iter().map(|k| format!("{k}\n")).collect())
        }
        "fetch" => {
            let url = param(query, "url").unwrap_or("");
            let request =
                http::Request::get(url).body(http_body_util::Empty::<bytes::Bytes>::new())?;
            let response = spin_sdk::http::send(request).await?;
            Ok(format!("status {}", response.status().as_u16()))
        }
        "pg-setup" | "pg-incr" | "pg-count" | "pg-sleep" | "pg-types" | "pg-times"
        | "pg-bad-date" => postgres(action, query).await,
        "redis-incr" | "redis-tour" | "redis-wrongtype" | "redis-multi" | "redis-denied" => {
            redis(action).await
        }
        _ => Ok("no such path".into()),
    }
}

async fn postgres(action: &str, query: &str) -> Result<String, Failed> {
    use spin_sdk::pg::{Connection, ParameterValue};
    let db = Connection::open(spin_sdk::variables::get("db_url").await?).await?;
    match action {
        "pg-setup" => {
            db.execute("DROP TABLE IF EXISTS counter", []).await?;
            db.execute(
                "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)",
                [],
            )
            .await?;
            db.execute(
                "INSERT INTO counter VALUES ($1, 0)",
                [ParameterValue::Int32(1)],
            )
            .await?;
            Ok("ready".into())
        }
        "pg-incr" | "pg-count" => {
            let statement = if action == "pg-incr" {
                "UPDATE counter SET n = n + 1 WHERE id = $1 RETURNING n"
            } else {
                "SELECT n FROM counter WHERE id = $1"
            };
            let rows = db
                .query(statement, [ParameterValue::Int32(1)])
                .await?
                .collect()
                .await?;
            let n: i64 = rows.first().and_then(|r| r.get("n")).unwrap_or(-1);
            Ok(format!("n {n}"))
        }
        "pg-times" => {
            let rows = db
                .query(
                    "SELECT $1::date AS d, $2::time AS t, $3::timestamp AS ts, $4::timestamptz AS tz, \
                     $5::uuid AS u, $6::timestamptz AS s, '2024-02-29 12:00:00+02'::timestamptz AS o",
                    [
                        ParameterValue::Date((2024, 2, 29)),
                        ParameterValue::Time((23, 59, 58, 5000)),
                        ParameterValue::Datetime((2024, 2, 29, 12, 30, 0, 0)),
                        ParameterValue::Datetime((2024, 2, 29, 12, 30, 0, 0)),
                        ParameterValue::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
                        ParameterValue::Timestamp(86_400),
                    ],
                )
                .await?
                .collect()
                .await?;
            let r = rows.first().ok_or("no row")?;
            Ok((0..7)
                .map(|i| format!("{:?}", r[i]))
                .collect::<Vec<_>>()
                .join(" "))
        }
        "pg-bad-date" => {
            db.query("SELECT $1::date", [ParameterValue::Date((2024, 2, 30))])
                .await?
                .collect()
                .await?;
            Ok("accepted".into())
        }
        "pg-sleep" => {
            let ms: f64 = param(query, "ms").unwrap_or("50").parse()?;
            db.query(
                "SELECT pg_sleep($1)",
                [ParameterValue::Floating64(ms / 1000.0)],
            )
            .await?
            .collect()
            .await?;
            Ok("slept".into())
        }
        _ => {
            let rows = db
                .query(
                    "SELECT true AS b, 7::int2 AS s, 8::int4 AS i, 9::int8 AS l, 1.5::float8 AS f, \
                     'text'::text AS t, '\\x0102'::bytea AS y, $1::text AS p, NULL::int4 AS z",
                    [ParameterValue::Str("bound".into())],
                )
                .await?
                .collect()
                .await?;
            let r = rows.first().ok_or("no row")?;
            Ok(format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                r.get::<bool>("b"),
                r.get::<i16>("s"),
                r.get::<i32>("i"),
                r.get::<i64>("l"),
                r.get::<f64>("f"),
                r.get::<String>("t"),
                r.get::<Vec<u8>>("y"),
                r.get::<String>("p"),
                r.get::<Option<i32>>("z"),
            ))
        }
    }
}

/// A Redis error as a boxed one (its Debug form names the case and its text).
fn redis_failed(e: spin_sdk::redis::Error) -> Failed {
    format!("{e:?}").into()
}

async fn redis(action: &str) -> Result<String, Failed> {
    use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
    if action == "redis-denied" {
        Connection::open("redis://10.255.255.1:6379")
            .await
            .map_err(redis_failed)?;
        return Ok("opened".into());
    }
    let address = spin_sdk::variables::get("redis_url").await?;
    let db = Connection::open(&address).await.map_err(redis_failed)?;
    match action {
        "redis-incr" => Ok(format!(
            "hits {}",
            db.incr("hits").await.map_err(redis_failed)?
        )),
        "redis-wrongtype" => {
            db.set("plain", b"text").await.map_err(redis_failed)?;
            db.sadd("plain", ["x"]).await.map_err(redis_failed)?;
            Ok("added".into())
        }
        "redis-multi" => {
            db.execute("multi", []).await.map_err(redis_failed)?;
            Ok("multi".into())
        }
        _ => {
            db.del(["k", "s", "h"]).await.map_err(redis_failed)?;
            db.set("k", b"v").await.map_err(redis_failed)?;
            let got = db.get("k").await.map_err(redis_failed)?;
            let added = db.sadd("s", ["a", "b", "c"]).await.map_err(redis_failed)?;
            let removed = db.srem("s", ["b"]).await.map_err(redis_failed)?;
            let mut members = db.smembers("s").await.map_err(redis_failed)?;
            members.sort();
            let deleted = db.del(["k"]).await.map_err(redis_failed)?;
            let gone = db.get("k").await.map_err(redis_failed)?;
            let hset = db
                .execute(
                    "HSET",
                    [
                        RedisParameter::Binary(b"h".to_vec()),
                        RedisParameter::Binary(b"f".to_vec()),
                        RedisParameter::Int64(42),
                    ],
                )
                .await
                .map_err(redis_failed)?;
            let hgetall = db
                .execute("HGETALL", [RedisParameter::Binary(b"h".to_vec())])
                .await
                .map_err(redis_failed)?;
            let shown: Vec<String> = hset
                .iter()
                .chain(&hgetall)
                .map(|r| match r {
                    RedisResult::Nil => "nil".to_owned(),
                    RedisResult::Status(s) => format!("status {s}"),
                    RedisResult::Int64(n) => format!("int {n}"),
                    RedisResult::Binary(b) => format!("bytes {}", String::from_utf8_lossy(b)),
                })
                .collect();
            db.publish("news", b"hello").await.map_err(redis_failed)?;
            Ok(format!(
                "get {:?}\nsadd {added}\nsrem {removed}\nmembers {}\ndel {deleted}\ngone {gone:?}\nexecute {}\npublished\n",
                got.map(|v| String::from_utf8_lossy(&v).into_owned()),
                members.join(","),
                shown.join(", "),
            ))
        }
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let action = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match route(&action, &query).await {
        Ok(text) => text,
        Err(e) => format!("error: {e}"),
    }
}
