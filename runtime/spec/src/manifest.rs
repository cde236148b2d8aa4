//! `thaw.toml`: a list of functions to deploy together.
//!
//! ```toml
//! [[function]]
//! name = "hello"
//! wasm = "target/wasm32-wasip2/release/hello.wasm"  # relative to this file
//! # or, for a function deployed as source: source = "index.js" (a .js/.mjs/.py file or a
//! # directory holding index.js or app.py), run by the host's language engine
//! build = "cargo build --release --target wasm32-wasip2"  # optional, run by `thaw build`
//! route = "/hello"                                  # optional, default /<name>
//! env = { GREETING = "hi" }                         # optional
//! limits = { timeout_ms = 2000, memory_mib = 64 }   # optional, see FunctionSpec
//! reuse = { max_requests = 100 }                    # optional, see thaw-runtime's pool
//! allowed_outbound_hosts = ["https://api.example.com"]  # optional, see crate::outbound
//! dirs = [{ host = "/srv/static", guest = "/static" }]  # optional, read-only unless writable
//! assets = { dir = "public", spa = false }          # optional, files served without the guest
//!                                                   # (with no wasm or source: a site of files)
//! postgres_databases = { orders = { secret = "env:ORDERS_DB" } }  # optional, URL in a secret
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::spec::{DirGrant, FunctionSpec, LimitsSpec, ReuseSpec};

/// A parsed manifest and the directory its paths are relative to.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The functions, in file order.
    pub functions: Vec<ManifestFunction>,
    /// The manifest's directory.
    pub base: PathBuf,
    /// For a Spin manifest, what was not taken over as it is (see [`crate::spin`]); a
    /// caller shows them.
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(rename = "function", default)]
    functions: Vec<ManifestFunction>,
}

/// One `[[function]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFunction {
    /// The function's name.
    pub name: String,
    /// Path to the wasm, relative to the manifest (this or `source`).
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// Path to the source (a .js/.mjs/.py file, or a directory holding its entry module),
    /// relative to the manifest (this or `wasm`).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Shell command that produces the wasm, run in the manifest's directory.
    #[serde(default)]
    pub build: Option<String>,
    /// Route prefix.
    #[serde(default)]
    pub route: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Opt-in instance reuse.
    #[serde(default)]
    pub reuse: Option<ReuseSpec>,
    /// Pre-initialisation on (default) or off.
    #[serde(default)]
    pub snapshot: Option<bool>,
    /// Outbound allow-list.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Granted host directories.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// SQL databases besides `default`.
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// Postgres databases by name, each from a secret holding its URL.
    #[serde(default)]
    pub postgres_databases: BTreeMap<String, crate::spec::PostgresDatabase>,
    /// `wasi:config` values and secret references.
    #[serde(default)]
    pub config: BTreeMap<String, crate::config::ConfigValue>,
    /// Schedules (cron).
    #[serde(default)]
    pub schedule: Vec<crate::events::ScheduleSpec>,
    /// Asynchronous invocations' delivery policy.
    #[serde(default, rename = "async")]
    pub async_policy: Option<crate::events::AsyncSpec>,
    /// A queue whose messages start the function.
    #[serde(default)]
    pub trigger: Option<crate::events::TriggerSpec>,
    /// Static files served without starting the function.
    #[serde(default)]
    pub assets: Option<ManifestAssets>,
}

/// `assets = { dir = "public", spa = true, run_function_first = false }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAssets {
    /// The directory, relative to the manifest; packed and uploaded with the deploy.
    pub dir: PathBuf,
    /// See [`crate::assets::AssetsSpec::spa`].
    #[serde(default)]
    pub spa: bool,
    /// See [`crate::assets::AssetsSpec::run_function_first`].
    #[serde(default)]
    pub run_function_first: bool,
}

impl ManifestFunction {
    /// A Spin component's entry.
    fn from_spin(component: crate::spin::SpinComponent) -> Self {
        let crate::spin::SpinComponent {
            name,
            wasm,
            build,
            spec,
        } = component;
        Self {
            name,
            wasm: Some(wasm),
            source: None,
            build,
            route: spec.route,
            env: spec.env,
            limits: spec.limits,
            reuse: spec.reuse,
            snapshot: spec.snapshot,
            allowed_outbound_hosts: spec.allowed_outbound_hosts,
            dirs: spec.dirs,
            sqlite_databases: spec.sqlite_databases,
            postgres_databases: spec.postgres_databases,
            config: spec.config,
            schedule: spec.schedule,
            async_policy: spec.async_policy,
            trigger: spec.trigger,
            assets: None,
        }
    }

    /// The deploy spec.
    pub fn spec(&self) -> FunctionSpec {
        FunctionSpec {
            route: self.route.clone(),
            env: self.env.clone(),
            limits: self.limits.clone(),
            reuse: self.reuse.clone(),
            snapshot: self.snapshot,
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            dirs: self.dirs.clone(),
            sqlite_databases: self.sqlite_databases.clone(),
            postgres_databases: self.postgres_databases.clone(),
            config: self.config.clone(),
            schedule: self.schedule.clone(),
            async_policy: self.async_policy.clone(),
            trigger: self.trigger.clone(),
            assets: self.assets.as_ref().map(|a| crate::assets::AssetsSpec {
                spa: a.spa,
                run_function_first: a.run_function_first,
                digest: None,
            }),
            origin: None,
        }
    }
}

impl Manifest {
    /// Reads and checks a manifest (names unique, specs valid up to host limits).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        // `thaw.toml` has the parent "", which no process can be started in: use ".".
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("in manifest {}", path.display()))
    }

    /// Parses manifest text, thaw's or Spin's (`spin_manifest_version = 2`, see
    /// [`crate::spin`]); `base` is the directory relative paths start from.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let (file, notes) = if crate::spin::is_spin_manifest(text) {
            let app = crate::spin::translate(text, base)?;
            let functions = app
                .functions
                .into_iter()
                .map(ManifestFunction::from_spin)
                .collect();
            (ManifestFile { functions }, app.notes)
        } else {
            (toml::from_str(text)?, Vec::new())
        };
        let mut seen = std::collections::HashSet::new();
        for f in &file.functions {
            anyhow::ensure!(
                seen.insert(&f.name),
                "function {:?} is listed twice",
                f.name
            );
            anyhow::ensure!(
                !(f.wasm.is_some() && f.source.is_some())
                    && (f.wasm.is_some() || f.source.is_some() || f.assets.is_some()),
                "function {:?} needs one of `wasm` (a component or module) and `source` (a \
                 .js or .py file, or a directory), or `assets` alone for static files only",
                f.name
            );
            f.spec().validate(&f.name, u64::MAX)?;
        }
        Ok(Self {
            functions: file.functions,
            base: base.to_path_buf(),
            notes,
        })
    }

    /// The absolute path of a function's code: its wasm, or its source; `None` for a function
    /// of static assets only.
    pub fn code_path(&self, function: &ManifestFunction) -> Option<PathBuf> {
        let path = function.wasm.as_ref().or(function.source.as_ref())?;
        Some(self.base.join(path))
    }

    /// Runs each distinct build command once, in order.
    pub fn build(&self) -> anyhow::Result<()> {
        let mut done = std::collections::HashSet::new();
        for command in self.functions.iter().filter_map(|f| f.build.as_deref()) {
            if done.insert(command) {
                self.run_build(command)?;
            }
        }
        Ok(())
    }

    /// Runs one build command in the manifest's directory.
    pub fn run_build(&self, command: &str) -> anyhow::Result<()> {
        eprintln!("thaw: building: {command}");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.base)
            .status()
            .with_context(|| format!("running build command `{command}`"))?;
        anyhow::ensure!(
            status.success(),
            "build command `{command}` failed with {status}"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_functions_with_defaults() {
        let m = Manifest::parse(
            r#"
            [[function]]
            name = "a"
            wasm = "a.wasm"
            [[function]]
            name = "b"
            wasm = "b.wasm"
            route = "/api/b"
            env = { K = "V" }
            limits = { timeout_ms = 5 }
            "#,
            Path::new("/m"),
        )
        .unwrap();
        assert_eq!(m.functions.len(), 2);
        assert_eq!(
            m.code_path(&m.functions[0]).unwrap(),
            Path::new("/m/a.wasm")
        );
        let spec = m.functions[1].spec();
        assert_eq!(spec.route.as_deref(), Some("/api/b"));
        assert_eq!(spec.limits.timeout_ms, Some(5));
    }

    #[test]
    fn rejects_duplicates_bad_routes_and_typos() {
        let dup = "[[function]]\nname='a'\nwasm='x'\n[[function]]\nname='a'\nwasm='y'\n";
        assert!(Manifest::parse(dup, Path::new(".")).is_err());
        let bad_route = "[[function]]\nname='a'\nwasm='x'\nroute='nope'\n";
        assert!(Manifest::parse(bad_route, Path::new(".")).is_err());
        let typo = "[[function]]\nname='a'\nwasm='x'\nrout='/a'\n";
        assert!(Manifest::parse(typo, Path::new(".")).is_err());
        let both = "[[function]]\nname='a'\nwasm='x'\nsource='a.js'\n";
        assert!(Manifest::parse(both, Path::new(".")).is_err());
        let neither = "[[function]]\nname='a'\n";
        assert!(Manifest::parse(neither, Path::new(".")).is_err());
        let source = "[[function]]\nname='a'\nsource='src'\n";
        let m = Manifest::parse(source, Path::new("/m")).unwrap();
        assert_eq!(m.code_path(&m.functions[0]).unwrap(), Path::new("/m/src"));
        let site = "[[function]]\nname='a'\nassets={dir='public'}\n";
        let m = Manifest::parse(site, Path::new("/m")).unwrap();
        assert_eq!(m.code_path(&m.functions[0]), None);
    }
}
