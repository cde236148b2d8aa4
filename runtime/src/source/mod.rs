//! Functions deployed as source: one engine per language, shared by every function in it.
//!
//! A JavaScript or Python function is its source (a [`Bundle`]) and the digest of the engine
//! it was deployed with. The engine is a `wasi:http` component built by
//! `scripts/build-engines` (componentize-js or componentize-py, with a bootstrap of thaw's
//! own in `engines/`) that also exports `thaw:engine/program`:
//!
//! - `prepare(files, entry)` runs once, at deploy, in a validation instance: it checks the
//!   source (a syntax error comes back as `file:line:column: message`) and turns it into the
//!   *program* an instance loads: for JavaScript the modules rewritten into function bodies
//!   (parsing is the slow part and happens only here), for Python the files as they are;
//! - `load(program)` runs once per instance, before the instance takes a request: the pool
//!   holds instances with the function's modules already evaluated, as it holds a component's
//!   instances already instantiated.
//!
//! Why one engine rather than one component per function: a componentized function is the
//! whole language runtime (13-19 MB), compiled by Cranelift into its own artifact (seconds
//! per deploy, tens of MB of machine code per function). Here the engine is compiled once
//! per host and its code shared (one `Component`, one `InstancePre`); a deploy is a parse and
//! an evaluation, and a function costs the host its source and the instances it runs.
//!
//! Why not a per-function snapshot (Wizer) of the initialised engine at deploy: it makes the
//! function a component of its own again, seconds of compile and tens of MB of code per
//! function. Loading a program into a fresh engine instance costs about a millisecond; an
//! instance of a snapshot starts in a tenth of that. So the trade is made per function, from
//! its traffic: a function that becomes busy gets its [`snapshot`] in the background and
//! moves onto it (`crate::control::source_tier`); the rest stay on the shared engine.
//!
//! A host upgrade that brings a new engine does not move existing functions: their records
//! name the engine they were deployed with, whose wasm the data directory keeps. A redeploy
//! moves a function to the host's current engine.

mod compact;
pub mod snapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::datadir::DataDir;
use crate::engine::artifact::sha256_hex;
use crate::guest::host::ProxyHost;
pub use thaw_spec::source::{Bundle, Language, MAX_BUNDLE_BYTES, MAX_FILES};

/// The interface every engine exports beside `wasi:http`.
const PROGRAM_INTERFACE: &str = "thaw:engine/program@0.1.0";

/// A language's engine, compiled and linked: shared by every function deployed on it.
pub struct LanguageEngine {
    /// sha256 of its wasm.
    pub digest: String,
    /// Its code, pre-instantiated against thaw's WASI.
    pub pre: ProxyPre<ProxyHost>,
    prepare: ComponentExportIndex,
    load: ComponentExportIndex,
}

impl LanguageEngine {
    /// An engine from its component and the component linked as a proxy; fails if it does
    /// not export `thaw:engine/program`.
    pub fn new(
        digest: String,
        component: &Component,
        pre: ProxyPre<ProxyHost>,
    ) -> anyhow::Result<Self> {
        let (_, program) = component
            .get_export(None, PROGRAM_INTERFACE)
            .with_context(|| format!("the engine does not export {PROGRAM_INTERFACE}"))?;
        let func = |name: &str| {
            component
                .get_export_index(Some(&program), name)
                .with_context(|| format!("the engine's {PROGRAM_INTERFACE} has no `{name}`"))
        };
        Ok(Self {
            digest,
            prepare: func("prepare")?,
            load: func("load")?,
            pre,
        })
    }

    /// Checks a bundle and turns it into the program instances load, in a fresh instance in
    /// `store` (under the store's deadline as the caller armed it); then loads it there with
    /// `load_deadline_ticks` (the function's timeout), so that a module that is missing or
    /// top-level code that throws or never ends is refused now.
    pub async fn prepare(
        &self,
        store: &mut Store<ProxyHost>,
        bundle: &Bundle,
        load_deadline_ticks: u64,
    ) -> Result<String, PrepareError> {
        let instance = self
            .pre
            .instance_pre()
            .instantiate_async(&mut *store)
            .await
            .map_err(PrepareError::Trap)?;
        let prepare = instance
            .get_typed_func::<(&[(String, String)], &str), (Result<String, String>,)>(
                &mut *store,
                &self.prepare,
            )
            .map_err(PrepareError::Trap)?;
        let (prepared,) = prepare
            .call_async(&mut *store, (&bundle.files, &bundle.entry))
            .await
            .map_err(PrepareError::Trap)?;
        let program = prepared.map_err(PrepareError::Refused)?;
        crate::guest::arm_deadline(store, load_deadline_ticks);
        self.load(store, &instance, &program).await?;
        Ok(program)
    }

    /// A proxy instance with `program` loaded, ready for its first request.
    pub async fn instantiate(
        &self,
        store: &mut Store<ProxyHost>,
        program: &str,
    ) -> wasmtime::Result<Proxy> {
        let instance = self
            .pre
            .instance_pre()
            .instantiate_async(&mut *store)
            .await?;
        let proxy = Proxy::new(&mut *store, &instance)?;
        self.load(store, &instance, program)
            .await
            .map_err(|e| match e {
                PrepareError::Trap(trap) => trap,
                PrepareError::Refused(message) => {
                    wasmtime::Error::msg(format!("the program did not load: {message}"))
                }
            })?;
        Ok(proxy)
    }

    /// Loads `program` into a fresh `instance` of this engine (what [`Self::instantiate`]
    /// does after instantiating; public for the phase benchmark).
    pub async fn load(
        &self,
        store: &mut Store<ProxyHost>,
        instance: &wasmtime::component::Instance,
        program: &str,
    ) -> Result<(), PrepareError> {
        let load = instance
            .get_typed_func::<(&str,), (Result<(), String>,)>(&mut *store, &self.load)
            .map_err(PrepareError::Trap)?;
        let (loaded,) = load
            .call_async(&mut *store, (program,))
            .await
            .map_err(PrepareError::Trap)?;
        loaded.map_err(PrepareError::Refused)
    }
}

/// Why a source function's program could not be prepared or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The engine refused the source: the message is the deployer's (a syntax error with its
    /// place, a missing module, a stack).
    #[error("{0}")]
    Refused(String),
    /// The instance trapped (a timeout, memory, an engine fault).
    #[error("{0:#}")]
    Trap(wasmtime::Error),
}

/// A source function's code: its engine and its program.
#[derive(Clone)]
pub struct SourceCode {
    /// The engine it was deployed with.
    pub engine: Arc<LanguageEngine>,
    /// What `prepare` made of its source.
    pub program: Arc<str>,
}

impl SourceCode {
    /// A proxy instance of this function, its program loaded.
    pub async fn instantiate(&self, store: &mut Store<ProxyHost>) -> wasmtime::Result<Proxy> {
        self.engine.instantiate(store, &self.program).await
    }
}

/// The host's engines: the current one per language (from `--engines DIR`), and every engine
/// loaded so far by digest (a function deployed before an upgrade keeps its own).
#[derive(Default)]
pub struct Engines {
    current: HashMap<Language, String>,
    loaded: Mutex<HashMap<String, Arc<LanguageEngine>>>,
    loading: Mutex<()>,
    dir: Option<PathBuf>,
}

impl Engines {
    /// The engines in `dir` (`js.wasm`, `python.wasm`; a missing file is a language this host
    /// cannot deploy), stored into the data directory under their digests so that the
    /// functions deployed on them outlive the files. Blocking (reads and hashes the files).
    pub fn open(dir: Option<&Path>, data: &DataDir) -> anyhow::Result<Self> {
        let mut current = HashMap::new();
        if let Some(dir) = dir {
            for language in Language::ALL {
                let path = dir.join(format!("{language}.wasm"));
                let bytes = match std::fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                let digest = sha256_hex(&bytes);
                let stored = data.wasm(&digest);
                if !stored.exists() {
                    data.write_atomic(&stored, &bytes)?;
                }
                tracing::info!(%language, digest = %&digest[..12], "engine");
                current.insert(language, digest);
            }
        }
        Ok(Self {
            current,
            loaded: Mutex::default(),
            loading: Mutex::default(),
            dir: dir.map(Path::to_owned),
        })
    }

    /// The digest of the engine new functions in `language` are deployed on.
    pub fn current(&self, language: Language) -> Result<&str, String> {
        self.current
            .get(&language)
            .map(String::as_str)
            .ok_or_else(|| {
                let dir = match &self.dir {
                    Some(dir) => format!("{} has no {language}.wasm", dir.display()),
                    None => "it was started without --engines".to_owned(),
                };
                format!(
                    "this host has no {language} engine ({dir}); build the engines with \
                 scripts/build-engines and start thaw with --engines target/engines"
                )
            })
    }

    /// The languages and digests of the current engines.
    pub fn current_all(&self) -> impl Iterator<Item = (Language, &str)> {
        self.current.iter().map(|(l, d)| (*l, d.as_str()))
    }

    /// The engine of `digest`, loading it with `load` (an artifact read or a compile) unless
    /// it is loaded. Blocking: loads run one at a time, so that concurrent first uses of an
    /// engine load it once.
    pub fn get_blocking(
        &self,
        digest: &str,
        load: impl FnOnce() -> anyhow::Result<LanguageEngine>,
    ) -> anyhow::Result<Arc<LanguageEngine>> {
        if let Some(engine) = self.loaded(digest) {
            return Ok(engine);
        }
        let _one_at_a_time = self.loading.lock().expect("engines load lock");
        if let Some(engine) = self.loaded(digest) {
            return Ok(engine);
        }
        let engine = Arc::new(load()?);
        self.loaded
            .lock()
            .expect("engines lock")
            .insert(digest.to_owned(), engine.clone());
        Ok(engine)
    }

    /// The engine of `digest` if it is loaded.
    pub fn loaded(&self, digest: &str) -> Option<Arc<LanguageEngine>> {
        self.loaded
            .lock()
            .expect("engines lock")
            .get(digest)
            .cloned()
    }
}
