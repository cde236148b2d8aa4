//! The content-addressed cache of compiled code.
//!
//! Compiling with Cranelift costs orders of magnitude more than loading a serialized artifact
//! with `deserialize_file` (an `mmap`; `benches/micro/benches/compile.rs` measures both, the README
//! has the numbers). So thaw compiles once, at deploy, and every later start (a restart, a new
//! node pointed at the same data directory) loads the artifact.
//!
//! Artifacts are keyed by the sha256 of the wasm **and** the engines' compatibility key
//! ([`HostEngines::compatibility_key`]): an upgrade of wasmtime or a change of engine settings
//! gets a fresh directory instead of a refused (or worse, misread) artifact. Within it, the
//! file name says which of the two engines made it ([`crate::engine::concurrency`]):
//! `<sha256>.cwasm` the engine without the component model's concurrency,
//! `<sha256>.concurrent.cwasm` the one with it. A load looks for the first, then the second:
//! no parse of the wasm, one more `stat` for a WASIp3 function.
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
use crate::engine::{Concurrency, HostEngines};
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

/// The artifact cache of one data directory and the host's engines.
pub struct ArtifactCache {
    data: DataDir,
    engines: Arc<HostEngines>,
    dir: PathBuf,
    stats: CacheStats,
    /// Artifacts whose checksum matched in this process, with the file's stamp then.
    checked: DashMap<String, FileStamp>,
}

impl ArtifactCache {
    /// The cache for `engines` under `data`.
    pub fn new(data: DataDir, engines: Arc<HostEngines>) -> anyhow::Result<Self> {
        let dir = data.artifacts(&engines.compatibility_key());
        crate::datadir::create_private_dir(&dir)?;
        Ok(Self {
            data,
            engines,
            dir,
            stats: CacheStats::default(),
            checked: DashMap::new(),
        })
    }

    /// The data directory whose wasm the cache compiles.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The engines the cache compiles for.
    pub fn engines(&self) -> &Arc<HostEngines> {
        &self.engines
    }

    /// The cache's counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Whether an artifact for `digest` is on disk (checked or not).
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.locate(digest).is_ok()
    }

    fn artifact_path(&self, digest: &str, concurrency: Concurrency) -> PathBuf {
        self.dir.join(match concurrency {
            Concurrency::Off => format!("{digest}.cwasm"),
            Concurrency::On => format!("{digest}.concurrent.cwasm"),
        })
    }

    /// The checksum sidecar of the artifact at `path`.
    fn sidecar_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".xxh3");
        PathBuf::from(name)
    }

    /// The artifact of `digest` on disk: which engine made it, its path and metadata.
    fn locate(&self, digest: &str) -> std::io::Result<(Concurrency, PathBuf, std::fs::Metadata)> {
        let mut missing = None;
        for concurrency in [Concurrency::Off, Concurrency::On] {
            let path = self.artifact_path(digest, concurrency);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => return Ok((concurrency, path, meta)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(missing.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
    }

    /// Compiles `wasm` with Cranelift, on the engine it needs
    /// ([`crate::engine::concurrency`]), and stores the artifact. CPU-heavy: call it from a
    /// blocking thread. Compile errors are the user's (invalid wasm) and are returned as is.
    pub fn compile_and_store(
        &self,
        kind: Kind,
        digest: &str,
        wasm: &[u8],
    ) -> Result<Compiled, CompileError> {
        let started = std::time::Instant::now();
        let mut concurrency = crate::engine::concurrency::needed(kind, wasm);
        let mut compiled = compile(self.engines.get(concurrency).engine(), kind, wasm);
        // Concurrency that the scan does not see (see `engine::concurrency`): a component
        // the engine without it refuses may still be valid on the other.
        if kind == Kind::Component
            && concurrency == Concurrency::Off
            && matches!(compiled, Err(CompileError::Invalid(_)))
            && let Ok(on) = compile(self.engines.get(Concurrency::On).engine(), kind, wasm)
        {
            concurrency = Concurrency::On;
            compiled = Ok(on);
        }
        let engine = self.engines.get(concurrency);
        if let Some(cache) = engine.compile_cache() {
            cache.flush();
        }
        let compiled = compiled?;
        self.stats.compilations.fetch_add(1, Ordering::Relaxed);
        let bytes = match &compiled {
            Compiled::Component(c) => c.serialize(),
            Compiled::Module(m) => m.serialize(),
        }
        .map_err(|e| CompileError::Host(anyhow::Error::from(e).context("serializing")))?;
        self.write(digest, concurrency, &bytes)
            .map_err(CompileError::Host)?;
        self.stats.compile_time.record(started.elapsed());
        Ok(compiled)
    }

    /// Writes the artifact of `digest` made by the engine with `concurrency`, with its
    /// sidecar, and remembers it as checked (its bytes were hashed as written). One made by
    /// the other engine, if any, is removed: a load would find it first.
    fn write(&self, digest: &str, concurrency: Concurrency, bytes: &[u8]) -> anyhow::Result<()> {
        let other = self.artifact_path(digest, concurrency.other());
        if other.exists() {
            std::fs::remove_file(&other)
                .with_context(|| format!("removing {}", other.display()))?;
            let _ = std::fs::remove_file(Self::sidecar_path(&other));
        }
        // Artifact first, checksum second: if we crash in between, the checksum does not
        // match and the next load rebuilds.
        let path = self.artifact_path(digest, concurrency);
        self.data.write_atomic(&path, bytes)?;
        self.data
            .write_atomic(&Self::sidecar_path(&path), checksum(bytes).as_bytes())?;
        if let Ok(meta) = std::fs::metadata(&path) {
            self.checked.insert(digest.to_owned(), FileStamp::of(&meta));
        }
        Ok(())
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
        self.checked_path(digest).map(drop)
    }

    /// [`ArtifactCache::check`], returning which engine made the artifact and its path.
    fn checked_path(&self, digest: &str) -> anyhow::Result<(Concurrency, PathBuf)> {
        let (concurrency, path, meta) = match self.locate(digest) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("is missing"),
            Err(e) => return Err(e).context("cannot be read"),
        };
        if self
            .checked
            .get(digest)
            .is_some_and(|seen| *seen == FileStamp::of(&meta))
        {
            return Ok((concurrency, path));
        }
        self.check_file(digest, &path)?;
        Ok((concurrency, path))
    }

    fn check_file(&self, digest: &str, path: &Path) -> anyhow::Result<()> {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("is missing"),
            Err(e) => return Err(e).context("cannot be read"),
        };
        // The stamp of the file that is hashed, not of whatever is at the path later.
        let stamp = FileStamp::of(&file.metadata().context("cannot be read")?);
        let expected = std::fs::read_to_string(Self::sidecar_path(path)).unwrap_or_default();
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
        let (_, path) = self.checked_path(digest)?;
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Stores an artifact made elsewhere (a cluster peer with the same engines' compatibility
    /// key), with its checksum sidecar, as [`ArtifactCache::compile_and_store`] does, under
    /// the engine the stored wasm of `digest` needs (the peer's choice, by the same rule).
    /// The caller has verified the bytes (see [`crate::cluster`]: against the sha256 the
    /// compiling node published); the engine still refuses them at load if another engine
    /// made them. Blocking; reads the stored wasm.
    pub fn store_artifact(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let wasm_path = self.data.wasm(digest);
        let wasm = std::fs::read(&wasm_path)
            .with_context(|| format!("reading the stored wasm {}", wasm_path.display()))?;
        let kind = detect_kind(&wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
        let concurrency = crate::engine::concurrency::needed(kind, &wasm);
        drop(wasm);
        self.write(digest, concurrency, bytes)
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
        let (concurrency, path) = self.checked_path(digest)?;
        let deserialize = |concurrency: Concurrency| {
            let engine = self.engines.get(concurrency).engine();
            // SAFETY: the file is an artifact this cache serialized itself, or one a cluster
            // peer made and whose sha256 was verified (see the module docs), and its checksum
            // was checked just above (or earlier, with the same stamp). An engine refuses an
            // artifact another engine made: it checks the engine section first.
            unsafe {
                match kind {
                    Kind::Component => Component::deserialize_file(engine, &path)
                        .map(Compiled::Component)
                        .map_err(anyhow::Error::from),
                    Kind::Cgi => Module::deserialize_file(engine, &path)
                        .map(Compiled::Module)
                        .map_err(anyhow::Error::from),
                    Kind::Source => anyhow::bail!("source is not compiled (its engine is)"),
                }
            }
        };
        deserialize(concurrency)
            .or_else(|first| {
                // Filed under the other engine's name: a cluster peer's artifact of a
                // component the scan misjudges, which the peer compiled on the concurrent
                // engine by the compile's fallback (`store_artifact` names it by the scan).
                deserialize(concurrency.other()).map_err(|_| first)
            })
            .map_err(|e| anyhow::anyhow!("is incompatible with this engine: {e}"))
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
