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
//! another node [`ACK_WAIT`] later, however long the function's timeout.
//!
//! # Trade-offs against the embedded queue
//! - Every accept is three round trips to the server (two puts, one publish); the embedded
//!   queue's is one fsync shared by a group of writes.
//! - `max_queued` is checked against the consumer's depth as last seen by this node
//!   (refreshed each second while the worker runs) plus what this node is accepting: a bound
//!   that a crowd spread over several nodes can overshoot by what arrives within a second.
//! - Concurrency is per node, as for HTTP requests: each node runs at most the function's
//!   delivery places.
//! - Finished records are removed after their retention by a sweep on every node (the
//!   deletes are idempotent).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    ChangeError, StoredInvocation, Verdict, answer, attempt_once, queue_full, read_request,
    result_head, send_callback, too_old, verdict,
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
/// How long one fetch waits before asking again (and refreshing the depth).
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// What a record, its headers and the message's framing may need beside a body, under the
/// server's `max_payload`.
const RECORD_ROOM: u64 = 64 << 10;

fn subject(function: &str) -> String {
    format!("thaw.invocations.{function}")
}

/// One function's worker on this node.
struct Worker {
    stop: CancellationToken,
    /// Messages pending or being delivered, as the consumer last said.
    depth: AtomicU64,
    /// When the oldest pending message was published (ms), 0 if none.
    oldest_ms: AtomicU64,
    /// Requests being accepted here, past the `max_queued` check.
    accepting: AtomicU64,
    attempts: AtomicU64,
    dead_letters: AtomicU64,
    succeeded: AtomicU64,
}

/// The queue on JetStream.
pub struct SharedQueue {
    js: jetstream::Context,
    records: kv::Store,
    work: stream::Stream,
    max_payload: u64,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
}

impl SharedQueue {
    /// Connects `client` to the bucket and the stream, made if missing.
    pub async fn open(client: async_nats::Client) -> anyhow::Result<Self> {
        let max_payload = client.server_info().max_payload as u64;
        let js = jetstream::new(client);
        // The bucket's stream made by hand, as a key-value bucket is laid out (`KV_<bucket>`,
        // subjects `$KV.<bucket>.>`): the client's `create_key_value` first asks for the
        // account's limits, whose answer from Debian's nats-server 2.9 it cannot parse.
        js.get_or_create_stream(stream::Config {
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
            work,
            max_payload,
            workers: Mutex::new(HashMap::new()),
        })
    }

    async fn record(&self, id: &str) -> anyhow::Result<Option<(StoredInvocation, u64)>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.records.entry(id).await? {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some((
                serde_json::from_slice(&entry.value)?,
                entry.revision,
            ))),
            _ => Ok(None),
        }
    }

    /// Writes `record` if it is still at `revision`; false if it changed (or went) meanwhile.
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

    async fn remove(&self, id: &str) {
        for key in [
            format!("{id}.request"),
            format!("{id}.result"),
            id.to_owned(),
        ] {
            if let Err(e) = self.records.purge(&key).await {
                tracing::warn!(invocation = %id, "removing {key}: {e}");
            }
        }
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
        let worker = self.worker(events, &function.name);
        let accepting = worker.accepting.fetch_add(1, Ordering::AcqRel);
        let _accepting = Decrement(&worker.accepting);
        if worker.depth.load(Ordering::Acquire) + accepting >= u64::from(policy.max_queued) {
            return Err(queue_full(function, policy));
        }
        let limit = events
            .options
            .max_async_body_bytes
            .min(self.max_payload.saturating_sub(RECORD_ROOM));
        let (record, body) = read_request(function, req, peer, callback_url, limit).await?;
        let info = record.info.clone();
        let stored = async {
            let id = &info.id;
            self.records.put(format!("{id}.request"), body).await?;
            self.records
                .create(id, Bytes::from(serde_json::to_vec(&record)?))
                .await?;
            self.publish(&info.function, id, id).await
        }
        .await;
        if let Err(e) = stored {
            self.remove(&info.id).await;
            return Err(InvokeError::Internal(format!(
                "storing an asynchronous invocation on NATS: {e:#}"
            )));
        }
        worker.depth.fetch_add(1, Ordering::AcqRel);
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

    /// The worker of `function` on this node, started on first use.
    fn worker(&self, events: &Arc<Events>, function: &str) -> Arc<Worker> {
        let mut workers = self.workers.lock().unwrap();
        if let Some(worker) = workers.get(function) {
            return worker.clone();
        }
        let worker = Arc::new(Worker {
            stop: CancellationToken::new(),
            depth: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(0),
            accepting: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
        });
        workers.insert(function.to_owned(), worker.clone());
        tokio::spawn(work(events.clone(), function.to_owned(), worker.clone()));
        worker
    }

    /// Starts a worker for every function this node has and stops those of removed ones;
    /// called each second.
    fn sync(&self, events: &Arc<Events>) {
        let names: Vec<String> = events
            .platform
            .registry()
            .all()
            .iter()
            .map(|set| set.primary().name.to_string())
            .collect();
        self.workers.lock().unwrap().retain(|function, worker| {
            let keep = names.contains(function);
            if !keep {
                worker.stop.cancel();
            }
            keep
        });
        for name in names {
            self.worker(events, &name);
        }
    }

    /// Each function's queue figures as this node sees them.
    pub fn stats(&self) -> Vec<QueueInfo> {
        let now = now_ms();
        let mut out: Vec<QueueInfo> = self
            .workers
            .lock()
            .unwrap()
            .iter()
            .map(|(function, w)| {
                let oldest = w.oldest_ms.load(Ordering::Relaxed);
                QueueInfo {
                    function: function.clone(),
                    depth: w.depth.load(Ordering::Relaxed),
                    oldest_age_ms: if oldest == 0 {
                        0
                    } else {
                        now.saturating_sub(oldest)
                    },
                    attempts: w.attempts.load(Ordering::Relaxed),
                    dead_letters: w.dead_letters.load(Ordering::Relaxed),
                    succeeded: w.succeeded.load(Ordering::Relaxed),
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
                return InvokeError::Internal(format!("reading an invocation: {e:#}"))
                    .into_response();
            }
        };
        let body = match (&record.result, record.info.state.is_final()) {
            (Some(_), true) => match self.records.get(format!("{id}.result")).await {
                Ok(body) => body.unwrap_or_default(),
                Err(e) => {
                    return InvokeError::Internal(format!("reading a result: {e}")).into_response();
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

    /// A function's invocations, newest first: every record of the bucket is read (an
    /// operator's listing, not a request's path).
    pub(super) async fn list(
        &self,
        function: &str,
        failed: bool,
        limit: usize,
    ) -> anyhow::Result<InvocationList> {
        let mut keys = self.records.keys().await?;
        let mut invocations = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.contains('.') {
                continue;
            }
            if let Some((record, _)) = self.record(&key).await? {
                let info = record.info;
                if info.function == function && (!failed || info.state == InvocationState::Failed) {
                    invocations.push(info);
                }
            }
        }
        invocations.sort_by(|a, b| b.enqueued_ms.cmp(&a.enqueued_ms).then(a.id.cmp(&b.id)));
        invocations.truncate(limit);
        Ok(InvocationList { invocations })
    }

    pub(super) async fn retry(&self, id: &str) -> Result<InvocationInfo, ChangeError> {
        let (mut record, revision) = self
            .record(id)
            .await?
            .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
        if record.info.state != InvocationState::Failed {
            return Err(ChangeError::Conflict(format!(
                "invocation {id} is {:?}: only a failed (dead-lettered) one is retried",
                record.info.state
            )));
        }
        let dead = record.clone();
        let now = now_ms();
        record.info.state = InvocationState::Queued;
        record.info.attempts = 0;
        record.info.enqueued_ms = now;
        record.info.next_attempt_ms = Some(now);
        record.info.finished_ms = None;
        record.info.error = None;
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
        let (record, _) = self
            .record(id)
            .await?
            .ok_or_else(|| ChangeError::NotFound(id.to_owned()))?;
        if record.info.state == InvocationState::Running {
            return Err(ChangeError::Conflict(format!(
                "invocation {id} is running; discard it once it ends"
            )));
        }
        self.remove(id).await;
        Ok(())
    }

    /// Removes finished records past their retention.
    async fn sweep(&self, events: &Events) -> anyhow::Result<()> {
        let now = now_ms();
        let mut keys = self.records.keys().await?;
        let mut expired = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.contains('.') {
                continue;
            }
            if let Some((record, _)) = self.record(&key).await?
                && super::expired(&record.info, &events.options, now)
            {
                expired.push(key);
            }
        }
        for id in expired {
            self.remove(&id).await;
        }
        Ok(())
    }
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

/// Keeps a worker for each function and sweeps retention; started with the events.
pub(super) fn start(events: &Arc<Events>, shared: &Arc<SharedQueue>) {
    let (events, shared) = (events.clone(), shared.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            every.tick().await;
            shared.sync(&events);
            ticks += 1;
            if ticks.is_multiple_of(60)
                && let Err(e) = shared.sweep(&events).await
            {
                tracing::warn!("sweeping finished invocations on NATS: {e:#}");
            }
        }
    });
}

/// A function's worker: pulls as many messages as it has free places, until stopped; a
/// failed session starts again with backoff.
async fn work(events: Arc<Events>, function: String, worker: Arc<Worker>) {
    let places = Arc::new(Semaphore::new(crate::events::delivery_places(
        crate::events::current(&events.platform, &function).as_deref(),
    )));
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            result = session(&events, &function, &worker, &places) => result,
            _ = worker.stop.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::warn!(%function, "the NATS queue's worker: {e:#}; starting again in {} ms", backoff.as_millis());
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = worker.stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    events: &Arc<Events>,
    function: &str,
    worker: &Arc<Worker>,
    places: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    let Some(shared) = events.shared_queue.get().cloned() else {
        return Ok(());
    };
    let mut consumer: consumer::PullConsumer = shared
        .work
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("thaw-invocations-{function}")),
            filter_subject: subject(function),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            ..Default::default()
        })
        .await?;
    loop {
        let info = consumer.info().await?;
        let depth = info.num_pending + info.num_ack_pending as u64;
        worker.depth.store(depth, Ordering::Release);
        let oldest = if depth == 0 {
            0
        } else {
            shared
                .work
                .get_first_raw_message_by_subject(
                    subject(function),
                    info.ack_floor.stream_sequence + 1,
                )
                .await
                .map_or(0, |m| (m.time.unix_timestamp_nanos() / 1_000_000) as u64)
        };
        worker.oldest_ms.store(oldest, Ordering::Relaxed);
        let mut held = crate::events::triggers::free_places(places).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(held.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
            let Some(place) = held.pop() else {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            tokio::spawn(deliver(
                events.clone(),
                shared.clone(),
                function.to_owned(),
                worker.clone(),
                message,
                place,
            ));
        }
    }
}

async fn deliver(
    events: Arc<Events>,
    shared: Arc<SharedQueue>,
    function: String,
    worker: Arc<Worker>,
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
        attempted = attempt(&events, &shared, &function, &worker, &id) => attempted,
        never = heartbeat => never,
    };
    let ack = match attempted {
        Ok(ack) => ack,
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

/// One attempt at invocation `id`; how its message is to be acknowledged.
async fn attempt(
    events: &Arc<Events>,
    shared: &SharedQueue,
    name: &str,
    worker: &Worker,
    id: &str,
) -> anyhow::Result<AckKind> {
    let Some((mut record, revision)) = shared.record(id).await? else {
        return Ok(AckKind::Ack); // discarded while queued
    };
    if record.info.state.is_final() {
        return Ok(AckKind::Ack);
    }
    let Some(function) = crate::events::current(&events.platform, name) else {
        finish(
            shared,
            worker,
            record,
            revision,
            None,
            "the function was removed".into(),
        )
        .await?;
        return Ok(AckKind::Ack);
    };
    let policy = crate::events::async_policy(&function);
    if let Some(why) = too_old(record.info.enqueued_ms, now_ms(), &policy) {
        finish(shared, worker, record, revision, None, why).await?;
        return Ok(AckKind::Ack);
    }
    // Running, one more attempt: recorded before it starts, so a crash mid-attempt counts.
    record.info.attempts += 1;
    record.info.state = InvocationState::Running;
    let Some(revision) = shared.update(&record, revision).await? else {
        // Changed by someone else (a discard): look again later.
        return Ok(AckKind::Nak(Some(Duration::from_secs(1))));
    };
    worker.attempts.fetch_add(1, Ordering::Relaxed);
    let body = shared
        .records
        .get(format!("{id}.request"))
        .await?
        .unwrap_or_default();
    let outcome = attempt_once(events, function, &record, body).await?;
    record.info.status = Some(outcome.status.as_u16());
    match verdict(&outcome, &record.info, &policy) {
        Verdict::Succeeded => {
            record.info.state = InvocationState::Succeeded;
            record.info.error = None;
            worker.succeeded.fetch_add(1, Ordering::Relaxed);
            finish(
                shared,
                worker,
                record,
                revision,
                Some(outcome),
                String::new(),
            )
            .await?;
            Ok(AckKind::Ack)
        }
        Verdict::DeadLetter(why) => {
            finish(shared, worker, record, revision, Some(outcome), why).await?;
            Ok(AckKind::Ack)
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
            shared.update(&record, revision).await?;
            Ok(AckKind::Nak(Some(delay)))
        }
    }
}

/// Records `record` as final (succeeded, or dead-lettered for `why`) and sends its callback.
async fn finish(
    shared: &SharedQueue,
    worker: &Worker,
    mut record: StoredInvocation,
    revision: u64,
    outcome: Option<crate::events::Outcome>,
    why: String,
) -> anyhow::Result<()> {
    if record.info.state != InvocationState::Succeeded {
        record.info.state = InvocationState::Failed;
        record.info.error = Some(why.clone());
        worker.dead_letters.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(function = %record.info.function, invocation = %record.info.id, attempts = record.info.attempts, "an asynchronous invocation was dead-lettered: {why}");
    }
    record.info.next_attempt_ms = None;
    record.info.finished_ms = Some(now_ms());
    record.result = outcome.as_ref().map(result_head);
    let body = outcome.as_ref().map(|o| o.body.clone()).unwrap_or_default();
    let id = record.info.id.clone();
    shared
        .records
        .put(format!("{id}.result"), body.clone())
        .await?;
    if shared.update(&record, revision).await?.is_none() {
        // Discarded while it ran: its result goes with it.
        let _ = shared.records.purge(format!("{id}.result")).await;
        return Ok(());
    }
    if let Some(url) = record.info.callback_url.clone() {
        tokio::spawn(send_callback(
            url,
            record.info,
            outcome.map(|o| (o.status, o.headers)),
            body,
        ));
    }
    Ok(())
}
