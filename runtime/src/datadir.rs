//! The data directory: everything thaw persists, and how it is written.
//!
//! ```text
//! <data-dir>/
//!   functions/<name>.json          one record per deployed function (the commit point)
//!   wasm/<sha256>.wasm              the uploaded bytes, content-addressed
//!   artifacts/<engines-key>/<sha256>.cwasm         compiled code, see the engine's artifact cache
//!   artifacts/<engines-key>/<sha256>.concurrent.cwasm   the same, by the concurrent engine
//!   artifacts/<engines-key>/<sha256>.cwasm.xxh3    checksum of the .cwasm, checked on load
//!   tmp/                            temp files; emptied at start-up
//!   keyvalue.redb                   functions' wasi:keyvalue state (embedded store)
//!   compile-cache.redb              Cranelift's incremental compilation cache
//!   lock                            held (flock) by the one host using the directory
//! ```
//!
//! # Owner only
//! Records hold a function's `env`, where users put API keys, so the directory and everything
//! in it are the owner's alone: directories are created 0700 and files 0600, including on
//! every atomic rewrite (the temp file is created 0600 and renamed). Records written by an
//! older thaw, which created them 0644, are tightened at start-up; an existing root that is
//! more open is not changed behind the operator's back (it may be a mount point with its
//! own rules), but warned about.
//!
//! # One host per directory
//! Two hosts on one directory would delete each other's temp files and race on records, so
//! [`DataDir::open`] takes an exclusive `flock` on `lock` (released by the kernel when the
//! process dies, so a `kill -9` leaves no stale lock) and refuses to open a directory another
//! process holds, naming its pid.
//!
//! Every file is written with [`write_atomic`]: a temp file in `tmp/` (same filesystem), fsync,
//! rename over the target, fsync of the directory. A reader (or a restart after `kill -9`)
//! sees the old file or the new one, never a torn one. A deploy writes the wasm first and the
//! function record last, so a crash in between leaves the previous record in charge.

use std::fs;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

/// The on-disk layout under one root.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    /// The open `lock` file; the `flock` lasts as long as any clone of this.
    _lock: Arc<fs::File>,
}

/// Creates `path` and its missing parents with mode 0700.
pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Makes the file at `path` readable and writable by its owner only.
pub fn make_private_file(path: &Path) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} owner-only", path.display()))
}

impl DataDir {
    /// Opens (creating if needed) a data directory, takes its lock, and clears temp files
    /// left by a crash. Fails if another process holds the lock.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        create_private_dir(&root)?;
        let mode = fs::metadata(&root)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the data directory {} is open to other users (mode {mode:o}) and holds function \
                 secrets; run `chmod 700 {}`",
                root.display(),
                root.display()
            );
        }
        let lock = lock(&root)?;
        let dir = Self {
            root,
            _lock: Arc::new(lock),
        };
        for sub in ["functions", "wasm", "artifacts", "tmp"] {
            let path = dir.root.join(sub);
            create_private_dir(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        }
        for entry in fs::read_dir(dir.functions_dir())? {
            let path = entry?.path();
            if path.is_file() {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("making {} owner-only", path.display()))?;
            }
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

    /// Directory of stored wasm.
    pub fn wasm_dir(&self) -> PathBuf {
        self.root.join("wasm")
    }

    /// The stored original wasm with this sha256.
    pub fn wasm(&self, digest: &str) -> PathBuf {
        self.root.join("wasm").join(format!("{digest}.wasm"))
    }

    /// Functions' key-value store (see `keyvalue::embedded`).
    pub fn keyvalue(&self) -> PathBuf {
        self.root.join("keyvalue.redb")
    }

    /// Functions' SQL databases, a directory per function (see `sql`).
    pub fn sql(&self) -> PathBuf {
        self.root.join("sql")
    }

    /// Asynchronous invocations and schedules' last ticks (see `events::store`).
    pub fn events(&self) -> PathBuf {
        self.root.join("events.redb")
    }

    /// Cranelift's incremental compilation cache (see `engine::compile_cache`).
    pub fn compile_cache(&self) -> PathBuf {
        self.root.join("compile-cache.redb")
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

/// Takes the directory's exclusive lock, or says who holds it.
fn lock(root: &Path) -> anyhow::Result<fs::File> {
    let path = root.join("lock");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            anyhow::bail!(
                "the data directory {} is in use by another thaw (pid {}); stop it, or give this \
                 one another --data-dir",
                root.display(),
                if holder.is_empty() { "unknown" } else { holder }
            );
        }
        return Err(error).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

/// Temp file in `tmp_dir` (created 0600), fsync, rename to `path`, fsync of `path`'s
/// directory.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = tmp_dir.join(format!(
        "{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> anyhow::Result<()> {
        let parent = path.parent().context("target has no parent directory")?;
        create_private_dir(parent)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
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

/// What a garbage collection removed (see `control::garbage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl std::ops::AddAssign for Collected {
    fn add_assign(&mut self, other: Self) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
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
    fn owner_only_and_one_host_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let data = DataDir::open(&root).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("functions")), 0o700);
        let record = data.function_record("f");
        data.write_atomic(&record, b"{}").unwrap();
        assert_eq!(mode(&record), 0o600);

        let second = DataDir::open(&root).unwrap_err().to_string();
        assert!(
            second.contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        drop(data);
        DataDir::open(&root).expect("the lock goes with the last handle");
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
