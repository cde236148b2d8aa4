//! `wasi:config/store`: what a guest reads with `get` and `get-all`, resolved once per
//! version (at deploy, or when the host starts), not per request.
//!
//! Plain values come from the spec; secrets from the host (see [`crate::config`] for the
//! providers). Resolved values live in memory in one `Arc` per version that every store of it
//! shares, so a request costs no allocation for its configuration; a secret's value is
//! never written to disk, to a log line or to an admin answer (errors name the reference,
//! not the value). A changed secret is seen by versions resolved after the change: the next
//! deploy, or a restart.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use wasmtime_wasi_config::WasiConfigVariables;

use crate::config::{ConfigValue, MAX_SECRET_BYTES, SECRET_ENV_PREFIX, SecretRef};

/// Where the host finds secrets.
#[derive(Clone, Debug, Default)]
pub struct SecretSources {
    /// The directory of `file:` secrets (`--secrets-dir`); `None`: no file secrets.
    pub dir: Option<PathBuf>,
}

impl SecretSources {
    /// A function's configuration with its secrets resolved, or the first reference that
    /// cannot be (named, with what is missing).
    pub fn resolve(
        &self,
        config: &BTreeMap<String, ConfigValue>,
    ) -> Result<WasiConfigVariables, String> {
        let mut vars = WasiConfigVariables::new();
        for (key, value) in config {
            let value = match value {
                ConfigValue::Value(value) => value.clone(),
                ConfigValue::Secret { secret } => self
                    .read(secret)
                    .map_err(|why| format!("config {key:?}: secret {secret}: {why}"))?,
            };
            vars.insert(key.clone(), value);
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
                let file = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                let mut text = String::new();
                file.take(MAX_SECRET_BYTES as u64 + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| format!("cannot read {} as text: {e}", path.display()))?;
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
}
