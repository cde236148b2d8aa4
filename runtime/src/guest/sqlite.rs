//! `spin:sqlite/sqlite@3.1.0`, the interface Spin apps (spin-sdk 7) and `thaw_sdk::sql`
//! import, over the host's databases ([`crate::sql`]) and scoped to the calling function.
//!
//! One implementation serves both kinds of guest:
//! - a WASIp2 guest (thaw's SDK, Spin 3 apps) calls the plain functions (`open`, `execute`):
//!   the host runs the statement on a blocking thread while the guest's call waits on its
//!   fiber, so the executor thread is never blocked by SQLite;
//! - a WASIp3 guest (spin-sdk 7) calls the `async` ones (`open-async`, `execute-async`),
//!   concurrent host functions: the guest's other tasks run meanwhile.
//!
//! `execute-async` answers with the columns, a `stream<row-result>` and a `future` of the
//! statement's outcome. thaw runs the statement to its end first (under the result quotas,
//! so the rows are bounded) and then streams the rows it holds: the outcome is known before
//! the first row is read, so a guest that awaits the future before draining the stream
//! cannot deadlock the statement, and the connection is free for the next statement as soon
//! as the answer is handed over. The cost is that a large result is held whole, which the
//! `sql_max_result_kib` quota bounds.
//!
//! Errors are the interface's: a statement that fails is `io` with SQLite's message; a full
//! database is `database-full`; a name the function may not open is `no-such-database`; a
//! host without SQL answers `access-denied`. The host's details (paths) go to its log only.

use std::sync::Arc;

use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::sql::{self, Lease, SqlError, SqlHost, SqlQuota};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/sqlite",
        world: "spin:sqlite/imports",
        imports: {
            // Blocking SQLite work: async on the host (the guest's fiber waits), never on the
            // executor thread.
            "spin:sqlite/sqlite.[static]connection.open": async | trappable,
            "spin:sqlite/sqlite.[method]connection.execute": async | trappable,
            default: trappable,
        },
        with: {
            "spin:sqlite/sqlite.connection": super::Connection,
        },
    });
}

use bindings::spin::sqlite::sqlite::{self as iface, Error, QueryResult, RowResult, Value};

/// An open connection: the guest's own SQLite connection (its transactions are its own),
/// and what its last statement changed, for `last-insert-rowid` and `changes`.
pub struct Connection {
    lease: Arc<tokio::sync::Mutex<Lease>>,
    effects: sql::Effects,
}

/// What a function's guest may reach: the host's databases, under its name and quota.
#[derive(Clone)]
pub struct GuestSql {
    /// The host's databases.
    pub host: SqlHost,
    /// The scope: the function's name.
    pub function: Arc<str>,
    /// The quota of the function's version.
    pub quota: SqlQuota,
    /// The names it may open besides `default` (its spec's `sqlite_databases`).
    pub databases: Arc<[String]>,
}

/// The host functions' view of a store's data.
pub struct SqlView<'a> {
    /// The store's resource table (connections live there).
    pub table: &'a mut ResourceTable,
    /// The function's access; `None` on a host without SQL.
    pub access: Option<&'a GuestSql>,
    /// Connections the guest holds open.
    pub open_connections: &'a mut usize,
}

/// Most connections one instance holds open at once: each is a table entry, host memory
/// outside the guest's limit; past it `open` is an error the guest can handle (as
/// [`crate::guest::keyvalue::MAX_OPEN_BUCKETS`]).
pub const MAX_OPEN_CONNECTIONS: usize = 64;

type Answer<T> = wasmtime::Result<Result<T, Error>>;

impl From<SqlError> for Error {
    fn from(error: SqlError) -> Self {
        match error {
            SqlError::NoSuchDatabase(_) => Error::NoSuchDatabase,
            SqlError::AccessDenied => Error::AccessDenied,
            SqlError::DatabaseFull(_) => Error::DatabaseFull,
            SqlError::Io(message) => Error::Io(message),
        }
    }
}

fn to_host(value: Value) -> sql::Value {
    match value {
        Value::Integer(i) => sql::Value::Integer(i),
        Value::Real(r) => sql::Value::Real(r),
        Value::Text(t) => sql::Value::Text(t),
        Value::Blob(b) => sql::Value::Blob(b),
        Value::Null => sql::Value::Null,
    }
}

fn to_guest(value: sql::Value) -> Value {
    match value {
        sql::Value::Integer(i) => Value::Integer(i),
        sql::Value::Real(r) => Value::Real(r),
        sql::Value::Text(t) => Value::Text(t),
        sql::Value::Blob(b) => Value::Blob(b),
        sql::Value::Null => Value::Null,
    }
}

/// What opening needs, taken out of the store before any await.
struct OpenRequest {
    access: GuestSql,
    database: String,
}

impl SqlView<'_> {
    /// Checks that the guest may open another connection and reserves its place (concurrent
    /// `open-async` calls each count before any of them awaits), and clones what opening
    /// needs. A failed open gives the place back ([`SqlView::unreserve`]).
    fn open_request(&mut self, database: String) -> Result<OpenRequest, Error> {
        let access = self.access.ok_or(Error::AccessDenied)?;
        let max = MAX_OPEN_CONNECTIONS.min(self.table.max_capacity() / 2);
        if *self.open_connections >= max {
            return Err(Error::Io(format!(
                "more than {max} connections open at once; drop some"
            )));
        }
        *self.open_connections += 1;
        Ok(OpenRequest {
            access: access.clone(),
            database,
        })
    }

    fn unreserve(&mut self) {
        *self.open_connections = self.open_connections.saturating_sub(1);
    }

    /// The opened connection into the table (its place was reserved by
    /// [`SqlView::open_request`]), or the open's error with the place given back.
    fn opened(
        &mut self,
        opened: Result<Lease, Error>,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let lease = match opened {
            Ok(lease) => lease,
            Err(e) => {
                self.unreserve();
                return Ok(Err(e));
            }
        };
        let pushed = self.table.push(Connection {
            lease: Arc::new(tokio::sync::Mutex::new(lease)),
            effects: sql::Effects::default(),
        });
        if pushed.is_err() {
            self.unreserve();
        }
        Ok(Ok(pushed?))
    }

    /// The connection's lease, and the quota its statements run under.
    fn statement_target(
        &self,
        connection: &Resource<Connection>,
    ) -> Result<(Arc<tokio::sync::Mutex<Lease>>, SqlQuota), Error> {
        let access = self.access.ok_or(Error::AccessDenied)?;
        let connection = self
            .table
            .get(connection)
            .map_err(|_| Error::InvalidConnection)?;
        Ok((connection.lease.clone(), access.quota))
    }
}

/// Opens the database on a blocking thread (the first open creates the file) and takes a
/// connection to it.
async fn open(request: OpenRequest) -> wasmtime::Result<Result<Lease, Error>> {
    let OpenRequest { access, database } = request;
    if let Some(lease) = access
        .host
        .idle_connection(&access.function, &database, &access.databases)
    {
        return Ok(Ok(lease));
    }
    let opened = tokio::task::spawn_blocking(move || {
        access
            .host
            .database(&access.function, &database, &access.databases)?
            .connect()
    })
    .await?;
    Ok(opened.map_err(Error::from))
}

/// Runs a statement on a blocking thread.
async fn execute(
    lease: Arc<tokio::sync::Mutex<Lease>>,
    quota: SqlQuota,
    statement: String,
    parameters: Vec<Value>,
) -> wasmtime::Result<Result<(QueryResult, sql::Effects), Error>> {
    let parameters: Vec<sql::Value> = parameters.into_iter().map(to_host).collect();
    // The connection's statements queue here, on the async side: a guest with many calls in
    // flight on one connection holds one blocking thread, not one per call.
    let mut lease = lease.lock_owned().await;
    let ran =
        tokio::task::spawn_blocking(move || lease.execute(&statement, &parameters, &quota)).await?;
    Ok(ran
        .map(|(result, effects)| {
            let rows = result
                .rows
                .into_iter()
                .map(|values| RowResult {
                    values: values.into_iter().map(to_guest).collect(),
                })
                .collect();
            let result = QueryResult {
                columns: result.columns,
                rows,
            };
            (result, effects)
        })
        .map_err(Error::from))
}

impl iface::Host for SqlView<'_> {}

impl iface::HostConnection for SqlView<'_> {
    async fn open(&mut self, database: String) -> Answer<Resource<Connection>> {
        let request = match self.open_request(database) {
            Ok(request) => request,
            Err(e) => return Ok(Err(e)),
        };
        let opened = open(request).await;
        match opened {
            Ok(opened) => self.opened(opened),
            Err(trap) => {
                self.unreserve();
                Err(trap)
            }
        }
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Answer<QueryResult> {
        let (lease, quota) = match self.statement_target(&connection) {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        match execute(lease, quota, statement, parameters).await? {
            Ok((result, effects)) => {
                self.table.get_mut(&connection)?.effects = effects;
                Ok(Ok(result))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn last_insert_rowid(&mut self, connection: Resource<Connection>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&connection)?.effects.last_insert_rowid)
    }

    fn changes(&mut self, connection: Resource<Connection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&connection)?.effects.changes)
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        *self.open_connections = self.open_connections.saturating_sub(1);
        Ok(())
    }
}

/// The `HasData` marker of the interface: its data is a [`SqlView`].
pub struct HasSql;

impl HasData for HasSql {
    type Data<'a> = SqlView<'a>;
}

impl<T> iface::HostConnectionWithStore<T> for HasSql {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        database: String,
    ) -> Answer<Resource<Connection>> {
        let request = match accessor.with(|mut access| access.get().open_request(database)) {
            Ok(request) => request,
            Err(e) => return Ok(Err(e)),
        };
        let opened = open(request).await;
        accessor.with(|mut access| {
            let mut view = access.get();
            match opened {
                Ok(opened) => view.opened(opened),
                Err(trap) => {
                    view.unreserve();
                    Err(trap)
                }
            }
        })
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<Connection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Answer<(
        Vec<String>,
        StreamReader<RowResult>,
        FutureReader<Result<(), Error>>,
    )> {
        let target = accessor.with(|mut access| access.get().statement_target(&connection));
        let (lease, quota) = match target {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        let result = match execute(lease, quota, statement, parameters).await? {
            Ok((result, effects)) => {
                accessor.with(|mut access| -> wasmtime::Result<()> {
                    access.get().table.get_mut(&connection)?.effects = effects;
                    Ok(())
                })?;
                result
            }
            Err(e) => return Ok(Err(e)),
        };
        // The readers are made only now, when nothing can return early and leak them.
        accessor.with(|mut access| {
            let rows = StreamReader::new(&mut access, result.rows)?;
            let done = FutureReader::new(&mut access, async {
                wasmtime::error::Ok(Ok::<(), Error>(()))
            })?;
            Ok(Ok((result.columns, rows, done)))
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<i64> {
        accessor.with(|mut access| {
            Ok(access
                .get()
                .table
                .get(&connection)?
                .effects
                .last_insert_rowid)
        })
    }

    async fn changes_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<u64> {
        accessor.with(|mut access| Ok(access.get().table.get(&connection)?.effects.changes))
    }
}

/// Adds `spin:sqlite` to a linker whose store data gives a [`SqlView`] with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> SqlView<'_>,
) -> wasmtime::Result<()> {
    iface::add_to_linker::<T, HasSql>(linker, view)
}
