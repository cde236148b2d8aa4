//! A Spin app written against spin-sdk 7 (WASIp3 `wasi:http/handler@0.3.0`, the async
//! `spin:sqlite@3.1.0` functions), unchanged from what Spin runs: thaw's tests deploy it and
//! check its answers against what this code says it returns.
//!
//! - `/add?name=N`: inserts N into `people` (created on first use) and answers `added <rowid>`;
//! - `/list`: the names, in order, one per line, read from the row stream;
//! - `/count`: `count <n>`;
//! - `/bad`: a failing statement; answers `error: <the error>`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::sqlite::{Connection, Error, Value};

async fn people() -> Result<Connection, Error> {
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

async fn route(path: &str, query: &str) -> Result<String, Error> {
    let db = people().await?;
    match path.rsplit('/').next().unwrap_or("") {
        "add" => {
            let name = query.strip_prefix("name=").unwrap_or("nobody").to_owned();
            db.execute("INSERT INTO people (name) VALUES (?)", [Value::Text(name)])
                .await?
                .result()
                .await?;
            Ok(format!("added {}", db.last_insert_rowid().await))
        }
        "list" => {
            let mut rows = db.execute("SELECT name FROM people ORDER BY id", []).await?;
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
        "bad" => db
            .execute("SELECT * FROM no_such_table", [])
            .await?
            .collect()
            .await
            .map(|_| "unexpected success".into()),
        _ => Ok("no such path".into()),
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match route(&path, &query).await {
        Ok(text) => text,
        Err(e) => format!("error: {e:?}"),
    }
}
