//! Garbage collection of code: stored wasm and artifacts that no version refers to.
//!
//! Code is content-addressed (`wasm/<sha256>.wasm`, `artifacts/<key>/<sha256>.cwasm` or
//! `<sha256>.concurrent.cwasm`), so a
//! redeploy or a removal leaves the old version's files behind, and a crash between writing
//! an upload and its record leaves an orphan. A collection removes every such file whose
//! digest nothing needs any more, where "needed" is the union of:
//! - every version of every function record on disk (not only the registered ones: a record skipped at
//!   start-up for a route clash still refers to its code; if any record cannot be read, the
//!   collection is skipped, because a damaged record's code cannot be told from garbage);
//! - every retired function still alive: a request that routed to a version just replaced or
//!   removed may not have loaded its code yet (lazy loading), and must still find it;
//! - every deploy in progress ([`Claims`]), which may be about to use a file it found.
//!
//! A collection runs after every redeploy and removal (on a blocking thread, off the
//! reactor) and once at start-up, before serving. Each file is checked against the claims
//! and removed under the claims' lock, so a deploy that claims a digest either sees its file
//! gone (and writes it again) or keeps it; the lock is held per file, never for a whole pass.
//! Directories are synced once per pass, not per file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use anyhow::Context as _;

use super::versions::VersionsRecord;
use crate::datadir::Collected;
use crate::function::Function;

/// Digests that deploys in progress will refer to, with a count per digest.
#[derive(Default)]
pub struct Claims(Mutex<HashMap<String, usize>>);

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A claim that lasts until the returned guard is dropped.
    pub fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            claims: self.clone(),
            digests: Vec::new(),
        }
    }
}

/// One deploy's claims (see [`Claims`]); released on drop.
pub struct Claim {
    claims: Arc<Claims>,
    digests: Vec<String>,
}

impl Claim {
    /// Claims `digest` for this deploy.
    pub fn add(&mut self, digest: &str) {
        *self.claims.lock().entry(digest.to_owned()).or_default() += 1;
        self.digests.push(digest.to_owned());
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = self.claims.lock();
        for digest in &self.digests {
            if let Some(count) = claims.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    claims.remove(digest);
                }
            }
        }
    }
}

/// What a collection looks at; cheap to clone into a blocking task.
#[derive(Clone)]
pub struct Collector {
    /// `functions/` of the data directory.
    pub records: PathBuf,
    /// `wasm/`.
    pub wasm: PathBuf,
    /// This engine's `artifacts/<key>/`. Other engines' artifacts are left alone: switching
    /// back (an older wasmtime, fuel metering off again) would otherwise recompile all.
    pub artifacts: PathBuf,
    /// Deploys in progress.
    pub claims: Arc<Claims>,
    /// Versions replaced or removed; kept while a request still holds them.
    pub retired: Arc<Mutex<Vec<Weak<Function>>>>,
    /// The host's current language engines (their wasm and artifacts stay even before a
    /// function uses them).
    pub engines: Vec<String>,
}

impl Collector {
    /// Remembers a replaced or removed version, whose code stays while it is alive.
    pub fn retire(&self, function: &Arc<Function>) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        retired.push(Arc::downgrade(function));
    }

    /// One pass. Blocking (directory reads, unlinks, fsyncs). Returns `None` when it was
    /// skipped because a record could not be read.
    pub fn run(&self) -> anyhow::Result<Option<Collected>> {
        let Some(mut keep) = self.recorded()? else {
            return Ok(None);
        };
        {
            let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            for function in retired.iter().filter_map(Weak::upgrade) {
                keep.insert(function.record.digest.clone());
                keep.insert(function.record.code_digest().to_owned());
                keep.extend(function.record.engine.clone());
                // A source version's snapshot, which no record names (each host takes its
                // own, see `crate::source::snapshot`).
                keep.extend(function.record.snapshot_key());
                keep.extend(
                    function
                        .record
                        .spec
                        .assets
                        .as_ref()
                        .and_then(|a| a.digest.clone()),
                );
            }
        }
        keep.extend(self.engines.iter().cloned());
        let mut collected = Collected::default();
        for dir in [&self.wasm, &self.artifacts] {
            collected += self.sweep(dir, &keep)?;
        }
        Ok(Some(collected))
    }

    /// The digests every readable record refers to, or `None` if one is unreadable.
    fn recorded(&self) -> anyhow::Result<Option<HashSet<String>>> {
        let mut keep = HashSet::new();
        let entries = std::fs::read_dir(&self.records)
            .with_context(|| format!("reading {}", self.records.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| VersionsRecord::from_json(&bytes).ok());
            match record {
                Some(record) => {
                    keep.extend(record.digests().map(str::to_owned));
                    keep.extend(
                        record
                            .versions
                            .iter()
                            .filter_map(crate::function::FunctionRecord::snapshot_key),
                    );
                }
                None => {
                    tracing::warn!(path = %path.display(), "not collecting unreferenced code: a function record cannot be read");
                    return Ok(None);
                }
            }
        }
        Ok(Some(keep))
    }

    /// Removes the content-addressed files of `dir` (`<sha256 hex>.<anything>`) whose digest
    /// is neither kept nor claimed. Files not named that way are left alone.
    fn sweep(&self, dir: &Path, keep: &HashSet<String>) -> anyhow::Result<Collected> {
        let mut collected = Collected::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(collected),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.split_once('.'))
                .map(|(d, _)| d)
            else {
                continue;
            };
            let addressed = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
            if !addressed || keep.contains(digest) {
                continue;
            }
            let bytes = entry.metadata().map_or(0, |m| m.len());
            // Checked and removed under the claims' lock: a deploy cannot claim it between.
            let claims = self.claims.lock();
            if claims.contains_key(digest) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => collected += Collected { files: 1, bytes },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", entry.path().display()));
                }
            }
            drop(claims);
        }
        if collected.files > 0 {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(collected)
    }
}

/// Logs what a pass did.
pub fn report(result: anyhow::Result<Option<Collected>>) {
    match result {
        Ok(Some(collected)) if collected.files > 0 => tracing::info!(
            files = collected.files,
            bytes = collected.bytes,
            "removed code no function refers to"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("collecting unreferenced code failed: {e:#}"),
    }
}
