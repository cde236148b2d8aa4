//! Traces: a request's spans reach an OTLP/HTTP receiver (a small one here, decoding the
//! protobuf with `opentelemetry-proto`) under the caller's `traceparent`, the guest's
//! outbound request carries the trace on, and a request without one starts a new trace.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use thaw_runtime::spec::FunctionSpec;
use thaw_test_functions as wasm;

use crate::support::TestServer;

/// What the receiver saw: exported spans, and the `traceparent` of each other request.
#[derive(Default)]
struct Seen {
    spans: Vec<Span>,
    downstream: Vec<String>,
}

/// A minimal HTTP/1.1 server: `POST /v1/traces` (OTLP protobuf) is decoded into `seen`;
/// any other request is a downstream service answering 200 and noting its `traceparent`.
fn receiver() -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let seen = shared.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = HashMap::new();
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                    }
                    let length: usize = headers
                        .get("content-length")
                        .map_or(0, |v| v.parse().unwrap());
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let mut seen = seen.lock().unwrap();
                    if request_line.starts_with("POST /v1/traces") {
                        let export = ExportTraceServiceRequest::decode(body.as_slice())
                            .expect("an OTLP protobuf export");
                        for resource in export.resource_spans {
                            for scope in resource.scope_spans {
                                seen.spans.extend(scope.spans);
                            }
                        }
                    } else {
                        seen.downstream
                            .push(headers.get("traceparent").cloned().unwrap_or_default());
                    }
                    drop(seen);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_traced_under_its_callers_context_and_passes_it_on() {
    let (port, seen) = receiver();
    let mut server =
        TestServer::start_with(&["--otlp-endpoint", &format!("http://127.0.0.1:{port}")]);
    let spec = FunctionSpec {
        allowed_outbound_hosts: vec![format!("http://127.0.0.1:{port}")],
        ..Default::default()
    };
    server.deploy("faults", wasm::FAULTS, spec).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let answer = crate::support::client()
        .get(format!(
            "{}/faults/outbound?to=http://127.0.0.1:{port}/downstream",
            server.url
        ))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("outbound answered 200")
    );
    // And one without a caller's context.
    assert_eq!(server.get("/faults/ok").await.status(), 200);

    // SIGTERM: the host exports what is pending before it exits.
    let status = server.terminate().wait().unwrap();
    assert!(status.success());
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = seen.lock().unwrap().spans.clone();
        if spans.iter().filter(|s| s.name == "thaw.request").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "thaw.request").collect();
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let traced = requests
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("the request span is in the caller's trace");
    assert_eq!(hex(&traced.parent_span_id), caller_span);
    assert_eq!(attribute(traced, "faas.name").as_deref(), Some("faults"));
    assert_eq!(attribute(traced, "faas.version").as_deref(), Some("v1"));
    assert_eq!(
        attribute(traced, "http.response.status_code").as_deref(),
        Some("200")
    );
    let children = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == traced.span_id)
            .collect()
    };
    for phase in [
        "thaw.admission",
        "thaw.start",
        "thaw.handler",
        "thaw.outbound",
    ] {
        assert_eq!(
            children(phase).len(),
            1,
            "{phase} under the request: {spans:#?}"
        );
    }
    let start = children("thaw.start")[0];
    assert!(attribute(start, "thaw.start.kind").is_some());
    assert!(start.end_time_unix_nano >= start.start_time_unix_nano);
    assert!(traced.end_time_unix_nano >= children("thaw.handler")[0].end_time_unix_nano);

    // The downstream service got the trace, with the outbound span as its parent.
    let outbound = children("thaw.outbound")[0];
    let downstream = seen.lock().unwrap().downstream.clone();
    assert_eq!(
        downstream,
        vec![format!("00-{trace_id}-{}-01", hex(&outbound.span_id))]
    );

    // The other request started a trace of its own.
    let other = requests
        .iter()
        .find(|s| s.span_id != traced.span_id)
        .unwrap();
    assert_ne!(hex(&other.trace_id), trace_id);
    assert!(other.parent_span_id.is_empty());
}
