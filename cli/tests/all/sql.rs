//! SQL for functions against a real `thaw serve`: the Rust SDK's `sql` module
//! (functions/todo) over `spin:sqlite`, on the function's own SQLite database. A schema
//! migrated on first use, parameters that carry hostile text as data, typed rows, a quota that
//! refuses writes and keeps reads, SQL that cannot leave its file, databases no other
//! function reaches, writes that survive kill -9, and `thaw remove` taking them away. And the
//! SDK's `pg` module on a Postgres database a function's spec names.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use thaw_runtime::config::SecretRef;
use thaw_runtime::spec::{FunctionSpec, LimitsSpec, PostgresDatabase};
use thaw_test_functions as wasm;

use crate::support::{ErrorCode, TestServer, client, thaw_command};

async fn call(server: &TestServer, function: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}/{function}{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn add_todo(server: &TestServer, function: &str, title: &str) -> (u16, String) {
    let r = client()
        .post(format!("{}/{function}/todo", server.url))
        .body(title.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `q` percent-encoded for a query string.
fn sql(db: Option<&str>, q: &str) -> String {
    match db {
        Some(db) => format!("/sql?db={db}&q={}", encoded(q)),
        None => format!("/sql?q={}", encoded(q)),
    }
}

/// `text` percent-encoded for a query string.
fn encoded(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 32 clients each call `path` on function `function` `times` times; what the calls that
/// did not answer 200 said.
async fn thirty_two_clients(
    server: &TestServer,
    function: &str,
    path: &str,
    times: usize,
) -> Vec<String> {
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let url = format!("{}/{function}{path}", server.url);
            tokio::spawn(async move {
                let http = client();
                let mut failures = Vec::new();
                for _ in 0..times {
                    let r = http.get(&url).send().await.unwrap();
                    if r.status() != 200 {
                        failures.push(r.text().await.unwrap());
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    failures
}

fn spec(route: &str, databases: &[&str], limits: LimitsSpec) -> FunctionSpec {
    FunctionSpec {
        route: Some(route.into()),
        sqlite_databases: databases.iter().map(|d| d.to_string()).collect(),
        limits,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_keeps_its_data_in_its_own_sqlite_database() {
    let mut server = TestServer::start();
    let limits = LimitsSpec {
        sql_max_mib: Some(1),
        sql_statement_ms: Some(300),
        sql_max_rows: Some(1000),
        ..Default::default()
    };
    server
        .deploy("a", wasm::TODO, spec("/a", &["reports"], limits))
        .await;
    server
        .deploy("b", wasm::TODO, spec("/b", &[], LimitsSpec::default()))
        .await;

    todos_are_added_and_listed_with_parameters(&server).await;
    sql_errors_are_typed_and_named(&server).await;
    an_operator_queries_and_dumps_with_thaw_sql(&server);
    sql_stays_inside_its_file(&server).await;
    functions_do_not_see_each_others_databases(&server).await;
    a_full_database_refuses_writes_and_serves_reads(&server).await;
    long_statements_and_large_results_are_refused(&server).await;
    concurrent_increments_lose_nothing(&server).await;
    acknowledged_writes_survive_kill_9(&mut server).await;
    removing_the_function_removes_its_databases(&server).await;
}

/// The schema is created on first use (two migrations), titles with quotes and SQL in them
/// are stored as text, and rows come back typed.
async fn todos_are_added_and_listed_with_parameters(server: &TestServer) {
    assert_eq!(add_todo(server, "a", "tea").await, (200, "1".into()));
    let hostile = "x'); DROP TABLE todo; --";
    assert_eq!(add_todo(server, "a", hostile).await, (200, "2".into()));
    assert_eq!(
        call(
            server,
            "a",
            "/sql?q=UPDATE%20todo%20SET%20done%20%3D%201%20WHERE%20id%20%3D%201"
        )
        .await,
        (200, "changes=1 rowid=0".into())
    );
    assert_eq!(
        call(server, "a", "/todos?done=0").await,
        (200, format!("2|{hostile}|false\n"))
    );
    assert_eq!(
        call(server, "a", "/todos?done=1").await,
        (200, "1|tea|true\n".into())
    );
    let (status, version) = call(server, "a", &sql(None, "PRAGMA user_version")).await;
    assert_eq!((status, version.lines().next()), (200, Some("2")));
}

/// `thaw sql`: a query as a table, a write, a dump that holds the rows as they are, and the
/// guest's confinement kept for the operator too.
fn an_operator_queries_and_dumps_with_thaw_sql(server: &TestServer) {
    let run = |args: &[&str]| {
        let out = thaw_command(server, args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, err) = run(&["sql", "a", "SELECT id, title, done FROM todo ORDER BY id"]);
    assert!(ok, "{err}");
    assert_eq!(
        table,
        "id | title | done\n1 | tea | 1\n2 | x'); DROP TABLE todo; -- | 0\n"
    );
    let (ok, answer, err) = run(&["sql", "a", "UPDATE todo SET done = 0 WHERE id = 1"]);
    assert!(ok, "{err}");
    assert_eq!(answer, "changes: 1, last insert rowid: 0\n");
    let (ok, _, err) = run(&["sql", "a", "UPDATE todo SET done = 1 WHERE id = 1"]);
    assert!(ok, "{err}");
    let (ok, dump, err) = run(&["sql", "a", "--dump"]);
    assert!(ok, "{err}");
    assert!(
        dump.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE todo"),
        "{dump}"
    );
    assert!(
        dump.contains("INSERT INTO \"todo\" VALUES(2,'x''); DROP TABLE todo; --',0);\n"),
        "{dump}"
    );
    assert!(dump.ends_with("COMMIT;\n"), "{dump}");
    let (ok, _, err) = run(&["sql", "a", "ATTACH DATABASE '/tmp/x.sqlite' AS x"]);
    assert!(!ok && err.contains("not authorized"), "{err}");
    let (ok, _, err) = run(&["sql", "b", "--db", "reports", "SELECT 1"]);
    assert!(!ok && err.contains("no such database"), "{err}");
}

async fn sql_errors_are_typed_and_named(server: &TestServer) {
    let (status, body) = call(server, "a", &sql(None, "SELECT nope FROM todo")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("no such column: nope"), "{body}");
    // A listed database opens; an unlisted one is refused, naming the setting.
    let (status, body) = call(server, "a", &sql(Some("reports"), "SELECT 1")).await;
    assert_eq!((status, body.as_str()), (200, "1\nchanges=0 rowid=0"));
    let (status, body) = call(server, "b", &sql(Some("reports"), "SELECT 1")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("sqlite_databases"), "{body}");
    let (status, _) = call(server, "a", &sql(Some("../b/default"), "SELECT 1")).await;
    assert_eq!(status, 404);
}

/// ATTACH, VACUUM INTO and the pragmas that would lift a quota or durability are refused,
/// and nothing is written outside the database.
async fn sql_stays_inside_its_file(server: &TestServer) {
    let outside = server.data_dir.join("outside.sqlite");
    let b_file = server.data_dir.join("sql/b/default.sqlite");
    for q in [
        format!("ATTACH DATABASE '{}' AS o", outside.display()),
        format!("ATTACH DATABASE '{}' AS o", b_file.display()),
        format!("VACUUM INTO '{}'", outside.display()),
        "PRAGMA max_page_count = 100000000".into(),
        "PRAGMA synchronous = OFF".into(),
        "PRAGMA journal_mode = MEMORY".into(),
    ] {
        let (status, body) = call(server, "a", &sql(None, &q)).await;
        assert_eq!(status, 500, "{q}: {body}");
    }
    assert!(!outside.exists());
    let dir = server.data_dir.join("sql/a");
    let mode = std::fs::metadata(dir.join("default.sqlite"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

async fn functions_do_not_see_each_others_databases(server: &TestServer) {
    let (status, body) = call(server, "b", "/todos?done=0").await;
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "b starts with its own, empty database"
    );
    let (status, body) = call(server, "b", &sql(None, "SELECT count(*) FROM todo")).await;
    assert_eq!((status, body.as_str()), (200, "0\nchanges=0 rowid=0"));
}

/// With `sql_max_mib = 1`, inserting 64 KiB blobs fills the database: the write is a 507
/// with the SDK's message, and the rows already there are still read.
async fn a_full_database_refuses_writes_and_serves_reads(server: &TestServer) {
    call(server, "a", &sql(None, "CREATE TABLE fill (b BLOB)")).await;
    let insert = sql(None, "INSERT INTO fill VALUES (zeroblob(65536))");
    let mut inserted = 0;
    let (status, body) = loop {
        let (status, body) = call(server, "a", &insert).await;
        if status != 200 {
            break (status, body);
        }
        inserted += 1;
        assert!(inserted < 64, "1 MiB never filled: {body}");
    };
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("sql_max_mib"), "{body}");
    assert!(inserted >= 4, "only {inserted} blobs fit");
    let (status, body) = call(server, "a", &sql(None, "SELECT count(*) FROM fill")).await;
    assert_eq!(
        (status, body.lines().next()),
        (200, Some(inserted.to_string().as_str()))
    );
    assert_eq!(
        call(server, "a", "/todos?done=1").await,
        (200, "1|tea|true\n".into())
    );
    // Deleting makes room again.
    let (status, _) = call(server, "a", &sql(None, "DROP TABLE fill")).await;
    assert_eq!(status, 200);
}

/// `sql_statement_ms = 300` stops a statement that runs on; `sql_max_rows = 1000` refuses a
/// larger result; each names its limit, and the function goes on.
async fn long_statements_and_large_results_are_refused(server: &TestServer) {
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let (status, body) = call(server, "a", &sql(None, endless)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("longer than 300 ms") && body.contains("sql_statement_ms"),
        "{body}"
    );
    let rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1001) SELECT x FROM c";
    let (status, body) = call(server, "a", &sql(None, rows)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("more than 1000 rows") && body.contains("sql_max_rows"),
        "{body}"
    );
    let (status, body) = call(server, "a", &sql(None, &rows.replace("1001", "1000"))).await;
    assert_eq!(
        (status, body.lines().count()),
        (200, 1001),
        "1000 rows and the effects line"
    );
}

/// 32 clients incrementing one row at once, each on its own connection: every increment is
/// counted (SQLite serialises the writers; a writer waits for the lock within its time).
async fn concurrent_increments_lose_nothing(server: &TestServer) {
    let create = "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)";
    assert_eq!(call(server, "a", &sql(None, create)).await.0, 200);
    assert_eq!(
        call(server, "a", &sql(None, "INSERT INTO counter VALUES (1, 0)"))
            .await
            .0,
        200
    );
    let increment = sql(None, "UPDATE counter SET n = n + 1 WHERE id = 1");
    assert_eq!(
        thirty_two_clients(server, "a", &increment, 10).await,
        Vec::<String>::new(),
        "increments failed"
    );
    let (status, body) = call(server, "a", &sql(None, "SELECT n FROM counter")).await;
    assert_eq!((status, body.lines().next()), (200, Some("320")));
}

/// kill -9 while clients add to-dos: every acknowledged one is there after the restart.
async fn acknowledged_writes_survive_kill_9(server: &mut TestServer) {
    let url = format!("{}/b/todo", server.url);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (url, acknowledged) = (url.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let http = client();
                for n in 0.. {
                    match http.post(&url).body(format!("w{i}-{n}")).send().await {
                        Ok(r) if r.status() == 200 => {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    crate::support::eventually(
        "acknowledged inserts before the kill",
        std::time::Duration::from_secs(30),
        || {
            let acknowledged = acknowledged.clone();
            async move { acknowledged.load(Ordering::SeqCst) >= 20 }
        },
    )
    .await;
    server.kill_and_restart(1);
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let (status, body) = call(server, "b", &sql(None, "SELECT count(*) FROM todo")).await;
    assert_eq!(status, 200, "{body}");
    let count: usize = body.lines().next().unwrap().parse().unwrap();
    assert!(
        count >= acknowledged && count <= acknowledged + 4,
        "{acknowledged} acknowledged inserts, {count} rows after kill -9"
    );
}

async fn removing_the_function_removes_its_databases(server: &TestServer) {
    let dir = server.data_dir.join("sql/a");
    assert!(dir.join("reports.sqlite").is_file());
    server.admin().remove("a").await.unwrap();
    assert!(!dir.exists(), "a's databases outlived it");
    server
        .deploy("a", wasm::TODO, spec("/a", &[], LimitsSpec::default()))
        .await;
    let (status, body) = call(server, "a", &sql(None, "SELECT count(*) FROM todo")).await;
    assert_eq!(
        status, 500,
        "a new function of the same name starts empty: {body}"
    );
}

/// `/pg` on the to-do guest: `q` run on Postgres database `db` with text parameters `p`;
/// `x` executes instead of querying.
fn pg(db: &str, q: &str, p: &[&str], execute: bool) -> String {
    let mut path = format!("/pg?db={}&q={}", encoded(db), encoded(q));
    for value in p {
        path.push_str(&format!("&p={}", encoded(value)));
    }
    if execute {
        path.push_str("&x=1");
    }
    path
}

/// The Rust SDK's `pg` module on a database the function's spec names, its URL in a secret:
/// opened by name with no allow-list entry, statements with parameters and typed rows,
/// the server's SQLSTATE in an error, 32 clients' increments all counted. The grant is the
/// name: the same URL as an address is refused, another function cannot open the name, a
/// secret the host lacks is a 400 naming the database, and the URL appears in no listing,
/// record or log.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_opens_the_postgres_database_its_spec_names() {
    let Some(pg_server) = thaw_harness::Postgres::start() else {
        return;
    };
    let server = TestServer::start_with_env(&[], &[("THAW_SECRET_ORDERS_DB", &pg_server.url)]);
    let mut granted = spec("/a", &[], LimitsSpec::default());
    granted.postgres_databases.insert(
        "orders".into(),
        PostgresDatabase {
            secret: SecretRef::Env("ORDERS_DB".into()),
        },
    );
    server.deploy("a", wasm::TODO, granted.clone()).await;
    server
        .deploy("b", wasm::TODO, spec("/b", &[], LimitsSpec::default()))
        .await;

    let create =
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL)";
    assert_eq!(
        call(&server, "a", &pg("orders", create, &[], true)).await,
        (200, "0".into())
    );
    let insert = "INSERT INTO orders (item, qty) VALUES ($1, $2::text::int)";
    for (item, qty) in [("tea'); DROP TABLE orders; --", "2"), ("milk", "1")] {
        assert_eq!(
            call(&server, "a", &pg("orders", insert, &[item, qty], true)).await,
            (200, "1".into())
        );
    }
    let select = "SELECT id, item, qty, qty * 1.5 AS half_more, NULL::text AS note FROM orders WHERE qty >= $1::text::int ORDER BY id";
    assert_eq!(
        call(&server, "a", &pg("orders", select, &["1"], false)).await,
        (
            200,
            "1|tea'); DROP TABLE orders; --|2|3.0|NULL\n2|milk|1|1.5|NULL\n".into()
        )
    );
    // A decimal goes both ways exactly, past what a 128-bit decimal holds.
    let doubled = pg("orders", "SELECT $1::numeric * 2", &[], false)
        + "&d=12345678901234567890123456789.123456789";
    assert_eq!(
        call(&server, "a", &doubled).await,
        (200, "24691357802469135780246913578.246913578\n".into())
    );
    let (status, body) = call(
        &server,
        "a",
        &pg("orders", "SELECT * FROM nope", &[], false),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("\"nope\" does not exist") && body.contains("SQLSTATE 42P01"),
        "{body}"
    );

    // 32 clients x 5 increments through the host's pool lose nothing.
    for statement in [
        "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)",
        "INSERT INTO counter VALUES (1, 0)",
    ] {
        assert_eq!(
            call(&server, "a", &pg("orders", statement, &[], true))
                .await
                .0,
            200
        );
    }
    let increment = pg(
        "orders",
        "UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n",
        &[],
        false,
    );
    assert_eq!(
        thirty_two_clients(&server, "a", &increment, 5).await,
        Vec::<String>::new(),
        "increments failed"
    );
    assert_eq!(
        call(
            &server,
            "a",
            &pg("orders", "SELECT n FROM counter", &[], false)
        )
        .await,
        (200, "160\n".into())
    );

    // The grant is the name, not the server: the URL itself is an address the allow-list
    // (empty) refuses, and a function without the name cannot open it.
    let (status, body) = call(&server, "a", &pg(&pg_server.url, "SELECT 1", &[], false)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("allowed_outbound_hosts"), "{body}");
    let (status, body) = call(&server, "b", &pg("orders", "SELECT 1", &[], false)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("no Postgres database \"orders\"") && body.contains("postgres_databases"),
        "{body}"
    );

    // A secret the host lacks: a 400 naming the database, and the version serving stays.
    let mut missing = granted.clone();
    missing.postgres_databases.insert(
        "reports".into(),
        PostgresDatabase {
            secret: SecretRef::Env("REPORTS_DB".into()),
        },
    );
    let e = server
        .admin()
        .typed()
        .deploy("a", &missing, thaw_test_functions::read(wasm::TODO).into())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert!(
        e.to_string().contains("postgres_databases \"reports\"")
            && e.to_string().contains("THAW_SECRET_REPORTS_DB is not set"),
        "{e}"
    );
    assert_eq!(
        call(
            &server,
            "a",
            &pg("orders", "SELECT count(*) FROM orders", &[], false)
        )
        .await,
        (200, "2\n".into())
    );

    // The URL is a reference everywhere but in the host's memory.
    let listed = thaw_command(&server, &["list", "--json"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("env:ORDERS_DB"), "{listed}");
    let record = std::fs::read_to_string(server.data_dir.join("functions/a.json")).unwrap();
    for place in [listed.to_string(), record, server.log()] {
        assert!(!place.contains(&pg_server.url), "the URL leaked: {place}");
    }
}
