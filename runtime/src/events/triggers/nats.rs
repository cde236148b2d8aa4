//! NATS JetStream: a durable pull consumer `thaw-<function>` on the trigger's stream.
//!
//! Each fetch asks for as many messages as there are free places. A message's delivery count
//! (JetStream's, so it survives a node's restart) is its attempt. Success: `ack`. Failure
//! before `max_deliver`: `nak` with the function's backoff as the delay, so the server holds
//! it back. At `max_deliver`: published to the dead-letter subject, then `term` (never
//! redelivered). The consumer's `ack_wait` is the function's timeout plus 30 s: a message is
//! redelivered only when its attempt cannot still be running.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt as _;
use http::Request;
use http_body_util::Full;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{TriggerStats, places, retry_delay, supervise};
use crate::event_spec::{DEFAULT_MAX_DELIVER, NatsTrigger};
use crate::events::{CloudEvent, Events};

/// How long one fetch waits for messages before asking again (and noticing a stop).
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

/// Consumes `trigger` for `function` until `stop`.
pub(super) async fn run(
    events: Arc<Events>,
    function: String,
    trigger: NatsTrigger,
    stop: CancellationToken,
    stats: Arc<TriggerStats>,
) {
    let what = format!("the NATS trigger of {function} (stream {})", trigger.stream);
    // One set of places for the consumer's life: deliveries of a failed session still
    // running hold theirs, so a new session cannot run more than the limit beside them.
    let places = Arc::new(Semaphore::new(places(&events, &function)));
    supervise(&what, &stop, &stats, || {
        session(&events, &function, &trigger, &stats, places.clone())
    })
    .await;
}

/// Whether `stream` exists on the host's NATS server (a deploy naming another is refused).
pub async fn check_stream(events: &Events, stream: &str) -> anyhow::Result<()> {
    let client = events.nats().await?;
    jetstream::new(client)
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("the JetStream stream {stream:?} cannot be used: {e}"))?;
    Ok(())
}

async fn session(
    events: &Arc<Events>,
    function: &str,
    trigger: &NatsTrigger,
    stats: &Arc<TriggerStats>,
    places: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let client = events.nats().await?;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(&trigger.stream).await?;
    let timeout = crate::events::current(&events.platform, function)
        .map_or(Duration::from_secs(60), |f| f.limits.timeout);
    let durable = format!("thaw-{function}");
    // Created, or updated in place when the function's timeout changed (a durable consumer
    // keeps its position; JetStream edits `ack_wait` of an existing one; a changed subject
    // needs nats-server 2.10).
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: trigger.subject.clone().unwrap_or_default(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: timeout + Duration::from_secs(30),
            // thaw counts deliveries itself and dead-letters at `max_deliver`.
            max_deliver: -1,
            ..Default::default()
        })
        .await?;
    loop {
        let mut held = super::free_places(&places).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(held.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("fetching: {e}"))?;
            let Some(place) = held.pop() else {
                // The server sent more than asked: leave it for a later fetch.
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            tokio::spawn(deliver(
                events.clone(),
                function.to_owned(),
                trigger.clone(),
                client.clone(),
                message,
                place,
                stats.clone(),
            ));
        }
    }
}

async fn deliver(
    events: Arc<Events>,
    function: String,
    trigger: NatsTrigger,
    client: async_nats::Client,
    message: jetstream::Message,
    _place: OwnedSemaphorePermit,
    stats: Arc<TriggerStats>,
) {
    let _running = stats.start();
    let Ok(info) = message.info() else {
        tracing::warn!(%function, "a NATS message without JetStream metadata; not acknowledged");
        return;
    };
    let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
    let id = format!("{}-{}", info.stream, info.stream_sequence);
    let source = format!("/thaw/nats/{}", info.stream);
    let Some(target) = crate::events::current(&events.platform, &function) else {
        return; // removed: the consumer is stopping; the message is redelivered elsewhere
    };
    let mut request = match Request::post(thaw_spec::route::split(&target.route).1)
        .body(Full::new(message.payload.clone()))
    {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(%function, "a NATS message's request: {e}");
            return;
        }
    };
    CloudEvent {
        id: &id,
        source: &source,
        kind: "dev.thaw.nats.message",
        time: std::time::SystemTime::now(),
        subject: Some(message.subject.as_str()),
        attempt,
    }
    .apply(request.headers_mut());
    let outcome = crate::events::deliver(
        &events.platform,
        target,
        request,
        crate::events::EVENT_PEER,
        4096,
    )
    .await;
    let max_deliver = trigger.max_deliver.unwrap_or(DEFAULT_MAX_DELIVER);
    let acked = if outcome.succeeded() {
        stats
            .acked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        message.ack().await
    } else if attempt >= max_deliver {
        let subject = trigger
            .dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("thaw.dead.{function}"));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("thaw-failure", outcome.failure().as_str());
        headers.insert("thaw-message-id", id.as_str());
        headers.insert("thaw-attempts", attempt.to_string().as_str());
        if let Err(e) = publish_dead_letter(&client, &subject, headers, &message).await {
            // Not dead-lettered, so not terminated: it comes back after ack_wait.
            tracing::warn!(%function, message = %id, "could not dead-letter to {subject}: {e:#}");
            return;
        }
        stats
            .dead_letters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%function, message = %id, attempts = attempt, "a NATS message was dead-lettered to {subject}: {}", outcome.failure());
        message.ack_with(AckKind::Term).await
    } else {
        stats
            .retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let delay = retry_delay(&events, &function, attempt);
        message.ack_with(AckKind::Nak(Some(delay))).await
    };
    if let Err(e) = acked {
        // The message is redelivered after ack_wait: at least once, never lost.
        tracing::warn!(%function, message = %id, "acknowledging a NATS message failed: {e}");
    }
}

/// Publishes `message`'s payload with `headers` to the dead-letter `subject`: through
/// JetStream, so a stream that keeps dead letters acknowledges it before the message is
/// terminated; a subject no stream captures gets a plain publish.
async fn publish_dead_letter(
    client: &async_nats::Client,
    subject: &str,
    headers: async_nats::HeaderMap,
    message: &jetstream::Message,
) -> anyhow::Result<()> {
    let stored = async {
        jetstream::new(client.clone())
            .publish_with_headers(subject.to_owned(), headers.clone(), message.payload.clone())
            .await?
            .await
    }
    .await;
    match stored {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
            client
                .publish_with_headers(subject.to_owned(), headers, message.payload.clone())
                .await?;
            client.flush().await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
