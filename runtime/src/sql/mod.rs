//! Functions' SQL: an embedded SQLite database per function and database name, in the data
//! directory (`<data-dir>/sql/<function>/<name>.sqlite`), through `rusqlite` with its bundled
//! SQLite. The guest's side is `spin:sqlite` ([`crate::guest::sqlite`]), the interface Spin
//! apps and `thaw_sdk::sql` both import.
//!
//! # Scoping
//! A function opens databases by name (`default`, or a name its spec lists); the host builds
//! the path from the calling function's name and the database name, so no name, path or SQL
//! reaches another function's file. The SQL a guest runs is confined to its one file:
//! `ATTACH` is disabled (SQLite's attached-database limit is 0, which also stops `VACUUM
//! INTO`), an authorizer refuses every `PRAGMA` outside a short list of harmless ones (a
//! guest must not lift its size quota with `max_page_count`, or its durability with
//! `synchronous`), and extensions cannot be loaded. Data belongs to the function, not to a
//! version, as its key-value state does; `thaw remove` deletes it.
//!
//! # Durability
//! WAL journal with `synchronous = FULL`: a statement that returned has its transaction in
//! the WAL and fsynced, so a `kill -9` loses no committed write. The files are the owner's
//! only (0600 in a 0700 directory; SQLite gives its `-wal` and `-shm` files the database
//! file's mode).
//!
//! # Quotas ([`SqlQuota`], from the calling version's limits)
//! - size: `max_page_count`, so a write that would grow the file past it fails with
//!   `SQLITE_FULL` ([`SqlError::DatabaseFull`]) and reads go on working;
//! - statement time: a progress handler interrupts a statement past its deadline;
//! - result size: rows and bytes, counted while the rows are read, so a result over either
//!   is refused before it is all in host memory.
//!
//! # Connections
//! Each guest `open` gets a connection of its own ([`Lease`]), so a transaction a guest
//! begins is its alone, and an instance that ends mid-transaction (a trap, a timeout) rolls
//! it back when its connection closes. Connections are reused: a database keeps a few idle
//! ones ([`MAX_IDLE`]), and a lease given back outside a transaction joins them, so a
//! request's `open` is a pop, not a file open. Statements run on blocking threads; SQLite
//! serialises writers, and a writer waits for another's lock within its statement time. The
//! embedded databases are per host: in a cluster each node has its own (as the embedded
//! key-value store is).

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;

/// The database every function may open without listing it.
pub const DEFAULT_DATABASE: &str = "default";

/// Longest statement text the host accepts.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Page size of new databases (SQLite's default); the size quota is counted in pages.
const PAGE_BYTES: u64 = 4096;

/// Largest string or blob a statement may make (`SQLITE_LIMIT_LENGTH`).
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// Longest a statement waits for another connection's write lock, apart from its own run
/// time (`sql_statement_ms`): SQLite has one writer at a time, and a burst of writers queues.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What a database's WAL is truncated to after a checkpoint.
const WAL_LIMIT_BYTES: i64 = 64 << 20;

/// Bytes of SQLite's heap in the whole process, past which its allocations fail (a
/// statement gets `SQLITE_NOMEM`) instead of the host running out of memory.
const HEAP_LIMIT_BYTES: i64 = 1 << 30;

/// VM instructions between two checks of a statement's deadline.
const PROGRESS_STEPS: i32 = 10_000;

/// `PRAGMA`s a guest may run: they read the schema, or set only what is its own business
/// (`user_version` for migrations, `foreign_keys` enforcement on its connection).
const ALLOWED_PRAGMAS: &[&str] = &[
    "user_version",
    "foreign_keys",
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "page_count",
    "page_size",
    "freelist_count",
];

/// A function's SQL quota (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlQuota {
    /// Largest database file, bytes.
    pub max_bytes: u64,
    /// Longest one statement may run.
    pub statement_timeout: Duration,
    /// Most rows one result holds.
    pub max_rows: u64,
    /// Most bytes (text and blob lengths, 8 per number) one result holds.
    pub max_result_bytes: u64,
}

impl SqlQuota {
    /// The quota of a version's resolved limits.
    pub fn of(limits: &thaw_spec::spec::Limits) -> Self {
        Self {
            max_bytes: limits.sql_max_bytes,
            statement_timeout: limits.sql_statement_timeout,
            max_rows: limits.sql_max_rows,
            max_result_bytes: limits.sql_max_result_bytes,
        }
    }
}

/// One column's value, as `spin:sqlite` types them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// NULL.
    Null,
}

impl Value {
    /// What the value counts against [`SqlQuota::max_result_bytes`].
    fn cost(&self) -> u64 {
        match self {
            Value::Text(text) => text.len() as u64,
            Value::Blob(blob) => blob.len() as u64,
            Value::Integer(_) | Value::Real(_) | Value::Null => 8,
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Null => ValueRef::Null,
        }))
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(value: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match value {
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            // SQLite does not check that stored text is UTF-8; a lossy copy never fails.
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            ValueRef::Null => Value::Null,
        }
    }
}

/// A statement's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    /// The result's column names (empty for a statement that returns no rows).
    pub columns: Vec<String>,
    /// Its rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// Why a database call failed, in the terms of `spin:sqlite`'s `error`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SqlError {
    /// Not a database this function may open (a bad name, or one its spec does not list).
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    /// The host has no SQL (no data directory for it).
    #[error("SQL is not available on this host")]
    AccessDenied,
    /// The database is at its size quota: writes fail, reads work.
    #[error("the database is full (its quota is {0} bytes)")]
    DatabaseFull(u64),
    /// Anything else, with SQLite's message or the quota that was hit.
    #[error("{0}")]
    Io(String),
}

/// The host's databases.
#[derive(Clone)]
pub struct SqlHost {
    inner: Arc<Inner>,
}

/// A database's function and name.
type DatabaseKey = (Arc<str>, String);

struct Inner {
    /// `<data-dir>/sql`.
    root: PathBuf,
    /// Open databases by function and name; kept open for the host's life (opening sets
    /// pragmas and reads the schema), closed when their function is removed.
    open: Mutex<HashMap<DatabaseKey, Arc<Database>>>,
}

/// One database: its file, and connections to it that are idle.
pub struct Database {
    path: PathBuf,
    idle: Mutex<Vec<SqlConnection>>,
}

/// One SQLite connection, confined (module docs).
pub struct SqlConnection {
    connection: rusqlite::Connection,
    /// Set while the host runs its own statements: the authorizer lets them through.
    host: Arc<std::sync::atomic::AtomicBool>,
    /// The `max_page_count` last set: the quota of the version that last ran a statement
    /// on it (a redeploy may change it).
    max_pages: u64,
}

/// A connection lent to a guest: its statements, its transaction. Given back to the
/// database's idle connections when dropped, unless a transaction is still open (then it is
/// closed, which rolls the transaction back).
pub struct Lease {
    connection: Option<SqlConnection>,
    db: Arc<Database>,
}

/// What a statement changed, besides its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// `sqlite3_changes`: rows the statement inserted, updated or deleted.
    pub changes: u64,
    /// `sqlite3_last_insert_rowid` on the connection after it.
    pub last_insert_rowid: i64,
}

impl SqlHost {
    /// The databases under `root` (created, owner-only, on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        // SAFETY: a process-wide setting, safe to call at any time.
        unsafe { rusqlite::ffi::sqlite3_hard_heap_limit64(HEAP_LIMIT_BYTES) };
        Self {
            inner: Arc::new(Inner {
                root: root.into(),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A connection to `function`'s database `name` when that costs no I/O: the database
    /// is open and has an idle connection. The request path tries this first and goes to a
    /// blocking thread ([`SqlHost::database`], [`Database::connect`]) only otherwise.
    pub fn idle_connection(
        &self,
        function: &Arc<str>,
        name: &str,
        allowed: &[String],
    ) -> Option<Lease> {
        if name != DEFAULT_DATABASE && !allowed.iter().any(|a| a == name) {
            return None;
        }
        let db = lock(&self.inner.open)
            .get(&(function.clone(), name.to_owned()))?
            .clone();
        let connection = lock(&db.idle).pop()?;
        Some(Lease::reusing(connection, db))
    }

    /// `function`'s database `name`, opened (and created) if needed. Blocking: call it on a
    /// blocking thread. `allowed` are the names its spec lists besides [`DEFAULT_DATABASE`].
    pub fn database(
        &self,
        function: &Arc<str>,
        name: &str,
        allowed: &[String],
    ) -> Result<Arc<Database>, SqlError> {
        if crate::spec::validate_database_name(name).is_err()
            || (name != DEFAULT_DATABASE && !allowed.iter().any(|a| a == name))
        {
            return Err(SqlError::NoSuchDatabase(name.to_owned()));
        }
        let mut open = lock(&self.inner.open);
        if let Some(db) = open.get(&(function.clone(), name.to_owned())) {
            return Ok(db.clone());
        }
        let dir = self.inner.root.join(&**function);
        let db = Database::open(&dir, name).map_err(|e| {
            tracing::warn!(
                function = &**function,
                database = name,
                "opening failed: {e:#}"
            );
            SqlError::Io("the database could not be opened".into())
        })?;
        let db = Arc::new(db);
        open.insert((function.clone(), name.to_owned()), db.clone());
        Ok(db)
    }

    /// Closes and deletes every database of `function` (on `thaw remove`). Blocking.
    pub fn remove_function(&self, function: &str) -> std::io::Result<()> {
        lock(&self.inner.open).retain(|(f, _), _| &**f != function);
        let dir = self.inner.root.join(function);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Database {
    /// Creates (owner-only) `<dir>/<name>.sqlite` if needed, in WAL mode.
    fn open(dir: &Path, name: &str) -> anyhow::Result<Self> {
        crate::datadir::create_private_dir(dir)?;
        let path = dir.join(format!("{name}.sqlite"));
        // Created 0600 before SQLite opens it: SQLite would create it with the umask's mode,
        // and gives the WAL and shared-memory files the database file's mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let db = Self {
            path,
            idle: Mutex::new(Vec::new()),
        };
        // The journal mode is the file's: set once, here. The first connection is kept.
        let first = db.new_connection()?;
        first.host.store(true, std::sync::atomic::Ordering::Relaxed);
        let mode: String =
            first
                .connection
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        first
            .host
            .store(false, std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "the journal mode is {mode}, not WAL"
        );
        lock(&db.idle).push(first);
        Ok(db)
    }

    fn new_connection(&self) -> rusqlite::Result<SqlConnection> {
        let mut connection = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        // The WAL is truncated to this after a checkpoint resets it, so one burst of writes
        // does not leave a file as large as the burst.
        connection.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
        // SQLite runs inside the host process on SQL a guest wrote: the hardening SQLite's
        // own "untrusted SQL" guidance asks for. Defensive mode stops writes to shadow
        // tables and `sqlite_schema` (the route corrupt structures take); an untrusted
        // schema cannot call functions with side effects from views and triggers.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        for (limit, value) in [
            (Limit::SQLITE_LIMIT_ATTACHED, 0),
            (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_STATEMENT_BYTES as i32),
            // One string or blob, however a statement makes it (`zeroblob`, `printf`,
            // `group_concat`): host memory the guest's limit does not count. SQLite's
            // default is 1e9 bytes.
            (Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES as i32),
            (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
            (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 999),
            (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10),
        ] {
            connection.set_limit(limit, value)?;
        }
        connection.busy_timeout(LOCK_WAIT)?;
        let host = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let host_running = host.clone();
        connection.authorizer(Some(move |context: AuthContext<'_>| {
            if host_running.load(std::sync::atomic::Ordering::Relaxed) {
                Authorization::Allow
            } else {
                authorize(context)
            }
        }))?;
        Ok(SqlConnection {
            connection,
            host,
            max_pages: 0,
        })
    }

    /// A connection for a guest: an idle one, or a new one. Blocking.
    pub fn connect(self: &Arc<Self>) -> Result<Lease, SqlError> {
        let idle = lock(&self.idle).pop();
        match idle {
            Some(connection) => Ok(Lease::reusing(connection, self.clone())),
            None => {
                let connection = self.new_connection().map_err(|e| {
                    tracing::warn!(path = %self.path.display(), "connecting failed: {e}");
                    SqlError::Io("the database could not be opened".into())
                })?;
                Ok(Lease {
                    connection: Some(connection),
                    db: self.clone(),
                })
            }
        }
    }
}

/// Most idle connections a database keeps.
const MAX_IDLE: usize = 4;

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && connection.connection.is_autocommit()
        {
            // The next lease starts as a new connection would (`foreign_keys` is the one
            // connection setting a guest may change).
            connection
                .host
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let reset = connection
                .connection
                .execute_batch("PRAGMA foreign_keys = ON;");
            connection
                .host
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let mut idle = lock(&self.db.idle);
            if reset.is_ok() && idle.len() < MAX_IDLE {
                idle.push(connection);
            }
        }
    }
}

impl Lease {
    /// A lease of an idle connection, which starts as a new one would: no last insert (the
    /// rowid of another request's insert is not this guest's to see).
    fn reusing(connection: SqlConnection, db: Arc<Database>) -> Self {
        // SAFETY: the handle is this open connection's; we own the connection (no other
        // thread can use it) and no statement is running on it.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(connection.connection.handle(), 0) };
        Lease {
            connection: Some(connection),
            db,
        }
    }

    /// Runs one statement with `parameters` bound, under `quota`; a statement that waits for
    /// another connection's write lock waits within its time. Blocking.
    pub fn execute(
        &mut self,
        statement: &str,
        parameters: &[Value],
        quota: &SqlQuota,
    ) -> Result<(QueryResult, Effects), SqlError> {
        if statement.len() > MAX_STATEMENT_BYTES {
            return Err(SqlError::Io(format!(
                "the statement is longer than {MAX_STATEMENT_BYTES} bytes"
            )));
        }
        let state = self
            .connection
            .as_mut()
            .expect("a lease holds its connection");
        let io = |e: rusqlite::Error| SqlError::Io(e.to_string());
        let max_pages = (quota.max_bytes / PAGE_BYTES).max(1);
        if state.max_pages != max_pages {
            // The authorizer refuses this pragma to guests; the host's own statement passes.
            state.host.store(true, std::sync::atomic::Ordering::Relaxed);
            let set = state
                .connection
                .pragma_update(None, "max_page_count", max_pages as i64);
            state
                .host
                .store(false, std::sync::atomic::Ordering::Relaxed);
            set.map_err(io)?;
            state.max_pages = max_pages;
        }
        let connection = &mut state.connection;
        // The run time counts from the statement's first progress tick: after it has its
        // locks (waiting for another writer is bounded by LOCK_WAIT, the busy timeout).
        let timeout = quota.statement_timeout;
        let mut started: Option<Instant> = None;
        connection
            .progress_handler(
                PROGRESS_STEPS,
                Some(move || started.get_or_insert_with(Instant::now).elapsed() > timeout),
            )
            .map_err(io)?;
        let changed_before = connection.total_changes();
        let result = run(connection, statement, parameters, quota);
        connection
            .progress_handler(0, None::<fn() -> bool>)
            .map_err(io)?;
        // `changes()` keeps the last write's count through later reads (on a pooled
        // connection, another request's): a statement that changed nothing reports 0.
        let changes = if connection.total_changes() != changed_before {
            connection.changes()
        } else {
            0
        };
        let effects = Effects {
            changes,
            last_insert_rowid: connection.last_insert_rowid(),
        };
        result
            .map(|rows| (rows, effects))
            .map_err(|e| classify(e, quota))
    }
}

impl Lease {
    /// The database as SQL text that rebuilds it (`sqlite3 .dump`'s shape: the schema, then
    /// each table's rows as `INSERT`s, in one transaction). For operators (`thaw sql
    /// --dump`): read in one transaction, so it is one consistent state. Blocking.
    pub fn dump(&mut self) -> Result<String, SqlError> {
        let state = self
            .connection
            .as_mut()
            .expect("a lease holds its connection");
        let io = |e: rusqlite::Error| SqlError::Io(e.to_string());
        let tx = state.connection.transaction().map_err(io)?;
        let mut out = String::from("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n");
        // Tables, then their rows, then indexes, triggers and views (as sqlite3 does: a
        // trigger must not fire while the rows are put back).
        let mut tables = Vec::new();
        let mut after = String::new();
        {
            let mut schema = tx
                .prepare(
                    "SELECT type, name, sql FROM main.sqlite_schema WHERE sql IS NOT NULL \
                     AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
                )
                .map_err(io)?;
            let mut rows = schema.query([]).map_err(io)?;
            while let Some(row) = rows.next().map_err(io)? {
                let (kind, name, sql): (String, String, String) = (
                    row.get(0).map_err(io)?,
                    row.get(1).map_err(io)?,
                    row.get(2).map_err(io)?,
                );
                if kind == "table" {
                    out.push_str(&sql);
                    out.push_str(";\n");
                    tables.push(name);
                } else {
                    after.push_str(&sql);
                    after.push_str(";\n");
                }
            }
        }
        let has_sequence: bool = tx
            .query_row(
                "SELECT count(*) FROM main.sqlite_schema WHERE name = 'sqlite_sequence'",
                [],
                |row| row.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(io)?;
        if has_sequence {
            // AUTOINCREMENT's high-water marks, or a restore would hand out used ids again.
            // Last, after the rows whose inserts moved them (as sqlite3 does).
            tables.push("sqlite_sequence".into());
        }
        for table in &tables {
            if table == "sqlite_sequence" {
                out.push_str("DELETE FROM sqlite_sequence;\n");
            }
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            let mut select = tx
                .prepare(&format!("SELECT * FROM main.{quoted}"))
                .map_err(io)?;
            let columns = select.column_count();
            let mut rows = select.query([]).map_err(io)?;
            while let Some(row) = rows.next().map_err(io)? {
                out.push_str(&format!("INSERT INTO {quoted} VALUES("));
                for i in 0..columns {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&literal(&Value::from(row.get_ref(i).map_err(io)?)));
                }
                out.push_str(");\n");
            }
        }
        out.push_str(&after);
        out.push_str("COMMIT;\n");
        Ok(out)
    }
}

/// A value as an SQL literal.
fn literal(value: &Value) -> String {
    match value {
        Value::Integer(i) => i.to_string(),
        // `{:?}` keeps a whole number's `.0` (so it stays REAL) and every digit.
        Value::Real(r) if r.is_finite() => format!("{r:?}"),
        Value::Real(r) => if *r > 0.0 { "1e999" } else { "-1e999" }.into(),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Blob(b) => {
            let mut hex = String::with_capacity(3 + 2 * b.len());
            hex.push_str("X'");
            for byte in b {
                hex.push_str(&format!("{byte:02X}"));
            }
            hex.push('\'');
            hex
        }
        Value::Null => "NULL".into(),
    }
}

/// A failure while running a statement: SQLite's, or a result quota's.
enum RunError {
    Sqlite(rusqlite::Error),
    Quota(String),
}

impl From<rusqlite::Error> for RunError {
    fn from(e: rusqlite::Error) -> Self {
        RunError::Sqlite(e)
    }
}

fn run(
    connection: &rusqlite::Connection,
    statement: &str,
    parameters: &[Value],
    quota: &SqlQuota,
) -> Result<QueryResult, RunError> {
    let mut prepared = connection.prepare(statement)?;
    let columns: Vec<String> = prepared.column_names().map(String::from).collect();
    let mut rows = prepared.query(rusqlite::params_from_iter(parameters))?;
    let mut result = QueryResult {
        columns,
        rows: Vec::new(),
    };
    let mut bytes = 0u64;
    while let Some(row) = rows.next()? {
        if result.rows.len() as u64 >= quota.max_rows {
            return Err(RunError::Quota(format!(
                "the result has more than {} rows (the function's sql_max_rows)",
                quota.max_rows
            )));
        }
        let mut values = Vec::with_capacity(result.columns.len());
        for i in 0..result.columns.len() {
            let value = Value::from(row.get_ref(i)?);
            bytes += value.cost();
            values.push(value);
        }
        if bytes > quota.max_result_bytes {
            return Err(RunError::Quota(format!(
                "the result is larger than {} bytes (the function's sql_max_result_kib)",
                quota.max_result_bytes
            )));
        }
        result.rows.push(values);
    }
    Ok(result)
}

fn classify(error: RunError, quota: &SqlQuota) -> SqlError {
    let error = match error {
        RunError::Quota(message) => return SqlError::Io(message),
        RunError::Sqlite(error) => error,
    };
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => SqlError::DatabaseFull(quota.max_bytes),
        Some(rusqlite::ErrorCode::OperationInterrupted) => SqlError::Io(format!(
            "the statement ran longer than {} ms (the function's sql_statement_ms)",
            quota.statement_timeout.as_millis()
        )),
        _ => SqlError::Io(error.to_string()),
    }
}

/// The authorizer of every connection (module docs): no `ATTACH`, `DETACH` or `PRAGMA`
/// outside [`ALLOWED_PRAGMAS`].
fn authorize(context: AuthContext<'_>) -> Authorization {
    match context.action {
        // A temporary object lives in the connection, not the file: outside the size quota
        // (in a temporary file), and kept by a pooled connection for the next request.
        AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Authorization::Deny,
        AuthAction::Pragma { pragma_name, .. }
            if !ALLOWED_PRAGMAS
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(pragma_name)) =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
