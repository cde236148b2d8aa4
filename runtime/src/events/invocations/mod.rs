//! Asynchronous invocations: `Prefer: respond-async` (RFC 7240) on a function's route is
//! answered `202 Accepted` with `Location: /v1/invocations/<id>` once the request is stored,
//! and the function runs it later, retried until it succeeds or is dead-lettered.
//!
//! # Delivery
//! At least once. Each function has a queue (in memory, rebuilt from the store at start)
//! and one worker that starts an attempt when one is due and a delivery place is free: at
//! most the function's `max_concurrency` (else [`super::DEFAULT_EVENT_CONCURRENCY`]) at
//! once, and each attempt still passes the function's own concurrency gate, shared with
//! its HTTP clients. An attempt that answers 5xx, 408 or 429, times out or traps is
//! retried after the function's `async.backoff_ms`, doubled per retry with jitter, until
//! `async.max_attempts` or `async.max_age_s` runs out; then the invocation is
//! dead-lettered (`failed`). Another 4xx is not retried: the request itself is wrong.
//!
//! What is stored: the record and request body before the 202, and the record (with the
//! result) after each attempt. An attempt running when the host dies left no record of its
//! end, so it runs again after the restart: that is the "at least once".
//!
//! # Reading and operating
//! The result (status, headers, body up to [`super::EventOptions::max_result_bytes`]) is
//! served on the data plane at the `Location` (the id is 128 random bits: whoever was
//! answered the 202 can read it) until its retention ends. An optional `Callback-Url`
//! header, which must be in the function's `allowed_outbound_hosts`, receives it as a POST
//! when final. The admin API lists, retries and discards invocations (`thaw invocations`).
//! A function has at most `async.max_queued` invocations queued or running; past that, 429
//! with `Retry-After`.

pub mod jetstream;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::store::{EventStore, StoredHeader, StoredInvocation, StoredResult, Write};
use super::{CloudEvent, Events, Outcome, now_ms, time_of};
use crate::api::{InvocationInfo, InvocationList, InvocationState, QueueInfo};
use crate::event_spec::AsyncPolicy;
use crate::function::Function;
use crate::invoke::InvokeError;
use crate::invoke::body::{ResponseBody, full};

/// The path prefix of an invocation's `Location`.
pub const LOCATION_PREFIX: &str = "/v1/invocations/";

/// The request header naming where a final result is POSTed.
pub const CALLBACK_URL: http::HeaderName = http::HeaderName::from_static("callback-url");

/// Whether a request asks to be answered asynchronously: a `Prefer` header with the
/// `respond-async` preference (names are case-insensitive; parameters after `;` ignored).
pub fn wants_async(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter()
        .any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',').any(|pref| {
                    pref.split(';')
                        .next()
                        .is_some_and(|name| name.trim().eq_ignore_ascii_case("respond-async"))
                })
            })
        })
}

/// An invocation's next attempt: when (ms), which; the heap's smallest first.
type Due = Reverse<(u64, Arc<str>)>;

/// An invocation found queued in the store at start: its function, when it was accepted,
/// when its next attempt is due, its id.
type Recovered = (String, u64, u64, Arc<str>);

/// One function's queue.
struct Queue {
    /// Invocations queued or running, by when they were accepted: the depth, and the
    /// oldest's age.
    live: Mutex<BTreeSet<(u64, Arc<str>)>>,
    /// Queued invocations by when their next attempt is due.
    due: Mutex<BinaryHeap<Due>>,
    /// Invocations with an attempt running.
    running: Mutex<HashSet<Arc<str>>>,
    /// Requests past the `max_queued` check whose body is still being read and stored: they
    /// count against the bound already, so a crowd of slow uploads cannot all pass it.
    reserved: AtomicU64,
    /// Rung when something is queued.
    wake: Notify,
    /// Delivery places.
    places: Arc<Semaphore>,
    /// Attempts started, dead letters, successes.
    attempts: AtomicU64,
    dead_letters: AtomicU64,
    succeeded: AtomicU64,
}

impl Queue {
    fn new(places: usize) -> Self {
        Self {
            live: Mutex::default(),
            due: Mutex::default(),
            running: Mutex::default(),
            reserved: AtomicU64::new(0),
            wake: Notify::new(),
            places: Arc::new(Semaphore::new(places)),
            attempts: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
        }
    }

    fn push(&self, enqueued_ms: u64, due_ms: u64, id: Arc<str>) {
        self.live.lock().unwrap().insert((enqueued_ms, id.clone()));
        self.due.lock().unwrap().push(Reverse((due_ms, id)));
        self.wake.notify_one();
    }

    /// Takes a place in the queue's bound for a request being accepted, if there is one.
    fn reserve(self: &Arc<Self>, max_queued: u32) -> Option<Reservation> {
        let reserved = self.reserved.fetch_add(1, Ordering::AcqRel);
        let live = self.live.lock().unwrap().len() as u64;
        if live + reserved >= u64::from(max_queued) {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Reservation(self.clone()))
    }

    /// Waits for the next due invocation and takes it.
    async fn next_due(&self) -> Arc<str> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut due = self.due.lock().unwrap();
                let now = now_ms();
                match due.peek() {
                    Some(Reverse((at, _))) if *at <= now => {
                        let Reverse((_, id)) = due.pop().expect("peeked");
                        return id;
                    }
                    Some(Reverse((at, _))) => Some(Duration::from_millis(at - now)),
                    None => None,
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// A place in a queue's bound, given back when the request is queued or refused.
struct Reservation(Arc<Queue>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every function's queue.
pub struct Invocations {
    queues: DashMap<String, Arc<Queue>>,
    /// Held by the changes an operator makes (retry, discard) and by the retention sweep, so
    /// that none of them acts on a record another has just changed.
    changes: tokio::sync::Mutex<()>,
    /// Recovered at open, queued when the workers start.
    recovered: Mutex<Vec<Recovered>>,
}

impl Invocations {
    /// The queues as the store left them: every invocation not final is queued again (one
    /// that was running when the host stopped runs again).
    pub(super) fn recover(store: &EventStore) -> anyhow::Result<Self> {
        let mut recovered = Vec::new();
        for record in store.all()? {
            let info = &record.info;
            if !info.state.is_final() {
                recovered.push((
                    info.function.clone(),
                    info.enqueued_ms,
                    info.next_attempt_ms.unwrap_or(0),
                    Arc::from(info.id.as_str()),
                ));
            }
        }
        if !recovered.is_empty() {
            tracing::info!(
                invocations = recovered.len(),
                "asynchronous invocations queued again after a restart"
            );
        }
        Ok(Self {
            queues: DashMap::new(),
            changes: tokio::sync::Mutex::new(()),
            recovered: Mutex::new(recovered),
        })
    }

    /// How many invocations the store held not yet final at open.
    pub(super) fn waiting(&self) -> usize {
        self.recovered.lock().unwrap().len()
    }

    /// Each function's queue figures, by function.
    pub fn stats(&self) -> Vec<QueueInfo> {
        let now = now_ms();
        let mut out: Vec<_> = self
            .queues
            .iter()
            .map(|entry| {
                let queue = entry.value();
                let live = queue.live.lock().unwrap();
                QueueInfo {
                    function: entry.key().clone(),
                    depth: live.len() as u64,
                    oldest_age_ms: live.first().map_or(0, |(at, _)| now.saturating_sub(*at)),
                    attempts: queue.attempts.load(Ordering::Relaxed),
                    dead_letters: queue.dead_letters.load(Ordering::Relaxed),
                    succeeded: queue.succeeded.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
    }
}

/// The queue of `name`, made (and its worker started) on first use.
fn queue(events: &Arc<Events>, name: &str, function: Option<&Function>) -> Arc<Queue> {
    if let Some(queue) = events.invocations.queues.get(name) {
        return queue.clone();
    }
    let places =
        super::delivery_places(function.or(super::current(&events.platform, name).as_deref()));
    let mut made = false;
    let queue = events
        .invocations
        .queues
        .entry(name.to_owned())
        .or_insert_with(|| {
            made = true;
            Arc::new(Queue::new(places))
        })
        .clone();
    if made {
        tokio::spawn(work(events.clone(), name.to_owned(), queue.clone()));
    }
    queue
}

/// Starts the workers of the recovered invocations and the retention sweep.
pub(super) fn start(events: &Arc<Events>) {
    if let Some(shared) = events.shared_queue.get() {
        jetstream::start(events, shared);
        return;
    }
    let recovered = std::mem::take(&mut *events.invocations.recovered.lock().unwrap());
    for (function, enqueued, due, id) in recovered {
        queue(events, &function, None).push(enqueued, due, id);
    }
    let sweeper = events.clone();
    tokio::spawn(async move {
        // Often enough that retention is kept to the minute; each pass reads every record.
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            if let Err(e) = sweep(&sweeper).await {
                tracing::warn!("sweeping finished invocations: {e:#}");
            }
        }
    });
}

/// Removes finished invocations past their retention.
async fn sweep(events: &Events) -> anyhow::Result<()> {
    let _changes = events.invocations.changes.lock().await;
    let now = now_ms();
    let options = &events.options;
    // A scan of every record: off the reactor's turn.
    let all = tokio::task::block_in_place(|| events.store.all())?;
    let expired: Vec<Write> = all
        .into_iter()
        .filter(|r| expired(&r.info, options, now))
        .map(|r| Write::Remove(r.info.id))
        .collect();
    if !expired.is_empty() {
        tracing::debug!(
            count = expired.len(),
            "invocations past their retention removed"
        );
        events.store.write(expired).await?;
    }
    Ok(())
}

/// Whether a finished invocation is past its retention at `now`.
fn expired(info: &InvocationInfo, options: &super::EventOptions, now: u64) -> bool {
    let keep = match info.state {
        InvocationState::Succeeded => options.result_retention,
        InvocationState::Failed => options.dead_letter_retention,
        _ => return false,
    };
    info.finished_ms.unwrap_or(0) + keep.as_millis() as u64 <= now
}

/// A new id: 128 random bits, hex.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

fn store_headers(headers: &http::HeaderMap) -> Vec<StoredHeader> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

fn restore_headers(stored: &[StoredHeader], into: &mut http::HeaderMap) {
    for (name, value) in stored {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            into.append(name, value);
        }
    }
}

/// Hop-by-hop headers and thaw's own: not stored with the request.
fn stored_request_header(name: &http::HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | "prefer"
            | "callback-url"
            | "expect"
    )
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Accepts `req` for `function` asynchronously: stores it, then answers 202.
pub async fn accept<B: crate::invoke::RequestBody>(
    events: &Arc<Events>,
    function: &Arc<Function>,
    req: Request<B>,
    peer: crate::invoke::Peer,
) -> Response<ResponseBody> {
    match try_accept(events, function, req, peer).await {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(function = %function.name, "an asynchronous invocation was refused: {error}");
            }
            error.into_response()
        }
    }
}

async fn try_accept<B: crate::invoke::RequestBody>(
    events: &Arc<Events>,
    function: &Arc<Function>,
    req: Request<B>,
    peer: crate::invoke::Peer,
) -> Result<Response<ResponseBody>, InvokeError> {
    let callback_url = match req.headers().get(CALLBACK_URL) {
        None => None,
        Some(value) => Some(check_callback(function, value)?),
    };
    let policy = super::async_policy(function);
    if let Some(shared) = events.shared_queue.get() {
        let info = shared
            .accept(events, function, req, peer, callback_url, &policy)
            .await?;
        return Ok(accepted(&info));
    }
    let queue = queue(events, &function.name, Some(function));
    let Some(_reservation) = queue.reserve(policy.max_queued) else {
        return Err(queue_full(function, &policy));
    };
    let limit = events.options.max_async_body_bytes;
    let (record, body) = read_request(function, req, peer, callback_url, limit).await?;
    let id: Arc<str> = Arc::from(record.info.id.as_str());
    let info = record.info.clone();
    events
        .store
        .write(vec![Write::Accept(Box::new(record), body)])
        .await
        .map_err(|e| InvokeError::Internal(format!("storing an asynchronous invocation: {e:#}")))?;
    queue.push(info.enqueued_ms, info.enqueued_ms, id);
    Ok(accepted(&info))
}

/// The 429 of a full queue, counted as a limit hit.
fn queue_full(function: &Function, policy: &AsyncPolicy) -> InvokeError {
    let refused = InvokeError::TooManyQueued(policy.max_queued);
    let limit = crate::guest::limit::Limit::AsyncQueue;
    function
        .stats
        .limit_hits
        .hit(&function.name, limit, &refused);
    refused
}

/// The record of a new invocation of `req` and its body (at most `limit` bytes, and the
/// function's own bound), as stored before the 202.
async fn read_request<B: crate::invoke::RequestBody>(
    function: &Function,
    req: Request<B>,
    peer: crate::invoke::Peer,
    callback_url: Option<String>,
    limit: u64,
) -> Result<(StoredInvocation, Bytes), InvokeError> {
    let (parts, body) = req.into_parts();
    let limit = function.limits.max_request_body_bytes.min(limit);
    let body = crate::invoke::body::read_bounded(body, limit, function.limits.timeout).await?;
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if stored_request_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let now = now_ms();
    let record = StoredInvocation {
        info: InvocationInfo {
            id: new_id(),
            function: function.name.to_string(),
            state: InvocationState::Queued,
            attempts: 0,
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            enqueued_ms: now,
            next_attempt_ms: Some(now),
            finished_ms: None,
            status: None,
            error: None,
            callback_url,
        },
        headers: store_headers(&headers),
        peer: Some((peer.remote, peer.local)),
        result: None,
    };
    Ok((record, body))
}

/// The 202 of an accepted invocation: its record, its `Location`.
fn accepted(info: &InvocationInfo) -> Response<ResponseBody> {
    let mut response = json_response(StatusCode::ACCEPTED, info);
    let location = HeaderValue::from_str(&format!("{LOCATION_PREFIX}{}", info.id)).expect("hex");
    response
        .headers_mut()
        .insert(http::header::LOCATION, location);
    response.headers_mut().insert(
        http::header::HeaderName::from_static("preference-applied"),
        HeaderValue::from_static("respond-async"),
    );
    response
}

/// The `Callback-Url`, if it is an absolute http(s) URL the function may reach.
fn check_callback(function: &Function, value: &HeaderValue) -> Result<String, InvokeError> {
    let bad = |why: &str| InvokeError::BadRequest(format!("callback-url: {why}"));
    let text = value.to_str().map_err(|_| bad("not ASCII"))?;
    let uri: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad("must be an absolute http:// or https:// URL"));
    }
    if !function.outbound.allows(&uri) {
        return Err(bad(&format!(
            "{}://{} is not in the function's allowed_outbound_hosts",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map_or("", |a| a.as_str())
        )));
    }
    Ok(text.to_owned())
}

/// A function's worker: starts each due invocation when a delivery place is free.
async fn work(events: Arc<Events>, name: String, queue: Arc<Queue>) {
    loop {
        let place = queue
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let id = queue.next_due().await;
        tokio::spawn(attempt(
            events.clone(),
            name.clone(),
            queue.clone(),
            id,
            place,
        ));
    }
}

/// One attempt at invocation `id`.
async fn attempt(
    events: Arc<Events>,
    name: String,
    queue: Arc<Queue>,
    id: Arc<str>,
    _place: OwnedSemaphorePermit,
) {
    // One attempt per invocation at a time: an id queued twice, or held by a discard,
    // is not run alongside.
    if !queue.running.lock().unwrap().insert(id.clone()) {
        return;
    }
    let result = run(&events, &name, &queue, &id).await;
    queue.running.lock().unwrap().remove(&id);
    // Queued again only once it is no longer running.
    let due = match result {
        Ok(Next::Done) => return,
        Ok(Next::RetryAt(due)) => due,
        Err(e) => {
            // The store refused: the invocation stays as stored (it runs again after a
            // restart); here it is tried again in a while.
            tracing::error!(function = %name, invocation = %id, "an invocation's attempt could not be recorded: {e:#}");
            now_ms() + 10_000
        }
    };
    queue.due.lock().unwrap().push(Reverse((due, id)));
    queue.wake.notify_one();
}

/// What follows an attempt.
enum Next {
    /// Nothing: it is final (or gone).
    Done,
    /// Another attempt, at this time (ms).
    RetryAt(u64),
}

async fn run(
    events: &Arc<Events>,
    name: &str,
    queue: &Queue,
    id: &Arc<str>,
) -> anyhow::Result<Next> {
    let Some(mut record) = events.store.get(id)? else {
        // Discarded while queued.
        forget(queue, id);
        return Ok(Next::Done);
    };
    if record.info.state.is_final() {
        forget(queue, id);
        return Ok(Next::Done);
    }
    let now = now_ms();
    let Some(function) = super::current(&events.platform, name) else {
        finish(
            events,
            queue,
            record,
            None,
            "the function was removed".into(),
        )
        .await?;
        return Ok(Next::Done);
    };
    let policy = super::async_policy(&function);
    if let Some(why) = too_old(record.info.enqueued_ms, now, &policy) {
        finish(events, queue, record, None, why).await?;
        return Ok(Next::Done);
    }
    record.info.attempts += 1;
    queue.attempts.fetch_add(1, Ordering::Relaxed);
    let body = events.store.request_body(id)?;
    let outcome = attempt_once(events, function, &record, body).await?;
    record.info.status = Some(outcome.status.as_u16());
    match verdict(&outcome, &record.info, &policy) {
        Verdict::Succeeded => {
            record.info.state = InvocationState::Succeeded;
            record.info.error = None;
            queue.succeeded.fetch_add(1, Ordering::Relaxed);
            finish(events, queue, record, Some(outcome), String::new()).await?;
            Ok(Next::Done)
        }
        Verdict::DeadLetter(why) => {
            finish(events, queue, record, Some(outcome), why).await?;
            Ok(Next::Done)
        }
        Verdict::Retry {
            delay,
            due,
            failure,
        } => {
            tracing::info!(function = %name, invocation = %id, attempt = record.info.attempts, retry_in_ms = delay.as_millis() as u64, "an asynchronous invocation failed ({failure}); retrying");
            record.info.error = Some(failure);
            record.info.next_attempt_ms = Some(due);
            record.result = Some(result_head(&outcome));
            events
                .store
                .write(vec![Write::Finish(Box::new(record), outcome.body)])
                .await?;
            Ok(Next::RetryAt(due))
        }
    }
}

/// Why an invocation accepted at `enqueued_ms` may not run at `now`, if it is too old.
fn too_old(enqueued_ms: u64, now: u64, policy: &AsyncPolicy) -> Option<String> {
    let age = Duration::from_millis(now.saturating_sub(enqueued_ms));
    (age > policy.max_age)
        .then(|| format!("older than its max_age_s ({} s)", policy.max_age.as_secs()))
}

/// One attempt: the stored request, sent through the request path as the invocation's event.
async fn attempt_once(
    events: &Events,
    function: Arc<Function>,
    record: &StoredInvocation,
    body: Bytes,
) -> anyhow::Result<Outcome> {
    let request = event_request(record, body, &function.name)?;
    let peer = match record.peer {
        Some((remote, local)) => crate::invoke::Peer {
            remote,
            local,
            tls: false,
        },
        None => super::EVENT_PEER,
    };
    Ok(super::deliver(
        &events.platform,
        function,
        request,
        peer,
        events.options.max_result_bytes,
    )
    .await)
}

/// What follows an attempt's outcome, by the function's policy: the same on every backend.
enum Verdict {
    Succeeded,
    /// Final: dead-lettered for this reason.
    DeadLetter(String),
    /// Another attempt after `delay`, at `due` (ms); `failure` is why this one failed.
    Retry {
        delay: Duration,
        due: u64,
        failure: String,
    },
}

/// The verdict on `outcome`, the attempt numbered `info.attempts`.
fn verdict(outcome: &Outcome, info: &InvocationInfo, policy: &AsyncPolicy) -> Verdict {
    if outcome.succeeded() {
        return Verdict::Succeeded;
    }
    let failure = outcome.failure();
    if !outcome.retryable() {
        return Verdict::DeadLetter(format!("{failure} (a 4xx is not retried)"));
    }
    if info.attempts >= policy.max_attempts {
        return Verdict::DeadLetter(format!(
            "{failure}, attempt {} of {}",
            info.attempts, policy.max_attempts
        ));
    }
    let delay = policy.retry_delay(info.attempts, jitter());
    let due = now_ms() + delay.as_millis() as u64;
    if Duration::from_millis(due.saturating_sub(info.enqueued_ms)) > policy.max_age {
        return Verdict::DeadLetter(format!(
            "{failure}; a retry would be older than its max_age_s"
        ));
    }
    Verdict::Retry {
        delay,
        due,
        failure,
    }
}

/// A number in 0..1 for the retry's jitter.
pub(super) fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::getrandom(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// A response's head as kept: without its framing (`content-length`, `transfer-encoding`)
/// and hop-by-hop fields, which belonged to that response's connection. The body kept may
/// be cut; the server frames the one it sends at the `Location` itself.
fn result_head(outcome: &Outcome) -> StoredResult {
    let mut headers = outcome.headers.clone();
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONNECTION,
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    StoredResult {
        status: outcome.status.as_u16(),
        headers: store_headers(&headers),
        truncated: outcome.truncated,
    }
}

/// The request an attempt sends: as it was accepted, with the event's headers. A request
/// that arrived as a CloudEvent already (it has `ce-id`) keeps its own attributes; thaw
/// adds only the attempt.
fn event_request(
    record: &StoredInvocation,
    body: Bytes,
    function: &str,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let info = &record.info;
    let mut request = Request::builder()
        .method(info.method.as_str())
        .uri(info.path.as_str())
        .body(Full::new(body))?;
    let headers = request.headers_mut();
    restore_headers(&record.headers, headers);
    if headers.contains_key("ce-id") {
        headers.insert(super::CE_ATTEMPT, HeaderValue::from(info.attempts));
    } else {
        let source = format!("/thaw/functions/{function}");
        CloudEvent {
            id: &info.id,
            source: &source,
            kind: "dev.thaw.invocation",
            time: time_of(info.enqueued_ms),
            subject: Some(&info.path),
            attempt: info.attempts,
        }
        .apply(headers);
    }
    Ok(request)
}

fn forget(queue: &Queue, id: &Arc<str>) {
    queue.live.lock().unwrap().retain(|(_, live)| live != id);
}

/// Records `record` as final: succeeded, or dead-lettered for `why`.
async fn finish(
    events: &Arc<Events>,
    queue: &Queue,
    mut record: StoredInvocation,
    outcome: Option<Outcome>,
    why: String,
) -> anyhow::Result<()> {
    if record.info.state != InvocationState::Succeeded {
        record.info.state = InvocationState::Failed;
        record.info.error = Some(why.clone());
        queue.dead_letters.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(function = %record.info.function, invocation = %record.info.id, attempts = record.info.attempts, "an asynchronous invocation was dead-lettered: {why}");
    }
    record.info.next_attempt_ms = None;
    record.info.finished_ms = Some(now_ms());
    let body = match &outcome {
        Some(outcome) => {
            record.result = Some(result_head(outcome));
            outcome.body.clone()
        }
        None => {
            // No attempt answered this time: an earlier attempt's head must not be paired
            // with no body.
            record.result = None;
            Bytes::new()
        }
    };
    let id: Arc<str> = Arc::from(record.info.id.as_str());
    let callback = record.info.callback_url.clone();
    let info = record.info.clone();
    events
        .store
        .write(vec![Write::Finish(Box::new(record), body.clone())])
        .await?;
    forget(queue, &id);
    if let Some(url) = callback {
        tokio::spawn(send_callback(
            url,
            info,
            outcome.map(|o| (o.status, o.headers)),
            body,
        ));
    }
    Ok(())
}

/// POSTs a final result to its callback URL: the result's body and content type, with its
/// status and the invocation's id and state in `thaw-invocation-*` headers. One try, with
/// a timeout; a failure is logged (the result stays readable at its `Location`).
async fn send_callback(
    url: String,
    info: InvocationInfo,
    head: Option<(StatusCode, http::HeaderMap)>,
    body: Bytes,
) {
    let mut request = match Request::post(url.as_str())
        .body(Full::new(body).map_err(|never| -> wasmtime_wasi_http::Error { match never {} }))
    {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(invocation = %info.id, "callback {url}: {e}");
            return;
        }
    };
    let headers = request.headers_mut();
    if let Some((status, response_headers)) = &head {
        headers.insert("thaw-invocation-status", HeaderValue::from(status.as_u16()));
        if let Some(kind) = response_headers.get(http::header::CONTENT_TYPE) {
            headers.insert(http::header::CONTENT_TYPE, kind.clone());
        }
    }
    if let Ok(id) = HeaderValue::from_str(&info.id) {
        headers.insert("thaw-invocation-id", id);
    }
    let state = if info.state == InvocationState::Succeeded {
        "succeeded"
    } else {
        "failed"
    };
    headers.insert("thaw-invocation-state", HeaderValue::from_static(state));
    if let Some(authority) = request.uri().authority().cloned()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let timeout = Duration::from_secs(10);
    let options = wasmtime_wasi_http::RequestOptions {
        connect_timeout: Some(timeout),
        first_byte_timeout: Some(timeout),
        between_bytes_timeout: Some(timeout),
    };
    let sent = tokio::time::timeout(timeout, async {
        let (response, io) =
            wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
        let driver = tokio::spawn(io);
        let status = response.status();
        drop(response);
        driver.abort();
        Ok::<_, wasmtime_wasi_http::Error>(status)
    })
    .await;
    match sent {
        Ok(Ok(status)) if status.is_success() => {
            tracing::debug!(invocation = %info.id, %status, "callback sent")
        }
        Ok(Ok(status)) => {
            tracing::warn!(invocation = %info.id, %status, "the callback {url} answered an error")
        }
        Ok(Err(e)) => tracing::warn!(invocation = %info.id, "the callback {url} failed: {e}"),
        Err(_) => tracing::warn!(invocation = %info.id, "the callback {url} timed out"),
    }
}

/// What the data plane answers at an invocation's `Location`: 202 with its record while it
/// is queued or running; its result once final (the function's status, headers and body,
/// with `thaw-invocation-state`); 404 for an unknown (or expired) id.
pub async fn read(events: &Events, id: &str) -> Response<ResponseBody> {
    if let Some(shared) = events.shared_queue.get() {
        return shared.read(id).await;
    }
    let record = match events.store.get(id) {
        Ok(Some(record)) => record,
        Ok(None) => return InvokeError::NotFound.into_response(),
        Err(e) => {
            return InvokeError::Internal(format!("reading an invocation: {e:#}")).into_response();
        }
    };
    let mut info = record.info.clone();
    if running(events, &info) {
        info.state = InvocationState::Running;
    }
    let body = match (&record.result, info.state.is_final()) {
        (Some(_), true) => match events.store.result_body(id) {
            Ok(body) => body,
            Err(e) => {
                return InvokeError::Internal(format!("reading a result: {e:#}")).into_response();
            }
        },
        _ => Bytes::new(),
    };
    answer(&record, info, body)
}

/// The answer at the `Location` of `record`, whose state is `info`'s and whose result body
/// (if final) is `body`.
fn answer(record: &StoredInvocation, info: InvocationInfo, body: Bytes) -> Response<ResponseBody> {
    let state = HeaderValue::from_static(match info.state {
        InvocationState::Queued => "queued",
        InvocationState::Running => "running",
        InvocationState::Succeeded => "succeeded",
        InvocationState::Failed => "failed",
    });
    let mut response = match (&record.result, info.state.is_final()) {
        (Some(result), true) => {
            let mut response = Response::new(full(body));
            *response.status_mut() =
                StatusCode::from_u16(result.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            restore_headers(&result.headers, response.headers_mut());
            if result.truncated {
                response
                    .headers_mut()
                    .insert("thaw-result-truncated", HeaderValue::from_static("true"));
            }
            response
        }
        (None, true) => json_response(StatusCode::BAD_GATEWAY, &info),
        (_, false) => {
            let mut response = json_response(StatusCode::ACCEPTED, &info);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    };
    response
        .headers_mut()
        .insert("thaw-invocation-state", state);
    response
}

fn running(events: &Events, info: &InvocationInfo) -> bool {
    events
        .invocations
        .queues
        .get(&info.function)
        .is_some_and(|q| q.running.lock().unwrap().contains(info.id.as_str()))
}

/// One invocation's record, as the admin API shows it.
pub async fn info(events: &Events, id: &str) -> anyhow::Result<Option<InvocationInfo>> {
    if let Some(shared) = events.shared_queue.get() {
        return shared.info(id).await;
    }
    Ok(events.store.get(id)?.map(|record| {
        let mut info = record.info;
        if running(events, &info) {
            info.state = InvocationState::Running;
        }
        info
    }))
}

/// A function's invocations, newest first, at most `limit`; only dead letters if `failed`.
pub async fn list(
    events: &Events,
    function: &str,
    failed: bool,
    limit: usize,
) -> anyhow::Result<InvocationList> {
    if let Some(shared) = events.shared_queue.get() {
        return shared.list(function, failed, limit).await;
    }
    // A scan of every record: off the reactor's turn.
    let all = tokio::task::block_in_place(|| events.store.all())?;
    let mut invocations: Vec<InvocationInfo> = all
        .into_iter()
        .map(|r| r.info)
        .filter(|i| i.function == function && (!failed || i.state == InvocationState::Failed))
        .map(|mut info| {
            if running(events, &info) {
                info.state = InvocationState::Running;
            }
            info
        })
        .collect();
    invocations.sort_by(|a, b| b.enqueued_ms.cmp(&a.enqueued_ms).then(a.id.cmp(&b.id)));
    invocations.truncate(limit);
    Ok(InvocationList { invocations })
}

/// Why a retry or a discard was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such invocation.
    #[error("no invocation {0}")]
    NotFound(String),
    /// It is in a state the change does not apply to.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Queues a dead letter again, from attempt 1 and with a fresh age.
pub async fn retry(events: &Arc<Events>, id: &str) -> Result<InvocationInfo, ChangeError> {
    if let Some(shared) = events.shared_queue.get() {
        return shared.retry(id).await;
    }
    let _changes = events.invocations.changes.lock().await;
    let mut record = events
        .store
        .get(id)?
        .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
    let now = now_ms();
    requeue(&mut record.info, now)?;
    let info = record.info.clone();
    events
        .store
        .write(vec![Write::Update(Box::new(record))])
        .await?;
    queue(events, &info.function, None).push(now, now, Arc::from(id));
    Ok(info)
}

/// A dead letter queued again, from attempt 1 and with a fresh age (`now`); refused for an
/// invocation that is not failed. Both queues' retry.
fn requeue(info: &mut InvocationInfo, now: u64) -> Result<(), ChangeError> {
    if info.state != InvocationState::Failed {
        return Err(ChangeError::Conflict(format!(
            "invocation {} is {:?}: only a failed (dead-lettered) one is retried",
            info.id, info.state
        )));
    }
    info.state = InvocationState::Queued;
    info.attempts = 0;
    info.enqueued_ms = now;
    info.next_attempt_ms = Some(now);
    info.finished_ms = None;
    info.error = None;
    Ok(())
}

/// Removes an invocation that is not running (a queued one will not run).
pub async fn discard(events: &Arc<Events>, id: &str) -> Result<(), ChangeError> {
    if let Some(shared) = events.shared_queue.get() {
        return shared.discard(id).await;
    }
    let _changes = events.invocations.changes.lock().await;
    let record = events
        .store
        .get(id)?
        .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
    let queue = events
        .invocations
        .queues
        .get(&record.info.function)
        .map(|q| q.clone());
    // Held in `running` while it is removed: an attempt cannot start meanwhile, and one
    // that is running makes the discard wait for the operator to try again.
    let id: Arc<str> = Arc::from(id);
    if let Some(queue) = &queue
        && !queue.running.lock().unwrap().insert(id.clone())
    {
        return Err(ChangeError::Conflict(format!(
            "invocation {id} is running; discard it once it ends"
        )));
    }
    let removed = events
        .store
        .write(vec![Write::Remove(id.to_string())])
        .await;
    if let Some(queue) = &queue {
        forget(queue, &id);
        queue.running.lock().unwrap().remove(&id);
    }
    removed?;
    Ok(())
}
