//! `wasi:config/store`: what a guest reads with `get` and `get-all`, resolved once per
//! version (at deploy, or when the host starts), not per request.
//!
//! Plain values come from the spec; secrets from the host (see [`crate::config`] for the
//! providers). Resolved values live in memory in one `Arc` per version that every store of it
//! shares, so a request costs no allocation for its configuration; a secret's value is
//! never written to disk, to a log line or to an admin answer (errors name the reference,
//! not the value). A changed secret is seen by versions resolved after the change: the next
//! deploy, or a restart.
//!
//! A `file:` secret must be a regular file. It is opened without blocking (a FIFO planted in
//! the secrets directory would otherwise hang the open until something writes to it) and
//! checked before it is read. A refusal names the reference (`file:NAME`), not the host's
//! path. A deploy resolves its secrets on a blocking thread, with
//! [`RESOLVE_TIMEOUT`], so a slow filesystem stalls that deploy, never the workers that
//! serve requests.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use wasmtime_wasi_config::WasiConfigVariables;

use crate::config::{ConfigValue, MAX_SECRET_BYTES, SECRET_ENV_PREFIX, SecretRef};
use crate::spec::{FunctionSpec, PostgresDatabase};

/// Where the host finds secrets.
#[derive(Clone, Debug, Default)]
pub struct SecretSources {
    /// The directory of `file:` secrets (`--secrets-dir`); `None`: no file secrets.
    pub dir: Option<PathBuf>,
}

/// How long a deploy waits for its secrets.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A version's configuration, resolved: what `wasi:config/store` answers, and the same values
/// as environment variables for a CGI function, which imports no interfaces (the key in upper
/// case, anything but A-Z 0-9 `_` as `_`: `api-url` is `API_URL`). Built once per version.
#[derive(Default)]
pub struct Resolved {
    /// For `wasi:config/store`.
    pub vars: WasiConfigVariables,
    /// The same, for lookups by key (`spin:variables`).
    values: std::collections::HashMap<String, String>,
    /// For a CGI function's environment.
    pub env: Vec<(String, String)>,
    /// The URLs of the function's `postgres_databases`, by name (`spin:postgres`'s `open`).
    pub postgres: std::collections::HashMap<String, String>,
}

/// Keys only: a value may be a secret.
impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.env.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Resolved {
    /// From resolved `(key, value)` pairs. A key whose variable name is a CGI
    /// meta-variable (RFC 3875's, `HTTP_*`, and the common extensions `REQUEST_URI`,
    /// `REMOTE_PORT`, `HTTPS`, `REQUEST_SCHEME`) is not exported: the request's variables are the host's to
    /// set, and a setting must never stand in for one a request did not send. Of two keys
    /// with the same variable name (`api-url`, `api_url`), the first in key order is kept.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        let mut env: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (key, value) in &pairs {
            let name = env_name(key);
            if !is_cgi_variable(&name) && !env.iter().any(|(n, _)| *n == name) {
                env.push((name, value.clone()));
            }
        }
        Self {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            values: pairs.into_iter().collect(),
            env,
            postgres: Default::default(),
        }
    }

    /// The value of `key`, if set.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Whether `name` is a variable the host sets for a CGI request.
pub fn is_cgi_variable(name: &str) -> bool {
    const META: &[&str] = &[
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_IDENT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "REQUEST_URI",
        "REMOTE_PORT",
        "HTTPS",
        "REQUEST_SCHEME",
    ];
    name.starts_with("HTTP_") || META.contains(&name)
}

/// A configuration key as an environment variable's name.
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

impl SecretSources {
    /// [`SecretSources::resolve_spec`] on a blocking thread, within [`RESOLVE_TIMEOUT`].
    pub async fn resolve_off_workers(&self, spec: &FunctionSpec) -> Result<Resolved, String> {
        if spec.config.is_empty() && spec.postgres_databases.is_empty() {
            return Ok(Resolved::default());
        }
        let (sources, config, postgres) = (
            self.clone(),
            spec.config.clone(),
            spec.postgres_databases.clone(),
        );
        let resolving =
            tokio::task::spawn_blocking(move || sources.resolve_parts(&config, &postgres));
        match tokio::time::timeout(RESOLVE_TIMEOUT, resolving).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(e)) => Err(format!("resolving secrets failed: {e}")),
            Err(_) => Err(format!(
                "resolving secrets took longer than {} s",
                RESOLVE_TIMEOUT.as_secs()
            )),
        }
    }

    /// What a function's spec names in the host's secrets, resolved: its configuration and
    /// its Postgres URLs, or the first reference that cannot be (named, with what is
    /// missing).
    pub fn resolve_spec(&self, spec: &FunctionSpec) -> Result<Resolved, String> {
        self.resolve_parts(&spec.config, &spec.postgres_databases)
    }

    fn resolve_parts(
        &self,
        config: &BTreeMap<String, ConfigValue>,
        postgres: &BTreeMap<String, PostgresDatabase>,
    ) -> Result<Resolved, String> {
        let mut resolved = Resolved::new(self.resolve(config)?);
        for (name, database) in postgres {
            let url = self.read(&database.secret).map_err(|why| {
                format!(
                    "postgres_databases {name:?}: secret {}: {why}",
                    database.secret
                )
            })?;
            resolved.postgres.insert(name.clone(), url);
        }
        Ok(resolved)
    }

    /// A function's configuration with its secrets resolved, or the first reference that
    /// cannot be (named, with what is missing).
    pub fn resolve(
        &self,
        config: &BTreeMap<String, ConfigValue>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut vars = Vec::with_capacity(config.len());
        for (key, value) in config {
            let value = match value {
                ConfigValue::Value(value) => value.clone(),
                ConfigValue::Secret { secret } => self
                    .read(secret)
                    .map_err(|why| format!("config {key:?}: secret {secret}: {why}"))?,
            };
            vars.push((key.clone(), value));
        }
        Ok(vars)
    }

    fn read(&self, secret: &SecretRef) -> Result<String, String> {
        let value = match secret {
            SecretRef::Env(name) => {
                let var = format!("{SECRET_ENV_PREFIX}{name}");
                std::env::var(&var).map_err(|_| format!("{var} is not set on the host"))?
            }
            SecretRef::File(name) => {
                let dir = self
                    .dir
                    .as_ref()
                    .ok_or("the host has no secrets directory (thaw serve --secrets-dir DIR)")?;
                let path = dir.join(name);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| format!("cannot open it: {}", e.kind()))?;
                let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
                if !regular {
                    return Err("not a regular file".into());
                }
                let mut text = String::new();
                file.take(MAX_SECRET_BYTES as u64 + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| format!("cannot read it as text: {}", e.kind()))?;
                // A trailing newline is how editors and `echo` end files, not part of the value.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.len() > MAX_SECRET_BYTES {
            return Err(format!("longer than {MAX_SECRET_BYTES} bytes"));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn configuration_reaches_cgi_as_variables_and_debug_shows_no_value() {
        let resolved = Resolved::new(vec![
            ("api-url".into(), "https://x".into()),
            ("api_url".into(), "https://shadowed".into()),
            ("db.password".into(), "hunter2".into()),
            ("http-authorization".into(), "Bearer forged".into()),
            ("request_uri".into(), "/admin".into()),
        ]);
        assert_eq!(
            resolved.env,
            [
                ("API_URL".to_owned(), "https://x".to_owned()),
                ("DB_PASSWORD".to_owned(), "hunter2".to_owned())
            ]
        );
        let shown = format!("{resolved:?}");
        assert!(
            shown.contains("DB_PASSWORD") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    use super::*;

    #[test]
    fn values_files_and_missing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let sources = SecretSources {
            dir: Some(dir.path().to_owned()),
        };
        let config: BTreeMap<String, ConfigValue> =
            serde_json::from_str(r#"{"plain": "v", "pw": {"secret": "file:pw"}}"#).unwrap();
        assert!(sources.resolve(&config).is_ok());
        let missing: BTreeMap<String, ConfigValue> =
            serde_json::from_str(r#"{"k": {"secret": "file:nope"}}"#).unwrap();
        let Err(e) = sources.resolve(&missing) else {
            panic!("a missing file resolved")
        };
        assert!(e.contains("file:nope"), "{e}");
        let env: BTreeMap<String, ConfigValue> =
            serde_json::from_str(r#"{"k": {"secret": "env:THAW_TEST_SURELY_UNSET"}}"#).unwrap();
        let Err(e) = sources.resolve(&env) else {
            panic!("an unset variable resolved")
        };
        assert!(
            e.contains("THAW_SECRET_THAW_TEST_SURELY_UNSET is not set"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid, NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sources = SecretSources {
            dir: Some(dir.path().to_owned()),
        };
        for name in ["fifo", "sub"] {
            let config: BTreeMap<String, ConfigValue> =
                serde_json::from_str(&format!(r#"{{"k": {{"secret": "file:{name}"}}}}"#)).unwrap();
            // Nothing writes to the FIFO: a blocking open would hang here forever.
            let Err(e) = sources.resolve(&config) else {
                panic!("{name} resolved")
            };
            assert!(e.contains("not a regular file"), "{e}");
            assert!(e.contains(&format!("file:{name}")), "{e}");
        }
    }
}
