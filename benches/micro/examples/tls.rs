//! What a TLS connection costs on thaw's data plane, side by side in one run, each row a new
//! connection that sends one request to `functions/hello` and reads the answer:
//! - plain TCP;
//! - TLS 1.3, full handshake (the client keeps no session: ECDHE with P-256 and an ECDSA
//!   P-256 certificate, rustls's defaults on both sides);
//! - TLS 1.3, resumed (the client offers the session it got from the previous connection,
//!   from the server's in-memory session cache);
//! - one request on a kept-alive TLS connection, for the floor.
//!
//! Client and server are both rustls on ring, on loopback, on one runtime: the numbers are the
//! handshake's CPU on both sides plus the request, not a network. Prints medians with p10 and
//! p90 in microseconds.
//!
//! Run: `cargo run --release -p thaw-benches --example tls` (`-- 2000` for more samples).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use thaw_benches::{BenchPlatform, Setup, quantile_us, timed};
use thaw_runtime::http::tls::{Certificates, TlsSource};
use thaw_runtime::spec::FunctionSpec;

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/1.1 client connection over `io` (its driver spawned).
async fn http1<I>(io: I) -> Sender
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn hello(sender: &mut Sender) {
    let request = http::Request::get("/hello")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

fn client_config(ca: &str, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bench = BenchPlatform::new(Setup {
        on_demand: false,
        warm: 4,
        server_timing: false,
        fast_deploy: false,
    });
    let spec = FunctionSpec {
        route: Some("/hello".into()),
        ..Default::default()
    };
    bench.deploy(&rt, "hello", thaw_test_functions::HELLO, spec);

    let dir = tempfile::tempdir().unwrap();
    let ca = thaw_harness::certs::TestCa::new();
    let issued = ca.issue(&["localhost"], 30);
    let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    std::fs::write(&cert, &issued.cert).unwrap();
    std::fs::write(&key, &issued.key).unwrap();
    let certificates = Certificates::load(TlsSource::Pair { cert, key }).unwrap();

    let rows: Vec<(&str, Vec<Duration>)> = rt.block_on(async {
        let (plain, _stop_plain) = thaw_benches::serve_on_loopback(bench.platform.clone()).await;
        let (tls, _stop_tls) = thaw_benches::serve_on_loopback_with(
            bench.platform.clone(),
            Some(certificates.server_config()),
        )
        .await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let full = tokio_rustls::TlsConnector::from(client_config(&ca.pem, false));
        let resumed = tokio_rustls::TlsConnector::from(client_config(&ca.pem, true));
        let mut rows = Vec::new();
        rows.push((
            "plain: connect + request",
            timed(n, |_| async move {
                let tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                hello(&mut http1(tcp).await).await;
            })
            .await,
        ));
        rows.push((
            "TLS 1.3 full handshake + request",
            timed(n, |_| {
                let (full, name) = (full.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let stream = full.connect(name, tcp).await.unwrap();
                    hello(&mut http1(stream).await).await;
                }
            })
            .await,
        ));
        rows.push((
            "TLS 1.3 resumed + request",
            timed(n, |i| {
                let (resumed, name) = (resumed.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let stream = resumed.connect(name, tcp).await.unwrap();
                    // Every one but the very first (a warm-up round) resumes.
                    let kind = stream.get_ref().1.handshake_kind();
                    assert!(
                        i == 0 || kind == Some(rustls::HandshakeKind::Resumed),
                        "{kind:?}"
                    );
                    hello(&mut http1(stream).await).await;
                }
            })
            .await,
        ));
        let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let stream = full.connect(name.clone(), tcp).await.unwrap();
        let sender = Arc::new(tokio::sync::Mutex::new(http1(stream).await));
        rows.push((
            "kept-alive TLS connection: request",
            timed(n, |_| {
                let sender = sender.clone();
                async move { hello(&mut *sender.lock().await).await }
            })
            .await,
        ));
        rows
    });
    println!("| row | median µs | p10 | p90 | n |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mut samples) in rows {
        samples.sort();
        let at = |q: f64| quantile_us(&samples, q);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} |",
            at(0.5),
            at(0.1),
            at(0.9),
            samples.len()
        );
    }
}
