//! The `thaw` binary: parse flags, run a subcommand, print the error chain, pick an exit code.

use clap::{Parser, Subcommand};
use thaw_cli::commands;

/// thaw: a self-hosted serverless runtime for WebAssembly functions.
#[derive(Parser, Debug)]
#[command(name = "thaw", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How thaw writes its own log (stderr): `text` for people, `json` for log pipelines
    /// (one object per line, with the event's fields)
    #[arg(
        long,
        global = true,
        env = "THAW_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per process and matched at once: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host: serve deployed functions and the admin API
    Serve(thaw_cli::config::ServeArgs),
    /// Deploy a function (a .wasm file, JavaScript or Python source) or every function of a
    /// thaw.toml manifest
    Deploy(commands::deploy::DeployArgs),
    /// Publish a function's component to an OCI registry: `thaw push thaw.toml
    /// oci://HOST/REPO:TAG`
    Push(commands::push::PushArgs),
    /// List deployed functions
    List(commands::list::ListArgs),
    /// List the language engines of source functions and the functions on each
    Engines(commands::engines::EnginesArgs),
    /// Show the cluster this host is in: etcd's state and the member nodes
    Cluster(commands::cluster::ClusterArgs),
    /// Remove a function
    Remove(commands::remove::RemoveArgs),
    /// List a function's kept versions and its traffic split
    Versions(commands::versions::VersionsArgs),
    /// Serve all of a function's traffic from the previous (or a named) version
    Rollback(commands::versions::RollbackArgs),
    /// Split a function's traffic between its versions, e.g. `thaw traffic api v4=80 v5=20`
    Traffic(commands::versions::TrafficArgs),
    /// Serve all of a function's traffic from its newest version (ends a canary)
    Promote(commands::versions::PromoteArgs),
    /// Read or seed a function's key-value store: get|set|delete|list NAME [BUCKET] KEY [VALUE]
    Kv(commands::kv::KvArgs),
    /// Run a statement on a function's SQL database, or dump it: `thaw sql NAME "SELECT ..."`,
    /// `thaw sql NAME --dump > backup.sql`
    Sql(commands::sql::SqlArgs),
    /// A function's asynchronous invocations: `thaw invocations NAME [--failed]`, or
    /// `thaw invocations get|retry|discard ID`
    Invocations(commands::invocations::InvocationsArgs),
    /// List every schedule with its next and last run and the last status
    Schedules(commands::invocations::SchedulesArgs),
    /// Print what a function wrote to stdout and stderr (-f follows)
    Logs(commands::logs::LogsArgs),
    /// Send a request to a function and print the response
    Invoke(commands::invoke::InvokeArgs),
    /// Run the build commands of a thaw.toml manifest
    Build(commands::build::BuildArgs),
    /// Build, deploy and watch a manifest's functions: every change rebuilt and live, logs
    /// streamed (starts a local host if none answers)
    Dev(commands::dev::DevArgs),
    /// Create a function project (rust, js, python, go) that builds and deploys as it is
    New(commands::new::NewArgs),
    /// Measure cold starts against wasmtime serve, processes and containers (see
    /// scripts/setup-bench for the baselines)
    Bench(thaw_bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let json_log = cli.log_format == LogFormat::Json;
    let filter = tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        // Colour only for a terminal: logs redirected to files stay greppable.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Serve(args) => commands::serve::execute(args, json_log).await,
                    Command::Deploy(args) => commands::deploy::execute(args).await,
                    Command::Push(args) => commands::push::execute(args).await,
                    Command::List(args) => commands::list::execute(args).await,
                    Command::Engines(args) => commands::engines::execute(args).await,
                    Command::Cluster(args) => commands::cluster::execute(args).await,
                    Command::Remove(args) => commands::remove::execute(args).await,
                    Command::Versions(args) => commands::versions::versions(args).await,
                    Command::Rollback(args) => commands::versions::rollback(args).await,
                    Command::Traffic(args) => commands::versions::traffic(args).await,
                    Command::Promote(args) => commands::versions::promote(args).await,
                    Command::Logs(args) => commands::logs::execute(args).await,
                    Command::Kv(args) => commands::kv::execute(args).await,
                    Command::Sql(args) => commands::sql::execute(args).await,
                    Command::Invocations(args) => commands::invocations::execute(args).await,
                    Command::Schedules(args) => commands::invocations::schedules(args).await,
                    Command::Invoke(args) => commands::invoke::execute(args).await,
                    Command::Build(args) => commands::build::execute(args),
                    Command::Dev(args) => commands::dev::execute(args).await,
                    Command::New(args) => commands::new::execute(args),
                    Command::Bench(args) => thaw_bench::execute(args).await,
                }
            })
        });
    if let Err(error) = result {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
