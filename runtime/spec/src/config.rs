//! A function's configuration for `wasi:config/store`: plain values, and references to
//! secrets that the host resolves without writing them into the spec.
//!
//! ```toml
//! [function.config]
//! greeting = "hello"                          # a value, stored in the spec
//! api_key = { secret = "env:API_KEY" }        # the host's THAW_SECRET_API_KEY
//! db_password = { secret = "file:db-password" } # <--secrets-dir>/db-password
//! ```
//!
//! A secret is a reference (`env:NAME` or `file:NAME`) in the spec, and its value exists
//! only in the host's memory: `thaw list` and the admin API show the reference, never the
//! value. The providers follow Spin's variable providers: the environment, with a fixed
//! prefix so a spec can name only variables the operator set for the purpose (never, say,
//! the admin token's), and files in one directory the operator names, by plain file name.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most configuration keys a function may have.
pub const MAX_CONFIG_KEYS: usize = 256;
/// Most bytes of configuration (keys and plain values) in a spec.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Largest secret value the host reads (a file, or an environment variable).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// The prefix of the environment variables `env:` secrets come from.
pub const SECRET_ENV_PREFIX: &str = "THAW_SECRET_";

/// One configuration value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A value written in the spec.
    Value(String),
    /// A value the host resolves (see the module docs).
    Secret {
        /// `env:NAME` or `file:NAME`.
        secret: SecretRef,
    },
}

/// Where a secret's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    /// The host's environment variable `THAW_SECRET_<NAME>`.
    Env(String),
    /// The file `<NAME>` in the host's `--secrets-dir`.
    File(String),
}

impl TryFrom<String> for SecretRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<SecretRef> for String {
    fn from(secret: SecretRef) -> Self {
        secret.to_string()
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (provider, name) = text.split_once(':').ok_or_else(|| {
            format!("secret {text:?} is not PROVIDER:NAME (env:NAME or file:NAME)")
        })?;
        let plain = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !plain {
            return Err(format!(
                "secret {text:?}: the name must be 1 to 128 of A-Z, a-z, 0-9, '_', '-', '.', not \
                 starting with '.'"
            ));
        }
        match provider {
            "env" => Ok(Self::Env(name.to_owned())),
            "file" => Ok(Self::File(name.to_owned())),
            other => Err(format!(
                "secret {text:?}: no secret provider {other:?} (env or file)"
            )),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(name) => write!(f, "file:{name}"),
        }
    }
}

/// Checks a configuration table: key names, counts and sizes.
pub fn validate(config: &BTreeMap<String, ConfigValue>) -> Result<(), String> {
    if config.len() > MAX_CONFIG_KEYS {
        return Err(format!(
            "config: {} keys is over the limit of {MAX_CONFIG_KEYS}",
            config.len()
        ));
    }
    let bytes: usize = config
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    ConfigValue::Value(value) => value.len(),
                    ConfigValue::Secret { .. } => 0,
                }
        })
        .sum();
    if bytes > MAX_CONFIG_BYTES {
        return Err(format!(
            "config: {bytes} bytes is over the limit of {MAX_CONFIG_BYTES}"
        ));
    }
    for key in config.keys() {
        // wasi:config leaves keys free-form; these are the ones every language's guests and
        // every manifest can write without quoting.
        let ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(format!(
                "config key {key:?}: use 1 to 256 of A-Z, a-z, 0-9, '_', '-', '.'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_secrets_parse_from_json_and_toml() {
        let json: BTreeMap<String, ConfigValue> = serde_json::from_str(
            r#"{"greeting": "hi", "key": {"secret": "env:API_KEY"}, "pw": {"secret": "file:db-pw"}}"#,
        )
        .unwrap();
        assert_eq!(json["greeting"], ConfigValue::Value("hi".into()));
        assert_eq!(
            json["key"],
            ConfigValue::Secret {
                secret: SecretRef::Env("API_KEY".into())
            }
        );
        assert_eq!(
            serde_json::to_string(&json["pw"]).unwrap(),
            r#"{"secret":"file:db-pw"}"#
        );
        validate(&json).unwrap();
        for bad in [
            "vault:x",
            "env:",
            "file:../etc/passwd",
            "file:.hidden",
            "nocolon",
        ] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
        let bad_key: BTreeMap<_, _> = [("a b".to_owned(), ConfigValue::Value("x".into()))].into();
        assert!(validate(&bad_key).is_err());
    }
}
