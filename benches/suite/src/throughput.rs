//! Steady state: requests per second and latency under `wrk`, for thaw, `wasmtime serve` and
//! a plain hyper server with no wasm at all (the ceiling of this HTTP stack on this machine).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use super::report::Throughput;

/// Serves `200 Hello, world!\n` on `addr` with hyper, the way thaw's listener does, minus
/// the wasm: the baseline for thaw's overhead.
pub async fn serve_plain(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                let mut response =
                    http::Response::new(Full::new(bytes::Bytes::from_static(b"Hello, world!\n")));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs `wrk` against `url` with `connections` open connections for `duration`.
pub fn wrk(
    wrk: &Path,
    server: &str,
    url: &str,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Throughput> {
    // One wrk thread: on a small machine the load generator must leave the server its cores.
    let out = std::process::Command::new(wrk)
        .args(["-t1", "--latency", "--timeout", "10s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(url)
        .output()
        .with_context(|| format!("running {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    parse_wrk(&text, server, connections)
}

fn parse_wrk(text: &str, server: &str, connections: u32) -> anyhow::Result<Throughput> {
    let millis = |v: &str| -> Option<f64> {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().ok().map(|x| x / 1e3)
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().ok()
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().ok().map(|x| x * 1e3)
        } else {
            None
        }
    };
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(millis)
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk's output")?;
    let count_after = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map_or(0, |rest| {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                rest.split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            })
    };
    Ok(Throughput {
        server: server.to_owned(),
        concurrency: connections,
        requests_per_sec: rps,
        p50_ms: percentile("50%").context("no 50% latency")?,
        p99_ms: percentile("99%").context("no 99% latency")?,
        errors: count_after("Non-2xx or 3xx responses:") + count_after("Socket errors:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let text = "Running 5s test @ http://127.0.0.1:1/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  500.00us  12.00ms   80.00%
  Latency Distribution
     50%    1.98ms
     75%    2.30ms
     90%    2.80ms
     99%  850.00us
  70000 requests in 5.00s, 8.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  14000.50
Transfer/sec:      1.60MB
";
        let t = parse_wrk(text, "thaw", 32).unwrap();
        assert_eq!(t.requests_per_sec, 14000.5);
        assert_eq!(t.p50_ms, 1.98);
        assert_eq!(t.p99_ms, 0.85);
        assert_eq!(t.errors, 3);
    }
}
