//! `wasi:keyvalue` (`store`, `atomics`, `batch`, 0.2.0-draft, as `wasmtime serve -Skeyvalue`
//! links them), over the host's store ([`crate::keyvalue`]) and scoped to the calling
//! function.
//!
//! `wasmtime-wasi-keyvalue` only offers an in-memory map copied into each bucket, so thaw
//! generates the bindings from the same WIT (`runtime/wit/keyvalue`) and implements them
//! over its own store. The functions are async: an embedded write waits for its fsync on a
//! blocking thread, a Redis call for the network, and the guest's request task yields
//! meanwhile. A guest that goes over its quota gets the interface's `other` error with the
//! reason, and the hit is counted under its limit; any other failure is `other` too, never a
//! trap: the guest decides what a failed write means for its request.

use std::sync::Arc;

use wasmtime::component::{HasData, Resource, ResourceTable};

use super::limit::{Limit, LimitHits};
use crate::keyvalue::{KeyValue, KvError, Quota, QuotaHit};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket: its name, within the function's scope.
pub struct Bucket {
    name: String,
}

/// What a store's guest may reach: the host's store, under its function's name and quota.
#[derive(Clone)]
pub struct GuestKeyValue {
    /// The host's store.
    pub store: KeyValue,
    /// The scope: the function's name.
    pub function: Arc<str>,
    /// The function's quota.
    pub quota: Quota,
    /// Where quota hits are counted.
    pub hits: Arc<LimitHits>,
}

/// The host functions' view of a store's data.
pub struct KvView<'a> {
    /// The store's resource table (buckets live there).
    pub table: &'a mut ResourceTable,
    /// The function's access, `None` on a host without a store.
    pub access: Option<&'a GuestKeyValue>,
    /// Buckets the store's guest holds open.
    pub open_buckets: &'a mut usize,
}

/// Most buckets one instance may hold open at once. Each is an entry in the store's
/// resource table, host memory the guest's memory limit does not count; a guest opening
/// buckets in a loop without dropping them gets an error instead of growing the host. The
/// table's own cap (`max_host_resources`, 512 by default) bounds them too, but as a trap;
/// this smaller cap (or half the table, if that is fewer) comes first, as an error the
/// guest can handle.
pub const MAX_OPEN_BUCKETS: usize = 256;

type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

impl KvView<'_> {
    fn scope(&self, bucket: &Resource<Bucket>) -> Result<(&GuestKeyValue, String), store::Error> {
        let access = self.access.ok_or(store::Error::AccessDenied)?;
        let bucket = self
            .table
            .get(bucket)
            .map_err(|e| store::Error::Other(e.to_string()))?;
        Ok((access, bucket.name.clone()))
    }

    fn failed(&self, error: KvError) -> store::Error {
        if let (KvError::Limit(hit, _), Some(access)) = (&error, self.access) {
            let limit = match hit {
                QuotaHit::ValueSize => Limit::KvValueSize,
                QuotaHit::Keys => Limit::KvKeys,
                QuotaHit::Bytes => Limit::KvBytes,
            };
            access.hits.hit(&access.function, limit, &error);
        }
        match error {
            KvError::NoSuchBucket(_) => store::Error::NoSuchStore,
            // The host's detail (file paths, addresses) goes to the host's log, not the guest.
            KvError::Backend(detail) => {
                let function = self.access.map_or("", |a| &*a.function);
                tracing::warn!(function, "key-value store failed: {detail}");
                store::Error::Other("the key-value store is unavailable".into())
            }
            other => store::Error::Other(other.to_string()),
        }
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        if self.access.is_none() {
            return Ok(Err(store::Error::AccessDenied));
        }
        if crate::keyvalue::check_bucket(&identifier).is_err() {
            return Ok(Err(store::Error::NoSuchStore));
        }
        let max = MAX_OPEN_BUCKETS.min(self.table.max_capacity() / 2);
        if *self.open_buckets >= max {
            return Ok(Err(store::Error::Other(format!(
                "more than {max} buckets open at once; drop some"
            ))));
        }
        let bucket = self.table.push(Bucket { name: identifier })?;
        *self.open_buckets += 1;
        Ok(Ok(bucket))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let (access, name) = match self.scope(&bucket) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .get(&access.function, &name, &key)
            .await
            .map_err(|e| self.failed(e)))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let (access, name) = match self.scope(&bucket) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .set(&access.function, &name, &key, value, access.quota)
            .await
            .map_err(|e| self.failed(e)))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<()> {
        let (access, name) = match self.scope(&bucket) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .delete(&access.function, &name, &key)
            .await
            .map_err(|e| self.failed(e)))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<bool> {
        Ok(self.get(bucket, key).await?.map(|v| v.is_some()))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Answer<store::KeyResponse> {
        let (access, name) = match self.scope(&bucket) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .list(&access.function, &name, cursor)
            .await
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(|e| self.failed(e)))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        *self.open_buckets = self.open_buckets.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Answer<u64> {
        let (access, name) = match self.scope(&bucket) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(access
            .store
            .increment(&access.function, &name, &key, delta, access.quota)
            .await
            .map_err(|e| self.failed(e)))
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let bucket = Resource::new_borrow(bucket.rep());
            match store::HostBucket::get(self, bucket, key.clone()).await? {
                Ok(value) => out.push(value.map(|v| (key, v))),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Answer<()> {
        for (key, value) in key_values {
            let bucket = Resource::new_borrow(bucket.rep());
            if let Err(e) = store::HostBucket::set(self, bucket, key, value).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        for key in keys {
            let bucket = Resource::new_borrow(bucket.rep());
            if let Err(e) = store::HostBucket::delete(self, bucket, key).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

/// Adds `wasi:keyvalue` to a linker whose store data gives a [`KvView`] with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, view)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, view)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, view)?;
    Ok(())
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KvView<'a>;
}
