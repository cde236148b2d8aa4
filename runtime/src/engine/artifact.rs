//! The content-addressed cache of compiled code.
//!
//! Compiling with Cranelift costs orders of magnitude more than loading a serialized artifact
//! with `deserialize_file` (an `mmap`; `benches/micro/benches/compile.rs` measures both, the README
//! has the numbers). So thaw compiles once, at deploy, and every later start (a restart, a new
//! node pointed at the same data directory) loads the artifact.
//!
//! Artifacts are keyed by the sha256 of the wasm **and** the engine's compatibility key
//! ([`ThawEngine::compatibility_key`]): an upgrade of wasmtime or a change of engine settings
//! gets a fresh directory instead of a refused (or worse, misread) artifact.
//!
//! # Trust
//! `deserialize_file` is `unsafe` because an artifact is native code. thaw only ever
//! deserializes files it wrote itself into its own data directory, never uploaded bytes (the
//! deploy path rejects anything that is not a wasm binary). Each artifact has a checksum
//! sidecar written with it; a file that does not match (bit rot, a torn copy, someone's
//! editor) is treated like a missing one and rebuilt from the stored wasm, and the log says
//! why. The checksum is XXH3-128, not sha256: it guards against accidents in a directory thaw
//! trusts, not against an attacker who can write there (who could replace the sidecar too),
//! and it is several times cheaper than sha256.
//!
//! # When the checksum is checked
//! Not on the request path when it can be helped: hashing a 36 MB JavaScript artifact was 85-90%
//! of a cold start from disk, and reading the whole file undoes what `deserialize_file`'s `mmap`
//! saves. Each artifact is checked once per process and the result remembered with the file's
//! identity ([`FileStamp`]: device, inode, size, modification and change times):
//! - at deploy, from the bytes just written;
//! - at start-up, by a background scrub ([`ArtifactCache::scrub`]) over every deployed
//!   function's artifact, one at a time, streaming the file through a small buffer;
//! - by the load itself when it comes first (a request in the first moments after a start):
//!   that request pays for the check, so a damaged artifact is still never run.
//!
//! A load then costs one `stat` and the map lookup. A file replaced or rewritten since it was
//! checked has another inode or times and is checked again. What this does not catch is a
//! file whose bytes change under the same inode without its times changing (bit rot after the
//! check, in a running process); that is the filesystem's to detect, as it is for every
//! executable on the machine.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;

use crate::datadir::DataDir;
use crate::engine::ThawEngine;
use crate::histogram::Histogram;

pub use crate::spec::{Kind, detect_kind};

/// The sha256 of some bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The artifact checksum (see the module docs), hex.
fn checksum(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The checksum of an artifact file as the scrub computes it (public for the cold-start
/// breakdown, which times it).
pub fn file_checksum(path: &Path) -> std::io::Result<String> {
    checksum_of(&mut std::fs::File::open(path)?)
}

/// The checksum of a file, streamed through a small buffer: no allocation the size of the
/// file, and the same value as [`checksum`] of its bytes.
fn checksum_of(file: &mut std::fs::File) -> std::io::Result<String> {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// A file's identity and version as far as its metadata tells: any rewrite or replacement
/// (even one that restores the modification time) changes the inode or the change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Compiled code of either kind.
#[derive(Clone)]
pub enum Compiled {
    /// A compiled component.
    Component(Component),
    /// A compiled core module.
    Module(Module),
}

impl Compiled {
    /// Where wasmtime keeps the compiled image in memory (for an artifact loaded from disk,
    /// its mapping of the file).
    pub fn image_range(&self) -> std::ops::Range<*const u8> {
        match self {
            Compiled::Component(component) => component.image_range(),
            Compiled::Module(module) => module.image_range(),
        }
    }
}

/// Where a loaded function's code came from (shown in logs and counted in [`CacheStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Deserialized from an artifact on disk.
    Artifact,
    /// Compiled now (deploy, or an artifact that was missing, stale or corrupt).
    Compiled,
    /// Compiled by the fast tier (Winch) at deploy, not persisted; replaced by Cranelift's
    /// code in the background (`--fast-deploy`).
    FastTier,
    /// A source function's snapshot (its engine with its program loaded, see
    /// [`crate::source::snapshot`]), deserialized from its artifact on disk.
    Snapshot,
}

impl Origin {
    /// The name in logs and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Artifact => "artifact",
            Origin::Compiled => "compiled",
            Origin::FastTier => "fast_tier",
            Origin::Snapshot => "snapshot",
        }
    }
}

/// Counters of the cache's work since start-up.
#[derive(Debug, Default, Serialize)]
pub struct CacheStats {
    /// Cranelift compilations.
    pub compilations: AtomicU64,
    /// Artifacts deserialized from disk.
    pub artifact_loads: AtomicU64,
    /// Artifacts found missing, incompatible or corrupt and rebuilt.
    pub rebuilds: AtomicU64,
    /// Checksum checks done (deploys excluded: their bytes are hashed as they are written).
    pub checks: AtomicU64,
    /// Artifacts the start-up scrub has still to check.
    pub unchecked: AtomicUsize,
    /// How long each Cranelift compile (with serialisation and the artifact's write) took.
    #[serde(skip)]
    pub compile_time: Histogram,
}

/// The artifact cache of one data directory and one engine.
pub struct ArtifactCache {
    data: DataDir,
    engine: Arc<ThawEngine>,
    dir: PathBuf,
    stats: CacheStats,
    /// Artifacts whose checksum matched in this process, with the file's stamp then.
    checked: DashMap<String, FileStamp>,
}

impl ArtifactCache {
    /// The cache for `engine` under `data`.
    pub fn new(data: DataDir, engine: Arc<ThawEngine>) -> anyhow::Result<Self> {
        let dir = data.artifacts(&engine.compatibility_key());
        crate::datadir::create_private_dir(&dir)?;
        Ok(Self {
            data,
            engine,
            dir,
            stats: CacheStats::default(),
            checked: DashMap::new(),
        })
    }

    /// The data directory whose wasm the cache compiles.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The cache's counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Whether an artifact for `digest` is on disk (checked or not).
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.artifact_path(digest).is_file()
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    fn sidecar_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm.xxh3"))
    }

    /// Compiles `wasm` with Cranelift and stores the artifact. CPU-heavy: call it from a
    /// blocking thread. Compile errors are the user's (invalid wasm) and are returned as is.
    pub fn compile_and_store(
        &self,
        kind: Kind,
        digest: &str,
        wasm: &[u8],
    ) -> Result<Compiled, CompileError> {
        let started = std::time::Instant::now();
        let compiled = compile(self.engine.engine(), kind, wasm);
        if let Some(cache) = self.engine.compile_cache() {
            cache.flush();
        }
        let compiled = compiled?;
        self.stats.compilations.fetch_add(1, Ordering::Relaxed);
        let bytes = match &compiled {
            Compiled::Component(c) => c.serialize(),
            Compiled::Module(m) => m.serialize(),
        }
        .map_err(|e| CompileError::Host(anyhow::Error::from(e).context("serializing")))?;
        // Artifact first, digest second: if we crash in between, the digest does not match
        // and the next load rebuilds.
        let path = self.artifact_path(digest);
        self.data
            .write_atomic(&path, &bytes)
            .and_then(|()| {
                self.data
                    .write_atomic(&self.sidecar_path(digest), checksum(&bytes).as_bytes())
            })
            .map_err(CompileError::Host)?;
        self.stats.compile_time.record(started.elapsed());
        // The bytes were hashed as written; remember the file as checked.
        if let Ok(meta) = std::fs::metadata(&path) {
            self.checked.insert(digest.to_owned(), FileStamp::of(&meta));
        }
        Ok(compiled)
    }

    /// Loads the artifact for `digest`, rebuilding it from the stored wasm when it is missing,
    /// corrupt or made by an incompatible engine.
    pub fn load(&self, kind: Kind, digest: &str) -> anyhow::Result<(Compiled, Origin)> {
        let reason = match self.try_load(kind, digest) {
            Ok(compiled) => {
                self.stats.artifact_loads.fetch_add(1, Ordering::Relaxed);
                return Ok((compiled, Origin::Artifact));
            }
            Err(reason) => reason,
        };
        tracing::warn!(
            digest,
            "artifact {reason:#}; rebuilding it from the stored wasm"
        );
        self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        let wasm_path = self.data.wasm(digest);
        let wasm = std::fs::read(&wasm_path)
            .with_context(|| format!("reading the stored wasm {}", wasm_path.display()))?;
        anyhow::ensure!(
            sha256_hex(&wasm) == digest,
            "the stored wasm {} does not match its digest",
            wasm_path.display()
        );
        let compiled = self
            .compile_and_store(kind, digest, &wasm)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((compiled, Origin::Compiled))
    }

    /// Loads the artifact for `digest` if a valid one exists; never compiles.
    pub fn load_existing(&self, kind: Kind, digest: &str) -> anyhow::Result<(Compiled, Origin)> {
        let compiled = self.try_load(kind, digest)?;
        self.stats.artifact_loads.fetch_add(1, Ordering::Relaxed);
        Ok((compiled, Origin::Artifact))
    }

    /// Checks the artifact of `digest` against its checksum unless this process already did
    /// and the file is unchanged since (see the module docs). Blocking.
    pub fn check(&self, digest: &str) -> anyhow::Result<()> {
        let path = self.artifact_path(digest);
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("is missing"),
            Err(e) => return Err(e).context("cannot be read"),
        };
        if self.checked.get(digest).is_some_and(|seen| *seen == stamp) {
            return Ok(());
        }
        self.check_file(digest, &path)
    }

    fn check_file(&self, digest: &str, path: &Path) -> anyhow::Result<()> {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("is missing"),
            Err(e) => return Err(e).context("cannot be read"),
        };
        // The stamp of the file that is hashed, not of whatever is at the path later.
        let stamp = FileStamp::of(&file.metadata().context("cannot be read")?);
        let expected = std::fs::read_to_string(self.sidecar_path(digest)).unwrap_or_default();
        let actual = checksum_of(&mut file).context("cannot be read")?;
        self.stats.checks.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(
            actual == expected.trim(),
            "is corrupt (its checksum does not match the one written with it)"
        );
        self.checked.insert(digest.to_owned(), stamp);
        Ok(())
    }

    /// The bytes of the artifact of `digest`, once its checksum is checked (a damaged
    /// artifact is never handed out): what a cluster peer fetches instead of compiling (see
    /// [`crate::cluster`]). Blocking; reads the whole file (never on the request path).
    pub fn artifact_bytes(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        self.check(digest)?;
        let path = self.artifact_path(digest);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Stores an artifact made elsewhere (a cluster peer with the same engine compatibility
    /// key), with its checksum sidecar, as [`ArtifactCache::compile_and_store`] does. The
    /// caller has verified the bytes (see [`crate::cluster`]: against the sha256 the
    /// compiling node published); this engine still refuses them at load if they were made
    /// by another engine. Blocking.
    pub fn store_artifact(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.artifact_path(digest);
        self.data.write_atomic(&path, bytes)?;
        self.data
            .write_atomic(&self.sidecar_path(digest), checksum(bytes).as_bytes())?;
        if let Ok(meta) = std::fs::metadata(&path) {
            self.checked.insert(digest.to_owned(), FileStamp::of(&meta));
        }
        Ok(())
    }

    /// Checks the artifacts of `digests` one at a time (the start-up scrub), skipping those
    /// already checked. A damaged one is logged here and rebuilt when its function is loaded.
    /// Blocking: run it on a thread of its own. Counts [`CacheStats::unchecked`] down (the
    /// caller sets it when it schedules the scrub).
    pub fn scrub(&self, digests: &[String]) {
        for digest in digests {
            if let Err(reason) = self.check(digest) {
                tracing::warn!(
                    digest = %digest,
                    "artifact {reason:#}; it is rebuilt when its function is loaded"
                );
            }
            self.stats.unchecked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn try_load(&self, kind: Kind, digest: &str) -> anyhow::Result<Compiled> {
        self.check(digest)?;
        let path = self.artifact_path(digest);
        let engine = self.engine.engine();
        // SAFETY: the file is an artifact this cache serialized itself (see the module docs)
        // and its checksum was checked just above (or earlier, with the same stamp).
        let compiled = unsafe {
            match kind {
                Kind::Component => {
                    Component::deserialize_file(engine, &path).map(Compiled::Component)
                }
                Kind::Cgi => Module::deserialize_file(engine, &path).map(Compiled::Module),
                Kind::Source => anyhow::bail!("source is not compiled (its engine is)"),
            }
        };
        compiled.map_err(|e| anyhow::anyhow!("is incompatible with this engine: {e}"))
    }
}

/// Compiles `wasm` with `engine`, without storing anything.
pub fn compile(
    engine: &wasmtime::Engine,
    kind: Kind,
    wasm: &[u8],
) -> Result<Compiled, CompileError> {
    let invalid = |e: wasmtime::Error| CompileError::Invalid(format!("{e:?}"));
    Ok(match kind {
        Kind::Component => Compiled::Component(Component::new(engine, wasm).map_err(invalid)?),
        Kind::Cgi => Compiled::Module(Module::new(engine, wasm).map_err(invalid)?),
        Kind::Source => {
            return Err(CompileError::Invalid(
                "source is not compiled: its language's engine runs it".into(),
            ));
        }
    })
}

/// Why compiling failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The wasm is invalid; the message is the validator's.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// The host could not store the result.
    #[error(transparent)]
    Host(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_checksum_is_the_checksum_of_the_bytes() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 5) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        assert_eq!(checksum_of(&mut file).unwrap(), checksum(&bytes));
    }

    #[test]
    fn kinds_from_preamble() {
        assert_eq!(detect_kind(b"\0asm\x01\0\0\0rest"), Ok(Kind::Cgi));
        assert_eq!(detect_kind(b"\0asm\x0d\0\x01\0rest"), Ok(Kind::Component));
        assert!(detect_kind(b"\0asm\x02\0\0\0").is_err());
        assert!(
            detect_kind(b"\x7fELF\x02\x01\x01\0")
                .unwrap_err()
                .contains("native")
        );
        assert!(detect_kind(b"hello world").is_err());
        assert!(detect_kind(b"\0as").is_err());
    }
}
