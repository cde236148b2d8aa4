//! `thaw deploy`: upload a wasm file, or every function of a manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::commands::Target;
use crate::registry::OciRef;
use thaw_runtime::config::{ConfigValue, SecretRef};
use thaw_runtime::manifest::Manifest;
use thaw_runtime::source::{Bundle, Language};
use thaw_runtime::spec::{DirGrant, FunctionSpec, LimitsSpec};

/// `thaw deploy` flags.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// A .wasm file (a wasi:http component or a WASI preview1 command), a thaw.toml manifest,
    /// source (a .js, .mjs or .py file alone, or a directory whose index.js, handler.js,
    /// app.py or main.py imports the .js or .py files under it), or a component in an OCI
    /// registry: oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:DIGEST. Without it, --assets
    /// deploys a function of static files only
    #[arg(required_unless_present = "assets")]
    pub path: Option<PathBuf>,
    /// Function name [default: the wasm file's stem, or the repository's last segment];
    /// not used with a manifest
    #[arg(long)]
    pub name: Option<String>,
    /// Route prefix the function serves [default: /NAME]
    #[arg(long)]
    pub route: Option<String>,
    /// Environment variable for the function, KEY=VALUE; repeatable
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// A wasi:config value, KEY=VALUE; repeatable
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub config: Vec<(String, String)>,
    /// A wasi:config value the host resolves, KEY=env:NAME (the host's THAW_SECRET_NAME) or
    /// KEY=file:NAME (a file in the host's --secrets-dir); never stored in the spec; repeatable
    #[arg(long = "secret", value_name = "KEY=PROVIDER:NAME", value_parser = parse_secret)]
    pub secrets: Vec<(String, SecretRef)>,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub limits: LimitsSpec,
    /// Let one instance serve up to N requests, keeping its memory between them (trusted
    /// functions only) [default: off, one instance per request]
    #[arg(long, value_name = "N")]
    pub reuse_max_requests: Option<u32>,
    /// With --reuse-max-requests: requests one WASIp3 instance serves at the same time
    /// (a WASIp2 instance serves one at a time)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        requires = "reuse_max_requests"
    )]
    pub reuse_max_concurrent: u32,
    /// Allow outbound HTTP to hosts matching `scheme://host[:port]` (wildcards: `*`, `*.domain`,
    /// port `*`); repeatable [default: no outbound traffic]
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub allow_outbound: Vec<String>,
    /// Grant a host directory, HOST_DIR:GUEST_DIR, read-only (append `:rw` for read-write);
    /// repeatable [default: no filesystem]
    #[arg(long = "dir", value_name = "HOST:GUEST[:rw]", value_parser = parse_dir)]
    pub dirs: Vec<DirGrant>,
    /// A SQL database the function may open besides `default` (always its own); repeatable
    #[arg(long = "sqlite-database", value_name = "NAME")]
    pub sqlite_databases: Vec<String>,
    /// A directory of static files the host serves under the function's route without
    /// starting it (HTML, CSS, images; `x.br`/`x.gz` beside `x` are its compressed forms),
    /// uploaded with the deploy
    #[arg(long, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// With --assets: a single-page app, a navigation to a path that is no file gets
    /// index.html
    #[arg(long, requires = "assets")]
    pub spa: bool,
    /// With --assets: the function answers first, and assets answer only its 404s to GET and
    /// HEAD
    #[arg(long, requires = "assets")]
    pub run_function_first: bool,
    /// A Postgres database the function opens by NAME, its URL in a host secret (env:NAME for
    /// the host's THAW_SECRET_NAME, or file:NAME in its --secrets-dir); repeatable
    #[arg(long = "postgres-database", value_name = "NAME=PROVIDER:NAME", value_parser = parse_secret)]
    pub postgres_databases: Vec<(String, SecretRef)>,
    /// Run the function on a schedule: a cron expression (5 fields, or 6 with seconds
    /// first), in UTC; repeatable. A time zone or catch-up needs a manifest's table
    #[arg(long = "schedule", value_name = "CRON", value_parser = thaw_runtime::event_spec::parse_schedule_flag)]
    pub schedules: Vec<thaw_runtime::event_spec::ScheduleSpec>,
    /// Attempts of an asynchronous invocation (Prefer: respond-async) before it is
    /// dead-lettered [default: 3]
    #[arg(long, value_name = "N")]
    pub async_max_attempts: Option<u32>,
    /// Delay before an asynchronous invocation's first retry, doubled for each later one
    /// [default: 1000]
    #[arg(long, value_name = "MS")]
    pub async_backoff_ms: Option<u64>,
    /// Age after which an asynchronous invocation is dead-lettered [default: 21600]
    #[arg(long, value_name = "SECONDS")]
    pub async_max_age_s: Option<u64>,
    /// Most asynchronous invocations queued at once; past it, 429 [default: 10000]
    #[arg(long, value_name = "N")]
    pub async_max_queued: Option<u32>,
    /// Do not pre-initialise the function even if it exports an init function
    #[arg(long)]
    pub no_snapshot: bool,
    /// Deploy the new version as a canary taking PERCENT of the traffic beside the versions
    /// serving now (0: reachable only with the request header x-thaw-version); `thaw promote`
    /// or `thaw rollback` ends it [default: the new version takes all traffic]
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub canary: Option<u8>,
    /// With --canary: keep the versions reachable only by pinning (0%) in the new split; by
    /// default the canary replaces them
    #[arg(long, requires = "canary")]
    pub keep_pinned: bool,
    /// In a cluster: answer once N nodes can serve the new version (its code fetched and
    /// loaded), or fail after the host's wait (60 s)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub wait: Option<u64>,
    /// With a manifest: run its build commands first
    #[arg(long)]
    pub build: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub registry: crate::registry::RegistryArgs,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

fn parse_dir(s: &str) -> Result<DirGrant, String> {
    let (rest, writable) = match s.strip_suffix(":rw") {
        Some(rest) => (rest, true),
        None => (s.strip_suffix(":ro").unwrap_or(s), false),
    };
    let (host, guest) = rest
        .split_once(':')
        .ok_or_else(|| format!("expected HOST_DIR:GUEST_DIR[:rw], got {s:?}"))?;
    let host = std::fs::canonicalize(host).map_err(|e| format!("{host}: {e}"))?;
    Ok(DirGrant {
        host,
        guest: guest.to_owned(),
        writable,
    })
}

fn parse_secret(s: &str) -> Result<(String, SecretRef), String> {
    let (key, secret) = parse_env(s)?;
    Ok((key, secret.parse()?))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Deploys and prints what the host answered.
pub async fn execute(args: DeployArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    if let Some(path) = &args.path
        && path.extension().is_some_and(|e| e == "toml")
    {
        let manifest = Manifest::load(path)?;
        for note in &manifest.notes {
            eprintln!("thaw: {}: {note}", path.display());
        }
        if args.build {
            manifest.build()?;
        }
        for function in &manifest.functions {
            let (wasm, assets) = manifest_upload(&manifest, function)?;
            let deployed = client
                .deploy_with_assets(
                    &function.name,
                    &function.spec(),
                    wasm.map(Into::into),
                    assets.map(Into::into),
                    params(&args),
                )
                .await
                .with_context(|| format!("deploying {}", function.name))?;
            print_deployed(&deployed);
        }
        return Ok(());
    }
    if let Some(path) = args.path.as_deref().and_then(Path::to_str)
        && path.starts_with("oci:")
        && !path.starts_with("oci://")
    {
        anyhow::bail!("{path:?}: an OCI reference is written oci://HOST/REPO:TAG");
    }
    let pulled = match args
        .path
        .as_deref()
        .and_then(Path::to_str)
        .and_then(OciRef::parse)
    {
        Some(reference) => {
            let reference = reference?;
            let pulled = crate::registry::pull(&reference, &args.registry).await?;
            eprintln!(
                "thaw: pulled {} ({} bytes)",
                pulled.pinned,
                pulled.wasm.len()
            );
            Some((reference, pulled))
        }
        None => None,
    };
    // Named after the repository, the directory, the file, or (static files only) the
    // asset directory.
    let name = match (&args.name, &pulled, &args.path, &args.assets) {
        (Some(name), ..) => name.clone(),
        (None, Some((reference, _)), ..) => reference.default_name(),
        (None, None, Some(path), _) if !path.is_dir() => path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('.', "-").to_lowercase())
            .context("cannot derive a name from the file; pass --name")?,
        (None, None, Some(dir), _) | (None, None, None, Some(dir)) => std::fs::canonicalize(dir)?
            .file_name()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('.', "-").to_lowercase())
            .context("cannot derive a name from the directory; pass --name")?,
        (None, None, None, None) => unreachable!("clap requires a path or --assets"),
    };
    let spec = FunctionSpec {
        route: args.route.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        limits: args.limits.clone(),
        snapshot: args.no_snapshot.then_some(false),
        allowed_outbound_hosts: args.allow_outbound.clone(),
        sqlite_databases: args.sqlite_databases.clone(),
        postgres_databases: args
            .postgres_databases
            .iter()
            .map(|(name, secret)| {
                let secret = secret.clone();
                (
                    name.clone(),
                    thaw_runtime::spec::PostgresDatabase { secret },
                )
            })
            .collect(),
        dirs: args.dirs.clone(),
        config: args
            .config
            .iter()
            .map(|(k, v)| (k.clone(), ConfigValue::Value(v.clone())))
            .chain(args.secrets.iter().map(|(k, secret)| {
                (
                    k.clone(),
                    ConfigValue::Secret {
                        secret: secret.clone(),
                    },
                )
            }))
            .collect(),
        reuse: args
            .reuse_max_requests
            .map(|max_requests| thaw_runtime::spec::ReuseSpec {
                max_requests,
                idle_timeout_ms: 60_000,
                max_concurrent: args.reuse_max_concurrent,
            }),
        schedule: args.schedules.clone(),
        async_policy: async_policy(&args),
        trigger: None,
        assets: args
            .assets
            .as_ref()
            .map(|_| thaw_runtime::asset_spec::AssetsSpec {
                spa: args.spa,
                run_function_first: args.run_function_first,
                digest: None,
            }),
        origin: pulled.as_ref().map(|(_, p)| p.pinned.clone()),
    };
    let wasm = match (pulled, &args.path) {
        (Some((_, pulled)), _) => Some(pulled.wasm),
        (None, Some(path)) => Some(read_code(path)?),
        (None, None) => None,
    };
    let assets = args.assets.as_deref().map(pack_assets).transpose()?;
    let deployed = client
        .deploy_with_assets(
            &name,
            &spec,
            wasm.map(Into::into),
            assets.map(Into::into),
            params(&args),
        )
        .await
        .with_context(|| format!("deploying {name}"))?;
    print_deployed(&deployed);
    Ok(())
}

/// What a deploy of a manifest's function uploads: its code (`None` for static assets
/// only), then its packed assets.
pub type Upload = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A manifest function's [`Upload`].
pub fn manifest_upload(
    manifest: &Manifest,
    function: &thaw_runtime::manifest::ManifestFunction,
) -> anyhow::Result<Upload> {
    let wasm = manifest
        .code_path(function)
        .map(|path| read_code(&path))
        .transpose()?;
    let assets = function
        .assets
        .as_ref()
        .map(|a| pack_assets(&manifest.base.join(&a.dir)))
        .transpose()?;
    Ok((wasm, assets))
}

/// What a deploy of `path` uploads: a wasm file's bytes, or the source bundle of a .js, .mjs
/// or .py file or of a directory (see [`source_bundle`]).
pub fn read_code(path: &Path) -> anyhow::Result<Vec<u8>> {
    match source_bundle(path)? {
        Some(bundle) => {
            // The host's limits, checked before the upload rather than after it.
            anyhow::ensure!(
                bundle.files.len() <= thaw_runtime::source::MAX_FILES,
                "{} holds {} source files, over the limit of {}",
                path.display(),
                bundle.files.len(),
                thaw_runtime::source::MAX_FILES
            );
            let bytes = bundle.to_bytes();
            anyhow::ensure!(
                bytes.len() <= thaw_runtime::source::MAX_BUNDLE_BYTES,
                "the source under {} makes a bundle of {} bytes, over the limit of {}",
                path.display(),
                bytes.len(),
                thaw_runtime::source::MAX_BUNDLE_BYTES
            );
            Ok(bytes)
        }
        None => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
    }
}

/// Entry modules looked for in a directory deployed as source, in this order.
const ENTRIES: [&str; 5] = ["index.js", "index.mjs", "handler.js", "app.py", "main.py"];

/// Directories never bundled: dependencies, caches, version control, build output.
const SKIPPED_DIRS: [&str; 5] = ["node_modules", "__pycache__", "target", ".git", "wit"];

/// The source bundle `path` names, or `None` if it is not source (a .wasm file): a .js, .mjs
/// or .py file alone, or a directory holding one of [`ENTRIES`] with every file of the
/// entry's language under it, so that relative imports resolve as they would on disk.
fn source_bundle(path: &Path) -> anyhow::Result<Option<Bundle>> {
    let (root, entry) = if path.is_dir() {
        let entry = ENTRIES
            .iter()
            // Not following symlinks, as the walk below does not: an entry that is a link
            // would be chosen and then left out.
            .find(|e| std::fs::symlink_metadata(path.join(e)).is_ok_and(|m| m.is_file()))
            .with_context(|| {
                format!(
                    "{} holds none of {} to deploy as source",
                    path.display(),
                    ENTRIES.join(", ")
                )
            })?;
        (path.to_owned(), (*entry).to_owned())
    } else {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(None);
        };
        if Language::of_path(name).is_none() {
            return Ok(None);
        }
        // One file is the whole function; a function of several modules is a directory.
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (source must be UTF-8)", path.display()))?;
        return Ok(Some(Bundle {
            language: Language::of_path(name).expect("checked above"),
            entry: name.to_owned(),
            files: vec![(name.to_owned(), text)],
        }));
    };
    let language = Language::of_path(&entry).expect("an entry has a language");
    let mut files = Vec::new();
    let mut total = 0;
    let mut dirs = vec![(root.clone(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let mut entries = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let relative = format!("{prefix}{name}");
            let kind = e.file_type()?;
            if kind.is_dir() {
                if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                    dirs.push((e.path(), format!("{relative}/")));
                }
            } else if kind.is_file() && Language::of_path(&name) == Some(language) {
                let text = std::fs::read_to_string(e.path()).with_context(|| {
                    format!("reading {} (source must be UTF-8)", e.path().display())
                })?;
                total += text.len();
                anyhow::ensure!(
                    total <= thaw_runtime::source::MAX_BUNDLE_BYTES,
                    "the source under {} is over {} bytes; deploy a smaller directory",
                    root.display(),
                    thaw_runtime::source::MAX_BUNDLE_BYTES
                );
                files.push((relative, text));
            }
        }
    }
    Ok(Some(Bundle {
        language,
        entry,
        files,
    }))
}

fn print_deployed(f: &thaw_runtime::api::FunctionInfo) {
    println!(
        "deployed {} ({}) at {}, traffic {}",
        f.name,
        kind_of(f),
        f.route,
        f.traffic,
    );
}

/// A function's kind as people read it: `assets` for static files only.
pub fn kind_of(f: &thaw_runtime::api::FunctionInfo) -> String {
    if f.digest == thaw_runtime::asset_spec::ASSETS_ONLY_DIGEST {
        "assets".to_owned()
    } else {
        f.kind.to_string()
    }
}

/// The `async` table the flags give, if any flag is given.
fn async_policy(args: &DeployArgs) -> Option<thaw_runtime::event_spec::AsyncSpec> {
    let policy = thaw_runtime::event_spec::AsyncSpec {
        max_attempts: args.async_max_attempts,
        max_age_s: args.async_max_age_s,
        backoff_ms: args.async_backoff_ms,
        max_queued: args.async_max_queued,
    };
    (policy != Default::default()).then_some(policy)
}

/// `dir` packed as an assets bundle: a tar archive of its regular files, in path order, with
/// their modification times. A symbolic link, or anything else that is not a file or a
/// directory, is refused naming it (a link could reach outside the directory); the host
/// checks the archive again and bounds its size.
pub fn pack_assets(dir: &Path) -> anyhow::Result<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading the assets directory {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                out.push(path);
            } else {
                anyhow::bail!(
                    "assets: {} is not a regular file (a symbolic link could reach outside {}; copy the file in)",
                    path.display(),
                    root.display()
                );
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut archive = tar::Builder::new(Vec::new());
    for path in files {
        let name = path.strip_prefix(dir).expect("walked from dir");
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("assets: reading {}", path.display()))?;
        archive
            .append_file(name, &mut file)
            .with_context(|| format!("assets: packing {}", path.display()))?;
    }
    Ok(archive.into_inner()?)
}

/// The deploy's traffic options, as the client sends them.
fn params(args: &DeployArgs) -> thaw_client::DeployParams {
    thaw_client::DeployParams {
        canary: args.canary,
        keep_pinned: args.keep_pinned,
        wait: args.wait.map(|n| n as usize),
    }
}
