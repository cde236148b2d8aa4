//! Functions' Postgres: connection pools the host holds, one per function and database
//! address, which a guest's `spin:postgres` connections are lent from
//! ([`crate::guest::postgres`]).
//!
//! # Who may reach what
//! A guest names a database in one of two ways:
//! - By a name in its spec's `postgres_databases` (`orders`), each backed by a secret that
//!   holds the URL. The operator granted exactly that database, so no allow-list entry is
//!   needed, and the URL (with its password) never passes through the guest or the spec.
//!   Names have no `:` and URLs do, so the two never collide. thaw's SDKs open databases
//!   this way.
//! - By its address (`postgres://user:password@host:port/db`), as Spin apps do, usually
//!   from a secret variable. The host connects only where the function's
//!   `allowed_outbound_hosts` allows (`postgres://host[:port]`); `hostaddr` and Unix
//!   sockets are refused, since the allow-list could not vouch for them.
//!
//! Either way the pool is the function's own: two functions naming the same database get
//! two pools, and no connection ever carries one function's session to another.
//!
//! # Pools
//! `deadpool-postgres` over `tokio-postgres`: at most `pg_max_connections` per function and
//! address; a guest's `open` waits at most `pg_acquire_ms` for one (or to make one), then
//! gets `connection-failed`, so a Postgres that is down costs a request that long and never
//! the host. A guest's connection is its own until it drops it (its transaction is its own);
//! given back, the connection is rolled back before the next guest gets it. Each session has
//! `statement_timeout` set to the function's `sql_statement_ms`, enforced by the server.
//!
//! # TLS
//! An address that asks for it (`sslmode=require`) gets TLS (rustls), and the server's
//! certificate is verified against the host's trust store (`rustls-native-certs`: the system's
//! roots, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set) for the host name in the address, as
//! Spin's own Postgres client verifies it. Without `sslmode` (tokio-postgres's `prefer`) or
//! with `sslmode=disable` the connection is plain: libpq's `prefer` would take TLS without
//! verifying it, which protects against nothing an attacker on the path cannot undo, so thaw
//! does not pretend to. The trust store is read once, on the first TLS address.

pub mod numeric;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};

use crate::outbound::AllowList;

/// The settings a pool is made with, from the function's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgQuota {
    /// Most connections.
    pub max_connections: u32,
    /// Longest wait for one.
    pub acquire_timeout: Duration,
    /// The server's `statement_timeout`.
    pub statement_timeout: Duration,
}

impl PgQuota {
    /// The quota of a version's resolved limits.
    pub fn of(limits: &thaw_spec::spec::Limits) -> Self {
        Self {
            max_connections: limits.pg_max_connections,
            acquire_timeout: limits.pg_acquire_timeout,
            statement_timeout: limits.sql_statement_timeout,
        }
    }
}

/// Why a database could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Not a Postgres address, or one the function may not reach.
    #[error("{0}")]
    Address(String),
    /// No connection within the acquire timeout, or the server refused.
    #[error("{0}")]
    Connection(String),
}

/// The host's pools.
#[derive(Clone, Default)]
pub struct PgHost {
    pools: Arc<Mutex<HashMap<PoolKey, Pooled>>>,
}

/// A pool's function and database URL.
type PoolKey = (Arc<str>, String);

/// A pool, what it was made with, and whether its database was declared (only the others
/// count against [`MAX_POOLS_PER_FUNCTION`]).
struct Pooled {
    quota: PgQuota,
    pool: Pool,
    declared: bool,
}

/// What a guest asked to open. Not `Debug`: a declared database's URL holds its password.
pub enum Target<'a> {
    /// A database of the function's `postgres_databases`: its name and its URL.
    Declared {
        /// The name the guest opened.
        name: &'a str,
        /// The URL from the secret.
        url: &'a str,
    },
    /// An address the guest named, checked against its allow-list.
    Address(&'a str),
}

/// The longest address a guest may name.
pub const MAX_ADDRESS_BYTES: usize = 2048;

/// Addresses (so pools) one function may have at once: each distinct address string is a
/// pool the host keeps, so a guest looping over addresses must not grow them.
pub const MAX_POOLS_PER_FUNCTION: usize = 8;

impl PgHost {
    /// A connection to `address` for `function`, from its pool (made on first use), within
    /// the quota's acquire timeout.
    pub async fn connect(
        &self,
        function: &Arc<str>,
        target: Target<'_>,
        allowed: &AllowList,
        quota: PgQuota,
    ) -> Result<deadpool_postgres::Object, PgError> {
        let pool = self.pool(function, target, allowed, quota)?;
        pool.get().await.map_err(|e| {
            PgError::Connection(match e {
                deadpool_postgres::PoolError::Timeout(_) => format!(
                    "no connection to the database within {} ms (the function's pg_acquire_ms; at most pg_max_connections = {} at once)",
                    quota.acquire_timeout.as_millis(),
                    quota.max_connections
                ),
                // The server's or the TLS layer's own words, with their causes (refused,
                // authentication, no such database, an untrusted certificate); they name no
                // host path.
                other => {
                    let mut text = other.to_string();
                    let mut cause = std::error::Error::source(&other);
                    while let Some(e) = cause {
                        text.push_str(": ");
                        text.push_str(&e.to_string());
                        cause = e.source();
                    }
                    text
                }
            })
        })
    }

    fn pool(
        &self,
        function: &Arc<str>,
        target: Target<'_>,
        allowed: &AllowList,
        quota: PgQuota,
    ) -> Result<Pool, PgError> {
        // Checked on every open, cached pool or not: a redeploy that narrows the allow-list
        // takes effect at the next one.
        let (config, url, declared) = match target {
            Target::Declared { name, url } => {
                // The parser's message names the problem, never the URL's text (which holds
                // the password).
                let config = url.parse().map_err(|e| {
                    PgError::Address(format!(
                        "postgres_databases {name:?}: its secret is not a Postgres URL: {e}"
                    ))
                })?;
                (config, url, true)
            }
            Target::Address(address) => (check(address, allowed)?, address, false),
        };
        let key = (function.clone(), url.to_owned());
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pooled) = pools.get(&key)
            && pooled.quota == quota
        {
            return Ok(pooled.pool.clone());
        }
        let others = pools
            .iter()
            .filter(|((f, u), pooled)| f == function && u != url && !pooled.declared)
            .count();
        if !declared && others >= MAX_POOLS_PER_FUNCTION {
            return Err(PgError::Address(format!(
                "the function already has {MAX_POOLS_PER_FUNCTION} Postgres addresses open"
            )));
        }
        let pool = make_pool(config, quota)?;
        pools.insert(
            key,
            Pooled {
                quota,
                pool: pool.clone(),
                declared,
            },
        );
        Ok(pool)
    }

    /// Closes `function`'s pools (on `thaw remove`, and a redeploy with other limits).
    pub fn remove_function(&self, function: &str) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(f, _), pooled| {
            let keep = &**f != function;
            if !keep {
                pooled.pool.close();
            }
            keep
        });
    }
}

/// `address` parsed, if the function may reach every server it names.
fn check(address: &str, allowed: &AllowList) -> Result<tokio_postgres::Config, PgError> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(PgError::Address(format!(
            "not a Postgres address: longer than {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    let config: tokio_postgres::Config = address
        .parse()
        .map_err(|e| PgError::Address(format!("not a Postgres address: {e}")))?;
    // tokio-postgres connects to `hostaddr` when it is given and keeps `host` for TLS only:
    // the allow-list would check one server and the connection reach another.
    if !config.get_hostaddrs().is_empty() {
        return Err(PgError::Address(
            "hostaddr is not accepted from a function: name the server by host".into(),
        ));
    }
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let Host::Tcp(name) = host else {
            return Err(PgError::Address(
                "a Unix socket is not reachable from a function".into(),
            ));
        };
        let port = ports.get(i).or(ports.first()).copied();
        let host = name.to_ascii_lowercase();
        if !allowed.allows_host("postgres", &host, port) {
            return Err(PgError::Address(format!(
                "postgres://{host}:{} is not in the function's allowed_outbound_hosts",
                port.unwrap_or(5432)
            )));
        }
    }
    if config.get_hosts().is_empty() {
        return Err(PgError::Address("the address names no host".into()));
    }
    Ok(config)
}

fn make_pool(mut config: tokio_postgres::Config, quota: PgQuota) -> Result<Pool, PgError> {
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(tls_connector()?),
        _ => {
            config.ssl_mode(SslMode::Disable);
            None
        }
    };
    config
        .application_name("thaw")
        .connect_timeout(quota.acquire_timeout)
        .options(format!(
            "-c statement_timeout={}",
            quota.statement_timeout.as_millis()
        ));
    let manager_config = ManagerConfig {
        // A connection comes back from a guest as it left it: an open transaction is rolled
        // back before the next guest gets it.
        recycling_method: RecyclingMethod::Custom("ROLLBACK".into()),
    };
    let manager = match tls {
        Some(tls) => Manager::from_config(config, tls, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(quota.max_connections as usize)
        .wait_timeout(Some(quota.acquire_timeout))
        .create_timeout(Some(quota.acquire_timeout))
        .recycle_timeout(Some(quota.acquire_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Address(e.to_string()))
}

/// The TLS connector of every `sslmode=require` pool: the host's trust store, read once.
fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    static CONNECTOR: std::sync::OnceLock<
        Result<tokio_postgres_rustls::MakeRustlsConnect, String>,
    > = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "TLS to Postgres needs the host's trust store, and none was found ({} errors; set SSL_CERT_FILE)",
                    found.errors.len()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        })
        .clone()
        .map_err(PgError::Connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> PgQuota {
        PgQuota {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn addresses_outside_the_allow_list_or_not_tcp_are_refused_before_connecting() {
        let allowed = AllowList::parse(&["postgres://db.internal"]).unwrap();
        let make = |address: &str| check(address, &allowed).and_then(|c| make_pool(c, quota()));
        make("postgres://u@db.internal/shop").unwrap();
        make("postgres://u@DB.internal:5432/shop").unwrap();
        for (address, says) in [
            (
                "postgres://u@db.internal:5433/shop",
                "not in the function's allowed_outbound_hosts",
            ),
            (
                "postgres://u@other.internal/shop",
                "not in the function's allowed_outbound_hosts",
            ),
            // Every host of a multi-host address is checked, not only the first.
            (
                "postgres://u@db.internal,evil.internal/shop",
                "postgres://evil.internal:5432 is not",
            ),
            (
                "host=db.internal,evil.internal user=u",
                "postgres://evil.internal:5432 is not",
            ),
            ("postgres://u@%2Frun%2Fpostgresql/shop", "Unix socket"),
            ("host=/run/postgresql user=u", "Unix socket"),
            (
                "postgres://u@db.internal/shop?sslmode=verify-full",
                "not a Postgres address",
            ),
            ("user=u dbname=shop", "names no host"),
            // tokio-postgres would connect to hostaddr and check only host.
            (
                "postgres://u@db.internal/shop?hostaddr=10.0.0.5",
                "hostaddr is not accepted",
            ),
            (
                "host=db.internal hostaddr=10.0.0.5 user=u",
                "hostaddr is not accepted",
            ),
        ] {
            let e = make(address).err().unwrap();
            assert!(e.to_string().contains(says), "{address}: {e}");
        }
    }

    #[test]
    fn a_function_has_few_pools_and_a_narrower_allow_list_holds_at_once() {
        let host = PgHost::default();
        let f: Arc<str> = "f".into();
        let allowed = AllowList::parse(&["postgres://db.internal"]).unwrap();
        let open = |function: &Arc<str>, address: &str, allowed: &AllowList| {
            host.pool(function, Target::Address(address), allowed, quota())
        };
        for n in 0..MAX_POOLS_PER_FUNCTION {
            open(&f, &format!("postgres://u@db.internal/db{n}"), &allowed).unwrap();
        }
        let e = open(&f, "postgres://u@db.internal/one-more", &allowed)
            .err()
            .unwrap();
        assert!(e.to_string().contains("already has 8"), "{e}");
        // Another function has pools of its own.
        open(&"g".into(), "postgres://u@db.internal/db0", &allowed).unwrap();
        let narrower = AllowList::parse(&["postgres://other.internal"]).unwrap();
        assert!(open(&f, "postgres://u@db.internal/db0", &narrower).is_err());
        // A declared database needs no allow-list entry, is not counted among the guest's
        // addresses, and a URL that does not parse is named by its database, never quoted.
        let nothing = AllowList::default();
        let declared = |name, url| Target::Declared { name, url };
        host.pool(
            &f,
            declared("orders", "postgres://u:pw@elsewhere.internal/orders"),
            &nothing,
            quota(),
        )
        .unwrap();
        let e = host
            .pool(
                &f,
                declared("broken", "postgres://u:s3cret@h:port/db"),
                &nothing,
                quota(),
            )
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("postgres_databases \"broken\""), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
