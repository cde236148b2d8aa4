//! A loopback HTTP endpoint that records what functions send it: where the event tests'
//! and benchmarks' function reports each delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A chunked body, once all of it (up to the last chunk) is in `bytes`.
fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if bytes.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// What a [`Collector`] received: each POST body with when it arrived.
pub type Received = Arc<std::sync::Mutex<Vec<(SystemTime, String)>>>;

/// A loopback HTTP endpoint that records every request body it is sent and answers 200:
/// where the event tests' function reports each delivery.
pub struct Collector {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// What arrived, in order.
    pub received: Received,
    /// Most requests it was holding at once (see [`Collector::holding`]).
    pub peak: Arc<AtomicUsize>,
}

impl Collector {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::holding(Duration::ZERO).await
    }

    /// One that answers each request `hold` after it arrived, counting how many it holds at
    /// once: a function that reports to it at the start of each delivery shows there how
    /// many deliveries ran at the same time.
    pub async fn holding(hold: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Received::default();
        let sink = received.clone();
        let peak = Arc::new(AtomicUsize::new(0));
        let holding = Arc::new(AtomicUsize::new(0));
        let (peak_seen, held) = (peak.clone(), holding.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let sink = sink.clone();
                let (peak, holding) = (peak_seen.clone(), held.clone());
                tokio::spawn(async move {
                    // The head, then as much body as its content-length says.
                    let mut seen = Vec::new();
                    let mut buf = vec![0u8; 4096];
                    let body = loop {
                        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            let rest = &seen[end + 4..];
                            if head.contains("transfer-encoding: chunked") {
                                if let Some(body) = dechunk(rest) {
                                    break body;
                                }
                            } else if rest.len() >= length {
                                break rest[..length].to_vec();
                            }
                        }
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    sink.lock().unwrap().push((
                        SystemTime::now(),
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    if !hold.is_zero() {
                        let now = holding.fetch_add(1, Ordering::AcqRel) + 1;
                        peak.fetch_max(now, Ordering::AcqRel);
                        tokio::time::sleep(hold).await;
                        holding.fetch_sub(1, Ordering::AcqRel);
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Self {
            url,
            received,
            peak,
        }
    }

    /// The bodies received so far.
    pub fn lines(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }
}
