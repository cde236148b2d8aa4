use std::os::unix::fs::PermissionsExt as _;

use super::*;

const QUOTA: SqlQuota = SqlQuota {
    max_bytes: 1 << 20,
    statement_timeout: Duration::from_millis(200),
    max_rows: 100,
    max_result_bytes: 4096,
};

fn host() -> (tempfile::TempDir, SqlHost) {
    let dir = tempfile::tempdir().unwrap();
    let host = SqlHost::new(dir.path().join("sql"));
    (dir, host)
}

fn name(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn exec(db: &mut Lease, sql: &str, params: &[Value]) -> Result<(QueryResult, Effects), SqlError> {
    db.execute(sql, params, &QUOTA)
}

fn connect(host: &SqlHost, function: &str, db: &str, allowed: &[String]) -> Lease {
    host.database(&name(function), db, allowed)
        .unwrap()
        .connect()
        .unwrap()
}

#[test]
fn a_table_is_created_written_with_parameters_and_read_back() {
    let (_dir, host) = host();
    let mut db = connect(&host, "orders", "default", &[]);
    exec(
        &mut db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price REAL, raw BLOB)",
        &[],
    )
    .unwrap();
    let (_, effects) = exec(
        &mut db,
        "INSERT INTO t (name, price, raw) VALUES (?, ?, ?)",
        &[
            Value::Text("tea".into()),
            Value::Real(2.5),
            Value::Blob(vec![0, 1, 2]),
        ],
    )
    .unwrap();
    assert_eq!(effects.changes, 1);
    assert_eq!(effects.last_insert_rowid, 1);
    let (result, _) = exec(
        &mut db,
        "SELECT id, name, price, raw, NULL AS absent FROM t WHERE name = ?1",
        &[Value::Text("tea".into())],
    )
    .unwrap();
    assert_eq!(result.columns, ["id", "name", "price", "raw", "absent"]);
    assert_eq!(
        result.rows,
        [vec![
            Value::Integer(1),
            Value::Text("tea".into()),
            Value::Real(2.5),
            Value::Blob(vec![0, 1, 2]),
            Value::Null,
        ]]
    );
    // A statement that fails says why, in SQLite's words.
    let err = exec(&mut db, "SELECT nope FROM t", &[]).unwrap_err();
    assert!(
        matches!(&err, SqlError::Io(m) if m.contains("no such column: nope")),
        "{err:?}"
    );
}

#[test]
fn committed_writes_survive_a_new_host_and_the_files_are_the_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let host = SqlHost::new(dir.path().join("sql"));
        let mut db = connect(&host, "f", "default", &[]);
        exec(&mut db, "CREATE TABLE t (v)", &[]).unwrap();
        exec(&mut db, "INSERT INTO t VALUES (42)", &[]).unwrap();
        let fdir = dir.path().join("sql/f");
        for file in ["default.sqlite", "default.sqlite-wal"] {
            let mode = std::fs::metadata(fdir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = std::fs::metadata(&fdir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let host = SqlHost::new(dir.path().join("sql"));
    let mut db = connect(&host, "f", "default", &[]);
    let (result, _) = exec(&mut db, "SELECT v FROM t", &[]).unwrap();
    assert_eq!(result.rows, [vec![Value::Integer(42)]]);
    let (mode, _) = exec(&mut db, "PRAGMA page_size", &[]).unwrap();
    assert_eq!(mode.rows, [vec![Value::Integer(PAGE_BYTES as i64)]]);
}

#[test]
fn a_function_reaches_only_its_own_listed_databases() {
    let (dir, host) = host();
    let mut a = connect(&host, "a", "default", &[]);
    exec(&mut a, "CREATE TABLE secret (v)", &[]).unwrap();
    let mut b = connect(&host, "b", "default", &[]);
    let err = exec(&mut b, "SELECT * FROM secret", &[]).unwrap_err();
    assert!(
        matches!(&err, SqlError::Io(m) if m.contains("no such table")),
        "{err:?}"
    );
    for bad in [
        "../a/default",
        "a/default",
        "",
        "x".repeat(65).as_str(),
        "default.sqlite",
    ] {
        assert!(
            matches!(
                host.database(&name("b"), bad, &[]),
                Err(SqlError::NoSuchDatabase(_))
            ),
            "{bad:?}"
        );
    }
    // A name the spec does not list is refused; listed, it opens.
    assert!(matches!(
        host.database(&name("b"), "reports", &[]),
        Err(SqlError::NoSuchDatabase(_))
    ));
    host.database(&name("b"), "reports", &["reports".into()])
        .unwrap();
    assert!(dir.path().join("sql/b/reports.sqlite").is_file());
}

#[test]
fn sql_cannot_leave_its_file_or_lift_its_quota() {
    let (dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    let other = dir.path().join("other.sqlite");
    let attach = format!("ATTACH DATABASE '{}' AS o", other.display());
    let vacuum = format!("VACUUM INTO '{}'", other.display());
    for sql in [
        attach.as_str(),
        vacuum.as_str(),
        "PRAGMA max_page_count = 1000000000",
        "PRAGMA synchronous = OFF",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = ON",
        "SELECT load_extension('/tmp/x')",
        "SELECT * FROM pragma_journal_mode",
        "CREATE TEMP TABLE t (v)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "VACUUM",
    ] {
        assert!(exec(&mut db, sql, &[]).is_err(), "{sql} was allowed");
    }
    assert!(!other.exists(), "a file outside the database was written");
    // Harmless pragmas work.
    exec(&mut db, "PRAGMA user_version = 3", &[]).unwrap();
    let (v, _) = exec(&mut db, "PRAGMA user_version", &[]).unwrap();
    assert_eq!(v.rows, [vec![Value::Integer(3)]]);
}

#[test]
fn a_full_database_refuses_writes_and_still_answers_reads() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    let small = SqlQuota {
        max_bytes: 64 << 10,
        ..QUOTA
    };
    db.execute("CREATE TABLE t (v BLOB)", &[], &small).unwrap();
    let blob = Value::Blob(vec![7; 8 << 10]);
    let mut written = 0;
    let err = loop {
        match db.execute(
            "INSERT INTO t VALUES (?)",
            std::slice::from_ref(&blob),
            &small,
        ) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 100, "the quota never stopped the writes");
    };
    assert_eq!(err, SqlError::DatabaseFull(64 << 10));
    assert!(written >= 2);
    let (count, _) = db.execute("SELECT count(*) FROM t", &[], &small).unwrap();
    assert_eq!(count.rows, [vec![Value::Integer(written)]]);
}

#[test]
fn a_statement_past_its_time_is_stopped_and_the_connection_goes_on() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    let err = exec(
        &mut db,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(&err, SqlError::Io(m) if m.contains("longer than 200 ms")),
        "{err:?}"
    );
    assert_eq!(
        exec(&mut db, "SELECT 1", &[]).unwrap().0.rows,
        [vec![Value::Integer(1)]]
    );
}

#[test]
fn results_over_their_row_or_byte_quota_are_refused() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    let rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 101) \
                SELECT x FROM c";
    let err = exec(&mut db, rows, &[]).unwrap_err();
    assert!(
        matches!(&err, SqlError::Io(m) if m.contains("more than 100 rows")),
        "{err:?}"
    );
    let err = exec(&mut db, "SELECT zeroblob(5000)", &[]).unwrap_err();
    assert!(
        matches!(&err, SqlError::Io(m) if m.contains("larger than 4096 bytes")),
        "{err:?}"
    );
    assert_eq!(
        exec(&mut db, &rows.replace("101", "100"), &[])
            .unwrap()
            .0
            .rows
            .len(),
        100
    );
}

#[test]
fn removing_a_function_deletes_its_databases() {
    let (dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    exec(&mut db, "CREATE TABLE t (v)", &[]).unwrap();
    drop(db);
    host.remove_function("f").unwrap();
    assert!(!dir.path().join("sql/f").exists());
    let mut db = connect(&host, "f", "default", &[]);
    assert!(
        exec(&mut db, "SELECT * FROM t", &[]).is_err(),
        "the old table survived"
    );
}

#[test]
fn a_transaction_is_its_connections_and_an_abandoned_one_rolls_back() {
    let (_dir, host) = host();
    let mut setup = connect(&host, "f", "default", &[]);
    exec(&mut setup, "CREATE TABLE t (v)", &[]).unwrap();
    drop(setup);
    let mut writer = connect(&host, "f", "default", &[]);
    let mut reader = connect(&host, "f", "default", &[]);
    exec(&mut writer, "BEGIN", &[]).unwrap();
    exec(&mut writer, "INSERT INTO t VALUES (1)", &[]).unwrap();
    // Another connection does not see the uncommitted row, and its own rowid is its own.
    let (seen, effects) = exec(&mut reader, "SELECT count(*) FROM t", &[]).unwrap();
    assert_eq!(seen.rows, [vec![Value::Integer(0)]]);
    assert_eq!(effects.last_insert_rowid, 0);
    // The writer goes away mid-transaction (its instance trapped): nothing was committed,
    // and its connection is not reused with the transaction open.
    drop(writer);
    let mut next = connect(&host, "f", "default", &[]);
    exec(&mut next, "INSERT INTO t VALUES (2)", &[]).unwrap();
    let (seen, _) = exec(&mut reader, "SELECT v FROM t", &[]).unwrap();
    assert_eq!(seen.rows, [vec![Value::Integer(2)]]);
}

#[test]
fn a_reused_connection_reports_no_insert_of_an_earlier_lease() {
    let (_dir, host) = host();
    let mut first = connect(&host, "f", "default", &[]);
    exec(&mut first, "CREATE TABLE t (v)", &[]).unwrap();
    assert_eq!(
        exec(&mut first, "INSERT INTO t VALUES (1)", &[])
            .unwrap()
            .1
            .last_insert_rowid,
        1
    );
    drop(first);
    let mut second = connect(&host, "f", "default", &[]);
    let (_, effects) = exec(&mut second, "UPDATE t SET v = 2", &[]).unwrap();
    assert_eq!(
        effects,
        Effects {
            changes: 1,
            last_insert_rowid: 0
        }
    );
}

#[test]
fn a_dump_rebuilds_the_same_database() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    exec(
        &mut db,
        "CREATE TABLE \"odd \"\"name\" (i INTEGER, r REAL, t TEXT, b BLOB, n)",
        &[],
    )
    .unwrap();
    exec(&mut db, "CREATE INDEX by_t ON \"odd \"\"name\" (t)", &[]).unwrap();
    let row = [
        Value::Integer(-7),
        Value::Real(2.0),
        Value::Text("it's; DROP".into()),
        Value::Blob(vec![0, 0xff]),
        Value::Null,
    ];
    exec(
        &mut db,
        "INSERT INTO \"odd \"\"name\" VALUES (?, ?, ?, ?, ?)",
        &row,
    )
    .unwrap();
    let dump = db.dump().unwrap();
    let mut copy = connect(&host, "g", "default", &[]);
    for statement in dump.split(";\n").filter(|s| !s.trim().is_empty()) {
        if statement.starts_with("PRAGMA") {
            continue;
        }
        exec(&mut copy, statement, &[]).unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let (rows, _) = exec(&mut copy, "SELECT * FROM \"odd \"\"name\"", &[]).unwrap();
    assert_eq!(rows.rows, [row.to_vec()]);
    let (index, _) = exec(
        &mut copy,
        "SELECT name FROM sqlite_schema WHERE type = 'index'",
        &[],
    )
    .unwrap();
    assert_eq!(index.rows, [vec![Value::Text("by_t".into())]]);
}

#[test]
fn a_statement_cannot_make_a_value_larger_than_the_host_allows() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    let quota = SqlQuota {
        max_result_bytes: u64::MAX,
        ..QUOTA
    };
    for sql in [
        format!("SELECT length(zeroblob({}))", MAX_VALUE_BYTES + 1),
        format!(
            "SELECT length(printf('%.*c', {}, 'x'))",
            MAX_VALUE_BYTES + 1
        ),
    ] {
        let err = db.execute(&sql, &[], &quota).unwrap_err();
        assert!(
            matches!(&err, SqlError::Io(m) if m.contains("too big")),
            "{sql}: {err:?}"
        );
    }
    let (ok, _) = db
        .execute(
            &format!("SELECT length(zeroblob({MAX_VALUE_BYTES}))"),
            &[],
            &quota,
        )
        .unwrap();
    assert_eq!(ok.rows, [vec![Value::Integer(MAX_VALUE_BYTES as i64)]]);
}

#[test]
fn a_pooled_connection_carries_nothing_of_the_request_before() {
    let (_dir, host) = host();
    let mut first = connect(&host, "f", "default", &[]);
    exec(&mut first, "CREATE TABLE t (v)", &[]).unwrap();
    exec(&mut first, "INSERT INTO t VALUES (1), (2)", &[]).unwrap();
    exec(&mut first, "PRAGMA foreign_keys = OFF", &[]).unwrap();
    drop(first);
    let mut second = connect(&host, "f", "default", &[]);
    let (fk, _) = exec(&mut second, "PRAGMA foreign_keys", &[]).unwrap();
    assert_eq!(fk.rows, [vec![Value::Integer(1)]]);
    // A read reports no changes, not the last write's count on this connection.
    let (_, effects) = exec(&mut second, "SELECT * FROM t", &[]).unwrap();
    assert_eq!(effects, Effects::default());
}

#[test]
fn a_dump_puts_rows_back_before_triggers_and_keeps_autoincrement() {
    let (_dir, host) = host();
    let mut db = connect(&host, "f", "default", &[]);
    for sql in [
        "CREATE TABLE item (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "CREATE TABLE audit (n)",
        "CREATE TRIGGER count_items AFTER INSERT ON item BEGIN INSERT INTO audit VALUES (1); END",
        "CREATE TABLE sqliteX (v)",
        "INSERT INTO item (v) VALUES ('a'), ('b')",
        "DELETE FROM item WHERE v = 'b'",
    ] {
        exec(&mut db, sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let dump = db.dump().unwrap();
    let mut copy = connect(&host, "g", "default", &[]);
    for statement in dump.split(";\n").filter(|s| !s.trim().is_empty()) {
        if !statement.starts_with("PRAGMA") {
            exec(&mut copy, statement, &[]).unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }
    let count = |db: &mut Lease, sql: &str| exec(db, sql, &[]).unwrap().0.rows;
    assert_eq!(
        count(&mut copy, "SELECT count(*) FROM audit"),
        count(&mut db, "SELECT count(*) FROM audit")
    );
    assert_eq!(
        count(&mut copy, "SELECT count(*) FROM sqliteX"),
        [vec![Value::Integer(0)]]
    );
    let (_, next) = exec(&mut copy, "INSERT INTO item (v) VALUES ('c')", &[]).unwrap();
    assert_eq!(
        next.last_insert_rowid, 3,
        "AUTOINCREMENT does not hand out id 2 again"
    );
}
