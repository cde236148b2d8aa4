//! `spin:redis/redis@3.0.0`, as spin-sdk 7 imports it, over the host's connections
//! ([`crate::outbound_redis`]): a guest's `open(address)` gets a handle on its function's
//! shared connection to that address, where `allowed_outbound_hosts` allows it.
//!
//! Every function is `async` in the WIT: concurrent host functions, which a WASIp3 guest calls
//! without blocking its other tasks. `execute` answers Spin's flattened results (an array's
//! elements in order, as Spin does) and refuses the commands
//! [`crate::outbound_redis::refused_command`] names.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use wasmtime::component::{Accessor, HasData, Resource, ResourceTable};

use crate::outbound::AllowList;
use crate::outbound_redis::{RedisAddressError, RedisHost};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/redis",
        world: "spin:redis/imports",
        imports: { default: trappable },
        with: {
            "spin:redis/redis.connection": super::RedisConnection,
        },
    });
}

use bindings::spin::redis::redis::{self as iface, Error, RedisParameter, RedisResult};

/// Connections one guest may hold open at once.
pub const MAX_OPEN_CONNECTIONS: usize = 64;

/// A guest's connection: a handle on its function's shared connection to `address`.
pub struct RedisConnection {
    connection: ConnectionManager,
    address: Arc<str>,
}

/// What a function's guest may reach.
#[derive(Clone)]
pub struct GuestRedis {
    /// The host's connections.
    pub host: RedisHost,
    /// The function.
    pub function: Arc<str>,
    /// Its allow-list (`redis://` entries decide).
    pub allowed: Arc<AllowList>,
    /// Its `outbound_timeout_ms`: each connect and reply.
    pub timeout: Duration,
}

/// The host functions' view of a store's data.
pub struct RedisView<'a> {
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
    /// The function's access; `None` on a host without it.
    pub access: Option<&'a GuestRedis>,
    /// Connections the guest holds open.
    pub open: &'a mut usize,
}

/// The `HasData` marker of the interface.
pub struct HasRedis;

impl HasData for HasRedis {
    type Data<'a> = RedisView<'a>;
}

type Answer<T> = wasmtime::Result<Result<T, Error>>;

fn redis_error(error: redis::RedisError) -> Error {
    match error.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => Error::TypeError,
        _ if error.code() == Some("WRONGTYPE") => Error::TypeError,
        // The server's or the client's own words; they name no host path.
        _ => Error::Other(error.to_string()),
    }
}

/// What a call on a guest's connection needs once the store is let go.
struct Call {
    connection: ConnectionManager,
    address: Arc<str>,
    access: Option<GuestRedis>,
}

/// The shared connection behind `connection`, cloned out of the store for a call that awaits.
fn shared<T>(
    accessor: &Accessor<T, HasRedis>,
    connection: &Resource<RedisConnection>,
) -> wasmtime::Result<Call> {
    accessor.with(|mut access| {
        let view = access.get();
        let open = view.table.get(connection)?;
        Ok(Call {
            connection: open.connection.clone(),
            address: open.address.clone(),
            access: view.access.cloned(),
        })
    })
}

/// Runs `command` on the call's connection, its reply as `R`, within the function's outbound
/// timeout. A call that timed out or lost its connection has the host forget the connection
/// (see [`crate::outbound_redis::RedisHost::forget`]).
async fn run<R: redis::FromRedisValue>(call: Call, command: &redis::Cmd) -> Result<R, Error> {
    let Call {
        mut connection,
        address,
        access,
    } = call;
    let timeout = access
        .as_ref()
        .map_or(Duration::from_secs(10), |a| a.timeout);
    let outcome = tokio::time::timeout(timeout, command.query_async(&mut connection)).await;
    let failed_connection = match &outcome {
        Err(_) => true,
        Ok(Err(e)) => {
            e.is_timeout()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.kind() == redis::ErrorKind::AuthenticationFailed
        }
        Ok(Ok(_)) => false,
    };
    if failed_connection && let Some(access) = &access {
        access.host.forget(&access.function, &address);
    }
    match outcome {
        Ok(reply) => reply.map_err(redis_error),
        Err(_) => Err(Error::Other(format!(
            "no reply from Redis within {} ms (the function's outbound_timeout_ms)",
            timeout.as_millis()
        ))),
    }
}

/// Runs command `name` with `args` on a guest's connection: one line per method of the
/// interface, each a Redis command of the same name.
async fn on<T, R: redis::FromRedisValue>(
    accessor: &Accessor<T, HasRedis>,
    connection: &Resource<RedisConnection>,
    name: &str,
    args: impl redis::ToRedisArgs,
) -> Answer<R> {
    let call = shared(accessor, connection)?;
    let mut command = redis::cmd(name);
    command.arg(args);
    Ok(run(call, &command).await)
}

impl iface::Host for RedisView<'_> {}

impl iface::HostConnection for RedisView<'_> {
    fn drop(&mut self, connection: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        *self.open = self.open.saturating_sub(1);
        Ok(())
    }
}

impl<T> iface::HostConnectionWithStore<T> for HasRedis {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Answer<Resource<RedisConnection>> {
        accessor.with(|mut access| {
            let view = access.get();
            let Some(redis) = view.access else {
                return Ok(Err(Error::Other(
                    "this host offers the function no Redis".into(),
                )));
            };
            if *view.open >= MAX_OPEN_CONNECTIONS.min(view.table.max_capacity() / 2) {
                return Ok(Err(Error::TooManyConnections));
            }
            let connection = match redis.host.connection(
                &redis.function,
                &address,
                &redis.allowed,
                redis.timeout,
            ) {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!(function = &*redis.function, "redis open refused: {e}");
                    return Ok(Err(match e {
                        RedisAddressError::Invalid(_) => Error::InvalidAddress,
                        RedisAddressError::TooMany => Error::TooManyConnections,
                        RedisAddressError::Refused(why) => Error::Other(why),
                    }));
                }
            };
            let connection = view.table.push(RedisConnection {
                connection,
                address: address.into(),
            })?;
            *view.open += 1;
            Ok(Ok(connection))
        })
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Answer<()> {
        // PUBLISH answers how many subscribers got the message; the interface answers nothing.
        Ok(
            on::<T, i64>(accessor, &connection, "PUBLISH", (channel, payload))
                .await?
                .map(drop),
        )
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Answer<Option<Vec<u8>>> {
        on(accessor, &connection, "GET", key).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Answer<()> {
        on(accessor, &connection, "SET", (key, value)).await
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Answer<i64> {
        on(accessor, &connection, "INCR", key).await
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Answer<u32> {
        on(accessor, &connection, "DEL", keys).await
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Answer<u32> {
        on(accessor, &connection, "SADD", (key, values)).await
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Answer<Vec<String>> {
        on(accessor, &connection, "SMEMBERS", key).await
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Answer<u32> {
        on(accessor, &connection, "SREM", (key, values)).await
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection>,
        name: String,
        arguments: Vec<RedisParameter>,
    ) -> Answer<Vec<RedisResult>> {
        let binary = arguments.iter().filter_map(|a| match a {
            RedisParameter::Binary(b) => Some(b.as_slice()),
            RedisParameter::Int64(_) => None,
        });
        if let Some(why) = crate::outbound_redis::refused_command(&name, binary) {
            return Ok(Err(Error::Other(format!(
                "{} is refused on thaw: {why}",
                name.trim().to_ascii_uppercase()
            ))));
        }
        let connection = shared(accessor, &connection)?;
        let mut command = redis::cmd(&name);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(v) => command.arg(v),
                RedisParameter::Binary(v) => command.arg(v),
            };
        }
        let value: redis::Value = match run(connection, &command).await {
            Ok(value) => value,
            Err(e) => return Ok(Err(e)),
        };
        let mut results = Vec::new();
        Ok(flatten(value, &mut results).map(|()| results))
    }
}

/// A reply as Spin's `execute` answers it: an array's elements in order, nested arrays
/// flattened; kinds the interface has no case for are `type-error`.
fn flatten(value: redis::Value, into: &mut Vec<RedisResult>) -> Result<(), Error> {
    use redis::Value;
    match value {
        Value::Nil => into.push(RedisResult::Nil),
        Value::Int(v) => into.push(RedisResult::Int64(v)),
        Value::BulkString(v) => into.push(RedisResult::Binary(v)),
        Value::SimpleString(v) => into.push(RedisResult::Status(v)),
        Value::Okay => into.push(RedisResult::Status("OK".into())),
        Value::Array(values) | Value::Set(values) => {
            for value in values {
                flatten(value, into)?;
            }
        }
        Value::ServerError(e) => return Err(Error::Other(e.to_string())),
        _ => return Err(Error::TypeError),
    }
    Ok(())
}

/// Adds `spin:redis/redis` to a linker whose store data gives a [`RedisView`] with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> RedisView<'_>,
) -> wasmtime::Result<()> {
    iface::add_to_linker::<T, HasRedis>(linker, view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_flatten_as_spin_answers_them() {
        use redis::Value;
        let mut out = Vec::new();
        flatten(
            Value::Array(vec![
                Value::Int(1),
                Value::Nil,
                Value::Array(vec![Value::BulkString(b"x".to_vec()), Value::Okay]),
                Value::SimpleString("QUEUED".into()),
            ]),
            &mut out,
        )
        .unwrap();
        let shown: Vec<String> = out.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(shown.len(), 5, "{shown:?}");
        assert!(matches!(out[0], RedisResult::Int64(1)));
        assert!(matches!(out[1], RedisResult::Nil));
        assert!(matches!(&out[2], RedisResult::Binary(b) if b == b"x"));
        assert!(matches!(&out[3], RedisResult::Status(s) if s == "OK"));
        assert!(matches!(&out[4], RedisResult::Status(s) if s == "QUEUED"));
        assert!(matches!(
            flatten(Value::Double(1.5), &mut Vec::new()),
            Err(Error::TypeError)
        ));
    }
}
