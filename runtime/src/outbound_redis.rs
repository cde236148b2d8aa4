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
//! connection per function and address (`redis`'s `ConnectionManager`) and every guest `open`
//! shares it. A function has at most [`MAX_CONNECTIONS_PER_FUNCTION`] addresses at once, and
//! an address is at most [`MAX_ADDRESS_BYTES`] long, so a guest cannot grow the host's
//! connections. Sharing has a price: a command that changes the connection's state (`SELECT`,
//! `MULTI`, `WATCH`, `SUBSCRIBE`, `AUTH`, `CLIENT`, ...) would change it for the function's
//! other requests, and a blocking one (`BLPOP`, `XREAD ... BLOCK`, `WAIT`, ...) would hold
//! them up; [`refused_command`] names them, with the commands that have the server administer
//! itself or connect elsewhere (`MIGRATE`, `REPLICAOF`, `CONFIG`, ...), and the guest's
//! `execute` refuses them (Lua scripts through `EVAL` are the way to run several commands
//! atomically). Each guest call, connecting included, waits at most the function's
//! `outbound_timeout_ms`; a call that timed out or lost its connection has the host forget
//! that connection ([`RedisHost::forget`]), so the next `open` starts a fresh one rather than
//! queue behind a reply that never came.
//!
//! # What is not bounded
//! A reply is read whole by the client before the guest sees it. A guest can make a large
//! value in one small call (`SETRANGE k 536870911 x` makes 512 MB) and ask for it several
//! times in one reply (`MGET k k k`): the host holds that reply once before the copy into the
//! guest fails. An operator who allows a Redis trusts the function with that much, or bounds
//! it on the Redis side (`maxmemory`, `client-output-buffer-limit`, ACLs).
//!
//! [`RedisHost::connection`] must be called on a tokio runtime (the connection's driver is a
//! task), as every host function is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::outbound::AllowList;

/// The longest address a guest may name.
pub const MAX_ADDRESS_BYTES: usize = 2048;

/// Addresses (so connections) one function may have at once: each distinct address string is
/// a connection the host keeps, so a guest looping over addresses must not grow them.
pub const MAX_CONNECTIONS_PER_FUNCTION: usize = 8;

/// Why a guest cannot have a connection to an address.
#[derive(Debug, thiserror::Error)]
pub enum RedisAddressError {
    /// Not a Redis address.
    #[error("not a Redis address: {0}")]
    Invalid(String),
    /// An address the function may not reach, or in a form thaw does not connect to.
    #[error("{0}")]
    Refused(String),
    /// The function already has [`MAX_CONNECTIONS_PER_FUNCTION`] addresses.
    #[error("the function already has {MAX_CONNECTIONS_PER_FUNCTION} Redis addresses open")]
    TooMany,
}

/// The host's Redis connections.
#[derive(Clone, Default)]
pub struct RedisHost {
    connections: Arc<Mutex<HashMap<ConnectionKey, (Duration, ConnectionManager)>>>,
}

/// A connection's function and address.
type ConnectionKey = (Arc<str>, String);

impl RedisHost {
    /// The function's connection to `address` (made on first use; it connects lazily, on the
    /// first command). The allow-list is checked on every call, so a redeploy that narrows it
    /// takes effect at the next `open`.
    pub fn connection(
        &self,
        function: &Arc<str>,
        address: &str,
        allowed: &AllowList,
        timeout: Duration,
    ) -> Result<ConnectionManager, RedisAddressError> {
        let info = check(address, allowed)?;
        let key = (function.clone(), address.to_owned());
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_with, connection)) = connections.get(&key)
            && *made_with == timeout
        {
            return Ok(connection.clone());
        }
        let others = connections
            .keys()
            .filter(|(f, a)| f == function && a != address)
            .count();
        if others >= MAX_CONNECTIONS_PER_FUNCTION {
            return Err(RedisAddressError::TooMany);
        }
        let connection = connect(info, timeout)?;
        connections.insert(key, (timeout, connection.clone()));
        Ok(connection)
    }

    /// Drops the function's connection to `address`, so the next `open` makes a new one: after
    /// a timeout (a reply that never came holds up every later command on that connection) or
    /// a connection that failed.
    pub fn forget(&self, function: &str, address: &str) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(f, a), _| !(&**f == function && a == address));
    }

    /// Closes `function`'s connections (on `thaw remove`).
    pub fn remove_function(&self, function: &str) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(f, _), _| &**f != function);
    }
}

/// `address` parsed, if the function may reach it.
fn check(address: &str, allowed: &AllowList) -> Result<redis::ConnectionInfo, RedisAddressError> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(RedisAddressError::Invalid(format!(
            "longer than {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    if address.starts_with("rediss://") {
        return Err(RedisAddressError::Refused(
            "TLS to Redis (rediss://) is not supported by this host yet".into(),
        ));
    }
    if !address.starts_with("redis://") {
        return Err(RedisAddressError::Invalid("it starts with redis://".into()));
    }
    let info = address
        .into_connection_info()
        .map_err(|e| RedisAddressError::Invalid(e.to_string()))?;
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(RedisAddressError::Refused(
            "only redis://host[:port] is reachable from a function".into(),
        ));
    };
    let host = host.to_ascii_lowercase();
    if !allowed.allows_host("redis", &host, Some(*port)) {
        return Err(RedisAddressError::Refused(format!(
            "redis://{host}:{port} is not in the function's allowed_outbound_hosts"
        )));
    }
    Ok(info)
}

fn connect(
    info: redis::ConnectionInfo,
    timeout: Duration,
) -> Result<ConnectionManager, RedisAddressError> {
    let client =
        redis::Client::open(info).map_err(|e| RedisAddressError::Invalid(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // No retry inside a call: the guest's call is bounded by `timeout` as a whole
        // (crate::guest::redis), and a connection that failed is forgotten and made again
        // at the next `open`.
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| RedisAddressError::Invalid(e.to_string()))
}

/// Why `execute` refuses `command` (any case) with `arguments` on a shared connection, if it
/// does: it would change the connection's state for the function's other requests, block
/// them, or have the Redis server administer itself or connect elsewhere (which would step
/// around the allow-list). Redis's own ACLs are the boundary for everything else a user may
/// run; these are refused whatever the ACLs say.
pub fn refused_command<'a>(
    command: &str,
    arguments: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'static str> {
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
    const ADMINISTRATIVE: &[&str] = &[
        "CLUSTER",
        "CONFIG",
        "DEBUG",
        "FAILOVER",
        "MIGRATE",
        "MODULE",
        "REPLICAOF",
        "SHUTDOWN",
        "SLAVEOF",
    ];
    // Compared in place: a guest's every `execute` passes here.
    let command = command.trim();
    let is = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(command));
    if is(STATEFUL) {
        Some("it changes the state of the connection the function's requests share")
    } else if is(BLOCKING)
        || (is(&["XREAD", "XREADGROUP"])
            && arguments
                .into_iter()
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK")))
    {
        Some("it blocks the connection the function's requests share")
    } else if is(ADMINISTRATIVE) {
        Some("it administers the Redis server or has it connect elsewhere")
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
            assert!(e.to_string().contains(says), "{address}: {e}");
        }
        let long = format!(
            "redis://cache.internal/?pad={}",
            "x".repeat(MAX_ADDRESS_BYTES)
        );
        assert!(matches!(
            host.connection(&f, &long, &allowed, t),
            Err(RedisAddressError::Invalid(_))
        ));
        // Each distinct address is a connection kept: a function has at most so many.
        for db in 2..MAX_CONNECTIONS_PER_FUNCTION {
            host.connection(&f, &format!("redis://cache.internal/{db}"), &allowed, t)
                .unwrap();
        }
        assert!(matches!(
            host.connection(&f, "redis://cache.internal/15", &allowed, t),
            Err(RedisAddressError::TooMany)
        ));
        host.connection(&f, "redis://cache.internal", &allowed, t)
            .unwrap();
        host.forget("f", "redis://cache.internal/2");
        host.connection(&f, "redis://cache.internal/15", &allowed, t)
            .unwrap();
        // A narrower allow-list (a redeploy) is checked on the next open, cached or not.
        let narrower = allow(&["redis://cache.internal:6380"]);
        assert!(
            host.connection(&f, "redis://cache.internal", &narrower, t)
                .is_err()
        );
        host.remove_function("f");
        assert!(host.connections.lock().unwrap().is_empty());
    }

    #[test]
    fn connection_state_and_blocking_commands_are_refused() {
        let none: [&[u8]; 0] = [];
        for c in [
            "select",
            "MULTI",
            "Subscribe",
            "blpop",
            "WAIT",
            "client",
            "migrate",
            "ReplicaOf",
            "CONFIG",
            " exec ",
        ] {
            assert!(refused_command(c, none).is_some(), "{c}");
        }
        for c in ["GET", "set", "EVAL", "incr", "PUBLISH", "xadd", "XREAD"] {
            assert!(refused_command(c, none).is_none(), "{c}");
        }
        let block: [&[u8]; 4] = [b"block", b"0", b"STREAMS", b"s"];
        assert!(refused_command("xread", block).is_some());
        assert!(refused_command("XREADGROUP", block).is_some());
    }
}
