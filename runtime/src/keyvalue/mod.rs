//! Functions' state: the store behind `wasi:keyvalue` (see [`crate::guest::keyvalue`] for
//! the guest's side), embedded in the data directory by default or on Redis.
//!
//! # Scoping
//! Every key lives under its function's name and a bucket the guest names (`""`, the
//! default, or up to [`MAX_BUCKET_BYTES`] of `A-Z a-z 0-9 _ - .`): a function reaches its own buckets and no
//! other function's, whatever identifier it opens. State belongs to the function, not to a
//! version: a redeploy, a rollback or a canary see the same data; `thaw remove` deletes it.
//!
//! # Backends
//! - [`embedded`]: a redb database (`<data-dir>/keyvalue.redb`), one write transaction per
//!   change, committed durably (fsync) before the guest's call returns: a `kill -9` loses no
//!   write the guest saw succeed. Writes are serialised by redb; reads run beside them.
//! - [`redis`]: `--keyvalue redis://HOST:PORT`, the store several hosts share. Each change
//!   and its quota check is one Lua script, atomic in Redis; durability is Redis's own
//!   configuration (its `appendonly`/`appendfsync`), and a thaw crash loses nothing Redis
//!   acknowledged.
//!
//! # Quotas
//! Per function: the largest value, the number of keys and the bytes (keys and values) in
//! all its buckets ([`Quota`], from the function's limits). Each backend keeps a usage record
//! per function, changed in the same transaction (or script) as the data, so the check and
//! the write cannot race. A change over a quota is refused with [`KvError::Limit`], and
//! nothing is written.
//!
//! Quotas come from the calling version's limits, while the data is the function's: a canary
//! with other `kv_*` limits enforces its own on the same data.
//!
//! Values of `increment` are decimal text, as `wasmtime serve`'s implementation keeps them,
//! so `get` of a counter reads `b"42"` on either host.

pub mod embedded;
pub mod redis;

use std::sync::Arc;

/// The default bucket, `""`, as operators name it on the command line.
pub const DEFAULT_BUCKET: &str = "";

/// Most keys one `list-keys` call returns; the cursor continues after them.
pub const PAGE: usize = 1000;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 4096;

/// A function's quota (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Largest value, bytes.
    pub max_value_bytes: u64,
    /// Most keys, all buckets.
    pub max_keys: u64,
    /// Most bytes of keys and values, all buckets.
    pub max_bytes: u64,
}

impl Quota {
    /// No limits (benchmarks of the store alone). The admin API uses the function's quota.
    pub const UNLIMITED: Quota = Quota {
        max_value_bytes: u64::MAX,
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
    };

    /// A function's quota from its resolved limits.
    pub fn of(limits: &crate::spec::Limits) -> Self {
        Self {
            max_value_bytes: limits.kv_max_value_bytes,
            max_keys: limits.kv_max_keys,
            max_bytes: limits.kv_max_bytes,
        }
    }
}

/// Which quota a change ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaHit {
    /// The value is larger than the largest allowed.
    ValueSize,
    /// The function has as many keys as it may.
    Keys,
    /// The function's keys and values would take more bytes than it may.
    Bytes,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A quota; nothing was written.
    /// The text starts `over the function's key-value quota <field>:`, naming the spec field
    /// (`kv_max_value_kib`, `kv_max_keys`, `kv_max_mib`): the SDKs map it to a typed error.
    #[error("over the function's key-value quota {field}: {detail}", field = .0.field(), detail = .1)]
    Limit(QuotaHit, String),
    /// A bucket name the store refuses.
    #[error("no such bucket {0:?} (names are up to {MAX_BUCKET_BYTES} of A-Z a-z 0-9 _ - .)")]
    NoSuchBucket(String),
    /// A bad argument (a key too long, a counter that is not a number).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (disk, Redis unreachable).
    #[error("key-value store: {0}")]
    Backend(String),
}

impl QuotaHit {
    /// The limits field that sets this quota.
    pub fn field(self) -> &'static str {
        match self {
            QuotaHit::ValueSize => "kv_max_value_kib",
            QuotaHit::Keys => "kv_max_keys",
            QuotaHit::Bytes => "kv_max_mib",
        }
    }
}

impl std::fmt::Display for QuotaHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaHit::ValueSize => "value size",
            QuotaHit::Keys => "key count",
            QuotaHit::Bytes => "bytes",
        })
    }
}

/// Longest bucket name.
pub const MAX_BUCKET_BYTES: usize = 64;

/// Checks a bucket name (see the module docs).
pub fn check_bucket(bucket: &str) -> Result<(), KvError> {
    let ok = bucket.len() <= MAX_BUCKET_BYTES
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KvError::NoSuchBucket(bucket.to_owned()))
    }
}

/// Checks a key.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a key is at most {MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

/// The usage after a change, or the quota it breaks. `old` is the previous value's length if
/// the key existed.
pub fn charge(
    usage: (u64, u64),
    key: &str,
    old: Option<u64>,
    new: u64,
    quota: &Quota,
) -> Result<(u64, u64), KvError> {
    if new > quota.max_value_bytes {
        return Err(KvError::Limit(
            QuotaHit::ValueSize,
            format!("a value of {new} bytes, over {}", quota.max_value_bytes),
        ));
    }
    let (keys, before) = usage;
    let key_bytes = key.len() as u64;
    let keys = if old.is_some() { keys } else { keys + 1 };
    let bytes = before
        .checked_sub(old.map_or(0, |old| old + key_bytes))
        .ok_or_else(inconsistent)?
        + new
        + key_bytes;
    if old.is_none() && keys > quota.max_keys {
        return Err(KvError::Limit(
            QuotaHit::Keys,
            format!("{keys} keys, over {}", quota.max_keys),
        ));
    }
    // A change that grows the total past the quota is refused (a new key with an empty value
    // grows it by its key); one that shrinks or keeps it is allowed even over a quota that
    // was lowered since, so a function can always make room.
    if bytes > quota.max_bytes && bytes > before {
        return Err(KvError::Limit(
            QuotaHit::Bytes,
            format!("{bytes} bytes, over {}", quota.max_bytes),
        ));
    }
    Ok((keys, bytes))
}

/// A usage record that no longer matches the data (it would go below zero).
pub fn inconsistent() -> KvError {
    KvError::Backend("the function's key-value usage record is inconsistent".into())
}

/// The store: one per host, shared by every function (each in its own scope).
#[derive(Clone)]
pub enum KeyValue {
    /// In the data directory.
    Embedded(Arc<embedded::Embedded>),
    /// On Redis.
    Redis(redis::RedisStore),
}

impl KeyValue {
    /// The value of `key`, if set.
    pub async fn get(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        check_bucket(bucket)?;
        check_key(key)?;
        match self {
            Self::Embedded(store) => {
                let (store, f, b, k) = owned(store, function, bucket, key);
                blocking(move || store.get(&f, &b, &k)).await
            }
            Self::Redis(store) => store.get(function, bucket, key).await,
        }
    }

    /// Sets `key` to `value`, within `quota`.
    pub async fn set(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        value: Vec<u8>,
        quota: Quota,
    ) -> Result<(), KvError> {
        check_bucket(bucket)?;
        check_key(key)?;
        match self {
            Self::Embedded(store) => {
                let (store, f, b, k) = owned(store, function, bucket, key);
                blocking(move || store.set(&f, &b, &k, &value, &quota)).await
            }
            Self::Redis(store) => store.set(function, bucket, key, &value, &quota).await,
        }
    }

    /// Deletes `key` (nothing if it is not set).
    pub async fn delete(&self, function: &str, bucket: &str, key: &str) -> Result<(), KvError> {
        check_bucket(bucket)?;
        check_key(key)?;
        match self {
            Self::Embedded(store) => {
                let (store, f, b, k) = owned(store, function, bucket, key);
                blocking(move || store.delete(&f, &b, &k)).await
            }
            Self::Redis(store) => store.delete(function, bucket, key).await,
        }
    }

    /// Adds `delta` to the decimal counter at `key` (0 if unset), within `quota`; the new
    /// value.
    pub async fn increment(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        delta: u64,
        quota: Quota,
    ) -> Result<u64, KvError> {
        check_bucket(bucket)?;
        check_key(key)?;
        match self {
            Self::Embedded(store) => {
                let (store, f, b, k) = owned(store, function, bucket, key);
                blocking(move || store.increment(&f, &b, &k, delta, &quota)).await
            }
            Self::Redis(store) => store.increment(function, bucket, key, delta, &quota).await,
        }
    }

    /// Up to [`PAGE`] keys of a bucket, in no promised order, from `cursor` (`None`: the
    /// start); the cursor to go on with, `None` at the end.
    pub async fn list(
        &self,
        function: &str,
        bucket: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        check_bucket(bucket)?;
        match self {
            Self::Embedded(store) => {
                let (store, f, b, _) = owned(store, function, bucket, "");
                blocking(move || store.list(&f, &b, cursor)).await
            }
            Self::Redis(store) => store.list(function, bucket, cursor).await,
        }
    }

    /// Deletes everything a function stored (its removal).
    pub async fn remove_function(&self, function: &str) -> Result<(), KvError> {
        match self {
            Self::Embedded(store) => {
                let (store, f, _, _) = owned(store, function, "", "");
                blocking(move || store.remove_function(&f)).await
            }
            Self::Redis(store) => store.remove_function(function).await,
        }
    }

    /// The backend, for logs and the admin API.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(store) => format!("embedded ({})", store.path().display()),
            Self::Redis(store) => format!("redis ({})", store.address()),
        }
    }
}

fn owned(
    store: &Arc<embedded::Embedded>,
    function: &str,
    bucket: &str,
    key: &str,
) -> (Arc<embedded::Embedded>, String, String, String) {
    (
        store.clone(),
        function.to_owned(),
        bucket.to_owned(),
        key.to_owned(),
    )
}

/// Runs a blocking store call off the reactor (a write waits for an fsync).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KvError> + Send + 'static,
) -> Result<T, KvError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| KvError::Backend(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charging_counts_new_keys_and_replaced_bytes() {
        let quota = Quota {
            max_value_bytes: 10,
            max_keys: 2,
            max_bytes: 30,
        };
        let usage = charge((0, 0), "ab", None, 5, &quota).unwrap();
        assert_eq!(usage, (1, 7));
        // Replacing: same key count, bytes follow the new length.
        assert_eq!(charge(usage, "ab", Some(5), 3, &quota).unwrap(), (1, 5));
        let two = charge(usage, "cd", None, 10, &quota).unwrap();
        assert!(matches!(
            charge(two, "ef", None, 1, &quota),
            Err(KvError::Limit(QuotaHit::Keys, _))
        ));
        assert!(matches!(
            charge(usage, "ab", Some(5), 11, &quota),
            Err(KvError::Limit(QuotaHit::ValueSize, _))
        ));
        assert!(matches!(
            // 19 bytes, 7 of them "ab" and its value; 12 after: 24, over 20.
            charge(
                two,
                "ab",
                Some(5),
                10,
                &Quota {
                    max_bytes: 20,
                    ..quota
                }
            ),
            Err(KvError::Limit(QuotaHit::Bytes, _))
        ));
        // A new key with an empty value still grows the total by its key.
        let full = charge(
            (0, 0),
            "a",
            None,
            9,
            &Quota {
                max_bytes: 10,
                ..quota
            },
        )
        .unwrap();
        assert!(matches!(
            charge(
                full,
                "long-key",
                None,
                0,
                &Quota {
                    max_bytes: 10,
                    ..quota
                }
            ),
            Err(KvError::Limit(QuotaHit::Bytes, _))
        ));
        // Shrinking is allowed over a lowered quota.
        assert!(
            charge(
                two,
                "cd",
                Some(10),
                1,
                &Quota {
                    max_bytes: 5,
                    ..quota
                }
            )
            .is_ok()
        );
        assert!(matches!(
            charge((0, 0), "ab", Some(5), 1, &quota),
            Err(KvError::Backend(_))
        ));
        assert!(check_bucket("").is_ok() && check_bucket("a.b-c_1").is_ok());
        assert!(check_bucket("a/b").is_err() && check_bucket(&"x".repeat(65)).is_err());
    }
}
