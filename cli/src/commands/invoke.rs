//! `thaw invoke`: send one request to a function and print the response.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::commands::Target;

/// `thaw invoke` flags.
#[derive(clap::Args, Debug)]
pub struct InvokeArgs {
    /// Name of the function
    pub name: String,
    /// Path below the function's route, e.g. /items/3?full=1
    #[arg(default_value = "")]
    pub path: String,
    /// HTTP method [default: GET, or POST with a body]
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Request header, "Name: value"; repeatable
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Request body from a file
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// Print the status line and headers too
    #[arg(long, short = 'i')]
    pub include: bool,
    /// Write the body's bytes as they are even to a terminal; by default, on a terminal,
    /// control characters (escape sequences, carriage returns) are shown escaped so a
    /// function cannot drive it (into a pipe or a file the bytes always go as they are)
    #[arg(long)]
    pub raw: bool,
    /// Function traffic address of the host
    #[arg(
        long,
        env = "THAW_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Looks up the function's route, sends the request, prints the response. A 4xx or 5xx
/// answer is printed and then reported as an error (non-zero exit).
pub async fn execute(args: InvokeArgs) -> anyhow::Result<()> {
    let function = args
        .target
        .client()?
        .get(&args.name)
        .await
        .with_context(|| format!("looking up {}", args.name))?;
    // A host route is called with its host in `Host`; a wildcard's needs one chosen.
    let (host, route) = thaw_runtime::route::split(&function.route);
    let given_host = args.headers.iter().any(|h| {
        h.split(':')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("host"))
    });
    if host.is_some_and(|h| h.starts_with("*.")) && !given_host {
        anyhow::bail!(
            "{} serves the wildcard route {}: say which host with -H 'Host: name.{}'",
            args.name,
            function.route,
            &host.unwrap_or_default()[2..]
        );
    }
    let route = if route == "/" { "" } else { route };
    let path = if args.path.is_empty() || args.path.starts_with(['/', '?']) {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let url = format!("{}{route}{path}", args.url.trim_end_matches('/'));

    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Some(data.clone().into_bytes()),
        (None, Some(file)) => {
            Some(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?)
        }
        (None, None) => None,
    };
    let method = match &args.method {
        Some(m) => {
            reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).context("invalid method")?
        }
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let mut request = reqwest::Client::new().request(method, &url);
    if let Some(host) = host.filter(|_| !given_host) {
        request = request.header(reqwest::header::HOST, host);
    }
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header {header:?} is not `Name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("requesting {url}"))?;
    let status = response.status();
    let mut out = std::io::stdout().lock();
    if args.include {
        writeln!(out, "{:?} {status}", response.version())?;
        for (name, value) in response.headers() {
            writeln!(out, "{name}: {}", value.to_str().unwrap_or("<binary>"))?;
        }
        writeln!(out)?;
    }
    let bytes = response.bytes().await?;
    if args.raw || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        out.write_all(&bytes)?;
    } else {
        out.write_all(thaw_runtime::guest::log::escape_bytes(&bytes).as_bytes())?;
    }
    out.flush()?;
    anyhow::ensure!(
        !status.is_client_error() && !status.is_server_error(),
        "the function answered {status}"
    );
    Ok(())
}
