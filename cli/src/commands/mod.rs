//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod build;
pub mod cluster;
pub mod deploy;
pub mod dev;
pub mod engines;
pub mod invocations;
pub mod invoke;
pub mod kv;
pub mod list;
pub mod logs;
pub mod new;
pub mod push;
pub mod remove;
pub mod serve;
pub mod sql;
pub mod versions;

/// Where the CLI finds a running host, and its admin token.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Admin API of the host
    #[arg(
        long,
        env = "THAW_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub admin: String,
    /// Admin token [default: read from the host's data directory, which works beside the
    /// server]
    #[arg(
        long,
        env = "THAW_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The host's data directory, to find its admin token
    /// [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
    #[arg(long, env = "THAW_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

impl Target {
    /// An admin client with the token from the flag, the environment or the data directory.
    pub fn client(&self) -> anyhow::Result<thaw_client::AdminClient> {
        let token = match &self.admin_token {
            Some(token) => Some(token.clone()),
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(crate::config::default_data_dir);
                thaw_runtime::http::auth::read_token(
                    &dir.join(thaw_runtime::http::auth::TOKEN_FILE),
                )?
            }
        };
        Ok(thaw_client::AdminClient::new(&self.admin, token))
    }
}
