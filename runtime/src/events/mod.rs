//! Events: what starts a function besides a synchronous HTTP request. Schedules
//! ([`schedule`]) and asynchronous invocations with retries and dead letters
//! ([`invocations`]), kept durable in the data directory ([`store`]).
//!
//! # Events are requests
//! Every event reaches its function as an HTTP request through the same request path as a
//! client's ([`crate::invoke::invoke`]): the function's concurrency gate, the host's
//! admission, the warm pool, limits, statistics, logs and traces all apply, and nothing
//! bypasses them. A burst of events queues where a burst of clients would. The request
//! carries CloudEvents 1.0 binary-mode headers ([`CloudEvent`]), so any `wasi:http`
//! component can handle events unchanged, and the SDKs read them as an `Event`.
//!
//! # What this module does not do
//! - It does not run a broker. Durability is the data directory's (one host), or NATS
//!   JetStream's with `--queue nats://` ([`invocations::jetstream`], for a cluster). Delivery
//!   is at least once: an attempt interrupted by a crash runs again, so a handler that must
//!   not repeat an effect keys it by `ce-id`.
//! - It does not order deliveries: attempts of one function run concurrently, up to its
//!   `max_concurrency` (or [`DEFAULT_EVENT_CONCURRENCY`]).

pub mod invocations;
pub mod schedule;
pub mod store;
pub mod triggers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};

use crate::control::Platform;
use crate::function::Function;
use crate::invoke::{Peer, invoke};

pub use invocations::Invocations;
pub use schedule::{LocalClaims, Scheduler, TickClaims};
use store::EventStore;

/// How many events of one function a host delivers at once when the function sets no
/// `max_concurrency`: enough to keep a few cores busy with short handlers, few enough that
/// a queue draining after downtime leaves instance slots for HTTP clients.
pub const DEFAULT_EVENT_CONCURRENCY: usize = 16;

/// The host's event settings.
#[derive(Clone, Debug)]
pub struct EventOptions {
    /// How long a finished invocation's result is kept, readable at its `Location`.
    pub result_retention: Duration,
    /// How long a dead letter is kept (unless retried or discarded first).
    pub dead_letter_retention: Duration,
    /// Most bytes of a response body kept as an invocation's result; the rest is cut (and
    /// the result says so).
    pub max_result_bytes: usize,
    /// Most bytes of an asynchronous request's body (it is stored); the function's own
    /// `max_request_body_kib` applies too.
    pub max_async_body_bytes: u64,
    /// The NATS server queue triggers consume (`--events-nats`), if any; also the shared
    /// queue's when `shared_queue` is set.
    pub nats_url: Option<String>,
    /// Asynchronous invocations are kept on NATS JetStream (`--queue nats://...`, for a
    /// cluster) instead of the data directory.
    pub shared_queue: bool,
    /// The Redis server queue triggers consume (`--events-redis`), if any.
    pub redis_url: Option<String>,
    /// This node's name as a consumer of a Redis stream's group (unique per node).
    pub node: String,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            // A day to read a result; a week to notice and replay a dead letter.
            result_retention: Duration::from_secs(24 * 3600),
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
            // A result is read once or twice and kept in the data directory: 1 MiB is a
            // large API answer, and 10,000 queued results stay under 10 GiB.
            max_result_bytes: 1 << 20,
            max_async_body_bytes: 1 << 20,
            nats_url: None,
            shared_queue: false,
            redis_url: None,
            node: "thaw".into(),
        }
    }
}

/// The host's events: the store, the asynchronous invocations and the schedules.
pub struct Events {
    platform: Arc<Platform>,
    store: EventStore,
    options: EventOptions,
    /// Asynchronous invocations.
    pub invocations: Invocations,
    /// Their queue on NATS JetStream, with `shared_queue` (set once, at open).
    shared_queue: std::sync::OnceLock<Arc<invocations::jetstream::SharedQueue>>,
    /// Schedules.
    pub schedules: Scheduler,
    /// Queue triggers.
    pub triggers: triggers::Triggers,
    /// The NATS connection, made on first use (it reconnects by itself after that).
    nats: tokio::sync::OnceCell<async_nats::Client>,
    /// Times the NATS client connected again after losing the server.
    nats_reconnects: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Opens the event store in `platform`'s data directory and rebuilds the queue from it,
    /// or connects to the shared queue on NATS. Nothing runs until [`Events::start`].
    pub async fn open(platform: Arc<Platform>, options: EventOptions) -> anyhow::Result<Arc<Self>> {
        let store = EventStore::open(&platform.data_dir().events())?;
        let invocations = Invocations::recover(&store)?;
        let schedules = Scheduler::new(&store)?;
        let events = Arc::new(Self {
            platform,
            store,
            options,
            invocations,
            shared_queue: Default::default(),
            schedules,
            triggers: Default::default(),
            nats: Default::default(),
            nats_reconnects: Default::default(),
        });
        if events.options.shared_queue {
            // Those would never run: the embedded queue is not started beside the shared one.
            let waiting = events.invocations.waiting();
            if waiting > 0 {
                anyhow::bail!(
                    "the data directory holds {waiting} asynchronous invocations not yet run: \
                     start once without --queue so that they run, then with it"
                );
            }
            let client = events.nats().await?;
            let shared = invocations::jetstream::SharedQueue::open(client)
                .await
                .map_err(|e| anyhow::anyhow!("the invocation queue on NATS JetStream: {e}"))?;
            let _ = events.shared_queue.set(Arc::new(shared));
        }
        Ok(events)
    }

    /// Each function's asynchronous invocation queue, as this node sees it.
    pub fn queue_stats(&self) -> Vec<crate::api::QueueInfo> {
        match self.shared_queue.get() {
            Some(shared) => shared.stats(),
            None => self.invocations.stats(),
        }
    }

    /// Starts delivering: the queued invocations' workers, the retention sweep and the
    /// scheduler. `claims` decides which node runs a tick ([`LocalClaims`] on one host).
    pub fn start(self: &Arc<Self>, claims: Arc<dyn TickClaims>) {
        invocations::start(self);
        schedule::start(self, claims);
        triggers::start(self);
    }

    /// The NATS client of `--events-nats`, connected on first use.
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        let Some(url) = &self.options.nats_url else {
            anyhow::bail!("this host has no NATS server for triggers (--events-nats or --queue)");
        };
        let client = self
            .nats
            .get_or_try_init(|| async {
                let reconnects = self.nats_reconnects.clone();
                // The first `Connected` is the first connection, not a reconnection.
                let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let connecting = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(5))
                    .event_callback(move |event| {
                        let (reconnects, lost) = (reconnects.clone(), lost.clone());
                        async move {
                            use std::sync::atomic::Ordering::Relaxed;
                            match event {
                                async_nats::Event::Connected if lost.swap(false, Relaxed) => {
                                    reconnects.fetch_add(1, Relaxed);
                                    tracing::info!("connected to NATS again");
                                }
                                async_nats::Event::Disconnected => {
                                    lost.store(true, Relaxed);
                                    tracing::warn!("lost the NATS server; reconnecting")
                                }
                                _ => {}
                            }
                        }
                    })
                    .connect(url.as_str());
                connecting.await.map_err(|e| {
                    anyhow::anyhow!("connecting to NATS at {}: {e}", without_credentials(url))
                })
            })
            .await?;
        Ok(client.clone())
    }

    /// Times the NATS client connected again after losing the server.
    pub fn nats_reconnects(&self) -> u64 {
        self.nats_reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Redis client of `--events-redis` (connections are made per session).
    pub fn redis(&self) -> anyhow::Result<redis::Client> {
        let Some(url) = &self.options.redis_url else {
            anyhow::bail!("this host has no Redis server for triggers (--events-redis)");
        };
        Ok(redis::Client::open(url.as_str())?)
    }

    /// Refuses a trigger whose broker this host lacks or whose stream cannot be consumed:
    /// the deploy's check, before anything changes. The message names the field.
    pub async fn check_trigger(
        &self,
        trigger: &crate::event_spec::TriggerSpec,
    ) -> Result<(), String> {
        if let Some(nats) = &trigger.nats {
            triggers::nats::check_stream(self, &nats.stream)
                .await
                .map_err(|e| format!("trigger.nats.stream: {e:#}"))?;
        }
        if let Some(redis) = &trigger.redis {
            triggers::redis::check_stream(self, &redis.stream)
                .await
                .map_err(|e| format!("trigger.redis.stream: {e:#}"))?;
        }
        Ok(())
    }

    /// The platform events are delivered on.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// The settings.
    pub fn options(&self) -> &EventOptions {
        &self.options
    }
}

/// The CloudEvents 1.0 context attributes of one event, sent in binary mode: as `ce-*`
/// headers of an HTTP request whose body is the event's data.
#[derive(Clone, Debug)]
pub struct CloudEvent<'a> {
    /// Unique per source: a retry of one event keeps it, so a handler can deduplicate by it.
    pub id: &'a str,
    /// Where it comes from (`/thaw/schedules/nightly`).
    pub source: &'a str,
    /// What happened (`dev.thaw.schedule.tick`).
    pub kind: &'a str,
    /// When it happened.
    pub time: SystemTime,
    /// What it is about, within the source.
    pub subject: Option<&'a str>,
    /// The attempt, from 1 (the extension attribute `thawattempt`).
    pub attempt: u32,
}

/// `ce-thawattempt`: which attempt at this event a request is (an extension attribute).
pub const CE_ATTEMPT: HeaderName = HeaderName::from_static("ce-thawattempt");

impl CloudEvent<'_> {
    /// Sets the event's headers on `headers`, replacing any of the same names.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("ce-specversion", "1.0");
        set("ce-id", self.id);
        set("ce-source", self.source);
        set("ce-type", self.kind);
        set(
            "ce-time",
            &humantime::format_rfc3339_millis(self.time).to_string(),
        );
        if let Some(subject) = self.subject {
            set("ce-subject", subject);
        }
        headers.insert(CE_ATTEMPT, HeaderValue::from(self.attempt));
    }
}

/// Removes the CloudEvents attributes of a client's request that claim to come from thaw
/// (`ce-source` under `/thaw/`, a `ce-type` under `dev.thaw.`, or thaw's `ce-thawattempt`):
/// a client must not pass for a schedule's tick, a queue's message or a retry (the SDKs'
/// `is_schedule_tick` reads the type), nor send a tick's id ahead of it to a handler that
/// deduplicates by id. A client's own events (its own source and type) pass unchanged.
pub fn strip_forged_events(headers: &mut HeaderMap) {
    headers.remove(CE_ATTEMPT);
    let claims_thaw = headers
        .get("ce-source")
        .is_some_and(|source| source.as_bytes().starts_with(b"/thaw/"))
        || headers
            .get("ce-type")
            .is_some_and(|kind| kind.as_bytes().starts_with(b"dev.thaw."));
    if claims_thaw {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("ce-"))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
    }
}

/// What one delivery got back.
#[derive(Debug)]
pub struct Outcome {
    /// The status (the function's, or thaw's for a failure before the guest answered).
    pub status: StatusCode,
    /// The response's headers.
    pub headers: HeaderMap,
    /// Its body, up to the limit asked for.
    pub body: Bytes,
    /// The body was longer than the limit.
    pub truncated: bool,
    /// The body failed after the head was sent (a trap or timeout mid-stream).
    pub body_error: Option<String>,
}

impl Outcome {
    /// Whether the event was handled: a status below 400 and a body that did not fail.
    pub fn succeeded(&self) -> bool {
        self.status.as_u16() < 400 && self.body_error.is_none()
    }

    /// Whether another attempt may do better: 5xx (a trap, a timeout, an overload), 408,
    /// 429, or a body that failed mid-way. Other 4xx answers say the event itself is wrong.
    pub fn retryable(&self) -> bool {
        self.body_error.is_some()
            || self.status.is_server_error()
            || matches!(
                self.status,
                StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
            )
    }

    /// Why an attempt did not succeed, for the record and the log.
    pub fn failure(&self) -> String {
        match &self.body_error {
            Some(e) => format!("the response body failed: {e}"),
            None => format!("answered {}", self.status),
        }
    }
}

/// Where an event thaw makes itself (a tick, a queue message) comes from, as the request path
/// sees it: this host, on loopback. An asynchronous invocation keeps its client's address.
pub const EVENT_PEER: Peer = Peer {
    remote: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
    local: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
    tls: false,
};

/// How many of a function's events are delivered at once: its `max_concurrency`, else
/// [`DEFAULT_EVENT_CONCURRENCY`] (also for a function that is gone).
pub fn delivery_places(function: Option<&Function>) -> usize {
    function
        .and_then(|f| f.limits.max_concurrency)
        .map_or(DEFAULT_EVENT_CONCURRENCY, |n| n as usize)
}

/// A function's retry and queue policy, its spec's `async` with the defaults filled in.
pub fn async_policy(function: &Function) -> crate::event_spec::AsyncPolicy {
    function
        .record
        .spec
        .async_policy
        .as_ref()
        .map_or_else(Default::default, crate::event_spec::AsyncSpec::resolve)
}

/// The version of `name` that the next request would get.
pub fn current(platform: &Platform, name: &str) -> Option<Arc<Function>> {
    Some(platform.registry().get(name)?.pick().clone())
}

/// Runs `req` on `function` (one version) through the request path, as if from `peer`, and
/// reads up to `max_body` bytes of the answer.
pub async fn deliver(
    platform: &Platform,
    function: Arc<Function>,
    mut req: Request<Full<Bytes>>,
    peer: Peer,
    max_body: usize,
) -> Outcome {
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    let response = invoke(platform.invoke_context(), function, req, peer).await;
    let (parts, mut body) = response.into_parts();
    let mut kept = bytes::BytesMut::new();
    let mut truncated = false;
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    let room = max_body.saturating_sub(kept.len());
                    if data.len() > room {
                        truncated = true;
                    }
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Outcome {
        status: parts.status,
        headers: parts.headers,
        body: kept.freeze(),
        truncated,
        body_error,
    }
}

/// A broker URL without the user information it may carry (for messages and logs).
fn without_credentials(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.rsplit_once('@').map_or(url, |(_, host)| host),
        None => url,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as a time.
pub fn time_of(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_cannot_pass_for_thaw_but_its_own_events_pass() {
        let mut forged = HeaderMap::new();
        forged.insert("ce-id", HeaderValue::from_static("1767225600000-0"));
        forged.insert(
            "ce-source",
            HeaderValue::from_static("/thaw/schedules/nightly"),
        );
        forged.insert(
            "ce-type",
            HeaderValue::from_static("dev.thaw.schedule.tick"),
        );
        forged.insert(CE_ATTEMPT, HeaderValue::from_static("3"));
        forged.insert("x-other", HeaderValue::from_static("kept"));
        strip_forged_events(&mut forged);
        assert_eq!(forged.len(), 1, "{forged:?}");
        // thaw's type under the client's own source: also thaw's to give.
        let mut typed = HeaderMap::new();
        typed.insert("ce-id", HeaderValue::from_static("x"));
        typed.insert("ce-source", HeaderValue::from_static("/x"));
        typed.insert(
            "ce-type",
            HeaderValue::from_static("dev.thaw.schedule.tick"),
        );
        strip_forged_events(&mut typed);
        assert!(typed.is_empty(), "{typed:?}");
        let mut own = HeaderMap::new();
        own.insert("ce-id", HeaderValue::from_static("order-7"));
        own.insert("ce-source", HeaderValue::from_static("/shop"));
        own.insert(CE_ATTEMPT, HeaderValue::from_static("9"));
        strip_forged_events(&mut own);
        assert_eq!(
            own.len(),
            2,
            "the client's event stays, without thaw's attempt"
        );
    }
}
