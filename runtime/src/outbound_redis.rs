//! Functions' outbound Redis: the connections the host holds for `spin:redis`
//! ([`crate::guest::redis`]), one per function and Redis address.
//!
//! # Who may reach what
//! A guest names a server by its address (`redis://[user:password@]host[:port][/db]`, as Spin
//! apps do, usually from a variable). The host connects only where the function's
//! `allowed_outbound_hosts` allows (`redis://host[:port]`, port 6379 by default). Unix sockets
//! and TLS (`rediss://`) are refused with that reason.
//!
//! # One multiplexed connection, not one per request
//! Opening a connection per request is what cost Spin users most of their throughput on
//! Postgres (spin#3030); Redis's protocol pipelines, so the host keeps one multiplexed
//! connection per function and address (`redis`'s `ConnectionManager`, which reconnects on
//! failure) and every guest `open` shares it. Its price: a command that changes the
//! connection's state (`SELECT`, `MULTI`, `WATCH`, `SUBSCRIBE`, `AUTH`, `CLIENT`, ...) would
//! change it for the function's other requests, and a blocking one (`BLPOP`, `WAIT`, ...)
//! would hold them up; [`refused_command`] names them and the guest's `execute` refuses them
//! (Lua scripts through `EVAL` are the way to run several commands atomically). Connecting and
//! each reply wait at most the function's `outbound_timeout_ms`, so a Redis that is down costs
//! a request that long, never the host.
//!
//! # What is not bounded
//! A reply is read whole by the client before the guest sees it: a guest that grew a value in
//! Redis past its own memory limit (`APPEND` by `APPEND`) can have the host hold it once, up
//! to Redis's own `proto-max-bulk-len` (512 MB by default), before the copy into the guest
//! fails. An operator who allows a Redis trusts the function with that much.
//!
//! [`RedisHost::connection`] must be called on a tokio runtime (the connection's driver is a
//! task), as every host function is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::outbound::AllowList;

/// Why a Redis address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// The host's Redis connections.
#[derive(Clone, Default)]
pub struct RedisHost {
    connections: Arc<Mutex<HashMap<ConnectionKey, (Duration, ConnectionManager)>>>,
}

/// A connection's function and address.
type ConnectionKey = (Arc<str>, String);

impl RedisHost {
    /// The function's connection to `address` (made on first use; it connects lazily, on the
    /// first command), each connect and reply bounded by `timeout`.
    pub fn connection(
        &self,
        function: &Arc<str>,
        address: &str,
        allowed: &AllowList,
        timeout: Duration,
    ) -> Result<ConnectionManager, AddressError> {
        let key = (function.clone(), address.to_owned());
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_with, connection)) = connections.get(&key)
            && *made_with == timeout
        {
            return Ok(connection.clone());
        }
        let connection = connect(address, allowed, timeout)?;
        connections.insert(key, (timeout, connection.clone()));
        Ok(connection)
    }

    /// Closes `function`'s connections (on `thaw remove`).
    pub fn remove_function(&self, function: &str) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(f, _), _| &**f != function);
    }
}

fn connect(
    address: &str,
    allowed: &AllowList,
    timeout: Duration,
) -> Result<ConnectionManager, AddressError> {
    if !address.starts_with("redis://") {
        return Err(AddressError(if address.starts_with("rediss://") {
            "TLS to Redis (rediss://) is not supported by this host yet".into()
        } else {
            "a Redis address starts with redis://".into()
        }));
    }
    let info = address
        .into_connection_info()
        .map_err(|e| AddressError(format!("not a Redis address: {e}")))?;
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(AddressError(
            "only redis://host[:port] is reachable from a function".into(),
        ));
    };
    let host = host.to_ascii_lowercase();
    if !allowed.allows_host("redis", &host, Some(*port)) {
        return Err(AddressError(format!(
            "redis://{host}:{port} is not in the function's allowed_outbound_hosts"
        )));
    }
    let client = redis::Client::open(info).map_err(|e| AddressError(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // One retry, then the guest hears of it: its request has a deadline of its own.
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| AddressError(e.to_string()))
}

/// Why `execute` refuses `command` (any case) on a shared connection, if it does: it would
/// change the connection's state for the function's other requests, or block them.
pub fn refused_command(command: &str) -> Option<&'static str> {
    const STATEFUL: &[&str] = &[
        "AUTH",
        "CLIENT",
        "DISCARD",
        "EXEC",
        "HELLO",
        "MONITOR",
        "MULTI",
        "PSUBSCRIBE",
        "PUNSUBSCRIBE",
        "QUIT",
        "READONLY",
        "READWRITE",
        "RESET",
        "SELECT",
        "SSUBSCRIBE",
        "SUBSCRIBE",
        "SUNSUBSCRIBE",
        "SYNC",
        "PSYNC",
        "UNSUBSCRIBE",
        "UNWATCH",
        "WATCH",
    ];
    const BLOCKING: &[&str] = &[
        "BLMOVE",
        "BLMPOP",
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BZMPOP",
        "BZPOPMAX",
        "BZPOPMIN",
        "WAIT",
        "WAITAOF",
    ];
    let upper = command.to_ascii_uppercase();
    if STATEFUL.contains(&upper.as_str()) {
        Some("it changes the state of the connection the function's requests share")
    } else if BLOCKING.contains(&upper.as_str()) {
        Some("it blocks the connection the function's requests share")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(patterns: &[&str]) -> AllowList {
        AllowList::parse(patterns).unwrap()
    }

    // A connection spawns its driver task: a runtime is needed even though none connects.
    #[tokio::test]
    async fn addresses_outside_the_allow_list_or_not_tcp_are_refused() {
        let host = RedisHost::default();
        let f: Arc<str> = "f".into();
        let t = Duration::from_secs(1);
        let allowed = allow(&["redis://cache.internal"]);
        host.connection(&f, "redis://cache.internal", &allowed, t)
            .unwrap();
        host.connection(&f, "redis://user:pw@cache.internal:6379/2", &allowed, t)
            .unwrap();
        for (address, says) in [
            (
                "redis://cache.internal:6380",
                "not in the function's allowed_outbound_hosts",
            ),
            (
                "redis://other.internal",
                "not in the function's allowed_outbound_hosts",
            ),
            ("rediss://cache.internal", "TLS to Redis"),
            ("redis+unix:///run/redis.sock", "starts with redis://"),
            ("http://cache.internal", "starts with redis://"),
            ("redis://", "not a Redis address"),
        ] {
            let e = host.connection(&f, address, &allowed, t).err().unwrap();
            assert!(e.0.contains(says), "{address}: {e}");
        }
        host.remove_function("f");
        assert!(host.connections.lock().unwrap().is_empty());
    }

    #[test]
    fn connection_state_and_blocking_commands_are_refused() {
        for c in ["select", "MULTI", "Subscribe", "blpop", "WAIT", "client"] {
            assert!(refused_command(c).is_some(), "{c}");
        }
        for c in ["GET", "set", "EVAL", "incr", "PUBLISH", "xadd"] {
            assert!(refused_command(c).is_none(), "{c}");
        }
    }
}
