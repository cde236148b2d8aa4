//! The embedded store: one redb database in the data directory (`keyvalue.redb`, 0600).
//!
//! Two tables: `data`, from an encoded (function, bucket, key) to the value, and `usage`,
//! from a function to its (keys, bytes). Keys are encoded as the function's name and the
//! bucket's, each behind its length in one byte, then the key's bytes: a function's keys
//! and a bucket's keys are each one contiguous range, so listing and removal are range
//! scans, and no key can be read as belonging to another scope. Every change is one write
//! transaction that also updates `usage`, committed with redb's default durability (an
//! fsync) before it returns.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{KvError, PAGE, Quota, charge};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

/// The database.
pub struct Embedded {
    db: Database,
    path: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// `[len][function][len][bucket]`: the prefix of a bucket's keys.
fn scope(function: &str, bucket: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + function.len() + bucket.len());
    for part in [function, bucket] {
        // Function names and bucket names fit a byte (checked before: see
        // `spec::validate_name` and `MAX_BUCKET_BYTES`).
        out.push(part.len() as u8);
        out.extend_from_slice(part.as_bytes());
    }
    out
}

fn encode(function: &str, bucket: &str, key: &str) -> Vec<u8> {
    let mut out = scope(function, bucket);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The end (exclusive) of the range of keys starting with `prefix`.
fn after(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

impl Embedded {
    /// Opens (creating) the database at `path`, readable by its owner only.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Database::create(path)?;
        crate::datadir::make_private_file(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DATA)?;
        txn.open_table(USAGE)?;
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// See [`super::KeyValue::get`].
    pub fn get(&self, function: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(DATA).map_err(backend)?;
        let value = table
            .get(encode(function, bucket, key).as_slice())
            .map_err(backend)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// See [`super::KeyValue::set`].
    pub fn set(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        quota: &Quota,
    ) -> Result<(), KvError> {
        self.write(function, |data, usage| {
            let encoded = encode(function, bucket, key);
            let old = data
                .get(encoded.as_slice())
                .map_err(backend)?
                .map(|v| v.value().len() as u64);
            let charged = charge(usage, key, old, value.len() as u64, quota)?;
            data.insert(encoded.as_slice(), value).map_err(backend)?;
            Ok((charged, ()))
        })
    }

    /// See [`super::KeyValue::delete`].
    pub fn delete(&self, function: &str, bucket: &str, key: &str) -> Result<(), KvError> {
        let encoded = encode(function, bucket, key);
        // Deleting a key that is not there commits nothing (no fsync).
        if self.get(function, bucket, key)?.is_none() {
            return Ok(());
        }
        self.write(function, |data, (keys, bytes)| {
            let removed = data
                .remove(encoded.as_slice())
                .map_err(backend)?
                .map(|v| v.value().len() as u64);
            Ok(match removed {
                Some(len) => {
                    let keys = keys.checked_sub(1).ok_or_else(super::inconsistent)?;
                    let bytes = bytes
                        .checked_sub(len + key.len() as u64)
                        .ok_or_else(super::inconsistent)?;
                    ((keys, bytes), ())
                }
                None => ((keys, bytes), ()),
            })
        })
    }

    /// See [`super::KeyValue::increment`].
    pub fn increment(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        delta: u64,
        quota: &Quota,
    ) -> Result<u64, KvError> {
        self.write(function, |data, usage| {
            let encoded = encode(function, bucket, key);
            let old = data
                .get(encoded.as_slice())
                .map_err(backend)?
                .map(|v| v.value().to_vec());
            let current = match &old {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        KvError::Invalid(format!("the value of {key:?} is not a decimal counter"))
                    })?,
            };
            let new = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Invalid(format!("incrementing {key:?} overflows")))?;
            let text = new.to_string();
            let charged = charge(
                usage,
                key,
                old.map(|o| o.len() as u64),
                text.len() as u64,
                quota,
            )?;
            data.insert(encoded.as_slice(), text.as_bytes())
                .map_err(backend)?;
            Ok((charged, new))
        })
    }

    /// See [`super::KeyValue::list`]. The cursor is the number of keys already listed, in key
    /// order: a guest that deletes the keys of a page before asking for the next one skips
    /// as many (list first, then delete), and each page skips from the start.
    pub fn list(
        &self,
        function: &str,
        bucket: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = scope(function, bucket);
        let end = after(&prefix);
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(DATA).map_err(backend)?;
        let skip = cursor.unwrap_or(0) as usize;
        let mut keys = Vec::new();
        let mut more = false;
        for entry in table
            .range(prefix.as_slice()..end.as_slice())
            .map_err(backend)?
            .skip(skip)
        {
            if keys.len() == PAGE {
                more = true;
                break;
            }
            let (key, _) = entry.map_err(backend)?;
            keys.push(String::from_utf8_lossy(&key.value()[prefix.len()..]).into_owned());
        }
        let next = more.then(|| (skip + keys.len()) as u64);
        Ok((keys, next))
    }

    /// See [`super::KeyValue::remove_function`].
    pub fn remove_function(&self, function: &str) -> Result<(), KvError> {
        let mut prefix = Vec::with_capacity(1 + function.len());
        prefix.push(function.len() as u8);
        prefix.extend_from_slice(function.as_bytes());
        let end = after(&prefix);
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut data = txn.open_table(DATA).map_err(backend)?;
            data.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)
                .map_err(backend)?;
            let mut usage = txn.open_table(USAGE).map_err(backend)?;
            usage.remove(function).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    /// One write transaction: `change` gets the data table and the function's usage, and
    /// returns the new usage and its answer; an error aborts everything.
    fn write<T>(
        &self,
        function: &str,
        change: impl FnOnce(
            &mut redb::Table<&[u8], &[u8]>,
            (u64, u64),
        ) -> Result<((u64, u64), T), KvError>,
    ) -> Result<T, KvError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let answer = {
            let mut data = txn.open_table(DATA).map_err(backend)?;
            let mut usage = txn.open_table(USAGE).map_err(backend)?;
            let current = usage
                .get(function)
                .map_err(backend)?
                .map_or((0, 0), |u| u.value());
            let (next, answer) = change(&mut data, current)?;
            if next != current {
                usage.insert(function, next).map_err(backend)?;
            }
            answer
        };
        txn.commit().map_err(backend)?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_counted_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let quota = Quota {
            max_value_bytes: 100,
            max_keys: 3,
            max_bytes: 1000,
        };
        {
            let store = Embedded::open(&path).unwrap();
            store.set("a", "", "k", b"one", &quota).unwrap();
            store.set("a", "b", "k", b"two", &quota).unwrap();
            store.set("ab", "", "k", b"other", &quota).unwrap();
            assert_eq!(store.get("a", "", "k").unwrap().unwrap(), b"one");
            assert_eq!(store.get("a", "b", "k").unwrap().unwrap(), b"two");
            assert_eq!(store.get("ab", "", "k").unwrap().unwrap(), b"other");
            assert_eq!(store.increment("a", "", "n", 5, &quota).unwrap(), 5);
            assert!(matches!(
                store.set("a", "", "x", b"1", &quota),
                Err(KvError::Limit(super::super::QuotaHit::Keys, _))
            ));
            assert_eq!(store.list("a", "", None).unwrap().0, ["k", "n"]);
            store.delete("a", "", "k").unwrap();
            store.set("a", "", "x", b"1", &quota).unwrap();
        }
        let store = Embedded::open(&path).unwrap();
        assert_eq!(store.increment("a", "", "n", 2, &quota).unwrap(), 7);
        assert_eq!(store.get("a", "", "k").unwrap(), None);
        store.remove_function("a").unwrap();
        assert_eq!(store.list("a", "b", None).unwrap().0, Vec::<String>::new());
        assert_eq!(store.get("ab", "", "k").unwrap().unwrap(), b"other");
    }
}
