//! The Redis store (`--keyvalue redis://HOST:PORT`): the state several hosts share.
//!
//! A value is the Redis string `thaw:kv:{<function>}:<bucket>:<key>`, and a function's usage
//! the hash `thaw:kvusage:{<function>}` (fields `keys`, `bytes`). The function's name in braces
//! is a Redis Cluster hash tag: all of a function's keys live in one slot, so the Lua script
//! that checks the quota and writes touches one node. Function and bucket names cannot hold
//! `:` (see [`super::check_bucket`]), so the key after them is unambiguous.
//!
//! One multiplexed connection, reconnected on failure (`ConnectionManager`); a guest whose
//! call finds Redis down gets the interface's `other` error, and the request goes on.

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use super::{KvError, PAGE, Quota, QuotaHit};

/// A Redis-backed store.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    address: String,
}

fn backend(e: redis::RedisError) -> KvError {
    KvError::Backend(e.to_string())
}

fn data_key(function: &str, bucket: &str, key: &str) -> String {
    format!("thaw:kv:{{{function}}}:{bucket}:{key}")
}

fn usage_key(function: &str) -> String {
    format!("thaw:kvusage:{{{function}}}")
}

/// Sets a value within the quota: 0 done, 1 over the key count, 2 over the bytes.
const SET: &str = r"
local exists = redis.call('EXISTS', KEYS[1]) == 1
local old = 0
if exists then old = redis.call('STRLEN', KEYS[1]) end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local klen = tonumber(ARGV[2])
local new = string.len(ARGV[1])
local before = bytes
if exists then bytes = bytes - old - klen else keys = keys + 1 end
bytes = bytes + new + klen
if (not exists) and keys > tonumber(ARGV[3]) then return 1 end
if bytes > tonumber(ARGV[4]) and bytes > before then return 2 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'keys', keys, 'bytes', bytes)
return 0
";

/// Deletes a value and uncounts it.
const DELETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], 'keys', -1)
redis.call('HINCRBY', KEYS[2], 'bytes', -(old + tonumber(ARGV[1])))
return 1
";

/// Increments a decimal counter: `{0, value}`; `{1, ''}` over the key count, `{2, ''}` over
/// the bytes, `{3, ''}` for a value that is not an unsigned decimal (nothing written). The
/// result may not pass 2^63 - 1 (Redis's INCRBY; the embedded store goes to 2^64 - 1).
const INCREMENT: &str = r"
local exists = redis.call('EXISTS', KEYS[1]) == 1
local old = 0
if exists then
  local value = redis.call('GET', KEYS[1])
  if not string.match(value, '^[0-9]+$') then return {3, ''} end
  old = string.len(value)
end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if not exists then
  if keys + 1 > tonumber(ARGV[3]) then return {1, ''} end
  -- A new counter grows the total by its key and at most 20 digits.
  if bytes + tonumber(ARGV[2]) + 20 > tonumber(ARGV[4]) then return {2, ''} end
end
redis.call('INCRBY', KEYS[1], ARGV[1])
local new = redis.call('STRLEN', KEYS[1])
if exists then
  redis.call('HINCRBY', KEYS[2], 'bytes', new - old)
else
  redis.call('HINCRBY', KEYS[2], 'keys', 1)
  redis.call('HINCRBY', KEYS[2], 'bytes', new + tonumber(ARGV[2]))
end
return {0, redis.call('GET', KEYS[1])}
";

impl RedisStore {
    /// Connects to `url` (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`; no TLS in this build)
    /// and checks the connection.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let mut connection = ConnectionManager::new(client).await?;
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        let address = url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned();
        Ok(Self {
            connection,
            address,
        })
    }

    /// Where it connects (without credentials).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// See [`super::KeyValue::get`].
    pub async fn get(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let mut connection = self.connection.clone();
        connection
            .get(data_key(function, bucket, key))
            .await
            .map_err(backend)
    }

    /// See [`super::KeyValue::set`].
    pub async fn set(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        quota: &Quota,
    ) -> Result<(), KvError> {
        if value.len() as u64 > quota.max_value_bytes {
            return Err(KvError::Limit(
                QuotaHit::ValueSize,
                format!(
                    "a value of {} bytes, over {}",
                    value.len(),
                    quota.max_value_bytes
                ),
            ));
        }
        let mut connection = self.connection.clone();
        let outcome: u8 = redis::Script::new(SET)
            .key(data_key(function, bucket, key))
            .key(usage_key(function))
            .arg(value)
            .arg(key.len())
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        script_outcome(outcome, key, quota)
    }

    /// See [`super::KeyValue::delete`].
    pub async fn delete(&self, function: &str, bucket: &str, key: &str) -> Result<(), KvError> {
        let mut connection = self.connection.clone();
        let _: u8 = redis::Script::new(DELETE)
            .key(data_key(function, bucket, key))
            .key(usage_key(function))
            .arg(key.len())
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// See [`super::KeyValue::increment`].
    pub async fn increment(
        &self,
        function: &str,
        bucket: &str,
        key: &str,
        delta: u64,
        quota: &Quota,
    ) -> Result<u64, KvError> {
        let delta = i64::try_from(delta)
            .map_err(|_| KvError::Invalid(format!("a delta of {delta} is over 2^63 - 1")))?;
        let mut connection = self.connection.clone();
        let (outcome, value): (u8, String) = redis::Script::new(INCREMENT)
            .key(data_key(function, bucket, key))
            .key(usage_key(function))
            .arg(delta)
            .arg(key.len())
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        script_outcome(outcome, key, quota)?;
        value
            .parse()
            .map_err(|_| KvError::Backend(format!("Redis answered {value:?} for a counter")))
    }

    /// See [`super::KeyValue::list`]. The cursor is Redis's SCAN cursor (a key may be listed
    /// twice if the bucket changes between pages, as SCAN promises no more). SCAN walks the
    /// whole keyspace with a pattern, so listing costs in proportion to every key in the
    /// Redis database, and a page may hold more or fewer keys than asked.
    pub async fn list(
        &self,
        function: &str,
        bucket: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = data_key(function, bucket, "");
        let mut connection = self.connection.clone();
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor.unwrap_or(0))
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(&prefix)))
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        Ok((keys, (next != 0).then_some(next)))
    }

    /// See [`super::KeyValue::remove_function`].
    pub async fn remove_function(&self, function: &str) -> Result<(), KvError> {
        let pattern = format!("{}*", glob_escape(&format!("thaw:kv:{{{function}}}:")));
        let mut connection = self.connection.clone();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut connection)
                .await
                .map_err(backend)?;
            if !keys.is_empty() {
                let _: u64 = connection.del(keys).await.map_err(backend)?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = connection.del(usage_key(function)).await.map_err(backend)?;
        Ok(())
    }
}

/// What a script's outcome code means: 0 done, 1 over the key count, 2 over the bytes, 3 not
/// a decimal counter (nothing written for any but 0).
fn script_outcome(outcome: u8, key: &str, quota: &Quota) -> Result<(), KvError> {
    match outcome {
        0 => Ok(()),
        1 => Err(KvError::Limit(
            QuotaHit::Keys,
            format!("more than {} keys", quota.max_keys),
        )),
        2 => Err(KvError::Limit(
            QuotaHit::Bytes,
            format!("more than {} bytes", quota.max_bytes),
        )),
        _ => Err(KvError::Invalid(format!(
            "the value of {key:?} is not a decimal counter"
        ))),
    }
}

/// `s` with Redis glob characters escaped, for a SCAN pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
