//! A to-do list on the function's own SQL database, through `thaw_sdk::sql` (`spin:sqlite`),
//! for thaw's SQL tests and benchmarks and as an example:
//! - `/todo` (POST, the body is the title): adds a to-do to the `default` database (migrated
//!   on first use) and answers its id; `/todos?done=0|1`: lists them, `id|title|done` lines;
//! - `/sql?db=D&q=Q`: runs Q on database D (`default` unless given) and answers its rows as
//!   `|`-separated lines, then `changes=N rowid=R`; SQL errors are 500, a full database 507,
//!   a database the function may not open 404, each with the SDK's message;
//! - `/pg?db=D&q=Q&p=P`: runs Q on Postgres database D (a name from `postgres_databases`, or
//!   an address) through `thaw_sdk::pg`, with each `p` bound as text, in order (`$1::text`),
//!   then each `d` as a decimal, and answers its rows as `|`-separated lines; with `x=1` it executes Q instead and
//!   answers how many rows it changed. A failed connection is 502, a failed statement 500,
//!   each with the SDK's message (and the SQLSTATE);
//! - `/config?key=K`: the setting, or 404 `none` (a request that touches no database).

use thaw_sdk::http::{self, StatusCode};
use thaw_sdk::{Body, IntoResponse as _, handler, pg, sql};

type Answer = http::Response<Body>;

fn answer(status: StatusCode, text: impl Into<String>) -> Answer {
    let mut response = (status, text.into()).into_response().map(Body::from);
    *response.status_mut() = status;
    response
}

fn param(req: &http::Request<Body>, key: &str) -> Option<String> {
    all_params(req, key).next()
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[handler]
async fn handle(req: http::Request<Body>) -> Answer {
    // The last segment: the function answers under any route (thaw passes the full path).
    let path = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    match format!("/{path}").as_str() {
        "/todo" => {
            let mut body = req.into_body();
            let title = match body.contents().await {
                Ok(v) => String::from_utf8_lossy(v).into_owned(),
                Err(e) => return answer(StatusCode::BAD_REQUEST, format!("{e:#}")),
            };
            sql_answer(todos().and_then(|db| {
                db.execute("INSERT INTO todo (title) VALUES (?)", &[title.into()])?;
                Ok(db.last_insert_rowid().to_string())
            }))
        }
        "/todos" => {
            let done = param(&req, "done").is_some_and(|d| d == "1");
            sql_answer(todos().and_then(|db| {
                let result = db.execute(
                    "SELECT id, title, done FROM todo WHERE done = ? ORDER BY id",
                    &[done.into()],
                )?;
                let mut lines = String::new();
                for row in result.rows() {
                    let (id, title, done): (i64, String, bool) =
                        (row.get("id")?, row.get("title")?, row.get("done")?);
                    lines.push_str(&format!("{id}|{title}|{done}\n"));
                }
                Ok(lines)
            }))
        }
        "/sql" => {
            let name = param(&req, "db").unwrap_or_else(|| "default".into());
            let statement = param(&req, "q").unwrap_or_default();
            sql_answer(sql::Connection::open(&name).and_then(|db| {
                let result = db.execute(&statement, &[])?;
                let mut lines = String::new();
                for row in result.rows() {
                    let cells: Vec<String> = row.values().iter().map(cell).collect();
                    lines.push_str(&cells.join("|"));
                    lines.push('\n');
                }
                lines.push_str(&format!(
                    "changes={} rowid={}",
                    db.changes(),
                    db.last_insert_rowid()
                ));
                Ok(lines)
            }))
        }
        "/pg" => {
            let database = param(&req, "db").unwrap_or_default();
            let statement = param(&req, "q").unwrap_or_default();
            let parameters: Vec<pg::Value> = all_params(&req, "p")
                .map(pg::Value::Text)
                .chain(all_params(&req, "d").map(pg::Value::Decimal))
                .collect();
            let execute = param(&req, "x").is_some_and(|x| x == "1");
            let result = pg::Connection::open(&database).and_then(|db| {
                if execute {
                    return Ok(db.execute(&statement, &parameters)?.to_string());
                }
                let rows = db.query(&statement, &parameters)?;
                let mut lines = String::new();
                for row in rows.rows() {
                    let cells: Vec<String> = row.values().iter().map(pg_cell).collect();
                    lines.push_str(&cells.join("|"));
                    lines.push('\n');
                }
                Ok(lines)
            });
            match result {
                Ok(text) => answer(StatusCode::OK, text),
                Err(e @ pg::Error::ConnectionFailed(_)) => {
                    answer(StatusCode::BAD_GATEWAY, e.to_string())
                }
                Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "/config" => match thaw_sdk::config::get(&param(&req, "key").unwrap_or_default()) {
            Ok(Some(value)) => answer(StatusCode::OK, value),
            Ok(None) => answer(StatusCode::NOT_FOUND, "none"),
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        _ => answer(StatusCode::NOT_FOUND, "no such path"),
    }
}

/// The to-do database, its schema brought up to date.
fn todos() -> Result<sql::Connection, sql::Error> {
    let db = sql::Connection::open_default()?;
    sql::migrate(
        &db,
        &[
            "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
            "ALTER TABLE todo ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
        ],
    )?;
    Ok(db)
}

fn cell(value: &sql::Value) -> String {
    match value {
        sql::Value::Integer(i) => i.to_string(),
        sql::Value::Real(r) => r.to_string(),
        sql::Value::Text(t) => t.clone(),
        sql::Value::Blob(b) => format!("blob:{}", b.len()),
        sql::Value::Null => "NULL".into(),
    }
}

fn pg_cell(value: &pg::Value) -> String {
    match value {
        pg::Value::Bool(b) => b.to_string(),
        pg::Value::Int16(i) => i.to_string(),
        pg::Value::Int32(i) => i.to_string(),
        pg::Value::Int64(i) => i.to_string(),
        pg::Value::Float64(f) => f.to_string(),
        pg::Value::Text(t) | pg::Value::Uuid(t) | pg::Value::Decimal(t) => t.clone(),
        pg::Value::Null => "NULL".into(),
        other => format!("{other:?}"),
    }
}

/// Every value of `key` in the query, in order.
fn all_params<'a>(req: &'a http::Request<Body>, key: &'a str) -> impl Iterator<Item = String> + 'a {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(move |(k, _)| *k == key)
        .map(|(_, v)| percent_decoded(v))
}

fn sql_answer(result: Result<String, sql::Error>) -> Answer {
    match result {
        Ok(text) => answer(StatusCode::OK, text),
        Err(e @ sql::Error::DatabaseFull) => {
            answer(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        Err(e @ sql::Error::NoSuchDatabase(_)) => answer(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
