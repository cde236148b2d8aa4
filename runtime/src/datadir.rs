//! The data directory: everything thaw persists, and how it is written.
//!
//! ```text
//! <data-dir>/
//!   functions/<name>.json          one record per deployed function (the commit point)
//!   wasm/<sha256>.wasm              the uploaded bytes, content-addressed
//!   artifacts/<engine-key>/<sha256>.cwasm         compiled code, see crate::artifact
//!   artifacts/<engine-key>/<sha256>.cwasm.xxh3    checksum of the .cwasm, checked on load
//!   tmp/                            temp files; emptied at start-up
//! ```
//!
//! Every file is written with [`write_atomic`]: a temp file in `tmp/` (same filesystem), fsync,
//! rename over the target, fsync of the directory. A reader (or a restart after `kill -9`)
//! sees the old file or the new one, never a torn one. A deploy writes the wasm first and the
//! function record last, so a crash in between leaves the previous record in charge.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

/// The on-disk layout under one root.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) a data directory and clears temp files left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = Self { root: root.into() };
        for sub in ["functions", "wasm", "artifacts", "tmp"] {
            let path = dir.root.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        for entry in fs::read_dir(dir.tmp())? {
            let path = entry?.path();
            tracing::info!(path = %path.display(), "removing temp file from an interrupted write");
            let _ = fs::remove_file(&path);
        }
        Ok(dir)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The record of function `name`.
    pub fn function_record(&self, name: &str) -> PathBuf {
        self.root.join("functions").join(format!("{name}.json"))
    }

    /// Directory of function records.
    pub fn functions_dir(&self) -> PathBuf {
        self.root.join("functions")
    }

    /// The stored original wasm with this sha256.
    pub fn wasm(&self, digest: &str) -> PathBuf {
        self.root.join("wasm").join(format!("{digest}.wasm"))
    }

    /// The directory of artifacts for one engine configuration.
    pub fn artifacts(&self, engine_key: &str) -> PathBuf {
        self.root.join("artifacts").join(engine_key)
    }

    /// Writes `bytes` to `path` atomically (see the module docs).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.tmp(), path, bytes)
    }
}

/// Temp file in `tmp_dir`, fsync, rename to `path`, fsync of `path`'s directory.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = tmp_dir.join(format!(
        "{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> anyhow::Result<()> {
        let parent = path.parent().context("target has no parent directory")?;
        fs::create_dir_all(parent)?;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(parent)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Removes `path` and syncs its directory; a missing file is not an error.
pub fn remove_durable(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let target = data.function_record("f");
        data.write_atomic(&target, b"one").unwrap();
        data.write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        DataDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/123.0.tmp"), b"torn").unwrap();
        DataDir::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
