//! Cranelift's incremental compilation cache, kept in the data directory.
//!
//! Two functions in the same language embed the same language runtime: two componentize-js
//! components share StarlingMonkey's thousands of functions, two componentize-py ones
//! CPython's. Compiling the second one from scratch repeats seconds of work whose result is
//! already known. Cranelift can key each function's compiled code by the function itself
//! (its IR after translation, the target and every compiler setting), and wasmtime hands
//! those keys to a [`CacheStore`]; this module is that store.
//!
//! # Trade-offs
//! - **What still runs on a hit**: parsing and validating the wasm, translating every
//!   function to Cranelift's IR (the key is computed from it) and writing the artifact.
//!   Optimisation, register allocation and code emission are skipped, which is most of a
//!   compile.
//! - **Storage**: one [`redb`] database file, `compile-cache.redb`. It is a cache: its loss
//!   costs only time, so a file that cannot be opened (damaged, or from an incompatible
//!   version) is set aside and a new one started. redb's commits are atomic (a crash leaves
//!   the last committed state), which matters here: a torn entry read back as valid would
//!   be wrong machine code. Cranelift checks each entry it reads against its key and its own
//!   version, and recompiles on any mismatch.
//! - **Writes are batched**: compiler threads call [`CacheStore::insert`] once per function;
//!   they land in memory and are committed in one transaction when the compile ends
//!   ([`CompileCache::flush`]), not one fsync per function.
//! - **Growth**: one entry per distinct function compiled, never evicted while thaw runs.
//!   A file past [`MAX_FILE_BYTES`] is started afresh when thaw starts; deleting it by hand
//!   is always safe.
//! - **Same artifacts**: a compile with cache hits produces the same bytes as a cold one
//!   (tested in `runtime/tests/compile_cache.rs`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use redb::{Database, ReadableDatabase as _, TableDefinition};
use wasmtime::CacheStore;

/// The one table: Cranelift's key bytes to its serialized compiled function.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cranelift-incremental");

/// Past this size the cache file is started afresh at start-up (2 GiB: about forty
/// language runtimes' worth of functions).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The cache's counters since start-up.
#[derive(Debug, Default)]
pub struct CompileCacheStats {
    /// Functions whose compiled code was found.
    pub hits: AtomicU64,
    /// Functions compiled because no entry was found.
    pub misses: AtomicU64,
}

/// The persistent store behind Cranelift's incremental compilation cache.
pub struct CompileCache {
    db: Database,
    path: PathBuf,
    /// Entries inserted since the last [`CompileCache::flush`].
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    stats: CompileCacheStats,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (or creates) the cache at `path`; a file that cannot be opened, or one past
    /// [`MAX_FILE_BYTES`], is renamed to `<path>.old` (replacing an older one) and a new one
    /// is created.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_FILE_BYTES);
        let db = match (too_big, Database::create(path)) {
            (false, Ok(db)) => db,
            (_, result) => {
                let reason = match result {
                    Ok(db) => {
                        drop(db);
                        format!("it is larger than {} MiB", MAX_FILE_BYTES >> 20)
                    }
                    Err(e) => e.to_string(),
                };
                let old = path.with_extension("redb.old");
                tracing::warn!(
                    path = %path.display(),
                    "starting a new compilation cache: {reason}; the old file is {}",
                    old.display()
                );
                std::fs::rename(path, &old)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                Database::create(path)
                    .with_context(|| format!("creating the compilation cache {}", path.display()))?
            }
        };
        crate::datadir::make_private_file(path)?;
        Ok(Self {
            db,
            path: path.to_owned(),
            pending: Mutex::new(Vec::new()),
            stats: CompileCacheStats::default(),
        })
    }

    /// The cache's counters.
    pub fn stats(&self) -> &CompileCacheStats {
        &self.stats
    }

    /// Commits the entries inserted since the last flush, in one transaction. Called when a
    /// compile ends; a failure is logged (a cache that cannot be written only costs time).
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        let entries = pending.len();
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(ENTRIES)?;
                for (key, value) in &pending {
                    table.insert(key.as_slice(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => tracing::debug!(entries, "compilation cache flushed"),
            Err(e) => tracing::warn!(entries, "the compilation cache was not written: {e}"),
        }
    }

    fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|value| value.value().to_vec()))
    }
}

impl CacheStore for CompileCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.lookup(key).unwrap_or_else(|e| {
            tracing::warn!("reading the compilation cache: {e}");
            None
        });
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.to_vec(), value));
        true
    }
}
