//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod build;
pub mod deploy;
pub mod invoke;
pub mod list;
pub mod remove;
pub mod serve;

/// Where the CLI finds a running host.
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
}
