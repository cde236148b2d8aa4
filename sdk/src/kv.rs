//! State: a key-value store per function, over `wasi:keyvalue` (store and atomics).
//!
//! ```no_run
//! use thaw_sdk::kv::Store;
//!
//! let store = Store::open("default")?;
//! let visits = store.increment("visits", 1)?;
//! store.set("last-visitor", "ada")?;
//! assert_eq!(store.get("last-visitor")?.as_deref(), Some(&b"ada"[..]));
//! # Ok::<(), thaw_sdk::kv::Error>(())
//! ```
//!
//! # Stores
//! `"default"` is the function's default store: the WASI empty-named store, the one
//! `thaw kv` reads and the only one `wasmtime serve -Skeyvalue` has. Other names are further
//! buckets of the same function on thaw (other hosts may answer [`Error::NoSuchStore`]).
//! Nothing is shared between functions.
//!
//! # Quotas
//! The host bounds a function's store (`kv_max_value_kib`, `kv_max_keys`, `kv_max_mib` in its
//! limits); a write past one is refused whole with [`Error::Quota`], naming which.
//!
//! # Concurrency
//! [`Store::increment`] is atomic: many instances counting at once lose no count. A
//! `get` then `set` is not; use `increment` for counters.

use crate::bindings::wasi::keyvalue::{atomics, store};

/// One store of the function (a bucket), open: see [`Store::open`].
///
/// ```no_run
/// let store = thaw_sdk::kv::Store::open("default")?;
/// store.set("k", "v")?;
/// # Ok::<(), thaw_sdk::kv::Error>(())
/// ```
pub struct Store {
    bucket: store::Bucket,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store `name`: `"default"` for the function's default store.
    ///
    /// ```no_run
    /// let sessions = thaw_sdk::kv::Store::open("sessions")?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Store, Error> {
        let identifier = if name == "default" { "" } else { name };
        let bucket = store::open(identifier).map_err(|e| match Error::from(e) {
            Error::NoSuchStore(_) => Error::NoSuchStore(name.to_owned()),
            other => other,
        })?;
        Ok(Store { bucket })
    }

    /// The value of `key`, or `None`.
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// if let Some(bytes) = store.get("avatar")? {
    ///     println!("{} bytes", bytes.len());
    /// }
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.bucket.get(key).map_err(Error::from)
    }

    /// Sets `key` to `value`, replacing what was there.
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// store.set("greeting", "hello")?;
    /// store.set("blob", vec![0u8, 1, 2])?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.bucket.set(key, value.as_ref()).map_err(Error::from)
    }

    /// Removes `key` (nothing happens if it is absent).
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// store.delete("greeting")?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.bucket.delete(key).map_err(Error::from)
    }

    /// Whether `key` has a value.
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// if !store.exists("seeded")? {
    ///     store.set("seeded", "yes")?;
    /// }
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        self.bucket.exists(key).map_err(Error::from)
    }

    /// Adds `delta` to the number stored at `key` (a missing key counts as 0) and returns
    /// the new value, atomically.
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// let n = store.increment("visits", 1)?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, Error> {
        atomics::increment(&self.bucket, key, delta).map_err(Error::from)
    }

    /// The value of `key` parsed as JSON, or `None`.
    ///
    /// ```no_run
    /// #[derive(serde::Deserialize)]
    /// struct Cart { items: Vec<String> }
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// let cart: Option<Cart> = store.get_json("cart:42")?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Json(format!("the value of {key:?}: {e}"))),
        }
    }

    /// Sets `key` to `value` as JSON.
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// store.set_json("cart:42", &serde_json::json!({"items": ["tea"]}))?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn set_json<T: serde::Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Json(e.to_string()))?;
        self.set(key, bytes)
    }

    /// Every key, fetched a page at a time as the iterator goes (in no promised order).
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// for key in store.keys() {
    ///     println!("{}", key?);
    /// }
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            store: self,
            page: Vec::new().into_iter(),
            cursor: Some(None),
        }
    }

    /// One page of keys from `cursor` (`None`: the first page), with the cursor of the next
    /// page (`None`: this was the last).
    ///
    /// ```no_run
    /// # let store = thaw_sdk::kv::Store::open("default")?;
    /// let (first, next) = store.keys_page(None)?;
    /// # Ok::<(), thaw_sdk::kv::Error>(())
    /// ```
    pub fn keys_page(&self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), Error> {
        let page = self.bucket.list_keys(cursor).map_err(Error::from)?;
        Ok((page.keys, page.cursor))
    }
}

/// The keys of a store, a page at a time: see [`Store::keys`].
///
/// ```no_run
/// # let store = thaw_sdk::kv::Store::open("default")?;
/// let keys: Vec<String> = store.keys().collect::<Result<_, _>>()?;
/// # Ok::<(), thaw_sdk::kv::Error>(())
/// ```
pub struct Keys<'a> {
    store: &'a Store,
    page: std::vec::IntoIter<String>,
    /// The next page's cursor: `Some(None)` for the first, `None` when there are no more.
    cursor: Option<Option<u64>>,
}

impl Iterator for Keys<'_> {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(key) = self.page.next() {
                return Some(Ok(key));
            }
            let cursor = self.cursor.take()?;
            match self.store.keys_page(cursor) {
                Ok((keys, next)) => {
                    self.page = keys.into_iter();
                    self.cursor = next.map(Some);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Which quota a write ran into (see [`Error::Quota`], which has an example).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quota {
    /// One value is larger than `kv_max_value_kib`.
    ValueSize,
    /// The function has `kv_max_keys` keys already.
    Keys,
    /// The function's keys and values would pass `kv_max_mib`.
    Bytes,
}

impl Quota {
    /// The limits field that sets it.
    ///
    /// ```
    /// assert_eq!(thaw_sdk::kv::Quota::ValueSize.field(), "kv_max_value_kib");
    /// ```
    pub fn field(self) -> &'static str {
        match self {
            Quota::ValueSize => "kv_max_value_kib",
            Quota::Keys => "kv_max_keys",
            Quota::Bytes => "kv_max_mib",
        }
    }
}

/// Why a store operation failed.
///
/// ```no_run
/// use thaw_sdk::kv::{Error, Quota, Store};
/// # fn f(upload: &[u8]) -> Result<&'static str, Error> {
/// match Store::open("default")?.set("upload", upload) {
///     Ok(()) => Ok("stored"),
///     Err(Error::Quota { quota: Quota::ValueSize, .. }) => Ok("too large to keep"),
///     Err(e) => Err(e),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The host has no store of this name.
    NoSuchStore(String),
    /// The function may not use this store.
    AccessDenied,
    /// A write past one of the function's quotas; nothing was written.
    Quota {
        /// Which quota.
        quota: Quota,
        /// The host's description (sizes and the limit).
        message: String,
    },
    /// A value that is not the JSON asked for, or one that does not serialize.
    Json(String),
    /// Anything else the host reported (a key too long, a counter that is not a number, the
    /// backend failing).
    Other(String),
}

/// How thaw's host starts a quota refusal; the limits field follows.
const QUOTA_PREFIX: &str = "over the function's key-value quota ";

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::NoSuchStore => Error::NoSuchStore(String::new()),
            store::Error::AccessDenied => Error::AccessDenied,
            store::Error::Other(message) => {
                let quota = message.strip_prefix(QUOTA_PREFIX).and_then(|rest| {
                    [Quota::ValueSize, Quota::Keys, Quota::Bytes]
                        .into_iter()
                        .find(|q| rest.starts_with(q.field()))
                });
                match quota {
                    Some(quota) => Error::Quota { quota, message },
                    None => Error::Other(message),
                }
            }
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoSuchStore(name) => write!(
                f,
                "no key-value store {name:?} (\"default\" is the one every host has)"
            ),
            Error::AccessDenied => f.write_str("access to the key-value store denied"),
            Error::Quota { quota, message } => {
                write!(f, "{message} (raise limits.{} in thaw.toml)", quota.field())
            }
            Error::Json(detail) => write!(f, "key-value JSON: {detail}"),
            Error::Other(detail) => write!(f, "key-value store: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refusals_are_typed_by_the_field_the_host_names() {
        let e = Error::from(store::Error::Other(
            "over the function's key-value quota kv_max_value_kib: a value of 2048 bytes, over 1024".into(),
        ));
        assert!(
            matches!(
                e,
                Error::Quota {
                    quota: Quota::ValueSize,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("limits.kv_max_value_kib"), "{e}");
        let e = Error::from(store::Error::Other(
            "over the function's key-value quota kv_max_keys: 3 keys".into(),
        ));
        assert!(matches!(
            e,
            Error::Quota {
                quota: Quota::Keys,
                ..
            }
        ));
        let e = Error::from(store::Error::Other("disk on fire".into()));
        assert_eq!(e, Error::Other("disk on fire".into()));
    }
}
