//! A test host: the real `thaw` binary, started on free ports with its own data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use thaw_client::AdminClient;
pub use thaw_harness::{Collector, Killed, eventually, free_port, required, service_binaries};
pub use thaw_runtime::api::ErrorCode;
use thaw_runtime::spec::FunctionSpec;

/// A running `thaw serve`.
pub struct TestServer {
    child: Option<Child>,
    /// Function traffic, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Admin API.
    pub admin_url: String,
    /// `GET /metrics` without authentication, with `--metrics-listen`.
    pub metrics_url: Option<String>,
    /// The data directory (kept across restarts by [`TestServer::restart`]).
    pub data_dir: PathBuf,
    /// Where the server's log (stderr) goes.
    pub log_path: PathBuf,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with a fresh data directory and extra `serve` flags.
    pub fn start_with(args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut server = Self::spawn(&data_dir, args.iter().map(|s| s.to_string()).collect(), 0);
        server._tmp = Some(tmp);
        server
    }

    /// A server with a fresh data directory, extra `serve` flags and environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = args.iter().map(|s| s.to_string()).collect();
        let mut server = Self::spawn_limited(&data_dir, args, env, 0, None);
        server._tmp = Some(tmp);
        server
    }

    /// A server whose address space is limited to `bytes` (`ulimit -v`), too small for the
    /// instance pool.
    pub fn start_with_address_space_limit(bytes: u64) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut server = Self::spawn_limited(&data_dir, Vec::new(), Vec::new(), 0, Some(bytes));
        server._tmp = Some(tmp);
        server
    }

    fn spawn(data_dir: &Path, extra_args: Vec<String>, generation: usize) -> Self {
        Self::spawn_limited(data_dir, extra_args, Vec::new(), generation, None)
    }

    fn spawn_limited(
        data_dir: &Path,
        extra_args: Vec<String>,
        extra_env: Vec<(String, String)>,
        generation: usize,
        address_space: Option<u64>,
    ) -> Self {
        let log_path = data_dir.with_file_name(format!("server-{generation}.log"));
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command =
            thaw_harness::process::serve_command(Path::new(env!("CARGO_BIN_EXE_thaw")), data_dir);
        if let Some(bytes) = address_space {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(&extra_args)
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            // A small pool keeps the address-space reservation of many parallel test servers
            // modest; tests that need more pass `--instance-slots`, which wins over the env.
            .env("THAW_INSTANCE_SLOTS", "32")
            .env("THAW_LOG", "info,thaw_runtime=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting thaw serve");
        let stdout = child.stdout.take().unwrap();
        let Some(ready) = thaw_harness::process::wait_ready_line(stdout, Duration::from_secs(120))
        else {
            let _ = child.kill();
            panic!(
                "thaw serve did not start; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        Self {
            child: Some(child),
            url: format!(
                "{}://{}",
                if ready.tls { "https" } else { "http" },
                ready.functions
            ),
            admin_url: format!("http://{}", ready.admin),
            metrics_url: ready.metrics.map(|addr| format!("http://{addr}/metrics")),
            data_dir: data_dir.to_path_buf(),
            log_path,
            extra_args,
            extra_env,
            _tmp: None,
        }
    }

    /// SIGKILLs the server (no drain, no cleanup) and starts a new one on the same data
    /// directory and flags.
    pub fn kill_and_restart(&mut self, generation: usize) {
        self.kill_and_restart_with(generation, &[]);
    }

    /// [`TestServer::kill_and_restart`] with `more` flags for this start only.
    pub fn kill_and_restart_with(&mut self, generation: usize, more: &[&str]) {
        self.kill9();
        let args = self.extra_args.iter().cloned();
        let mut next = Self::spawn_limited(
            &self.data_dir,
            args.chain(more.iter().map(|s| s.to_string())).collect(),
            self.extra_env.clone(),
            generation,
            None,
        );
        next._tmp = self._tmp.take();
        next.extra_args = std::mem::take(&mut self.extra_args);
        *self = next;
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Polls the admin view of function `name` (or the host's status, for `None`) until
    /// `done` holds, and returns that view; bounded at 30 s, then panics naming `what`.
    pub async fn wait_for(
        &self,
        name: Option<&str>,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let admin = self.admin();
        let (done, admin) = (&done, &admin);
        let last = std::sync::Mutex::new(serde_json::Value::Null);
        let last = &last;
        let found = thaw_harness::wait::within(Duration::from_secs(30), || async move {
            let view = match name {
                Some(name) => admin.get(name).await,
                None => admin.status().await,
            }
            .expect("admin API");
            if done(&view) {
                return Some(view);
            }
            *last.lock().unwrap() = view;
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; last seen: {}",
                last.lock().unwrap()
            )
        })
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns the child to wait on.
    pub fn terminate(&mut self) -> Child {
        let child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The admin token the server created in its data directory.
    pub fn token(&self) -> String {
        use thaw_runtime::http::auth::{TOKEN_FILE, read_token};
        read_token(&self.data_dir.join(TOKEN_FILE))
            .unwrap()
            .expect("the server wrote its admin token")
    }

    /// The admin client, with the server's token.
    pub fn admin(&self) -> Admin {
        Admin(AdminClient::new(&self.admin_url, Some(self.token())))
    }

    /// A raw admin request with the server's token.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(self.token())
    }

    /// Deploys a wasm file with a spec; panics with the server's reason on failure.
    pub async fn deploy(
        &self,
        name: &str,
        wasm_path: &str,
        spec: FunctionSpec,
    ) -> serde_json::Value {
        self.admin()
            .deploy(name, &spec, thaw_test_functions::read(wasm_path).into())
            .await
            .unwrap_or_else(|e| panic!("deploying {name}: {e:#}"))
    }

    /// `GET url + path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET")
    }
}

/// The admin client as the tests use it: the shared client and wire types
/// (`thaw_client::AdminClient`, `thaw_runtime::api`), so every answer is decoded into the
/// types the server encodes, then handed to the test as JSON for terse assertions.
pub struct Admin(AdminClient);

impl Admin {
    /// The typed client, for answers a test checks field by field.
    pub fn typed(&self) -> &AdminClient {
        &self.0
    }

    /// `GET /v1/functions/{name}`.
    pub async fn get(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.0.get(name).await?)?)
    }

    /// `GET /v1/functions`.
    pub async fn list(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let all = self.0.list().await?;
        Ok(all
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.0.status().await?)?)
    }

    /// `DELETE /v1/functions/{name}`.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.0.remove(name).await?)
    }

    /// `PUT /v1/functions/{name}`.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &FunctionSpec,
        wasm: bytes::Bytes,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(
            self.0.deploy(name, spec, wasm).await?,
        )?)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A shared HTTP client.
/// The `thaw` CLI aimed at `server`, beside it: the admin URL, and the data directory where
/// it finds the admin token.
pub fn thaw_command(server: &TestServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_thaw"));
    command
        .args(args)
        .env("THAW_ADMIN_URL", &server.admin_url)
        .env("THAW_DATA_DIR", &server.data_dir)
        .env_remove("THAW_ADMIN_TOKEN")
        .env("THAW_URL", &server.url)
        .env("NO_COLOR", "1");
    command
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The data plane's `host:port`.
pub fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Writes `request` on a fresh connection and reads until the server closes it (bounded).
pub async fn raw_exchange(server: &TestServer, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr(server)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// A client whose connections come from `source` (another loopback address, say: a
/// second client as the server sees it).
pub fn client_from(source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .local_address(source)
        .build()
        .unwrap()
}

/// A spec with only a route.
pub fn route(route: &str) -> FunctionSpec {
    FunctionSpec {
        route: Some(route.into()),
        ..Default::default()
    }
}

/// Raw deploy of arbitrary bytes (garbage, truncated modules); returns status and body.
pub async fn deploy_raw(server: &TestServer, name: &str, bytes: Vec<u8>) -> (u16, String) {
    let response = server
        .admin_request(reqwest::Method::PUT, &format!("/v1/functions/{name}"))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Raw multipart deploy with a spec given as JSON text; returns the response as is.
pub async fn deploy_multipart(
    server: &TestServer,
    name: &str,
    spec_json: &str,
    wasm_path: &str,
) -> reqwest::Response {
    server
        .admin_request(reqwest::Method::PUT, &format!("/v1/functions/{name}"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("spec", spec_json.to_owned())
                .part(
                    "wasm",
                    reqwest::multipart::Part::bytes(thaw_test_functions::read(wasm_path)),
                ),
        )
        .send()
        .await
        .unwrap()
}

/// How often `function` (an admin view) hit `limit`.
pub fn hits(function: &serde_json::Value, limit: &str) -> u64 {
    function["limit_hits"][limit]
        .as_u64()
        .unwrap_or_else(|| panic!("no limit_hits.{limit} in {function}"))
}

/// The host still answers `/hello` (deployed by the test) with its exact body.
pub async fn assert_healthy(server: &TestServer) {
    let r = server.get("/hello").await;
    assert_eq!(r.status(), 200, "the host still serves a healthy function");
    assert_eq!(r.text().await.unwrap(), "Hello, world!\n");
}

/// The admin API's code in an error from [`Admin`] (or a client call), if it answered with one.
pub fn error_code(e: &anyhow::Error) -> Option<ErrorCode> {
    e.downcast_ref::<thaw_client::Error>()
        .and_then(thaw_client::Error::code)
}

/// Reads an HTTP request's head (up to its blank line) from `socket`; `None` if the peer
/// closed first.
pub async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// A tiny HTTP upstream on 127.0.0.1 answering `200 upstream` to each connection; returns
/// its port.
pub async fn upstream() -> u16 {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut socket).await.is_some() {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
                        )
                        .await;
                }
            });
        }
    });
    port
}

/// A listener that accepts and never answers; returns its port.
pub async fn black_hole() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}
