//! `thaw kv`: read and seed a function's key-value store (`wasi:keyvalue`), in its scope.

use anyhow::Context as _;

use crate::commands::Target;

/// `thaw kv` flags.
#[derive(clap::Args, Debug)]
pub struct KvArgs {
    /// get, set, delete or list
    #[arg(value_enum)]
    pub action: KvAction,
    /// NAME [BUCKET] KEY [VALUE] (get, delete: NAME [BUCKET] KEY; set: NAME [BUCKET] KEY
    /// VALUE; list: NAME [BUCKET]); the bucket is the default one ("") when left out
    #[arg(required = true, num_args = 1..=4, value_name = "ARGS")]
    pub args: Vec<String>,
    /// get: write the value's bytes as they are (into a file, say); by default control
    /// characters and bytes that are not UTF-8 are shown escaped, so a value a function
    /// wrote cannot drive the terminal. list: the keys as they are
    #[arg(long)]
    pub raw: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// What `thaw kv` does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvAction {
    /// Print a value to stdout (escaped; --raw for its bytes)
    Get,
    /// Set a value
    Set,
    /// Delete a key
    Delete,
    /// Print a bucket's keys, one per line
    List,
}

/// Runs one `thaw kv` action.
pub async fn execute(args: KvArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let a: Vec<&str> = args.args.iter().map(String::as_str).collect();
    let usage = || {
        anyhow::anyhow!(
            "usage: thaw kv {} NAME [BUCKET] KEY{}",
            format!("{:?}", args.action).to_lowercase(),
            if args.action == KvAction::Set {
                " VALUE"
            } else {
                ""
            }
        )
    };
    let raw = args.raw;
    match (args.action, a.as_slice()) {
        (KvAction::List, [name]) | (KvAction::List, [name, _]) => {
            let bucket = a.get(1).copied().unwrap_or("");
            let keys = client
                .kv_list(name, bucket)
                .await
                .with_context(|| format!("listing the keys of {name}"))?;
            print_keys(&keys, raw)
        }
        (KvAction::Get, [name, key]) | (KvAction::Get, [name, _, key]) => {
            let bucket = if a.len() == 3 { a[1] } else { "" };
            let value = client
                .kv_get(name, bucket, key)
                .await
                .with_context(|| format!("reading {key:?} of {name}"))?
                .with_context(|| format!("{name} has no key {key:?} in bucket {bucket:?}"))?;
            use std::io::Write as _;
            if raw {
                std::io::stdout().write_all(&value)?;
            } else {
                std::io::stdout()
                    .write_all(thaw_runtime::guest::log::escape_bytes(&value).as_bytes())?;
            }
        }
        (KvAction::Set, [name, key, value]) | (KvAction::Set, [name, _, key, value]) => {
            let bucket = if a.len() == 4 { a[1] } else { "" };
            client
                .kv_set(name, bucket, key, value.as_bytes().to_vec().into())
                .await
                .with_context(|| format!("setting {key:?} of {name}"))?
        }
        (KvAction::Delete, [name, key]) | (KvAction::Delete, [name, _, key]) => {
            let bucket = if a.len() == 3 { a[1] } else { "" };
            client
                .kv_delete(name, bucket, key)
                .await
                .with_context(|| format!("deleting {key:?} of {name}"))?
        }
        _ => return Err(usage()),
    }
    Ok(())
}

fn print_keys(keys: &[String], raw: bool) {
    for key in keys {
        if raw {
            println!("{key}");
        } else {
            println!("{}", thaw_runtime::guest::log::escape_controls(key));
        }
    }
}
