//! Postgres: databases the host connects to for the function, over `spin:postgres` (the
//! interface Spin apps use, so the same code runs on Spin).
//!
//! ```no_run
//! use thaw_sdk::pg::Connection;
//!
//! let db = Connection::open("orders")?;
//! db.execute("INSERT INTO orders (item, qty) VALUES ($1, $2)", &["tea".into(), 2i32.into()])?;
//! for row in db.query("SELECT item, qty FROM orders WHERE qty > $1", &[1i32.into()])?.rows() {
//!     let item: String = row.get("item")?;
//!     let qty: i32 = row.get("qty")?;
//!     println!("{item} {qty}");
//! }
//! # Ok::<(), thaw_sdk::pg::Error>(())
//! ```
//!
//! # Databases
//! [`Connection::open`] takes a name from the function's `postgres_databases`, which the
//! host maps to a URL kept in its secrets:
//!
//! ```toml
//! [function.postgres_databases]
//! orders = { secret = "env:ORDERS_DB" }   # THAW_SECRET_ORDERS_DB=postgres://...
//! ```
//!
//! The function never sees the URL or its password. (A `postgres://` address works too, where
//! `allowed_outbound_hosts` allows its host: that is how Spin apps name databases.)
//!
//! # Connections
//! The host lends a connection from a pool it keeps per function and database
//! (`pg_max_connections`, waiting at most `pg_acquire_ms`), and each statement runs under
//! `sql_statement_ms`. A transaction (`BEGIN` ... `COMMIT`) is the connection's own until the
//! [`Connection`] is dropped; one left open is rolled back before another request gets it.
//!
//! # Parameters and types
//! Statements take `$1`, `$2`, ... parameters: pass values, never build SQL from input.
//! [`Value`] converts from Rust types; Postgres checks each against its column's type (an
//! `i64` for an `INTEGER` column is an error: use `i32`). [`Row::get`] converts back, and
//! widens where nothing is lost (an `int4` column reads as `i64` too).

use crate::bindings::spin::postgres::postgres;
pub use crate::sql::ColumnIndex;

/// A parameter or a column's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `boolean`.
    Bool(bool),
    /// `smallint`.
    Int16(i16),
    /// `integer`.
    Int32(i32),
    /// `bigint`.
    Int64(i64),
    /// `real`.
    Float32(f32),
    /// `double precision`.
    Float64(f64),
    /// `text`, `varchar`, ...
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// `jsonb`, as its JSON text's bytes.
    Json(Vec<u8>),
    /// `uuid`, in its text form.
    Uuid(String),
    /// `numeric`, in base 10.
    Decimal(String),
    /// `date`: year, month, day.
    Date(i32, u8, u8),
    /// `time`: hour, minute, second, nanosecond.
    Time(u8, u8, u8, u32),
    /// `timestamp` (and `timestamptz` in UTC): year, month, day, hour, minute, second,
    /// nanosecond.
    DateTime(i32, u8, u8, u8, u8, u8, u32),
    /// Seconds since the Unix epoch (as a parameter: a `timestamp` in UTC).
    Timestamp(i64),
    /// NULL.
    Null,
    /// A column of a type this module does not map (ranges, arrays, intervals): its
    /// Postgres type's name. Not a parameter.
    Unsupported(String),
}

macro_rules! values_from {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v.into())
            }
        }
    )*};
}
values_from!(bool => Bool, i16 => Int16, i32 => Int32, i64 => Int64, f32 => Float32,
    f64 => Float64, String => Text, &str => Text, Vec<u8> => Bytes, &[u8] => Bytes);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a boolean",
            Value::Int16(_) => "a smallint",
            Value::Int32(_) => "an integer",
            Value::Int64(_) => "a bigint",
            Value::Float32(_) => "a real",
            Value::Float64(_) => "a double",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Json(_) => "JSON",
            Value::Uuid(_) => "a UUID",
            Value::Decimal(_) => "a numeric",
            Value::Date(..) => "a date",
            Value::Time(..) => "a time",
            Value::DateTime(..) => "a timestamp",
            Value::Timestamp(_) => "seconds since the epoch",
            Value::Null => "NULL",
            Value::Unsupported(_) => "an unmapped type",
        }
    }

    fn parameter(&self) -> Result<postgres::ParameterValue, Error> {
        use postgres::ParameterValue as P;
        Ok(match self {
            Value::Bool(v) => P::Boolean(*v),
            Value::Int16(v) => P::Int16(*v),
            Value::Int32(v) => P::Int32(*v),
            Value::Int64(v) => P::Int64(*v),
            Value::Float32(v) => P::Floating32(*v),
            Value::Float64(v) => P::Floating64(*v),
            Value::Text(v) => P::Str(v.clone()),
            Value::Bytes(v) => P::Binary(v.clone()),
            Value::Json(v) => P::Jsonb(v.clone()),
            Value::Uuid(v) => P::Uuid(v.clone()),
            Value::Decimal(v) => P::Decimal(v.clone()),
            Value::Date(y, m, d) => P::Date((*y, *m, *d)),
            Value::Time(h, m, s, n) => P::Time((*h, *m, *s, *n)),
            Value::DateTime(y, mo, d, h, mi, s, n) => P::Datetime((*y, *mo, *d, *h, *mi, *s, *n)),
            Value::Timestamp(v) => P::Timestamp(*v),
            Value::Null => P::DbNull,
            Value::Unsupported(name) => {
                return Err(Error::BadParameter(format!(
                    "a value of an unmapped type ({name}) is not a parameter"
                )));
            }
        })
    }

    fn from_db(value: postgres::DbValue, column: &postgres::Column) -> Self {
        use postgres::DbValue as D;
        match value {
            D::Boolean(v) => Value::Bool(v),
            D::Int8(v) => Value::Int16(v.into()),
            D::Int16(v) => Value::Int16(v),
            D::Int32(v) => Value::Int32(v),
            D::Int64(v) => Value::Int64(v),
            D::Floating32(v) => Value::Float32(v),
            D::Floating64(v) => Value::Float64(v),
            D::Str(v) => Value::Text(v),
            D::Binary(v) => Value::Bytes(v),
            D::Jsonb(v) => Value::Json(v),
            D::Uuid(v) => Value::Uuid(v),
            D::Decimal(v) => Value::Decimal(v),
            D::Date((y, m, d)) => Value::Date(y, m, d),
            D::Time((h, m, s, n)) => Value::Time(h, m, s, n),
            D::Datetime((y, mo, d, h, mi, s, n)) => Value::DateTime(y, mo, d, h, mi, s, n),
            D::Timestamp(v) => Value::Timestamp(v),
            D::DbNull => Value::Null,
            _ => Value::Unsupported(match &column.data_type {
                postgres::DbDataType::Other(name) => name.clone(),
                other => format!("{other:?}"),
            }),
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

macro_rules! from_values {
    ($($t:ty, $expected:literal: $($variant:ident)|+);* $(;)?) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Option<Self> {
                match value {
                    $(Value::$variant(v) => Some(v.clone().into()),)+
                    _ => None,
                }
            }
            const EXPECTED: &'static str = $expected;
        }
    )*};
}
from_values! {
    bool, "a boolean": Bool;
    i16, "a smallint": Int16;
    i32, "an integer": Int16 | Int32;
    i64, "an integer": Int16 | Int32 | Int64;
    f32, "a real": Float32;
    f64, "a number": Float32 | Float64 | Int16 | Int32;
    String, "text": Text | Uuid | Decimal;
    Vec<u8>, "bytes": Bytes | Json;
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

/// What a query returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
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

/// One row of [`Rows`].
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    /// Column `column` (a name or a position) as a `T`.
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

/// A connection lent by the host's pool; given back when dropped.
pub struct Connection {
    inner: postgres::Connection,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens `database`: a name from the function's `postgres_databases`, or a `postgres://`
    /// address its `allowed_outbound_hosts` allows.
    pub fn open(database: &str) -> Result<Connection, Error> {
        Ok(Connection {
            inner: postgres::Connection::open(database)?,
        })
    }

    /// Runs `statement` with `parameters` bound to its `$1`, `$2`, ..., and returns its rows.
    pub fn query(&self, statement: &str, parameters: &[Value]) -> Result<Rows, Error> {
        let parameters = parameters
            .iter()
            .map(Value::parameter)
            .collect::<Result<Vec<_>, _>>()?;
        let set = self.inner.query(statement, &parameters)?;
        let rows = set
            .rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .zip(&set.columns)
                    .map(|(value, column)| Value::from_db(value, column))
                    .collect()
            })
            .collect();
        Ok(Rows {
            columns: set.columns.into_iter().map(|c| c.name).collect(),
            rows,
        })
    }

    /// Runs `statement` with `parameters`, and returns how many rows it changed.
    pub fn execute(&self, statement: &str, parameters: &[Value]) -> Result<u64, Error> {
        let parameters = parameters
            .iter()
            .map(Value::parameter)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.execute(statement, &parameters)?)
    }
}

/// Why a Postgres call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// No connection: not a database the function may open, the server is down or refused,
    /// or none was free within `pg_acquire_ms`. The host's words.
    ConnectionFailed(String),
    /// A parameter the host or the server cannot bind.
    BadParameter(String),
    /// The statement failed.
    Query {
        /// The SQLSTATE (`23505` for a unique violation), when the server sent one.
        code: Option<String>,
        /// The server's message.
        message: String,
    },
    /// A value the host could not convert.
    Conversion(String),
    /// Anything else, in the host's words (a result over `sql_max_rows`, say).
    Other(String),
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

impl From<postgres::Error> for Error {
    fn from(error: postgres::Error) -> Self {
        match error {
            postgres::Error::ConnectionFailed(m) => Error::ConnectionFailed(m),
            postgres::Error::BadParameter(m) => Error::BadParameter(m),
            postgres::Error::QueryFailed(postgres::QueryError::DbError(db)) => Error::Query {
                code: Some(db.code),
                message: db.message,
            },
            postgres::Error::QueryFailed(postgres::QueryError::Text(m)) => Error::Query {
                code: None,
                message: m,
            },
            postgres::Error::ValueConversionFailed(m) => Error::Conversion(m),
            postgres::Error::Other(m) => Error::Other(m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::ConnectionFailed(m) => write!(f, "Postgres connection: {m}"),
            Error::BadParameter(m) => write!(f, "Postgres parameter: {m}"),
            Error::Query {
                code: Some(code),
                message,
            } => write!(f, "Postgres: {message} (SQLSTATE {code})"),
            Error::Query {
                code: None,
                message,
            } => write!(f, "Postgres: {message}"),
            Error::Conversion(m) => write!(f, "Postgres value: {m}"),
            Error::Other(m) => write!(f, "Postgres: {m}"),
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

    #[test]
    fn rows_convert_widening_where_nothing_is_lost_with_typed_errors() {
        let rows = Rows {
            columns: vec!["id".into(), "name".into(), "note".into()],
            rows: vec![vec![Value::Int32(7), "tea".into(), Value::Null]],
        };
        let row = rows.first().unwrap();
        assert_eq!(row.get::<i32>("id").unwrap(), 7);
        assert_eq!(row.get::<i64>("id").unwrap(), 7);
        assert_eq!(row.get::<f64>(0).unwrap(), 7.0);
        assert_eq!(row.get::<Option<String>>("note").unwrap(), None);
        assert_eq!(
            row.get::<i16>("id").unwrap_err(),
            Error::Type {
                column: "id".into(),
                expected: "a smallint",
                found: "an integer"
            }
        );
        assert!(matches!(
            row.get::<i32>("nope"),
            Err(Error::NoSuchColumn(_))
        ));
    }

    #[test]
    fn parameters_come_from_rust_types_and_unmapped_values_are_refused() {
        assert_eq!(Value::from(2i32), Value::Int32(2));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
        assert!(matches!(
            Value::Unsupported("int4range".into()).parameter(),
            Err(Error::BadParameter(_))
        ));
    }
}
