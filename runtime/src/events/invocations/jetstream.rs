//! Asynchronous invocations on NATS JetStream (`thaw serve --queue nats://...`): for a
//! cluster, where any node accepts an invocation, any node runs it and any node answers at
//! its `Location`, and a node that dies loses nothing it accepted.
//!
//! # Layout on the server
//! - Records: the key-value bucket `thaw-invocations` (file storage). Key `<id>` holds the
//!   record (JSON, as the embedded store keeps it), `<id>.request` the request body,
//!   `<id>.result` the last result's body.
//! - Work: the stream `THAW_INVOCATIONS` (work-queue retention, file storage), subjects
//!   `thaw.invocations.<function>`. One message per queued invocation; its payload is the id.
//!   The 202 is answered once JetStream acknowledged the publish (stored on its disk).
//! - Each node that has the function pulls from one durable consumer per function,
//!   `thaw-invocations-<function>`, shared by all nodes: JetStream hands each message to
//!   one of them. A node fetches only as many as it has free delivery places.
//!
//! # An attempt
//! The record is changed with compare-and-set on its revision: first to `running` with one
//! more attempt (so an attempt cut by a crash counts), then to its end. Success or a dead
//! letter: the record is final, and the message is acknowledged. A retry: the record is
//! `queued` again and the message is `nak`ed with the backoff as its delay, so JetStream
//! holds it back. While an attempt runs its node tells JetStream so (`+WPI`, every third of
//! [`ACK_WAIT`]); a node that dies mid-attempt stops, and JetStream hands the message to
//! another node [`ACK_WAIT`] later, however long the function's timeout. A node that finds
//! the record changed under it (another node took the message over after a lapse of its
//! heartbeat) leaves the message to that node: it acknowledges only what it sees final.
//!
//! # Workers on demand
//! Each second a node asks the stream how many messages each function's subject holds (one
//! stream-info request, paged), and for each function with messages when its oldest was
//! published; it runs a worker for each function it has with work. A worker stops after
//! [`IDLE_STOP`] without messages once its function has none in the stream (a retry held
//! back keeps it polling); its durable consumer is deleted by the server after an hour
//! unused. A function removed while its worker runs has its invocations dead-lettered, as in
//! the embedded queue; the messages of a function removed everywhere stay in the stream
//! until one of that name is deployed again (which then runs those not yet final), and the
//! sweep dead-letters their records an hour past their `max_age_s`.
//!
//! # Trade-offs against the embedded queue
//! - Every accept is three round trips to the server (two puts, one publish); the embedded
//!   queue's is one fsync shared by a group of writes. JetStream's file store writes each
//!   message before it acknowledges, but syncs to disk on its own interval (nats-server's
//!   `sync_interval`): a `kill -9` of the server loses nothing, a power cut may lose the last
//!   seconds unless the server syncs always.
//! - `max_queued` is checked against the function's messages as counted each second, plus
//!   what this node accepted since: a crowd spread over several nodes can overshoot it by
//!   what arrives within a second.
//! - Concurrency is per node, as for HTTP requests: each node runs at most the function's
//!   delivery places.
//! - Finished records are removed after their retention by a sweep on every node (the
//!   removals are idempotent). A record left without a message (a crash between its writes)
//!   is dead-lettered by the sweep an hour past its `max_age_s`.
//! - Two messages for one invocation (an operator's retry while an old message is still
//!   unacknowledged) make their deliveries take the record from each other: it still runs
//!   at least once, but may run more than once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    ChangeError, StoredInvocation, Verdict, answer, attempt_once, queue_full, read_request,
    requeue, result_head, send_callback, too_old, verdict,
};
use crate::api::{InvocationInfo, InvocationList, InvocationState, QueueInfo};
use crate::event_spec::AsyncPolicy;
use crate::events::{Events, now_ms};
use crate::function::Function;
use crate::invoke::InvokeError;
use crate::invoke::body::ResponseBody;

const BUCKET: &str = "thaw-invocations";
const STREAM: &str = "THAW_INVOCATIONS";
/// How long JetStream waits for word from the node running an attempt before handing the
/// message to another: short, so a dead node's invocations move on within seconds; a live
/// node's heartbeat keeps a long attempt its own.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long one fetch waits before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// A worker with no message for this long stops (the next message starts it again).
const IDLE_STOP: Duration = Duration::from_secs(30);
/// What a record, its headers and the message's framing may need beside a body, under the
/// server's `max_payload`.
const RECORD_ROOM: u64 = 64 << 10;
/// How long past its `max_age_s` a record that is not final may stay before the sweep
/// dead-letters it (its message was lost): longer than any attempt.
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

fn subject(function: &str) -> String {
    format!("thaw.invocations.{function}")
}

/// One function's queue as this node sees it.
#[derive(Default)]
struct FunctionQueue {
    /// Its messages in the stream (queued, held back for a retry, or being delivered), as
    /// counted at the last sync, plus what this node accepted since.
    depth: AtomicU64,
    /// When its oldest message was published (ms), 0 if none.
    oldest_ms: AtomicU64,
    /// Requests being accepted here, past the `max_queued` check.
    accepting: AtomicU64,
    attempts: AtomicU64,
    dead_letters: AtomicU64,
    succeeded: AtomicU64,
    /// Its worker on this node, if one runs.
    worker: Mutex<Option<CancellationToken>>,
}

/// The queue on JetStream.
pub struct SharedQueue {
    js: jetstream::Context,
    records: kv::Store,
    /// The bucket's stream, to remove a record's messages whole (a purge leaves no marker).
    record_stream: stream::Stream,
    work: stream::Stream,
    max_payload: u64,
    functions: Mutex<HashMap<String, Arc<FunctionQueue>>>,
}

impl SharedQueue {
    /// Connects `client` to the bucket and the stream, made if missing.
    pub async fn open(client: async_nats::Client) -> anyhow::Result<Self> {
        let max_payload = client.server_info().max_payload as u64;
        let js = jetstream::new(client);
        // The bucket's stream made by hand, as a key-value bucket is laid out (`KV_<bucket>`,
        // subjects `$KV.<bucket>.>`): the client's `create_key_value` first asks for the
        // account's limits, whose answer from Debian's nats-server 2.9 it cannot parse.
        let record_stream = js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{BUCKET}"),
                description: Some("thaw's asynchronous invocations: records and bodies".into()),
                subjects: vec![format!("$KV.{BUCKET}.>")],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the bucket {BUCKET}: {e}"))?;
        let records = js
            .get_key_value(BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("opening the bucket {BUCKET}: {e}"))?;
        let work = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["thaw.invocations.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the stream {STREAM}: {e}"))?;
        Ok(Self {
            js,
            records,
            record_stream,
            work,
            max_payload,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Most bytes of a body stored as one value.
    fn max_value(&self) -> usize {
        self.max_payload.saturating_sub(RECORD_ROOM) as usize
    }

    async fn record(&self, id: &str) -> anyhow::Result<Option<(StoredInvocation, u64)>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.records.entry(id).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                match serde_json::from_slice(&entry.value) {
                    Ok(record) => Ok(Some((record, entry.revision))),
                    Err(e) => {
                        // Unreadable (damaged, or written by a newer thaw): as absent, so
                        // that one record stops neither a listing nor a sweep.
                        tracing::warn!(invocation = %id, "an unreadable invocation record: {e}");
                        Ok(None)
                    }
                }
            }
            _ => Ok(None),
        }
    }

    /// Writes `record` if it is still at `revision`: its new revision, or `None` if it
    /// changed (or went) meanwhile.
    async fn update(
        &self,
        record: &StoredInvocation,
        revision: u64,
    ) -> anyhow::Result<Option<u64>> {
        let value = Bytes::from(serde_json::to_vec(record)?);
        match self.records.update(&record.info.id, value, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes invocation `id` if its record is still at `revision`: the record first (an
    /// attempt that read it before cannot run it after: its body is gone, or its own
    /// compare-and-set fails), then every message of its keys. False if it changed.
    async fn remove(&self, id: &str, revision: u64) -> anyhow::Result<bool> {
        if let Err(e) = self
            .records
            .delete_expect_revision(id, Some(revision))
            .await
        {
            if e.kind() == kv::DeleteErrorKind::WrongLastRevision {
                return Ok(false);
            }
            return Err(e.into());
        }
        for filter in [format!("$KV.{BUCKET}.{id}"), format!("$KV.{BUCKET}.{id}.>")] {
            self.record_stream.purge().filter(filter).await?;
        }
        Ok(true)
    }

    fn function(&self, name: &str) -> Arc<FunctionQueue> {
        self.functions
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Stores `req` as a new invocation of `function` and queues it; its record.
    pub(super) async fn accept<B: crate::invoke::RequestBody>(
        &self,
        events: &Arc<Events>,
        function: &Arc<Function>,
        req: Request<B>,
        peer: crate::invoke::Peer,
        callback_url: Option<String>,
        policy: &AsyncPolicy,
    ) -> Result<InvocationInfo, InvokeError> {
        let queue = self.function(&function.name);
        let accepting = queue.accepting.fetch_add(1, Ordering::AcqRel);
        let _accepting = Decrement(&queue.accepting);
        if queue.depth.load(Ordering::Acquire) + accepting >= u64::from(policy.max_queued) {
            return Err(queue_full(function, policy));
        }
        let limit = events
            .options
            .max_async_body_bytes
            .min(self.max_value() as u64);
        let (record, body) = read_request(function, req, peer, callback_url, limit).await?;
        let info = record.info.clone();
        let id = &info.id;
        let stored = async {
            self.records.put(format!("{id}.request"), body).await?;
            let revision = self
                .records
                .create(id, Bytes::from(serde_json::to_vec(&record)?))
                .await?;
            Ok::<_, anyhow::Error>(revision)
        }
        .await;
        let published = match stored {
            Ok(revision) => match self.publish(&info.function, id, id).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = self.remove(id, revision).await;
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self
                    .record_stream
                    .purge()
                    .filter(format!("$KV.{BUCKET}.{id}.>"))
                    .await;
                Err(e)
            }
        };
        if let Err(e) = published {
            return Err(InvokeError::QueueUnavailable(format!("{e:#}")));
        }
        queue.depth.fetch_add(1, Ordering::AcqRel);
        self.start_worker(events, &function.name, &queue);
        Ok(info)
    }

    /// Publishes the work message of invocation `id`, and waits until JetStream stored it.
    /// `message_id` deduplicates a publish the client retried.
    async fn publish(&self, function: &str, id: &str, message_id: &str) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        self.js
            .publish_with_headers(
                subject(function),
                headers,
                Bytes::copy_from_slice(id.as_bytes()),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Starts the worker of `name` on this node unless one runs.
    fn start_worker(&self, events: &Arc<Events>, name: &str, queue: &Arc<FunctionQueue>) {
        let mut worker = queue.worker.lock().unwrap();
        if worker.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        *worker = Some(stop.clone());
        tokio::spawn(work(events.clone(), name.to_owned(), queue.clone(), stop));
    }

    /// Counts each function's messages (one request) and starts a worker for each function
    /// with work; called each second.
    async fn sync(&self, events: &Arc<Events>) -> anyhow::Result<()> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut subjects = self.work.info_with_subjects("thaw.invocations.>").await?;
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry?;
            if let Some(function) = subject.strip_prefix("thaw.invocations.") {
                counts.insert(function.to_owned(), count as u64);
            }
        }
        let known: Vec<(String, Arc<FunctionQueue>)> = self
            .functions
            .lock()
            .unwrap()
            .iter()
            .map(|(name, queue)| (name.clone(), queue.clone()))
            .collect();
        for (name, queue) in &known {
            if !counts.contains_key(name) {
                queue.depth.store(0, Ordering::Release);
                queue.oldest_ms.store(0, Ordering::Relaxed);
            }
        }
        for (name, count) in counts {
            let queue = self.function(&name);
            queue.depth.store(count, Ordering::Release);
            let oldest = match self
                .work
                .get_first_raw_message_by_subject(subject(&name), 0)
                .await
            {
                Ok(message) => (message.time.unix_timestamp_nanos() / 1_000_000) as u64,
                Err(_) => 0,
            };
            queue.oldest_ms.store(oldest, Ordering::Relaxed);
            // Only for a function this node has: one deployed a moment ago through another
            // node may not have reached it yet, and its invocations are not this node's to
            // judge.
            if count > 0 && crate::events::current(&events.platform, &name).is_some() {
                self.start_worker(events, &name, &queue);
            }
        }
        Ok(())
    }

    /// Each function's queue figures as this node sees them (the depth and the oldest age
    /// are the stream's; the counters this node's own).
    pub fn stats(&self) -> Vec<QueueInfo> {
        let now = now_ms();
        let mut out: Vec<QueueInfo> = self
            .functions
            .lock()
            .unwrap()
            .iter()
            .map(|(function, q)| {
                let oldest = q.oldest_ms.load(Ordering::Relaxed);
                QueueInfo {
                    function: function.clone(),
                    depth: q.depth.load(Ordering::Relaxed),
                    oldest_age_ms: if oldest == 0 {
                        0
                    } else {
                        now.saturating_sub(oldest)
                    },
                    attempts: q.attempts.load(Ordering::Relaxed),
                    dead_letters: q.dead_letters.load(Ordering::Relaxed),
                    succeeded: q.succeeded.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
    }

    pub(super) async fn read(&self, id: &str) -> Response<ResponseBody> {
        let (record, _) = match self.record(id).await {
            Ok(Some(found)) => found,
            Ok(None) => return InvokeError::NotFound.into_response(),
            Err(e) => {
                return InvokeError::QueueUnavailable(format!("reading an invocation: {e:#}"))
                    .into_response();
            }
        };
        let body = match (&record.result, record.info.state.is_final()) {
            (Some(_), true) => match self.records.get(result_key(&record.info)).await {
                Ok(body) => body.unwrap_or_default(),
                Err(e) => {
                    return InvokeError::QueueUnavailable(format!("reading a result: {e}"))
                        .into_response();
                }
            },
            _ => Bytes::new(),
        };
        let info = record.info.clone();
        answer(&record, info, body)
    }

    pub(super) async fn info(&self, id: &str) -> anyhow::Result<Option<InvocationInfo>> {
        Ok(self.record(id).await?.map(|(record, _)| record.info))
    }

    /// Every record of the bucket, with its revision: an operator's listing or the sweep,
    /// not a request's path.
    async fn all(&self) -> anyhow::Result<Vec<(StoredInvocation, u64)>> {
        let mut keys = self.records.keys().await?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.contains('.') {
                continue;
            }
            if let Some(found) = self.record(&key).await? {
                all.push(found);
            }
        }
        Ok(all)
    }

    /// A function's invocations, newest first.
    pub(super) async fn list(
        &self,
        function: &str,
        failed: bool,
        limit: usize,
    ) -> anyhow::Result<InvocationList> {
        let mut invocations: Vec<InvocationInfo> = self
            .all()
            .await?
            .into_iter()
            .map(|(record, _)| record.info)
            .filter(|i| i.function == function && (!failed || i.state == InvocationState::Failed))
            .collect();
        invocations.sort_by(|a, b| b.enqueued_ms.cmp(&a.enqueued_ms).then(a.id.cmp(&b.id)));
        invocations.truncate(limit);
        Ok(InvocationList { invocations })
    }

    pub(super) async fn retry(&self, id: &str) -> Result<InvocationInfo, ChangeError> {
        let (mut record, revision) = self
            .record(id)
            .await?
            .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
        let dead = record.clone();
        let now = now_ms();
        requeue(&mut record.info, now)?;
        let Some(queued) = self.update(&record, revision).await? else {
            return Err(ChangeError::Conflict(format!(
                "invocation {id} changed meanwhile; try again"
            )));
        };
        // A new message id: the first publish's may still be in the deduplication window.
        if let Err(e) = self
            .publish(&record.info.function, id, &format!("{id}-{now}"))
            .await
        {
            // Not queued after all: the dead letter as it was, to be retried again.
            let _ = self.update(&dead, queued).await;
            return Err(e.into());
        }
        Ok(record.info)
    }

    /// Removes an invocation that is not running; a queued one's message is dropped by
    /// whichever node takes it next (it finds no record).
    pub(super) async fn discard(&self, id: &str) -> Result<(), ChangeError> {
        let (record, revision) = self
            .record(id)
            .await?
            .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
        if record.info.state == InvocationState::Running {
            return Err(ChangeError::Conflict(format!(
                "invocation {id} is running; discard it once it ends"
            )));
        }
        if !self.remove(id, revision).await? {
            return Err(ChangeError::Conflict(format!(
                "invocation {id} changed meanwhile; try again"
            )));
        }
        Ok(())
    }

    /// Removes finished records past their retention, and dead-letters records that are
    /// not final long past their `max_age_s` (their message was lost).
    async fn sweep(&self, events: &Events) -> anyhow::Result<()> {
        let now = now_ms();
        for (mut record, revision) in self.all().await? {
            if record.info.state.is_final() {
                if super::expired(&record.info, &events.options, now) {
                    self.remove(&record.info.id, revision).await?;
                }
                continue;
            }
            let max_age = crate::events::current(&events.platform, &record.info.function)
                .map_or(crate::event_spec::MAX_ASYNC_AGE, |f| {
                    crate::events::async_policy(&f).max_age
                });
            let age = Duration::from_millis(now.saturating_sub(record.info.enqueued_ms));
            if age > max_age + ORPHAN_GRACE {
                record.info.state = InvocationState::Failed;
                record.info.error = Some("its queue message was lost".into());
                record.info.finished_ms = Some(now);
                record.info.next_attempt_ms = None;
                tracing::warn!(function = %record.info.function, invocation = %record.info.id, "an asynchronous invocation was dead-lettered: its queue message was lost");
                self.update(&record, revision).await?;
            }
        }
        Ok(())
    }
}

/// Where the body of a record's result is kept: a key per attempt.
fn result_key(info: &InvocationInfo) -> String {
    format!("{}.result.{}", info.id, info.attempts)
}

/// An id as thaw makes them (hex): anything else is no key of the bucket.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Decrement<'a>(&'a AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts the work each second, starting workers where there is some, and sweeps each
/// minute; started with the events.
pub(super) fn start(events: &Arc<Events>, shared: &Arc<SharedQueue>) {
    let (counting, counted) = (events.clone(), shared.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = counted.sync(&counting).await {
                tracing::debug!("counting the NATS queue's work: {e:#}");
            }
        }
    });
    // Apart: a long sweep must not hold up the count (and so the workers' start).
    let (events, shared) = (events.clone(), shared.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = shared.sweep(&events).await {
                tracing::warn!("sweeping finished invocations on NATS: {e:#}");
            }
        }
    });
}

/// A function's worker: pulls as many messages as it has free places until it has had none
/// for [`IDLE_STOP`]; a failed session starts again with backoff.
async fn work(
    events: Arc<Events>,
    function: String,
    queue: Arc<FunctionQueue>,
    stop: CancellationToken,
) {
    // Cleared however this task ends (a panic included), so that a later start is not
    // refused by a worker that is gone.
    struct Running<'a>(&'a FunctionQueue);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            *self.0.worker.lock().unwrap() = None;
        }
    }
    let _running = Running(&queue);
    let places = Arc::new(Semaphore::new(crate::events::delivery_places(
        crate::events::current(&events.platform, &function).as_deref(),
    )));
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            result = session(&events, &function, &queue, &places) => result,
            _ = stop.cancelled() => break,
        };
        match result {
            Ok(()) => break, // idle
            Err(e) => {
                tracing::warn!(%function, "the NATS queue's worker: {e:#}; starting again in {} ms", backoff.as_millis())
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Pulls and delivers until idle for [`IDLE_STOP`] (`Ok`) or the server fails (`Err`).
async fn session(
    events: &Arc<Events>,
    function: &str,
    queue: &Arc<FunctionQueue>,
    places: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    let Some(shared) = events.shared_queue.get().cloned() else {
        return Ok(());
    };
    let consumer: consumer::PullConsumer = shared
        .work
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("thaw-invocations-{function}")),
            filter_subject: subject(function),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            // Messages held back for a retry count as pending: no cap, `max_queued` bounds.
            max_ack_pending: -1,
            inactive_threshold: Duration::from_secs(3600),
            ..Default::default()
        })
        .await?;
    let mut last_message = Instant::now();
    loop {
        let mut held = crate::events::triggers::free_places(places).await?;
        let asked = Instant::now();
        let mut got = 0usize;
        let mut batch = consumer
            .fetch()
            .max_messages(held.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
            last_message = Instant::now();
            got += 1;
            let Some(place) = held.pop() else {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            tokio::spawn(deliver(
                events.clone(),
                shared.clone(),
                function.to_owned(),
                queue.clone(),
                message,
                place,
            ));
        }
        if last_message.elapsed() >= IDLE_STOP && queue.depth.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        // Answered empty at once (the server does so while other nodes' pulls wait on the
        // same consumer): a pause, not a spin.
        if got == 0 && asked.elapsed() < FETCH_EXPIRES / 2 {
            drop(held);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn deliver(
    events: Arc<Events>,
    shared: Arc<SharedQueue>,
    function: String,
    queue: Arc<FunctionQueue>,
    message: jetstream::Message,
    _place: OwnedSemaphorePermit,
) {
    let id = String::from_utf8_lossy(&message.payload).into_owned();
    let heartbeat = async {
        loop {
            tokio::time::sleep(ACK_WAIT / 3).await;
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(invocation = %id, "telling JetStream an attempt goes on: {e}");
            }
        }
    };
    let attempted = tokio::select! {
        attempted = attempt(&events, &shared, &function, &queue, &id) => attempted,
        never = heartbeat => never,
    };
    let ack = match attempted {
        Ok(Some(ack)) => ack,
        // Another node holds it: its acknowledgement decides.
        Ok(None) => return,
        Err(e) => {
            // The record could not be read or written: the message comes back later.
            tracing::warn!(%function, invocation = %id, "an invocation's attempt on NATS: {e:#}");
            AckKind::Nak(Some(Duration::from_secs(10)))
        }
    };
    if let Err(e) = message.ack_with(ack).await {
        // Redelivered after ack_wait: at least once, never lost.
        tracing::warn!(%function, invocation = %id, "acknowledging an invocation's message: {e}");
    }
}

/// How a message whose record changed under this node is left: acknowledged if the record
/// is final or gone, else to the node that changed it.
async fn after_lost_race(shared: &SharedQueue, id: &str) -> anyhow::Result<Option<AckKind>> {
    Ok(match shared.record(id).await? {
        Some((record, _)) if !record.info.state.is_final() => None,
        _ => Some(AckKind::Ack),
    })
}

/// One attempt at invocation `id` (from the message of function `name`); how its message is
/// to be acknowledged, if by this node.
async fn attempt(
    events: &Arc<Events>,
    shared: &SharedQueue,
    name: &str,
    queue: &FunctionQueue,
    id: &str,
) -> anyhow::Result<Option<AckKind>> {
    let Some((mut record, revision)) = shared.record(id).await? else {
        return Ok(Some(AckKind::Ack)); // discarded while queued
    };
    if record.info.state.is_final() || record.info.function != name {
        // Done, or a message on this function's subject naming another's invocation:
        // nothing to run.
        return Ok(Some(AckKind::Ack));
    }
    // Back before its retry is due (the delayed nak was lost, or its node died after
    // recording the retry): held back for the rest of the delay.
    let now = now_ms();
    if record.info.state == InvocationState::Queued
        && let Some(due) = record.info.next_attempt_ms
        && due > now
    {
        return Ok(Some(AckKind::Nak(Some(Duration::from_millis(due - now)))));
    }
    let Some(function) = crate::events::current(&events.platform, name) else {
        return finish(
            shared,
            queue,
            record,
            revision,
            None,
            "the function was removed".into(),
        )
        .await;
    };
    let policy = crate::events::async_policy(&function);
    if let Some(why) = too_old(record.info.enqueued_ms, now_ms(), &policy) {
        return finish(shared, queue, record, revision, None, why).await;
    }
    // Running, one more attempt: recorded before it starts, so a crash mid-attempt counts.
    record.info.attempts += 1;
    record.info.state = InvocationState::Running;
    let Some(revision) = shared.update(&record, revision).await? else {
        return after_lost_race(shared, id).await;
    };
    let Some(body) = shared.records.get(format!("{id}.request")).await? else {
        let why = "its request body was lost".to_owned();
        return finish(shared, queue, record, revision, None, why).await;
    };
    queue.attempts.fetch_add(1, Ordering::Relaxed);
    let outcome = attempt_once(events, function, &record, body).await?;
    record.info.status = Some(outcome.status.as_u16());
    match verdict(&outcome, &record.info, &policy) {
        Verdict::Succeeded => {
            record.info.state = InvocationState::Succeeded;
            record.info.error = None;
            let ack = finish(
                shared,
                queue,
                record,
                revision,
                Some(outcome),
                String::new(),
            )
            .await;
            if matches!(ack, Ok(Some(_))) {
                queue.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            ack
        }
        Verdict::DeadLetter(why) => {
            finish(shared, queue, record, revision, Some(outcome), why).await
        }
        Verdict::Retry {
            delay,
            due,
            failure,
        } => {
            tracing::info!(function = %name, invocation = %id, attempt = record.info.attempts, retry_in_ms = delay.as_millis() as u64, "an asynchronous invocation failed ({failure}); retrying");
            record.info.state = InvocationState::Queued;
            record.info.error = Some(failure);
            record.info.next_attempt_ms = Some(due);
            record.result = Some(result_head(&outcome));
            if shared.update(&record, revision).await?.is_none() {
                return after_lost_race(shared, id).await;
            }
            Ok(Some(AckKind::Nak(Some(delay))))
        }
    }
}

/// Records `record` as final (succeeded, or dead-lettered for `why`) and sends its callback;
/// how its message is to be acknowledged. A result body over what one value holds is cut
/// (and marked so).
async fn finish(
    shared: &SharedQueue,
    queue: &FunctionQueue,
    mut record: StoredInvocation,
    revision: u64,
    outcome: Option<crate::events::Outcome>,
    why: String,
) -> anyhow::Result<Option<AckKind>> {
    if record.info.state != InvocationState::Succeeded {
        record.info.state = InvocationState::Failed;
        record.info.error = Some(why.clone());
    }
    record.info.next_attempt_ms = None;
    record.info.finished_ms = Some(now_ms());
    record.result = outcome.as_ref().map(result_head);
    let mut body = outcome.as_ref().map(|o| o.body.clone()).unwrap_or_default();
    if body.len() > shared.max_value() {
        body.truncate(shared.max_value());
        if let Some(result) = &mut record.result {
            result.truncated = true;
        }
    }
    let id = record.info.id.clone();
    // Under a key of this attempt's: a node that lost the record to another (which ran the
    // invocation too) cannot overwrite the winner's body.
    shared
        .records
        .put(result_key(&record.info), body.clone())
        .await?;
    if shared.update(&record, revision).await?.is_none() {
        return after_lost_race(shared, &id).await;
    }
    if record.info.state == InvocationState::Failed {
        queue.dead_letters.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(function = %record.info.function, invocation = %id, attempts = record.info.attempts, "an asynchronous invocation was dead-lettered: {why}");
    }
    if let Some(url) = record.info.callback_url.clone() {
        tokio::spawn(send_callback(
            url,
            record.info,
            outcome.map(|o| (o.status, o.headers)),
            body,
        ));
    }
    Ok(Some(AckKind::Ack))
}
