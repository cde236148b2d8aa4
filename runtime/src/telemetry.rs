//! Traces: the W3C trace context of each request, in and out, and spans of what thaw did for
//! it, exported (over OTLP/HTTP, by the CLI's exporter) with the `opentelemetry` crates.
//!
//! # Shape of a trace
//! A request is one server span (`thaw.request`, from its arrival at the function to the
//! response head), the child of the caller's span when the request carries `traceparent`
//! (and `tracestate`), the root of a new trace otherwise. Its children are the phases thaw
//! already times for `Server-Timing`: `thaw.admission` (waiting for a concurrency place),
//! `thaw.start` (getting an instance, with its start kind) and `thaw.handler` (the guest
//! until the response head), and one client span per outbound request the guest sends,
//! whose context goes out in that request's `traceparent` so the next service continues the
//! trace.
//!
//! # Cost
//! Nothing at all without `--otlp-endpoint`: the request path holds an `Option` and takes no
//! clock reading, header parse or allocation for traces. With it, the phase spans are built
//! when the response head is ready, from the instants the request path measured anyway
//! (not as live spans around each phase), and exported in batches by the SDK's own thread.

use std::time::{Instant, SystemTime};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The exporter and tracer of a host that exports traces.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Exports with `exporter` (the CLI gives it the OTLP/HTTP one: the library carries no
    /// HTTP client), in batches on the SDK's own thread.
    pub fn new(exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static) -> Self {
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("thaw")
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "thaw");
        Self { provider, tracer }
    }

    /// Starts the server span of a request to `function` (version `version`), under the
    /// caller's trace context if `headers` carry one.
    pub fn begin(
        &self,
        headers: &http::HeaderMap,
        method: &http::Method,
        function: &str,
        version: u64,
    ) -> RequestTrace {
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder("thaw.request")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("faas.name", function.to_owned()),
                KeyValue::new("faas.version", format!("v{version}")),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
            arrived: Instant::now(),
            arrived_at: SystemTime::now(),
        }
    }

    /// Exports what is pending and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("flushing traces: {e}");
        }
    }
}

/// One request's trace: its server span, and the clock it started on.
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
    arrived: Instant,
    arrived_at: SystemTime,
}

impl RequestTrace {
    /// The wall-clock time of an instant measured during the request.
    fn at(&self, t: Instant) -> SystemTime {
        self.arrived_at + t.saturating_duration_since(self.arrived)
    }

    fn child(&self, name: &'static str, from: Instant, to: Instant, attributes: Vec<KeyValue>) {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_start_time(self.at(from))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        span.end_with_timestamp(self.at(to));
    }

    /// The phases, from the instants the request path measured: admitted (a concurrency
    /// place, if the function has a limit), an instance ready (of `kind`), the response head.
    pub fn phases(&self, admitted: Instant, ready: Instant, head: Instant, kind: &'static str) {
        self.child("thaw.admission", self.arrived, admitted, Vec::new());
        self.child(
            "thaw.start",
            admitted,
            ready,
            vec![KeyValue::new("thaw.start.kind", kind)],
        );
        self.child("thaw.handler", ready, head, Vec::new());
    }

    /// What the guest's outbound requests need to join the trace.
    pub fn outbound(&self) -> OutboundTrace {
        OutboundTrace {
            cx: self.cx.clone(),
            tracer: self.tracer.clone(),
        }
    }

    /// Ends the server span with the response's status.
    pub fn finish(self, status: http::StatusCode) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        span.end();
    }
}

/// The trace context a guest's outbound requests continue.
#[derive(Clone)]
pub struct OutboundTrace {
    cx: Context,
    tracer: SdkTracer,
}

impl OutboundTrace {
    /// Starts the client span of an outbound request and writes its context into the
    /// request's `traceparent` (and `tracestate`). End the span when the answer comes.
    pub fn start<B>(&self, request: &mut http::Request<B>) -> opentelemetry_sdk::trace::Span {
        let span = self
            .tracer
            .span_builder("thaw.outbound")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", request.method().as_str().to_owned()),
                KeyValue::new("url.full", request.uri().to_string()),
            ])
            .start_with_context(&self.tracer, &self.cx);
        let cx = self
            .cx
            .with_remote_span_context(span.span_context().clone());
        TraceContextPropagator::new().inject_context(
            &cx,
            &mut opentelemetry_http::HeaderInjector(request.headers_mut()),
        );
        span
    }
}
