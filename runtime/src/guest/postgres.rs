//! `spin:postgres/postgres@4.2.0`, as spin-sdk 7 imports it, over the host's pools
//! ([`crate::postgres`]): a guest's `open(address)` borrows a pooled connection of its
//! function, within `pg_acquire_ms`; the connection is the guest's until it drops it.
//!
//! Types: booleans, integers, floats, text, bytes, `jsonb`/`json`, arrays of 32- and 64-bit
//! integers and of text, dates, times, timestamps, UUIDs, both ways, and NULL. Spin's
//! `datetime` is UTC without a zone: a `timestamptz` column takes it as that instant and
//! answers its instants in UTC; `timestamp` (seconds since the epoch) goes to either column.
//! `decimal` is `numeric` as base-10 text, exact both ways ([`crate::postgres::numeric`]).
//! Ranges and intervals are not mapped yet: as a parameter they are `bad-parameter` naming
//! the type;
//! in a row they are `unsupported` with the value's bytes in Postgres's binary format (Spin's
//! own fallback). `query-async` runs the query to its end and then streams the rows it holds
//! (as [`super::sqlite`]'s `execute-async` does), bounded by `sql_max_rows` and
//! `sql_max_result_kib`.

// The errors here are the interface's generated `error` (144 bytes: a database error's
// fields), handed to the guest by value; boxing them would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use crate::postgres::numeric;

use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::outbound::AllowList;
use crate::postgres::{PgError, PgHost, PgQuota};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/postgres",
        world: "spin:postgres/imports",
        imports: {
            "spin:postgres/postgres.[static]connection.open": async | trappable,
            "spin:postgres/postgres.[method]connection.query": async | trappable,
            "spin:postgres/postgres.[method]connection.execute": async | trappable,
            "spin:postgres/postgres.[method]connection-builder.build": async | trappable,
            default: trappable,
        },
        with: {
            "spin:postgres/postgres.connection": super::PgConnection,
            "spin:postgres/postgres.connection-builder": super::PgBuilder,
        },
    });
}

use bindings::spin::postgres::postgres::{
    self as iface, Column, DbDataType, DbValue, Error, ParameterValue, QueryError, RowSet,
};

/// A guest's connection: a pooled connection lent to it.
pub struct PgConnection {
    client: Arc<tokio::sync::Mutex<deadpool_postgres::Object>>,
}

/// `connection-builder`: an address waiting for `build`.
pub struct PgBuilder {
    address: String,
}

/// What a function's guest may reach.
#[derive(Clone)]
pub struct GuestPostgres {
    /// The host's pools.
    pub host: PgHost,
    /// The function.
    pub function: Arc<str>,
    /// Its allow-list (`postgres://` entries decide).
    pub allowed: Arc<AllowList>,
    /// Its pool settings.
    pub quota: PgQuota,
    /// Its result bounds (`sql_max_rows`, `sql_max_result_kib`).
    pub max_rows: u64,
    /// See `max_rows`.
    pub max_result_bytes: u64,
}

/// The host functions' view of a store's data.
pub struct PgView<'a> {
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
    /// The function's access; `None` on a host without it.
    pub access: Option<&'a GuestPostgres>,
    /// The URLs of its `postgres_databases`, by name.
    pub declared: &'a std::collections::HashMap<String, String>,
}

/// The `HasData` marker of the interface.
pub struct HasPostgres;

impl HasData for HasPostgres {
    type Data<'a> = PgView<'a>;
}

type Answer<T> = wasmtime::Result<Result<T, Error>>;

fn pg_error(error: PgError) -> Error {
    match error {
        PgError::Address(m) | PgError::Connection(m) => Error::ConnectionFailed(m),
    }
}

fn query_error(error: tokio_postgres::Error) -> Error {
    match error.as_db_error() {
        Some(db) => Error::QueryFailed(QueryError::DbError(iface::DbError {
            as_text: db.to_string(),
            severity: db.severity().to_owned(),
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            extras: Vec::new(),
        })),
        None => Error::QueryFailed(QueryError::Text(error.to_string())),
    }
}

/// What `open` was asked for, resolved against the function's declared databases.
enum Opening {
    /// A declared name and its URL.
    Declared(String, String),
    /// An address.
    Address(String),
}

/// Connects for `access`'s function (no store borrow held across the wait).
async fn connect(access: GuestPostgres, opening: Opening) -> Result<PgConnection, Error> {
    let target = match &opening {
        Opening::Declared(name, url) => crate::postgres::Target::Declared { name, url },
        Opening::Address(address) => crate::postgres::Target::Address(address),
    };
    let client = access
        .host
        .connect(&access.function, target, &access.allowed, access.quota)
        .await
        .map_err(pg_error)?;
    Ok(PgConnection {
        client: Arc::new(tokio::sync::Mutex::new(client)),
    })
}

impl PgView<'_> {
    /// The function's access and what `address` opens: a declared database by name, or an
    /// address for the allow-list to judge.
    fn opening(&self, address: String) -> Result<(GuestPostgres, Opening), Error> {
        let access = self.access.cloned().ok_or_else(|| {
            Error::ConnectionFailed("this host offers the function no Postgres".into())
        })?;
        let opening = match self.declared.get(&address) {
            Some(url) => Opening::Declared(address, url.clone()),
            // Neither a URL nor `key=value` settings: a name the spec does not declare.
            None if !address.contains([':', '=']) => {
                return Err(Error::ConnectionFailed(format!(
                    "no Postgres database {address:?} for this function: name it in postgres_databases"
                )));
            }
            None => Opening::Address(address),
        };
        Ok((access, opening))
    }

    fn client(
        &self,
        connection: &Resource<PgConnection>,
    ) -> wasmtime::Result<(
        Arc<tokio::sync::Mutex<deadpool_postgres::Object>>,
        Option<GuestPostgres>,
    )> {
        Ok((
            self.table.get(connection)?.client.clone(),
            self.access.cloned(),
        ))
    }
}

/// A parameter as `tokio-postgres` binds it.
enum Param {
    Bool(bool),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bytes(Vec<u8>),
    Json(Vec<u8>),
    I32s(Vec<Option<i32>>),
    I64s(Vec<Option<i64>>),
    Strs(Vec<Option<String>>),
    Date(jiff::civil::Date),
    Time(jiff::civil::Time),
    /// Spin's `datetime`: UTC without a zone; a `timestamptz` column gets it as that instant.
    DateTime(jiff::civil::DateTime),
    /// Spin's `timestamp`: seconds since the epoch; a `timestamp` column gets it in UTC.
    Timestamp(jiff::Timestamp),
    Uuid(uuid::Uuid),
    /// `numeric`'s binary form.
    Numeric(Vec<u8>),
    Null,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Param")
    }
}

impl Param {
    /// The value of an integer parameter.
    fn integer(&self) -> Option<i64> {
        match *self {
            Param::I8(v) => Some(i64::from(v)),
            Param::I16(v) => Some(i64::from(v)),
            Param::I32(v) => Some(i64::from(v)),
            Param::I64(v) => Some(v),
            _ => None,
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I8(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Str(v) => v.to_sql(ty, out),
            Param::Bytes(v) => v.to_sql(ty, out),
            Param::Json(v) => {
                // jsonb's binary form is a version byte, then the text; json's is the text.
                if *ty == Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
            Param::I32s(v) => v.to_sql(ty, out),
            Param::I64s(v) => v.to_sql(ty, out),
            Param::Strs(v) => v.to_sql(ty, out),
            Param::Date(v) => v.to_sql(ty, out),
            Param::Time(v) => v.to_sql(ty, out),
            Param::DateTime(v) if *ty == Type::TIMESTAMPTZ => v
                .to_zoned(jiff::tz::TimeZone::UTC)?
                .timestamp()
                .to_sql(ty, out),
            Param::DateTime(v) => v.to_sql(ty, out),
            Param::Timestamp(v) if *ty == Type::TIMESTAMP => {
                jiff::tz::TimeZone::UTC.to_datetime(*v).to_sql(ty, out)
            }
            Param::Timestamp(v) => v.to_sql(ty, out),
            Param::Uuid(v) => v.to_sql(ty, out),
            Param::Numeric(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
            Param::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql_checked`.
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // An integer goes to any integer column it fits, to `numeric`, and to a float column
        // where it is exact; a number to
        // `numeric` and a `real` to `double precision`: what a guest whose language has one
        // number type (JavaScript, Python) means, with nothing rounded. Postgres's own rule
        // (the parameter's type is the column's) stays for everything else.
        if let Some(n) = self.integer() {
            let narrow = |what| format!("{n} is out of range for the column's {what}");
            match *ty {
                Type::INT2 => {
                    return i16::try_from(n)
                        .map_err(|_| narrow("smallint"))?
                        .to_sql(ty, out);
                }
                Type::INT4 => {
                    return i32::try_from(n)
                        .map_err(|_| narrow("integer"))?
                        .to_sql(ty, out);
                }
                Type::INT8 => return n.to_sql(ty, out),
                // Exactly, or not at all: 2^53 and 2^24 are where the floats' integers end.
                Type::FLOAT8 if n.unsigned_abs() <= 1 << 53 => return (n as f64).to_sql(ty, out),
                Type::FLOAT4 if n.unsigned_abs() <= 1 << 24 => return (n as f32).to_sql(ty, out),
                Type::FLOAT8 | Type::FLOAT4 => {
                    return Err(format!("{n} has no exact value in the column's {ty}").into());
                }
                Type::NUMERIC => {
                    return Param::Numeric(numeric::from_text(&n.to_string())?).to_sql(ty, out);
                }
                _ => {}
            }
        }
        match (self, ty) {
            (Param::F32(v), &Type::FLOAT8) => return f64::from(*v).to_sql(ty, out),
            (Param::F32(v), &Type::NUMERIC) if v.is_finite() => {
                return Param::Numeric(numeric::from_text(&v.to_string())?).to_sql(ty, out);
            }
            (Param::F64(v), &Type::NUMERIC) if v.is_finite() => {
                return Param::Numeric(numeric::from_text(&v.to_string())?).to_sql(ty, out);
            }
            _ => {}
        }
        let accepts = match self {
            Param::Bool(_) => <bool as ToSql>::accepts(ty),
            Param::I8(_) => <i8 as ToSql>::accepts(ty),
            Param::I16(_) => <i16 as ToSql>::accepts(ty),
            Param::I32(_) => <i32 as ToSql>::accepts(ty),
            Param::I64(_) => <i64 as ToSql>::accepts(ty),
            Param::F32(_) => <f32 as ToSql>::accepts(ty),
            Param::F64(_) => <f64 as ToSql>::accepts(ty),
            Param::Str(_) => <String as ToSql>::accepts(ty),
            Param::Bytes(_) => <Vec<u8> as ToSql>::accepts(ty),
            Param::Json(_) => *ty == Type::JSONB || *ty == Type::JSON,
            Param::I32s(_) => <Vec<Option<i32>> as ToSql>::accepts(ty),
            Param::I64s(_) => <Vec<Option<i64>> as ToSql>::accepts(ty),
            Param::Strs(_) => <Vec<Option<String>> as ToSql>::accepts(ty),
            Param::Date(_) => *ty == Type::DATE,
            Param::Time(_) => *ty == Type::TIME,
            Param::DateTime(_) | Param::Timestamp(_) => {
                *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ
            }
            Param::Uuid(_) => *ty == Type::UUID,
            Param::Numeric(_) => *ty == Type::NUMERIC,
            Param::Null => true,
        };
        if !accepts {
            return Err(format!("a parameter of another type than the column's {ty}").into());
        }
        self.to_sql(ty, out)
    }
}

fn param(value: ParameterValue) -> Result<Param, Error> {
    Ok(match value {
        ParameterValue::Boolean(v) => Param::Bool(v),
        ParameterValue::Int8(v) => Param::I8(v),
        ParameterValue::Int16(v) => Param::I16(v),
        ParameterValue::Int32(v) => Param::I32(v),
        ParameterValue::Int64(v) => Param::I64(v),
        ParameterValue::Floating32(v) => Param::F32(v),
        ParameterValue::Floating64(v) => Param::F64(v),
        ParameterValue::Str(v) => Param::Str(v),
        ParameterValue::Binary(v) => Param::Bytes(v),
        ParameterValue::Jsonb(v) => Param::Json(v),
        ParameterValue::ArrayInt32(v) => Param::I32s(v),
        ParameterValue::ArrayInt64(v) => Param::I64s(v),
        ParameterValue::ArrayStr(v) => Param::Strs(v),
        ParameterValue::Date((year, month, day)) => Param::Date(
            jiff::civil::Date::new(narrow(year)?, narrow(month)?, narrow(day)?)
                .map_err(bad_time)?,
        ),
        ParameterValue::Time((hour, minute, second, nanosecond)) => Param::Time(
            jiff::civil::Time::new(
                narrow(hour)?,
                narrow(minute)?,
                narrow(second)?,
                narrow(nanosecond)?,
            )
            .map_err(bad_time)?,
        ),
        ParameterValue::Datetime((year, month, day, hour, minute, second, nanosecond)) => {
            Param::DateTime(
                jiff::civil::DateTime::new(
                    narrow(year)?,
                    narrow(month)?,
                    narrow(day)?,
                    narrow(hour)?,
                    narrow(minute)?,
                    narrow(second)?,
                    narrow(nanosecond)?,
                )
                .map_err(bad_time)?,
            )
        }
        ParameterValue::Timestamp(seconds) => {
            Param::Timestamp(jiff::Timestamp::from_second(seconds).map_err(bad_time)?)
        }
        ParameterValue::Uuid(text) => Param::Uuid(
            uuid::Uuid::parse_str(&text)
                .map_err(|e| Error::BadParameter(format!("not a UUID ({e}): {text:?}")))?,
        ),
        ParameterValue::Decimal(text) => {
            Param::Numeric(numeric::from_text(&text).map_err(Error::BadParameter)?)
        }
        ParameterValue::DbNull => Param::Null,
        other => {
            return Err(Error::BadParameter(format!(
                "{} parameters are not supported by this host yet",
                parameter_kind(&other)
            )));
        }
    })
}

/// A date or time field in the range jiff's type for it holds.
fn narrow<A: Copy + std::fmt::Display, B: TryFrom<A>>(value: A) -> Result<B, Error> {
    B::try_from(value)
        .map_err(|_| Error::BadParameter(format!("a date or time field out of range: {value}")))
}

fn bad_time(e: jiff::Error) -> Error {
    Error::BadParameter(format!("not a valid date or time: {e}"))
}

fn parameter_kind(value: &ParameterValue) -> &'static str {
    match value {
        ParameterValue::Date(_) => "date",
        ParameterValue::Time(_) => "time",
        ParameterValue::Datetime(_) => "datetime",
        ParameterValue::Timestamp(_) => "timestamp",
        ParameterValue::Uuid(_) => "uuid",
        ParameterValue::RangeInt32(_)
        | ParameterValue::RangeInt64(_)
        | ParameterValue::RangeDecimal(_) => "range",
        ParameterValue::ArrayDecimal(_) => "decimal array",
        ParameterValue::Interval(_) => "interval",
        _ => "these",
    }
}

/// A column's value's raw binary form, whatever its type: the fallback.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::CHAR => DbDataType::Int8,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::JSONB | Type::JSON => DbDataType::Jsonb,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => DbDataType::ArrayStr,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::UUID => DbDataType::Uuid,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_owned()),
    }
}

type Cell<T> = Result<Option<T>, tokio_postgres::Error>;

fn cell(row: &tokio_postgres::Row, i: usize) -> Result<DbValue, tokio_postgres::Error> {
    let ty = row.columns()[i].type_();
    fn or_null<T>(
        value: Cell<T>,
        make: impl FnOnce(T) -> DbValue,
    ) -> Result<DbValue, tokio_postgres::Error> {
        Ok(value?.map_or(DbValue::DbNull, make))
    }
    match *ty {
        Type::BOOL => or_null(row.try_get(i), DbValue::Boolean),
        Type::CHAR => or_null(row.try_get(i), DbValue::Int8),
        Type::INT2 => or_null(row.try_get(i), DbValue::Int16),
        Type::INT4 => or_null(row.try_get(i), DbValue::Int32),
        Type::INT8 => or_null(row.try_get(i), DbValue::Int64),
        Type::FLOAT4 => or_null(row.try_get(i), DbValue::Floating32),
        Type::FLOAT8 => or_null(row.try_get(i), DbValue::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            or_null(row.try_get(i), DbValue::Str)
        }
        Type::BYTEA => or_null(row.try_get(i), DbValue::Binary),
        Type::JSONB => or_null(row.try_get::<_, Option<Raw>>(i), |Raw(mut v)| {
            // Strip jsonb's version byte: the guest gets the JSON text's bytes.
            if !v.is_empty() {
                v.remove(0);
            }
            DbValue::Jsonb(v)
        }),
        Type::JSON => or_null(row.try_get::<_, Option<Raw>>(i), |Raw(v)| DbValue::Jsonb(v)),
        Type::INT4_ARRAY => or_null(row.try_get(i), DbValue::ArrayInt32),
        Type::INT8_ARRAY => or_null(row.try_get(i), DbValue::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => or_null(row.try_get(i), DbValue::ArrayStr),
        Type::DATE => or_null(row.try_get::<_, Option<jiff::civil::Date>>(i), |d| {
            DbValue::Date((i32::from(d.year()), d.month() as u8, d.day() as u8))
        }),
        Type::TIME => or_null(row.try_get::<_, Option<jiff::civil::Time>>(i), |t| {
            DbValue::Time((
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
                t.subsec_nanosecond() as u32,
            ))
        }),
        Type::TIMESTAMP => or_null(row.try_get::<_, Option<jiff::civil::DateTime>>(i), datetime),
        // Spin's datetime is UTC without a zone: the instant, in UTC.
        Type::TIMESTAMPTZ => or_null(row.try_get::<_, Option<jiff::Timestamp>>(i), |t| {
            datetime(jiff::tz::TimeZone::UTC.to_datetime(t))
        }),
        Type::UUID => or_null(row.try_get::<_, Option<uuid::Uuid>>(i), |u| {
            DbValue::Uuid(u.hyphenated().to_string())
        }),
        // The server's own bytes; a form that does not decode is passed on as it is.
        Type::NUMERIC => or_null(row.try_get::<_, Option<Raw>>(i), |Raw(v)| {
            numeric::to_text(&v).map_or(DbValue::Unsupported(v), DbValue::Decimal)
        }),
        _ if matches!(ty.kind(), Kind::Enum(_)) => {
            or_null(row.try_get::<_, Option<Raw>>(i), |Raw(v)| {
                DbValue::Str(String::from_utf8_lossy(&v).into_owned())
            })
        }
        _ => or_null(row.try_get::<_, Option<Raw>>(i), |Raw(v)| {
            DbValue::Unsupported(v)
        }),
    }
}

fn datetime(d: jiff::civil::DateTime) -> DbValue {
    DbValue::Datetime((
        i32::from(d.year()),
        d.month() as u8,
        d.day() as u8,
        d.hour() as u8,
        d.minute() as u8,
        d.second() as u8,
        d.subsec_nanosecond() as u32,
    ))
}

fn value_bytes(value: &DbValue) -> u64 {
    match value {
        DbValue::Str(s) | DbValue::Decimal(s) | DbValue::Uuid(s) => s.len() as u64,
        DbValue::Binary(b) | DbValue::Jsonb(b) | DbValue::Unsupported(b) => b.len() as u64,
        DbValue::ArrayStr(v) => v.iter().flatten().map(|s| s.len() as u64 + 8).sum(),
        DbValue::ArrayInt32(v) => 8 * v.len() as u64,
        DbValue::ArrayInt64(v) => 8 * v.len() as u64,
        _ => 8,
    }
}

/// Runs a query on the guest's connection, its rows bounded by the function's quotas.
async fn query(
    client: Arc<tokio::sync::Mutex<deadpool_postgres::Object>>,
    access: Option<GuestPostgres>,
    statement: String,
    params: Vec<ParameterValue>,
) -> Result<RowSet, Error> {
    let access = access.ok_or_else(|| Error::Other("no Postgres on this host".into()))?;
    let params = params
        .into_iter()
        .map(param)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let client = client.lock().await;
    // Cached per pooled connection: a request's repeated query is one round trip, not two.
    let statement = client
        .prepare_cached(&statement)
        .await
        .map_err(query_error)?;
    let columns: Vec<Column> = statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            data_type: data_type(c.type_()),
        })
        .collect();
    let rows = client.query(&statement, &refs).await.map_err(query_error)?;
    if rows.len() as u64 > access.max_rows {
        return Err(Error::Other(format!(
            "the result has more than {} rows (the function's sql_max_rows)",
            access.max_rows
        )));
    }
    let mut bytes = 0u64;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let value = cell(row, i).map_err(|e| Error::ValueConversionFailed(e.to_string()))?;
            bytes += value_bytes(&value);
            values.push(value);
        }
        if bytes > access.max_result_bytes {
            return Err(Error::Other(format!(
                "the result is larger than {} bytes (the function's sql_max_result_kib)",
                access.max_result_bytes
            )));
        }
        out.push(values);
    }
    Ok(RowSet { columns, rows: out })
}

async fn execute(
    client: Arc<tokio::sync::Mutex<deadpool_postgres::Object>>,
    statement: String,
    params: Vec<ParameterValue>,
) -> Result<u64, Error> {
    let params = params
        .into_iter()
        .map(param)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let client = client.lock().await;
    let statement = client
        .prepare_cached(&statement)
        .await
        .map_err(query_error)?;
    client.execute(&statement, &refs).await.map_err(query_error)
}

impl iface::Host for PgView<'_> {}

impl iface::HostConnection for PgView<'_> {
    async fn open(&mut self, address: String) -> Answer<Resource<PgConnection>> {
        let (access, opening) = match self.opening(address) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        match connect(access, opening).await {
            Ok(connection) => Ok(Ok(self.table.push(connection)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Answer<RowSet> {
        let (client, access) = self.client(&connection)?;
        Ok(query(client, access, statement, params).await)
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Answer<u64> {
        let (client, _) = self.client(&connection)?;
        Ok(execute(client, statement, params).await)
    }

    fn drop(&mut self, connection: Resource<PgConnection>) -> wasmtime::Result<()> {
        // The pooled connection goes back to the pool (rolled back) with the last clone.
        self.table.delete(connection)?;
        Ok(())
    }
}

impl iface::HostConnectionBuilder for PgView<'_> {
    fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgBuilder>> {
        Ok(self.table.push(PgBuilder { address })?)
    }

    fn set_ca_root(&mut self, _builder: Resource<PgBuilder>, _certificate: String) -> Answer<()> {
        Ok(Err(Error::Other(
            "TLS to Postgres is not supported by this host yet".into(),
        )))
    }

    async fn build(&mut self, builder: Resource<PgBuilder>) -> Answer<Resource<PgConnection>> {
        let address = self.table.get(&builder)?.address.clone();
        iface::HostConnection::open(self, address).await
    }

    fn drop(&mut self, builder: Resource<PgBuilder>) -> wasmtime::Result<()> {
        self.table.delete(builder)?;
        Ok(())
    }
}

impl<T> iface::HostConnectionWithStore<T> for HasPostgres {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Answer<Resource<PgConnection>> {
        let (access, opening) = match accessor.with(|mut a| a.get().opening(address)) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        match connect(access, opening).await {
            Ok(connection) => Ok(Ok(accessor.with(|mut a| a.get().table.push(connection))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn query_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Answer<(
        Vec<Column>,
        StreamReader<Vec<DbValue>>,
        FutureReader<Result<(), Error>>,
    )> {
        let (client, access) = accessor.with(|mut a| a.get().client(&connection))?;
        let rows = match query(client, access, statement, params).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e)),
        };
        accessor.with(|mut a| {
            let stream = StreamReader::new(&mut a, rows.rows)?;
            let done =
                FutureReader::new(&mut a, async { wasmtime::error::Ok(Ok::<(), Error>(())) })?;
            Ok(Ok((rows.columns, stream, done)))
        })
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Answer<u64> {
        let (client, _) = accessor.with(|mut a| a.get().client(&connection))?;
        Ok(execute(client, statement, params).await)
    }
}

impl<T> iface::HostConnectionBuilderWithStore<T> for HasPostgres {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        builder: Resource<PgBuilder>,
    ) -> Answer<Resource<PgConnection>> {
        let address = accessor.with(|mut a| -> wasmtime::Result<String> {
            Ok(a.get().table.get(&builder)?.address.clone())
        })?;
        <HasPostgres as iface::HostConnectionWithStore<T>>::open_async(accessor, address).await
    }
}

/// Adds `spin:postgres` to a linker whose store data gives a [`PgView`] with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> PgView<'_>,
) -> wasmtime::Result<()> {
    iface::add_to_linker::<T, HasPostgres>(linker, view)
}
