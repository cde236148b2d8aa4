//! The inner loop per language: from saving a `thaw new` template's source under `thaw dev` to
//! the first answer with the change, beside the language's own build of the same change.
//!
//! For each language whose toolchain is found (`cargo` with the `wasm32-wasip2` target; npm's
//! componentize-js and PyPI's componentize-py under `target/tools`, where scripts/test installs
//! them), the suite starts a host with the fast tier, creates the template, runs `thaw dev`
//! against it, and then, per sample, edits the greeting line and polls the function until the
//! edit answers. Two rows per language:
//! - `<language>: thaw dev, save → live`: the edit's write to the first answer with it;
//! - `<language>: the build alone (in thaw dev)`: the build command's time for the same
//!   change, as `thaw dev` reports it (`built in N ms`).
//!
//! The difference is thaw's part (settling, upload, fast-tier compile, the first request) plus
//! the poll's granularity ([`POLL`]). The issue's goal is that it stays under one second.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::setups::{Env, Sample, ThawHost};
use crate::{Results, progress};

/// How often the function is asked whether the edit is live.
const POLL: Duration = Duration::from_millis(10);
/// The longest a build and redeploy may take before the sample fails.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A language: its `thaw new` template, the file to edit and the greeting line's text in it.
struct Language {
    name: &'static str,
    template: &'static str,
    file: &'static str,
    line: &'static str,
    /// A program and argument that succeed when the toolchain is there.
    check: (&'static str, &'static str),
}

const LANGUAGES: [Language; 3] = [
    Language {
        name: "Rust",
        template: "rust",
        file: "src/lib.rs",
        line: r#"format!("{greeting}, {name}!")"#,
        check: ("cargo", "--version"),
    },
    Language {
        name: "JS",
        template: "js-component",
        file: "src/index.js",
        line: "`${greeting}, ${name}!`",
        check: ("componentize-js", "--help"),
    },
    Language {
        name: "Python",
        template: "python-component",
        file: "app.py",
        line: r#"f"{greeting}, {name}!""#,
        check: ("componentize-py", "--version"),
    },
];

/// The rows for every language, or why a language has none.
pub(crate) async fn dev_loop_setups(
    env: &Env,
    samples: usize,
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Results,
) {
    for language in &LANGUAGES {
        let live = format!("{}: thaw dev, save → live", language.name);
        let build = format!("{}: the build alone (in thaw dev)", language.name);
        if !wanted(&live) && !wanted(&build) {
            continue;
        }
        let bar = progress(&live, samples);
        let measured = measure(env, language, samples, &bar).await;
        bar.finish_and_clear();
        match measured {
            Ok((lives, builds)) => {
                results.record(&live, "the save of the edited source", Ok(lives));
                results.record(&build, "the build command, started by thaw dev", Ok(builds));
            }
            Err(e) => {
                let reason = format!("{e:#}");
                results.record(&live, "", Err(anyhow::anyhow!("{reason}")));
                results.record(&build, "", Err(anyhow::anyhow!("{reason}")));
            }
        }
    }
}

/// `PATH` with the toolchains scripts/test installs under `target/tools` first.
fn tool_path(env: &Env) -> String {
    let tools = env.baselines.with_file_name("tools");
    let mut dirs: Vec<String> = [tools.join("npm/node_modules/.bin"), tools.join("cpy/bin")]
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    dirs.push(std::env::var("PATH").unwrap_or_default());
    dirs.join(":")
}

/// `thaw dev` running; killed when dropped.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn measure(
    env: &Env,
    language: &Language,
    samples: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    let path = tool_path(env);
    let tools = env.baselines.with_file_name("tools");
    let command = |program: &Path| {
        let mut c = Command::new(program);
        c.env("PATH", &path)
            .env("PYTHONPATH", tools.join("cpy"))
            .env_remove("CARGO_TARGET_DIR");
        c
    };
    let (program, arg) = language.check;
    let found = command(Path::new(program))
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(
        found,
        "{program} not found (scripts/test installs the toolchains)"
    );

    let dir = env.scratch.join(format!("dev-{}", language.template));
    std::fs::create_dir_all(&dir)?;
    let name = format!("devloop-{}", language.template);
    let created = command(&env.thaw)
        .args(["new", language.template, &name])
        .current_dir(&dir)
        .output()?;
    anyhow::ensure!(created.status.success(), "thaw new failed: {created:?}");
    let project = dir.join(&name);
    if language.template == "js-component" {
        std::os::unix::fs::symlink(tools.join("npm/node_modules"), project.join("node_modules"))?;
    }
    let host = ThawHost::start(&env.thaw, &dir.join("host"), &["--fast-deploy"])?;
    let log_path = dir.join("dev.log");
    let log = std::fs::File::create(&log_path)?;
    let _dev = Dev(command(&env.thaw)
        .args(["dev", "--admin", host.admin.base()])
        .arg("--data-dir")
        .arg(host.data_dir())
        .current_dir(&project)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting thaw dev")?);
    let route = format!("/{name}?name=dev");
    wait_for(host.addr, &route, "Hi, dev!", &log_path)?;

    let source = project.join(language.file);
    let original = std::fs::read_to_string(&source)?;
    anyhow::ensure!(
        original.contains(language.line),
        "the template's greeting line moved: {} has no {}",
        language.file,
        language.line
    );
    let mut lives = Vec::with_capacity(samples);
    let mut builds = Vec::with_capacity(samples);
    for i in 0..samples {
        let marker = format!("v{i}");
        // After the greeting's `!` (the line's last: Rust's `format!` has one before it).
        let at = language.line.rfind('!').expect("the greeting ends with !") + 1;
        let edited = format!("{} {marker}{}", &language.line[..at], &language.line[at..]);
        let builds_before = built_times(&log_path).len();
        let started = Instant::now();
        std::fs::write(&source, original.replace(language.line, &edited))?;
        wait_for(host.addr, &route, &format!("Hi, dev! {marker}"), &log_path)?;
        lives.push(Sample {
            elapsed: started.elapsed(),
            start_kind: None,
        });
        // thaw dev prints `built in N ms` when the deploy that made the edit live has
        // returned, which can be after the host answered with the edit: wait for the line.
        let deadline = Instant::now() + SAMPLE_TIMEOUT;
        let built = loop {
            let times = built_times(&log_path);
            if let Some(&built) = times.get(builds_before..).and_then(|t| t.last()) {
                break built;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "thaw dev reported no build for the edit within {SAMPLE_TIMEOUT:?}"
            );
            std::thread::sleep(POLL);
        };
        builds.push(Sample {
            elapsed: built,
            start_kind: None,
        });
        bar.inc(1);
    }
    Ok((lives, builds))
}

/// Every `built in N ms` thaw dev has printed.
fn built_times(log: &Path) -> Vec<Duration> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let ms = l.split("built in ").nth(1)?.split(' ').next()?;
            Some(Duration::from_millis(ms.parse().ok()?))
        })
        .collect()
}

/// Polls `route` until its body contains `text`.
fn wait_for(addr: SocketAddr, route: &str, text: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + SAMPLE_TIMEOUT;
    loop {
        if body(addr, route).is_ok_and(|b| b.contains(text)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            // thaw dev's own lines and the build's, not the function's log lines.
            let tail: Vec<String> = std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with("devloop-"))
                .rev()
                .take(20)
                .map(str::to_owned)
                .collect();
            anyhow::bail!(
                "{text:?} was not live after {SAMPLE_TIMEOUT:?}; thaw dev said:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(POLL);
    }
}

/// A GET's whole response (head and body) as text, on a fresh connection.
fn body(addr: SocketAddr, route: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {route} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
