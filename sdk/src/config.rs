//! Configuration: the values the function's `config` table gives it, over
//! `wasi:config/store`.
//!
//! ```toml
//! [[function]]
//! name = "api"
//! config = { upstream = "https://api.example.com", greeting = "hello" }
//! ```
//!
//! ```no_run
//! let upstream = thaw_sdk::config::get("upstream")?.unwrap_or_else(|| "http://localhost".into());
//! # Ok::<(), thaw_sdk::config::Error>(())
//! ```
//!
//! A value that names a secret is resolved by the host, and the function reads it with the
//! same call. Under `wasmtime serve`, the values come from `-Sconfig-var=KEY=VALUE`.

use crate::bindings::wasi::config::store;

/// The value of `key`, or `None` when the function has no such setting.
///
/// ```no_run
/// match thaw_sdk::config::get("greeting") {
///     Ok(Some(greeting)) => println!("{greeting}"),
///     Ok(None) => println!("no greeting configured"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
pub fn get(key: &str) -> Result<Option<String>, Error> {
    store::get(key).map_err(Error::from)
}

/// Every setting, as `(key, value)` pairs.
///
/// ```no_run
/// for (key, value) in thaw_sdk::config::get_all()? {
///     println!("{key} = {value}");
/// }
/// # Ok::<(), thaw_sdk::config::Error>(())
/// ```
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    store::get_all().map_err(Error::from)
}

/// Why the configuration could not be read.
///
/// ```no_run
/// let region = match thaw_sdk::config::get("region") {
///     Ok(value) => value.unwrap_or_else(|| "eu".into()),
///     Err(thaw_sdk::config::Error::Upstream(why)) => panic!("the secret store failed: {why}"),
///     Err(e) => panic!("{e}"),
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The source of the values failed (a secret store, a cluster's registry).
    Upstream(String),
    /// An I/O error on the host.
    Io(String),
}

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::Upstream(s) => Error::Upstream(s),
            store::Error::Io(s) => Error::Io(s),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Upstream(s) => write!(f, "configuration: {s}"),
            Error::Io(s) => write!(f, "configuration (I/O): {s}"),
        }
    }
}

impl std::error::Error for Error {}
