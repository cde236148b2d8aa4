//! The services tests and benchmarks start beside thaw, from Debian (scripts/install-services
//! installs them), each on free loopback ports, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{Killed, free_port, wait_port};

/// How long a service may take to start listening (a bound for a hung start).
const START_BOUND: Duration = Duration::from_secs(20);

/// Whether CI asks for what `var` names (`THAW_REQUIRE_WASMTIME`, `_TOOLCHAINS`,
/// `_SERVICES`): any non-empty value requires it, and a test that would skip fails instead.
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// The binaries of a service (from Debian `package`), or `None`: the test is skipped, unless
/// CI requires the services (`THAW_REQUIRE_SERVICES`), where a missing one fails.
pub fn service_binaries<const N: usize>(names: [&str; N], package: &str) -> Option<[PathBuf; N]> {
    let found = names.map(|name| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.iter().all(Option::is_some) {
        return Some(found.map(Option::unwrap));
    }
    assert!(
        !required("THAW_REQUIRE_SERVICES"),
        "{names:?} missing; scripts/install-services installs them (Debian's {package})"
    );
    eprintln!("skipped: {package} is not installed");
    None
}

/// A one-member etcd, its data kept across [`Etcd::restart`]s.
pub struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    process: Option<Killed>,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy; `None` if it is not installed.
    pub fn start() -> Option<Self> {
        let [binary] = service_binaries(["etcd"], "etcd-server")?;
        let mut etcd = Self {
            binary,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            process: None,
        };
        etcd.restart();
        Some(etcd)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again, on the same data and ports) and waits until it answers healthy.
    pub fn restart(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.dir.path().join("etcd.log");
        let child = Command::new(&self.binary)
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("etcd's log"))
            .spawn()
            .expect("starting etcd");
        self.process = Some(Killed(child));
        let health = format!("{client}/health");
        let deadline = std::time::Instant::now() + START_BOUND;
        while std::time::Instant::now() < deadline {
            if blocking_get(&health).is_ok_and(|body| body.contains("true")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd did not become healthy; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops it (the data stays for a restart).
    pub fn stop(&mut self) {
        self.process = None;
    }
}

/// A NATS server with JetStream, its store kept across [`Nats::restart`]s.
pub struct Nats {
    // First: fields drop in order, and the server goes before its store.
    process: Option<Killed>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nats {
    /// Starts `nats-server -js` and waits until it listens; `None` if it is not installed.
    pub fn start() -> Option<Self> {
        let [binary] = service_binaries(["nats-server"], "nats-server")?;
        let mut nats = Self {
            binary,
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            process: None,
        };
        nats.restart();
        Some(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (`SIGKILL`: no goodbye to its clients) if it runs, then starts it again on
    /// the same port and store, and waits until it listens.
    pub fn restart(&mut self) {
        self.process = None;
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.process = Some(Killed(child));
        assert!(
            wait_port(self.port, START_BOUND),
            "nats-server did not listen"
        );
    }
}

/// A GET with std only (etcd's health, before any async runtime exists).
fn blocking_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// An OCI registry (Debian's `docker-registry`, the CNCF distribution registry) on loopback,
/// storing on disk in its own directory, with one user by HTTP basic authentication
/// (`htpasswd`, bcrypt, from Debian's `apache2-utils`): plain HTTP, as a registry on loopback
/// is spoken to.
pub struct Registry {
    // First: the server goes before its directory.
    _process: Killed,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Registry {
    /// Starts the registry with `user` and `password` as its only account, and waits until it
    /// answers; `None` if it is not installed.
    pub fn start(user: &str, password: &str) -> Option<Self> {
        let [registry, htpasswd] = service_binaries(
            ["docker-registry", "htpasswd"],
            "docker-registry apache2-utils",
        )?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let users = Command::new(htpasswd)
            .args(["-Bbn", user, password])
            .output()
            .expect("running htpasswd");
        assert!(users.status.success(), "htpasswd failed");
        std::fs::write(dir.path().join("htpasswd"), users.stdout).expect("writing htpasswd");
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: thaw-tests\n\
             auth:\n  htpasswd:\n    realm: thaw-tests\n    path: {users}\n",
            root = dir.path().join("data").display(),
            users = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("writing the registry's config");
        let child = Command::new(registry)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("its log"))
            .spawn()
            .expect("starting docker-registry");
        let process = Killed(child);
        let address = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + START_BOUND;
        // Up when /v2/ answers, which it does with a 401 asking for credentials.
        while !blocking_get(&format!("http://{address}/v2/"))
            .is_ok_and(|r| r.starts_with("HTTP/1."))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not answer; log:\n{}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            _process: process,
            dir,
            address,
        })
    }

    /// The file the registry keeps a blob in (`sha256:HEX`), to tamper with it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// HAProxy in front of thaw nodes, as a cluster's operator would run it: round robin,
/// health checks on `/readyz`, a refused connection retried on another node.
pub struct HaProxy {
    _process: Killed,
    /// Its frontend, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl HaProxy {
    /// Starts HAProxy in front of `backends` (`host:port` each), its config and log in
    /// `dir`, and waits until it listens; `None` if it is not installed.
    pub fn start(dir: &Path, backends: &[String]) -> Option<Self> {
        let [binary] = service_binaries(["haproxy"], "haproxy")?;
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, backend)| format!("  server n{i} {backend} check\n"))
            .collect();
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 3\n  option redispatch\n  retry-on conn-failure empty-response\n  option forwardfor\n\
             frontend functions\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /readyz\n  \
             default-server inter 200ms fall 2 rise 1\n{servers}"
        );
        let path = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, config).expect("writing haproxy's config");
        let child = Command::new(binary)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("haproxy-{port}.log")))
                    .expect("haproxy's log"),
            )
            .spawn()
            .expect("starting haproxy");
        let process = Killed(child);
        assert!(wait_port(port, START_BOUND), "haproxy did not listen");
        Some(Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

/// A Redis server: without persistence ([`Redis::start`]), or writing every change to its
/// append-only file before answering ([`Redis::durable`]), so that a [`Redis::restart`] after
/// `SIGKILL` comes back with its streams and consumer groups, as a production Redis would.
pub struct Redis {
    // First: fields drop in order, and the server goes before its directory.
    process: Option<Killed>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    durable: bool,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl Redis {
    /// Starts `redis-server` with no persistence and waits until it listens; `None` if it is
    /// not installed.
    pub fn start() -> Option<Self> {
        Self::with(false)
    }

    /// Starts `redis-server` with `appendfsync always`; `None` if it is not installed.
    pub fn durable() -> Option<Self> {
        Self::with(true)
    }

    fn with(durable: bool) -> Option<Self> {
        let [binary] = service_binaries(["redis-server"], "redis-server")?;
        let port = free_port();
        let mut redis = Self {
            binary,
            dir: tempfile::tempdir().expect("tempdir"),
            port,
            durable,
            process: None,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.restart();
        Some(redis)
    }

    /// Kills it (`SIGKILL`); [`Redis::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Kills it (`SIGKILL`) if it runs, then starts it again on the same port and directory,
    /// and waits until it listens.
    pub fn restart(&mut self) {
        self.process = None;
        let persistence: &[&str] = if self.durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.process = Some(Killed(child));
        assert!(
            wait_port(self.port, START_BOUND),
            "redis-server did not listen"
        );
    }
}

/// A throwaway Postgres cluster (Debian's `postgresql`: `initdb` and `postgres` from
/// `/usr/lib/postgresql/<version>/bin`, or PATH), trust authentication for `postgres` on
/// loopback. Postgres refuses to run as root: as root, it runs as the `postgres` user the
/// package creates, in a directory handed to that user.
pub struct Postgres {
    // First: the server goes before its directory.
    process: Option<Killed>,
    binaries: [PathBuf; 3],
    dir: tempfile::TempDir,
    port: u16,
    user: Option<(u32, u32)>,
    /// Whether it serves TLS (see [`Postgres::start_with_tls`]).
    tls: bool,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl Postgres {
    /// Initialises a cluster and starts it; `None` if Postgres is not installed.
    pub fn start() -> Option<Self> {
        Self::with(false)
    }

    /// [`Postgres::start`] serving TLS too (`ssl=on`), with a server certificate for
    /// `127.0.0.1` signed by a CA of its own; the CA's PEM file is the second value.
    pub fn start_with_tls() -> Option<(Self, PathBuf)> {
        let pg = Self::with(true)?;
        let ca = pg.dir.path().join("ca.pem");
        Some((pg, ca))
    }

    fn with(tls: bool) -> Option<Self> {
        let binaries = postgres_binaries()?;
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            let ids = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                assert!(
                    out.status.success(),
                    "no `postgres` user to run Postgres as (Debian's postgresql creates it)"
                );
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("a numeric id")
            };
            let (uid, gid) = (ids("-u"), ids("-g"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
            Some((uid, gid))
        } else {
            None
        };
        let port = free_port();
        let mut pg = Self {
            process: None,
            binaries,
            dir,
            port,
            user,
            tls,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        let mut initdb = pg.command(0);
        initdb
            .args(["-D"])
            .arg(pg.dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null());
        let out = initdb.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            pg.write_certificates();
        }
        pg.restart();
        Some(pg)
    }

    /// `ca.pem` beside the data, and `server.crt`/`server.key` (for `127.0.0.1`, signed by
    /// that CA) in it, owned by the server's user and private, as Postgres requires.
    fn write_certificates(&self) {
        let ca = crate::certs::TestCa::new();
        let issued = ca.issue(&["localhost", "127.0.0.1"], 30);
        std::fs::write(self.dir.path().join("ca.pem"), &ca.pem).expect("ca.pem");
        let data = self.dir.path().join("data");
        for (name, pem) in [("server.crt", issued.cert), ("server.key", issued.key)] {
            let path = data.join(name);
            std::fs::write(&path, pem).expect("certificate file");
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
            }
        }
    }

    fn command(&self, which: usize) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(&self.binaries[which]);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts the server (again, on the same data and port) and waits until it listens.
    pub fn restart(&mut self) {
        self.process = None;
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log");
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(self.dir.path().join("postgres.log"), Some(uid), Some(gid))
                .expect("chown");
        }
        let child = self
            .command(1)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(self.dir.path())
            // A test's database, not a durable one.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            // The certificate files `write_certificates` put in the data directory, where
            // Postgres looks for them by default.
            .args(if self.tls { &["-c", "ssl=on"][..] } else { &[] })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        self.process = Some(Killed(child));
        // It listens before it accepts connections ("the database system is starting up").
        let deadline = std::time::Instant::now() + START_BOUND;
        let ready = || {
            Command::new(&self.binaries[2])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not become ready; log:\n{}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (`SIGKILL`); the data stays for a restart.
    pub fn stop(&mut self) {
        self.process = None;
    }
}

/// `initdb`, `postgres` and `pg_isready`: on PATH, or in Debian's versioned directory.
fn postgres_binaries() -> Option<[PathBuf; 3]> {
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .find(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file());
    if let Some(bin) = versioned {
        return Some([
            bin.join("initdb"),
            bin.join("postgres"),
            bin.join("pg_isready"),
        ]);
    }
    service_binaries(["initdb", "postgres", "pg_isready"], "postgresql")
}

/// A Prometheus server.
pub struct Prometheus {
    _process: Killed,
    /// Its HTTP API, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts `binary` with `config` (prometheus.yml's text), its data and log in `dir`, and
    /// waits until it listens.
    pub fn start(binary: &Path, dir: &Path, config: &str) -> Self {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus's log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let process = Killed(child);
        assert!(wait_port(port, START_BOUND), "prometheus did not listen");
        Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}
