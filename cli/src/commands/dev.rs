//! `thaw dev`: the inner loop. Build and deploy a manifest's functions, then watch their
//! sources: on a change, rebuild and redeploy, while the functions' logs stream into the
//! terminal.
//!
//! # The host
//! If a host answers at `--admin`, `thaw dev` deploys to it. Otherwise it starts one of its
//! own (`thaw serve --fast-deploy`, data under `.thaw/dev` beside the manifest) and stops it
//! on exit; the fast tier makes a redeploy a matter of milliseconds after the build.
//!
//! # A failed build
//! The build's own output (the compiler's message) goes to the terminal as it is written, and
//! nothing is deployed: the last good version keeps serving until the next change builds.
//!
//! # Watching
//! Changes are seen through the `notify` crate (inotify here, FSEvents on macOS) on the
//! manifest's directory, recursively, ignoring build outputs and tools' directories
//! (`target`, `node_modules`, `.git`, `.thaw`, `__pycache__`, lock files, `*.wasm`). Changes that arrive
//! together (an editor's save is several events) make one rebuild: the watcher waits for
//! [`SETTLE`] of quiet first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use notify::Watcher as _;
use thaw_runtime::manifest::Manifest;

use crate::commands::Target;

/// How long the sources must be quiet before a rebuild starts.
const SETTLE: Duration = Duration::from_millis(150);
/// How long a host `thaw dev` starts may take to answer.
const HOST_START: Duration = Duration::from_secs(30);
/// Directories and files whose changes never start a rebuild: build outputs, tools' state,
/// and the lock files a build itself may write (or every build would start the next).
const IGNORED: &[&str] = &[
    "target",
    "node_modules",
    ".git",
    ".thaw",
    "__pycache__",
    "Cargo.lock",
    "package-lock.json",
];

/// `thaw dev` flags.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// The manifest
    #[arg(default_value = "thaw.toml")]
    pub manifest: PathBuf,
    /// Where the host `thaw dev` starts (when none answers at --admin) serves functions
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Language engines for the host `thaw dev` starts, so that source functions (JS,
    /// Python) run on it [default: for a thaw built in a checkout (target/release/thaw), the
    /// target/engines that scripts/build-engines writes, if built and no THAW_CONFIG is set]
    #[arg(long, env = "THAW_ENGINES", value_name = "DIR")]
    pub engines: Option<PathBuf>,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// A host `thaw dev` started; stopped when dropped.
struct OwnHost(std::process::Child);

impl Drop for OwnHost {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the loop until interrupted.
pub async fn execute(args: DevArgs) -> anyhow::Result<()> {
    let manifest_path = std::path::absolute(&args.manifest)
        .with_context(|| format!("finding {}", args.manifest.display()))?;
    let root = manifest_path
        .parent()
        .context("the manifest has no directory")?
        .to_path_buf();
    // One listener for the whole run: a Ctrl-C during a build is seen when the build ends.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")?;
    let mut target = args.target.clone();
    let _own = match target.client()?.status().await {
        Ok(_) => {
            eprintln!("thaw dev: deploying to the host at {}", target.admin);
            None
        }
        // Nothing listens there: start a host. Anything else (a wrong token) is the user's.
        Err(thaw_client::Error::Unreachable { .. }) => {
            Some(start_host(&args, &root, &mut target).await?)
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("the host at {}", target.admin)));
        }
    };
    let client = target.client()?;

    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watched_root = root.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.kind.is_modify() | event.kind.is_create() | event.kind.is_remove()
            && event
                .paths
                .iter()
                .any(|p| p.strip_prefix(&watched_root).is_ok_and(watched))
        {
            let _ = changes_tx.send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&root, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", root.display()))?;

    let mut following = std::collections::HashSet::new();
    loop {
        if let Some(names) = build_and_deploy(&manifest_path, &client).await {
            for name in names {
                if following.insert(name.clone()) {
                    tokio::spawn(follow_logs(client.clone(), name));
                }
            }
        }
        eprintln!("thaw dev: watching {} (Ctrl-C stops)", root.display());
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            change = changes.recv() => if change.is_none() { return Ok(()) },
        }
        // Let a burst of events (one save) settle into one rebuild.
        loop {
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = tokio::time::sleep(SETTLE) => break,
                _ = changes.recv() => {}
            }
        }
    }
}

/// Whether a change to `path` (relative to the project) should start a rebuild.
fn watched(path: &Path) -> bool {
    let ignored_dir = path.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|name| IGNORED.contains(&name))
    });
    !ignored_dir && path.extension().is_none_or(|e| e != "wasm")
}

/// Builds, then deploys every function; the names deployed, or `None` when the build or a
/// deploy failed (the message is printed; what serves is unchanged).
async fn build_and_deploy(
    manifest_path: &Path,
    client: &thaw_client::AdminClient,
) -> Option<Vec<String>> {
    let started = std::time::Instant::now();
    // Read again each time: a change may be to the manifest itself.
    let manifest = match Manifest::load(manifest_path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("thaw dev: {e:#}");
            return None;
        }
    };
    let build = {
        let manifest = manifest.clone();
        tokio::task::spawn_blocking(move || manifest.build()).await
    };
    match build {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("thaw dev: {e:#}; the last good version keeps serving");
            return None;
        }
        Err(e) => {
            eprintln!("thaw dev: the build did not finish: {e}");
            return None;
        }
    }
    let built = started.elapsed();
    let mut names = Vec::new();
    for function in &manifest.functions {
        let (wasm, assets) = match crate::commands::deploy::manifest_upload(&manifest, function) {
            Ok(upload) => upload,
            Err(e) => {
                eprintln!("thaw dev: {e:#}");
                return None;
            }
        };
        match client
            .deploy_with_assets(
                &function.name,
                &function.spec(),
                wasm.map(Into::into),
                assets.map(Into::into),
                Default::default(),
            )
            .await
        {
            Ok(f) => eprintln!(
                "thaw dev: {} v{} live at {} (built in {} ms, live in {} ms)",
                f.name,
                f.generation,
                f.route,
                built.as_millis(),
                started.elapsed().as_millis()
            ),
            Err(e) => {
                eprintln!("thaw dev: deploying {}: {e:#}", function.name);
                return None;
            }
        }
        names.push(function.name.clone());
    }
    Some(names)
}

/// Prints the function's new log lines as they are written, for as long as `thaw dev` runs.
async fn follow_logs(client: thaw_client::AdminClient, name: String) {
    let Ok((mut last, _)) = client.logs(&name, 0, 0, Some(0), false, |_| {}).await else {
        return;
    };
    let print = |entry: thaw_spec::api::LogEntry| {
        println!(
            "{name}: {}",
            crate::commands::logs::format_line(&entry, false)
        );
    };
    loop {
        match client.logs(&name, last, 0, None, true, print).await {
            Ok((seq, _)) => last = seq,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Starts `thaw serve --fast-deploy` with its data beside the manifest and waits until it
/// answers; points `target` at it.
async fn start_host(args: &DevArgs, root: &Path, target: &mut Target) -> anyhow::Result<OwnHost> {
    let data = root.join(".thaw/dev");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let admin = target
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let exe = std::env::current_exe().context("finding the thaw binary")?;
    // Its own process group: a Ctrl-C at the terminal reaches `thaw dev`, which stops the
    // host when it exits, not the host first.
    let mut command = std::process::Command::new(&exe);
    command
        .process_group(0)
        .args(["serve", "--fast-deploy", "--listen", &args.listen])
        .args(["--admin-listen", &admin])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null());
    // Unlike `thaw serve`, which an operator configures, `thaw dev` is an author's loop: it
    // finds the engines a checkout built, so `thaw new js` then `thaw dev` just works. A
    // config file the host reads (THAW_CONFIG, inherited) keeps its say: no default then.
    let engines = args.engines.clone().or_else(|| {
        std::env::var_os("THAW_CONFIG")
            .is_none()
            .then(|| engines_in_checkout(&exe))
            .flatten()
    });
    if let Some(engines) = engines {
        command.arg("--engines").arg(engines);
    }
    // Stop the host if `thaw dev` dies without cleaning up (killed, its terminal closed).
    // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command.spawn().context("starting thaw serve")?;
    let mut host = OwnHost(child);
    target.data_dir = Some(data);
    target.admin_token = None;
    let deadline = tokio::time::Instant::now() + HOST_START;
    loop {
        if let Some(status) = host.0.try_wait()? {
            anyhow::bail!(
                "the host thaw dev started exited ({status}): is {} or {admin} taken?",
                args.listen
            );
        }
        if let Ok(client) = target.client()
            && client.status().await.is_ok()
        {
            eprintln!(
                "thaw dev: started a host: functions on http://{}, admin on http://{admin}",
                args.listen
            );
            return Ok(host);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the host thaw dev started did not answer within {HOST_START:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `<target>/engines` for a binary built by cargo at `<target>/<debug|release>/thaw` (the
/// profile directory holds cargo's `.cargo-lock`), if scripts/build-engines built an engine
/// there; `None` for an installed binary.
fn engines_in_checkout(exe: &Path) -> Option<PathBuf> {
    let profile = exe.parent()?;
    let target = profile.parent()?;
    let built = matches!(profile.file_name()?.to_str()?, "debug" | "release")
        && profile.join(".cargo-lock").is_file();
    let dir = target.join("engines");
    (built
        && ["js.wasm", "python.wasm"]
            .iter()
            .any(|engine| dir.join(engine).is_file()))
    .then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outputs_and_tool_directories_are_not_watched() {
        assert!(watched(Path::new("src/lib.rs")));
        assert!(watched(Path::new("thaw.toml")));
        assert!(!watched(Path::new("target/debug/x.rs")));
        assert!(!watched(Path::new("node_modules/a/index.js")));
        assert!(!watched(Path::new("hello.wasm")));
        assert!(!watched(Path::new(".thaw/dev/functions.json")));
    }
}
