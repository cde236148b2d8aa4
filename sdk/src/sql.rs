//! SQL: the function's own SQLite databases, over `spin:sqlite` (the interface Spin apps
//! use, so the same code runs on Spin).
//!
//! ```no_run
//! use thaw_sdk::sql::Connection;
//!
//! let db = Connection::open_default()?;
//! db.execute("CREATE TABLE IF NOT EXISTS todo (id INTEGER PRIMARY KEY, title TEXT, done INTEGER)", &[])?;
//! db.execute("INSERT INTO todo (title, done) VALUES (?, ?)", &["write docs".into(), false.into()])?;
//! let id = db.last_insert_rowid();
//! for row in db.execute("SELECT id, title, done FROM todo WHERE done = ?", &[false.into()])?.rows() {
//!     let title: String = row.get("title")?;
//!     let done: bool = row.get("done")?;
//!     println!("{title} {done}");
//! }
//! # Ok::<(), thaw_sdk::sql::Error>(())
//! ```
//!
//! # Databases
//! `default` is every function's own database. Other names must be listed in the function's
//! `sqlite_databases`; each is a separate file. Nothing is shared between functions.
//!
//! # Parameters and types
//! Statements take `?` (or `?NNN`, `:name` bound by position) parameters: pass values, never
//! build SQL from input. [`Value`] converts from the Rust types SQLite stores (integers,
//! `f64`, `bool` as 0/1, strings, bytes, `Option` as NULL), and [`Row::get`] converts back,
//! with a clear [`Error::Type`] when the column holds something else.
//!
//! # Quotas
//! The host bounds each database's size (`sql_max_mib`; past it writes fail with
//! [`Error::DatabaseFull`] and reads work), each statement's time (`sql_statement_ms`) and
//! each result's rows and bytes (`sql_max_rows`, `sql_max_result_kib`).
//!
//! # Migrations
//! Keep the schema's version in `PRAGMA user_version` and apply what is missing at the start
//! of a request, in a transaction; see [`migrate`].

use crate::bindings::spin::sqlite::sqlite;

/// One column's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// NULL.
    Null,
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Integer(i64::from(v))
            }
        }
    )*};
}
integer_values!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(i64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<sqlite::Value> for Value {
    fn from(v: sqlite::Value) -> Self {
        match v {
            sqlite::Value::Integer(i) => Value::Integer(i),
            sqlite::Value::Real(r) => Value::Real(r),
            sqlite::Value::Text(t) => Value::Text(t),
            sqlite::Value::Blob(b) => Value::Blob(b),
            sqlite::Value::Null => Value::Null,
        }
    }
}

impl From<&Value> for sqlite::Value {
    fn from(v: &Value) -> Self {
        match v {
            Value::Integer(i) => sqlite::Value::Integer(*i),
            Value::Real(r) => sqlite::Value::Real(*r),
            Value::Text(t) => sqlite::Value::Text(t.clone()),
            Value::Blob(b) => sqlite::Value::Blob(b.clone()),
            Value::Null => sqlite::Value::Null,
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Integer(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
            Value::Null => "NULL",
        }
    }
}

/// A Rust type a column converts to, with [`Row::get`].
pub trait FromValue: Sized {
    /// The value as `Self`, or `None` if it holds another type.
    fn from_value(value: &Value) -> Option<Self>;
    /// What the type is, for [`Error::Type`].
    const EXPECTED: &'static str;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "an integer";
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Integer(i) => Some(*i != 0),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "an integer (0 or 1)";
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Real(r) => Some(*r),
            // SQLite stores a REAL column's whole numbers as integers.
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "a number";
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "text";
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(t) => Some(t.as_bytes().to_vec()),
            _ => None,
        }
    }
    const EXPECTED: &'static str = "a blob";
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
    const EXPECTED: &'static str = T::EXPECTED;
}

/// A column, by name or by position, for [`Row::get`].
pub trait ColumnIndex {
    /// Its position among `columns`.
    fn position(&self, columns: &[String]) -> Option<usize>;
    /// How to name it in an error.
    fn describe(&self) -> String;
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[String]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[String]) -> Option<usize> {
        columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// What a statement returned.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl QueryResult {
    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// The first row, if any.
    pub fn first(&self) -> Option<Row<'_>> {
        self.rows().next()
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// One row of a [`QueryResult`].
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    /// Column `column` (a name or a position) as a `T`.
    ///
    /// ```no_run
    /// # let db = thaw_sdk::sql::Connection::open_default()?;
    /// # let result = db.execute("SELECT 1 AS n, NULL AS note", &[])?;
    /// let row = result.first().unwrap();
    /// let n: i64 = row.get("n")?;
    /// let note: Option<String> = row.get(1)?;
    /// # Ok::<(), thaw_sdk::sql::Error>(())
    /// ```
    pub fn get<T: FromValue>(&self, column: impl ColumnIndex) -> Result<T, Error> {
        let position = column
            .position(self.columns)
            .ok_or_else(|| Error::NoSuchColumn(column.describe()))?;
        let value = &self.values[position];
        T::from_value(value).ok_or_else(|| Error::Type {
            column: self.columns[position].clone(),
            expected: T::EXPECTED,
            found: value.kind(),
        })
    }

    /// The row's values, in column order.
    pub fn values(&self) -> &[Value] {
        self.values
    }
}

/// An open database.
pub struct Connection {
    inner: sqlite::Connection,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens the function's database `name` (`"default"`, or one its spec lists).
    pub fn open(name: &str) -> Result<Connection, Error> {
        let inner = sqlite::Connection::open(name).map_err(|e| match Error::from(e) {
            Error::NoSuchDatabase(_) => Error::NoSuchDatabase(name.to_owned()),
            other => other,
        })?;
        Ok(Connection { inner })
    }

    /// Opens the function's `default` database.
    pub fn open_default() -> Result<Connection, Error> {
        Self::open("default")
    }

    /// Runs `statement` with `parameters` bound to its `?`s, and returns its rows (none for
    /// a statement that returns none).
    pub fn execute(&self, statement: &str, parameters: &[Value]) -> Result<QueryResult, Error> {
        let parameters: Vec<sqlite::Value> = parameters.iter().map(Into::into).collect();
        let result = self.inner.execute(statement, &parameters)?;
        Ok(QueryResult {
            columns: result.columns,
            rows: result
                .rows
                .into_iter()
                .map(|row| row.values.into_iter().map(Value::from).collect())
                .collect(),
        })
    }

    /// The rowid of this connection's most recent successful `INSERT` (0 before any).
    pub fn last_insert_rowid(&self) -> i64 {
        self.inner.last_insert_rowid()
    }

    /// Rows changed by this connection's most recent `INSERT`, `UPDATE` or `DELETE`.
    pub fn changes(&self) -> u64 {
        self.inner.changes()
    }
}

/// Brings the schema to the last of `steps`: step `i` (from 0) runs once, in a transaction
/// with the bump of `PRAGMA user_version` to `i + 1`, when the version is `i`. Call it at the
/// start of a request; a concurrent request finds the version already moved and skips it.
///
/// ```no_run
/// use thaw_sdk::sql::{Connection, migrate};
/// let db = Connection::open_default()?;
/// migrate(&db, &[
///     "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
///     "ALTER TABLE todo ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
/// ])?;
/// # Ok::<(), thaw_sdk::sql::Error>(())
/// ```
pub fn migrate(db: &Connection, steps: &[&str]) -> Result<(), Error> {
    loop {
        let version: i64 = db
            .execute("PRAGMA user_version", &[])?
            .first()
            .map_or(Ok(0), |row| row.get(0))?;
        let Some(step) = usize::try_from(version).ok().and_then(|v| steps.get(v)) else {
            return Ok(());
        };
        // BEGIN IMMEDIATE takes the write lock first, so two requests never both apply one.
        db.execute("BEGIN IMMEDIATE", &[])?;
        let current: i64 = db
            .execute("PRAGMA user_version", &[])?
            .first()
            .map_or(Ok(0), |row| row.get(0))?;
        let applied = if current == version {
            db.execute(step, &[])
                .and_then(|_| db.execute(&format!("PRAGMA user_version = {}", version + 1), &[]))
                .map(drop)
        } else {
            Ok(())
        };
        match applied {
            Ok(()) => db.execute("COMMIT", &[])?,
            Err(e) => {
                let _ = db.execute("ROLLBACK", &[]);
                return Err(e);
            }
        };
    }
}

/// Why a database call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// Not a database this function may open (list it in `sqlite_databases`).
    NoSuchDatabase(String),
    /// The host offers this function no SQL.
    AccessDenied,
    /// The connection was closed.
    InvalidConnection,
    /// The database is at its size quota (`sql_max_mib`): writes fail, reads work.
    DatabaseFull,
    /// The statement failed: SQLite's message, or the quota it went over.
    Sql(String),
    /// A column that the result does not have.
    NoSuchColumn(String),
    /// A column holding another type than the one asked for.
    Type {
        /// The column.
        column: String,
        /// What was asked for.
        expected: &'static str,
        /// What it holds.
        found: &'static str,
    },
}

impl From<sqlite::Error> for Error {
    fn from(error: sqlite::Error) -> Self {
        match error {
            sqlite::Error::NoSuchDatabase => Error::NoSuchDatabase(String::new()),
            sqlite::Error::AccessDenied => Error::AccessDenied,
            sqlite::Error::InvalidConnection => Error::InvalidConnection,
            sqlite::Error::DatabaseFull => Error::DatabaseFull,
            sqlite::Error::Io(message) => Error::Sql(message),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoSuchDatabase(name) => write!(
                f,
                "no SQL database {name:?} for this function (\"default\" is always there; list others in sqlite_databases)"
            ),
            Error::AccessDenied => f.write_str("this host offers the function no SQL"),
            Error::InvalidConnection => f.write_str("the SQL connection is closed"),
            Error::DatabaseFull => {
                f.write_str("the database is full (raise limits.sql_max_mib in thaw.toml)")
            }
            Error::Sql(message) => write!(f, "SQL: {message}"),
            Error::NoSuchColumn(column) => write!(f, "the result has no column {column}"),
            Error::Type {
                column,
                expected,
                found,
            } => write!(f, "column {column:?} holds {found}, not {expected}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["id".into(), "title".into(), "note".into()],
            rows: vec![vec![Value::Integer(7), "tea".into(), Value::Null]],
        }
    }

    #[test]
    fn rows_convert_by_name_and_position_with_typed_errors() {
        let result = result();
        let row = result.first().unwrap();
        assert_eq!(row.get::<i64>("id").unwrap(), 7);
        assert_eq!(row.get::<String>(1).unwrap(), "tea");
        assert_eq!(row.get::<Option<String>>("note").unwrap(), None);
        assert_eq!(row.get::<f64>("id").unwrap(), 7.0);
        assert_eq!(
            row.get::<i64>("title").unwrap_err(),
            Error::Type {
                column: "title".into(),
                expected: "an integer",
                found: "text"
            }
        );
        assert_eq!(
            row.get::<i64>("nope").unwrap_err(),
            Error::NoSuchColumn("\"nope\"".into())
        );
        assert!(matches!(row.get::<i64>(3), Err(Error::NoSuchColumn(_))));
    }

    #[test]
    fn values_come_from_rust_types() {
        assert_eq!(Value::from(true), Value::Integer(1));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
        assert_eq!(Value::from(&b"ab"[..]), Value::Blob(b"ab".to_vec()));
    }
}
