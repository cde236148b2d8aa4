//! Measuring "start to first response byte" over 127.0.0.1, and running baseline processes
//! so that none outlives its sample.
//!
//! The probe is a blocking socket, not an HTTP client library: the number wanted is when the
//! first byte of the answer arrives, and a client library adds its own work between the
//! socket and the caller. Every sample opens a new connection, for every setup alike, so the
//! TCP handshake is in every number.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use thaw_spec::api::ReadyLine;

/// What one probe saw.
#[derive(Debug)]
pub struct FirstByte {
    /// From the caller's start to the first response byte.
    pub elapsed: Duration,
    /// The response head (status line and headers).
    pub head: String,
}

/// Connects to `addr` (retrying while nothing listens yet, until `deadline`), sends
/// `GET path`, and returns the time from `start` to the first response byte, after reading
/// the whole response and checking it is a 200.
pub fn first_byte(
    addr: SocketAddr,
    path: &str,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<FirstByte> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: thaw-bench\r\n\r\n");
    loop {
        match attempt(addr, request.as_bytes(), start) {
            Ok(seen) => return Ok(seen),
            // Nothing listens yet, or the server closed before answering (still starting).
            Err(Attempt::NotYet(e)) => {
                if Instant::now() >= deadline {
                    return Err(e).context(format!("no answer from {addr} in time"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

/// The body of `GET path`, asked as HTTP/1.0 so that it comes whole and unchunked, ended by
/// the server closing the connection.
pub fn body(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no response head from {addr}{path}"))?;
    Ok(body.to_owned())
}

enum Attempt {
    NotYet(std::io::Error),
    Failed(anyhow::Error),
}

fn attempt(addr: SocketAddr, request: &[u8], start: Instant) -> Result<FirstByte, Attempt> {
    let mut stream = TcpStream::connect(addr).map_err(Attempt::NotYet)?;
    let _ = stream.set_nodelay(true);
    let io = |e: std::io::Error| Attempt::Failed(e.into());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    stream.write_all(request).map_err(Attempt::NotYet)?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = match stream.read(&mut buf) {
        Ok(0) => {
            return Err(Attempt::NotYet(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before answering",
            )));
        }
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(Attempt::NotYet(e)),
        Err(e) => return Err(io(e)),
    };
    let elapsed = start.elapsed();
    // The rest of the response: the head, then Content-Length bytes (or chunks, to the end).
    let mut seen = buf[..n].to_vec();
    let head_end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Err(Attempt::Failed(anyhow::anyhow!("response head cut off")));
        }
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
    if !(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")) {
        return Err(Attempt::Failed(anyhow::anyhow!(
            "expected a 200, got: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(length) => {
            while seen.len() < head_end + length {
                let n = stream.read(&mut buf).map_err(io)?;
                if n == 0 {
                    return Err(Attempt::Failed(anyhow::anyhow!("response body cut off")));
                }
                seen.extend_from_slice(&buf[..n]);
            }
        }
        // Chunked: read up to the last chunk.
        None => {
            while !seen.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
        }
    }
    Ok(FirstByte { elapsed, head })
}

/// `thaw serve` with both listeners on free loopback ports (port 0) and `data_dir`: how the
/// suite, the tests and the benchmarks all start a host (the caller adds flags, environment
/// and stdio; [`wait_ready_line`] reads the addresses it bound).
pub fn serve_command(thaw: &Path, data_dir: &Path) -> Command {
    let mut command = Command::new(thaw);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir);
    command
}

/// Reads a `thaw serve`'s stdout (on a thread, to its end) until it prints its ready line;
/// `None` if it does not within `bound` (a bound for a hung start, not a speed claim).
pub fn wait_ready_line(stdout: ChildStdout, bound: Duration) -> Option<ReadyLine> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(ready) = ReadyLine::parse(&line) {
                let _ = tx.send(ready);
            }
        }
    });
    rx.recv_timeout(bound).ok()
}

/// A free port on 127.0.0.1 (bound, then released; the caller checks it again before use).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Fails unless nothing answers on `addr`: a server left over from an earlier sample (a
/// container that outlived its runtime) would otherwise answer and fake the next result.
/// Waits up to two seconds for a closing one to go away.
pub fn ensure_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            Err(_) => return Ok(()),
            Ok(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => anyhow::bail!(
                "{addr} still answers before the sample starts: a server from an earlier \
                 sample outlived its process group"
            ),
        }
    }
}

/// A baseline process in its own process group; dropping it kills the whole group.
pub struct Group {
    child: Child,
}

impl Group {
    /// Spawns `command` as the leader of a new process group, with no terminal I/O.
    pub fn spawn(command: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Self { child })
    }

    /// Takes charge of a child that was spawned with `process_group(0)`.
    pub fn adopt(child: Child) -> Self {
        Self { child }
    }

    /// The leader's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_reads_a_whole_response() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel")
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(b"lo").unwrap();
        });
        let start = Instant::now();
        let seen = first_byte(addr, "/", start, start + Duration::from_secs(5)).unwrap();
        assert!(seen.head.contains("content-length: 5"));
        assert!(seen.elapsed < start.elapsed());
    }

    #[test]
    fn a_refused_port_is_retried_until_the_deadline() {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        ensure_port_free(addr).unwrap();
        let start = Instant::now();
        let err = first_byte(addr, "/", start, start + Duration::from_millis(50)).unwrap_err();
        assert!(format!("{err:#}").contains("no answer"), "{err:#}");
    }
}
