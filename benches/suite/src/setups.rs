//! The setups: how each one is started for a sample, and what "start" means for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::probe::{
    FirstByte, Group, ensure_port_free, first_byte, free_port, serve_command, wait_ready_line,
};
use thaw_client::AdminClient;
use thaw_runtime::http::auth::{TOKEN_FILE, read_token};
use thaw_spec::spec::FunctionSpec;

/// How long one sample may take before it counts as a failure (a JVM on a loaded machine
/// takes a fraction of this).
const SAMPLE_DEADLINE: Duration = Duration::from_secs(30);

/// Where the suite finds what it runs.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `thaw` binary (the one running the suite).
    pub thaw: PathBuf,
    /// The hello component, served by thaw and `wasmtime serve` alike.
    pub wasm: PathBuf,
    /// `target/baselines`, built by `scripts/setup-bench`.
    pub baselines: PathBuf,
    /// The `thaw new` templates' components (`js.wasm`, `python.wasm`, `go.wasm`).
    pub languages: PathBuf,
    /// The language engines of source functions (`target/engines`, scripts/build-engines).
    pub engines: PathBuf,
    /// The wasmtime CLI, if found.
    pub wasmtime: Option<PathBuf>,
    /// Scratch space for this run.
    pub scratch: PathBuf,
}

/// One sample: its time and, for thaw, the start kind its `Server-Timing` reported.
pub struct Sample {
    /// Start to first response byte.
    pub elapsed: Duration,
    /// `pool-hit`, `fresh`, `disk`, ... for thaw setups.
    pub start_kind: Option<String>,
}

impl From<FirstByte> for Sample {
    fn from(seen: FirstByte) -> Self {
        let start_kind = seen.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("server-timing") {
                return None;
            }
            let desc = value.split("desc=\"").nth(1)?;
            Some(desc.split('"').next()?.to_owned())
        });
        Self {
            elapsed: seen.elapsed,
            start_kind,
        }
    }
}

/// A `thaw serve` child on free ports, in its own process group.
pub struct ThawHost {
    group: Option<Group>,
    /// Function traffic.
    pub addr: SocketAddr,
    /// The admin API, with the host's token.
    pub admin: AdminClient,
    data_dir: PathBuf,
    args: Vec<String>,
    thaw: PathBuf,
}

impl ThawHost {
    /// The host process's id.
    pub fn pid(&self) -> Option<u32> {
        self.group.as_ref().map(Group::id)
    }

    /// The host process's resident set (VmRSS), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.pid().context("the host is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// The host's data directory (its admin token is there).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts a host on `data_dir` with extra `serve` flags.
    pub fn start(thaw: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (group, addr, admin) = Self::spawn(thaw, data_dir, &args)?;
        Ok(Self {
            group: Some(group),
            addr,
            admin,
            data_dir: data_dir.to_owned(),
            args,
            thaw: thaw.to_owned(),
        })
    }

    fn spawn(
        thaw: &Path,
        data_dir: &Path,
        args: &[String],
    ) -> anyhow::Result<(Group, SocketAddr, AdminClient)> {
        use std::os::unix::process::CommandExt as _;
        let mut command = serve_command(thaw, data_dir);
        command
            .args(args)
            .env("THAW_LOG", "warn")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().context("starting thaw serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let group = Group::adopt(child);
        let ready = wait_ready_line(stdout, Duration::from_secs(120))
            .context("thaw serve did not report its addresses")?;
        let token = read_token(&data_dir.join(TOKEN_FILE))?;
        let admin = AdminClient::new(&format!("http://{}", ready.admin), token);
        Ok((group, ready.functions, admin))
    }

    /// Kills the host (SIGKILL to its group) and starts it again on the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        drop(self.group.take());
        let (group, addr, admin) = Self::spawn(&self.thaw, &self.data_dir, &self.args)?;
        self.group = Some(group);
        self.addr = addr;
        self.admin = admin;
        Ok(())
    }

    /// Waits until the host's start-up scrub has checked every artifact (bounded at 60 s).
    pub async fn wait_for_scrub(&self) -> anyhow::Result<()> {
        for _ in 0..6000 {
            if self.admin.status().await?.artifacts_unchecked == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("the artifact scrub did not finish within 60 s")
    }

    /// Waits until `functions` functions have their code loaded (bounded at 120 s).
    pub async fn wait_for_loading(&self, functions: usize) -> anyhow::Result<()> {
        for _ in 0..12_000 {
            if self.admin.status().await?.functions_loaded >= functions {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("{functions} functions were not loaded within 120 s")
    }

    /// Waits until the host's current language engines are loaded, as they are a moment after
    /// any start-up (bounded at 120 s).
    pub async fn wait_for_engines(&self) -> anyhow::Result<()> {
        for _ in 0..12_000 {
            let engines = self.admin.engines().await?;
            if engines.iter().filter(|e| e.current).all(|e| e.loaded) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("the engines were not loaded within 120 s")
    }

    /// Sends `GET /name` about 50 times a second (a source function's tier-up needs 5) until
    /// function `name` serves its snapshot (bounded at 300 s: taking and compiling one is
    /// seconds of CPU).
    pub async fn wait_for_snapshot(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            self.get(&format!("/{name}"))?;
            if self.admin.get(name).await?.loaded_from.as_deref() == Some("snapshot") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("{name} did not tier up to its snapshot within 300 s")
    }

    /// A timed `GET path` on a fresh connection.
    pub fn get(&self, path: &str) -> anyhow::Result<Sample> {
        let start = Instant::now();
        Ok(first_byte(self.addr, path, start, start + SAMPLE_DEADLINE)?.into())
    }
}

/// `wasm` with a custom section holding `nonce`: the same code under a new digest, so a
/// deploy of it is new code to thaw (compiled, not found in the cache).
pub fn with_nonce(wasm: &[u8], nonce: &str) -> Vec<u8> {
    let name = b"thaw-bench-nonce";
    let mut payload = Vec::new();
    leb128(&mut payload, name.len() as u64);
    payload.extend_from_slice(name);
    payload.extend_from_slice(nonce.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section id, valid at the end of a module or a component
    leb128(&mut out, payload.len() as u64);
    out.extend_from_slice(&payload);
    out
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A spec at `/name`.
pub fn at(name: &str) -> FunctionSpec {
    FunctionSpec {
        route: Some(format!("/{name}")),
        ..Default::default()
    }
}

/// A program started per sample: the baselines and `wasmtime serve`.
#[derive(Debug, Clone)]
pub struct ProcessSetup {
    /// The command; `{port}` in an argument is replaced by the sample's port.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The path to request.
    pub path: &'static str,
    /// A container runtime to clean up after each sample (`crun`/`runc` and its id prefix).
    pub container: Option<Container>,
}

/// A container runtime's cleanup after a sample.
#[derive(Debug, Clone)]
pub struct Container {
    /// `crun` or `runc`.
    pub runtime: PathBuf,
    /// The container's id.
    pub id: String,
    /// The bundle's `config.json`, rewritten per sample with its port.
    pub config: PathBuf,
    /// The template it is written from.
    pub template: serde_json::Value,
}

impl ProcessSetup {
    /// One sample: the port free, the process started, time to its first response byte,
    /// the process group killed.
    pub fn sample(&self) -> anyhow::Result<Sample> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        ensure_port_free(addr)?;
        if let Some(c) = &self.container {
            let mut spec = c.template.clone();
            spec["process"]["env"] = serde_json::json!([format!("PORT={port}")]);
            std::fs::write(&c.config, serde_json::to_vec_pretty(&spec)?)?;
        }
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut command = Command::new(&self.program);
        command.args(&args).env("PORT", port.to_string());
        let start = Instant::now();
        let group = Group::spawn(&mut command)?;
        let seen = first_byte(addr, self.path, start, start + SAMPLE_DEADLINE);
        drop(group);
        if let Some(c) = &self.container {
            // The runtime is gone with its group; its container and state may not be.
            for args in [vec!["kill", &c.id, "KILL"], vec!["delete", "-f", &c.id]] {
                let _ = Command::new(&c.runtime)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        Ok(seen?.into())
    }
}

/// `name` on `$PATH`, or as given if it is a path.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The memory cgroup (v1) or unified cgroup (v2) this process is in, for nesting container
/// cgroups under it.
pub fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let line = text
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))?;
    Some(line.splitn(3, ':').nth(2)?.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_section_keeps_the_module_valid_and_changes_the_digest() {
        let wasm = wat::parse_str("(module)").unwrap();
        let a = with_nonce(&wasm, "1");
        let b = with_nonce(&wasm, "2");
        assert_ne!(a, b);
        wasmparser::Validator::new().validate_all(&a).unwrap();
        let long = with_nonce(&wasm, &"x".repeat(300));
        wasmparser::Validator::new().validate_all(&long).unwrap();
    }
}
