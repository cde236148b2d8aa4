//! Spin's `variables` and `key-value` interfaces (3.0.0, as spin-sdk 7 imports them), over
//! what thaw already gives a function: its configuration and secrets, and its key-value
//! store. With [`super::sqlite`], they let a Spin app run on thaw unchanged.
//!
//! - `spin:variables/variables.get(name)` answers the function's `wasi:config` value of
//!   that name (a plain value or a resolved secret): `thaw deploy spin.toml` turns a
//!   component's `variables` into those. A name Spin would refuse (it must be lower-case
//!   letters, digits and `_`, starting with a letter) is `invalid-name`; a name with no value
//!   is `undefined`.
//! - `spin:key-value/key-value`: a store label is a bucket of the function's own scope
//!   (`default` is thaw's default bucket, the one `thaw kv` reads), under the same quotas as
//!   `wasi:keyvalue`. thaw has no per-label grants: every label is the function's own
//!   bucket, so Spin's `key_value_stores` list is not needed (and not enforced).
//!
//! Every function of both interfaces is `async` in the WIT: these are concurrent host
//! functions, which a WASIp3 guest calls without blocking its other tasks. `get-keys`
//! answers every key of the bucket, read page by page before the stream is made, so the
//! future it returns is already settled (as `execute-async`'s in [`super::sqlite`]).

use std::sync::Arc;

use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use super::keyvalue::GuestKeyValue;
use crate::keyvalue::KvError;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/spin",
        world: "thaw:spin/imports",
        imports: { default: trappable },
        with: {
            "spin:key-value/key-value.store": super::SpinStore,
        },
    });
}

use bindings::spin::key_value::key_value as kv;
use bindings::spin::variables::variables;

/// An open key-value store: the bucket a label names.
pub struct SpinStore {
    bucket: String,
}

/// The host functions' view of a store's data.
pub struct SpinView<'a> {
    /// The store's resource table (open stores live there).
    pub table: &'a mut ResourceTable,
    /// The function's configuration, for `variables`.
    pub config: &'a Arc<super::config::Resolved>,
    /// The function's key-value access; `None` on a host without a store.
    pub keyvalue: Option<&'a GuestKeyValue>,
    /// Stores (and `wasi:keyvalue` buckets) the guest holds open.
    pub open_buckets: &'a mut usize,
}

/// The `HasData` marker of both interfaces: their data is a [`SpinView`].
pub struct HasSpin;

impl HasData for HasSpin {
    type Data<'a> = SpinView<'a>;
}

/// Whether Spin accepts `name` as a variable name.
fn spin_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl variables::Host for SpinView<'_> {}

impl<T> variables::HostWithStore<T> for HasSpin {
    async fn get(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, variables::Error>> {
        if !spin_variable_name(&name) {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        let value = accessor.with(|mut access| access.get().config.value(&name).map(String::from));
        Ok(value.ok_or(variables::Error::Undefined(name)))
    }
}

fn kv_error(error: KvError, function: &str) -> kv::Error {
    match error {
        KvError::NoSuchBucket(_) => kv::Error::NoSuchStore,
        // The host's detail (file paths, addresses) goes to the host's log, not the guest.
        KvError::Backend(detail) => {
            tracing::warn!(function, "key-value store failed: {detail}");
            kv::Error::Other("the key-value store is unavailable".into())
        }
        other => kv::Error::Other(other.to_string()),
    }
}

type Answer<T> = wasmtime::Result<Result<T, kv::Error>>;

/// The function's store access and the bucket of an open store, cloned out of the guest's
/// store for a call that awaits.
fn scope<T>(
    accessor: &Accessor<T, HasSpin>,
    store: &Resource<SpinStore>,
) -> wasmtime::Result<Result<(GuestKeyValue, String), kv::Error>> {
    accessor.with(|mut access| {
        let view = access.get();
        let Some(keyvalue) = view.keyvalue.cloned() else {
            return Ok(Err(kv::Error::AccessDenied));
        };
        let bucket = view.table.get(store)?.bucket.clone();
        Ok(Ok((keyvalue, bucket)))
    })
}

impl kv::Host for SpinView<'_> {}

impl kv::HostStore for SpinView<'_> {
    fn drop(&mut self, store: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        *self.open_buckets = self.open_buckets.saturating_sub(1);
        Ok(())
    }
}

impl<T> kv::HostStoreWithStore<T> for HasSpin {
    async fn open(accessor: &Accessor<T, Self>, label: String) -> Answer<Resource<SpinStore>> {
        let bucket = if label == "default" {
            crate::keyvalue::DEFAULT_BUCKET.to_owned()
        } else {
            label
        };
        if crate::keyvalue::check_bucket(&bucket).is_err() {
            return Ok(Err(kv::Error::NoSuchStore));
        }
        accessor.with(|mut access| {
            let view = access.get();
            if view.keyvalue.is_none() {
                return Ok(Err(kv::Error::AccessDenied));
            }
            let max = super::keyvalue::MAX_OPEN_BUCKETS.min(view.table.max_capacity() / 2);
            if *view.open_buckets >= max {
                return Ok(Err(kv::Error::StoreTableFull));
            }
            let store = view.table.push(SpinStore { bucket })?;
            *view.open_buckets += 1;
            Ok(Ok(store))
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Answer<Option<Vec<u8>>> {
        let (access, bucket) = match scope(accessor, &store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .get(&access.function, &bucket, &key)
            .await
            .map_err(|e| kv_error(e, &access.function)))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> Answer<()> {
        let (access, bucket) = match scope(accessor, &store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        let set = access
            .store
            .set(&access.function, &bucket, &key, value, access.quota)
            .await;
        if let Err(KvError::Limit(hit, detail)) = &set {
            let limit = match hit {
                crate::keyvalue::QuotaHit::ValueSize => super::limit::Limit::KvValueSize,
                crate::keyvalue::QuotaHit::Keys => super::limit::Limit::KvKeys,
                crate::keyvalue::QuotaHit::Bytes => super::limit::Limit::KvBytes,
            };
            access.hits.hit(&access.function, limit, detail);
        }
        Ok(set.map_err(|e| kv_error(e, &access.function)))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Answer<()> {
        let (access, bucket) = match scope(accessor, &store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .delete(&access.function, &bucket, &key)
            .await
            .map_err(|e| kv_error(e, &access.function)))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Answer<bool> {
        let (access, bucket) = match scope(accessor, &store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .get(&access.function, &bucket, &key)
            .await
            .map(|value| value.is_some())
            .map_err(|e| kv_error(e, &access.function)))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), kv::Error>>)> {
        let listed = match scope(accessor, &store)? {
            Ok((access, bucket)) => {
                let mut keys = Vec::new();
                let mut cursor = None;
                loop {
                    match access.store.list(&access.function, &bucket, cursor).await {
                        Ok((page, next)) => {
                            keys.extend(page);
                            match next {
                                Some(next) => cursor = Some(next),
                                None => break Ok(keys),
                            }
                        }
                        Err(e) => break Err(kv_error(e, &access.function)),
                    }
                }
            }
            Err(e) => Err(e),
        };
        let (keys, outcome) = match listed {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, keys)?;
            let done = FutureReader::new(&mut access, async move { wasmtime::error::Ok(outcome) })?;
            Ok((keys, done))
        })
    }
}

/// Adds `spin:variables` and `spin:key-value` to a linker whose store data gives a
/// [`SpinView`] with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    variables::add_to_linker::<T, HasSpin>(linker, view)?;
    kv::add_to_linker::<T, HasSpin>(linker, view)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn variable_names_follow_spin() {
        for ok in ["api_url", "a", "x9_"] {
            assert!(super::spin_variable_name(ok), "{ok}");
        }
        for bad in ["", "API_URL", "9a", "_a", "a-b", "a.b"] {
            assert!(!super::spin_variable_name(bad), "{bad}");
        }
    }
}
