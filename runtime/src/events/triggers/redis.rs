//! Redis Streams: a consumer group (`thaw-<function>` unless named) on the trigger's stream,
//! this node a consumer of its own name in it.
//!
//! New messages come from `XREADGROUP ... >`, as many as there are free places. A message
//! that a consumer took and never acknowledged (its node died mid-delivery) is taken over
//! with `XAUTOCLAIM` once it has been idle for the visibility timeout (the function's timeout
//! plus 30 s unless set): checked at start and every half timeout. Redis has no delayed
//! redelivery, so a failed delivery is retried here: after the function's backoff the
//! message is claimed again (`XCLAIM`, which counts the delivery) and run, up to
//! `max_deliver` deliveries as Redis counts them; then it is added to the dead-letter stream
//! and acknowledged. If this node dies meanwhile, the message is still pending and another
//! node claims it.
//!
//! A message's body is its `data` field when that is its only field, else its fields as a
//! JSON object (string values).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;
use redis::AsyncCommands as _;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{TriggerStats, places, retry_delay, supervise};
use crate::event_spec::{DEFAULT_MAX_DELIVER, RedisTrigger};
use crate::events::{CloudEvent, Events};

/// How long one read blocks for new messages before asking again.
const READ_BLOCK_MS: usize = 1000;

/// Consumes `trigger` for `function` until `stop`.
pub(super) async fn run(
    events: Arc<Events>,
    function: String,
    trigger: RedisTrigger,
    stop: CancellationToken,
    stats: Arc<TriggerStats>,
) {
    let what = format!(
        "the Redis trigger of {function} (stream {})",
        trigger.stream
    );
    // One set of places for the consumer's life (see the NATS trigger).
    let places = Arc::new(Semaphore::new(places(&events, &function)));
    supervise(&what, &stop, &stats, || {
        session(&events, &function, &trigger, &stats, places.clone())
    })
    .await;
}

/// Whether `stream` can be consumed on the host's Redis: absent (it is created) or a stream.
pub async fn check_stream(events: &Events, stream: &str) -> anyhow::Result<()> {
    let mut connection = events.redis()?.get_multiplexed_async_connection().await?;
    let kind: String = redis::cmd("TYPE")
        .arg(stream)
        .query_async(&mut connection)
        .await?;
    match kind.as_str() {
        "stream" | "none" => Ok(()),
        other => anyhow::bail!("the Redis key {stream:?} is a {other}, not a stream"),
    }
}

struct Ctx {
    events: Arc<Events>,
    function: String,
    trigger: RedisTrigger,
    group: String,
    consumer: String,
    writer: redis::aio::MultiplexedConnection,
    stats: Arc<TriggerStats>,
    places: Arc<Semaphore>,
}

async fn session(
    events: &Arc<Events>,
    function: &str,
    trigger: &RedisTrigger,
    stats: &Arc<TriggerStats>,
    places: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let client = events.redis()?;
    // Two connections: a blocking read would hold up the acknowledgements behind it.
    let mut reader = client.get_multiplexed_async_connection().await?;
    let mut writer = client.get_multiplexed_async_connection().await?;
    let group = trigger
        .group
        .clone()
        .unwrap_or_else(|| format!("thaw-{function}"));
    let created: redis::RedisResult<()> = writer
        .xgroup_create_mkstream(&trigger.stream, &group, "$")
        .await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(e.into());
    }
    let timeout = crate::events::current(&events.platform, function)
        .map_or(Duration::from_secs(60), |f| f.limits.timeout);
    let visibility = trigger
        .visibility_timeout_ms
        .map_or(timeout + Duration::from_secs(30), Duration::from_millis);
    let cx = Arc::new(Ctx {
        events: events.clone(),
        function: function.to_owned(),
        trigger: trigger.clone(),
        group,
        consumer: events.options.node.clone(),
        writer: writer.clone(),
        stats: stats.clone(),
        places: places.clone(),
    });
    let mut next_claim = Instant::now();
    // Where the pending list's scan goes on: every entry is reached in turn, not only the
    // first `count` (which may all be busy elsewhere).
    let mut claim_cursor = "0-0".to_owned();
    loop {
        let mut held = super::free_places(&places).await?;
        let mut taken: Vec<(StreamId, Option<u32>)> = Vec::new();
        if Instant::now() >= next_claim {
            let reply: StreamAutoClaimReply = writer
                .xautoclaim_options(
                    &trigger.stream,
                    &cx.group,
                    &cx.consumer,
                    visibility.as_millis() as u64,
                    &claim_cursor,
                    StreamAutoClaimOptions::default().count(held.len()),
                )
                .await?;
            // Round done ("0-0" back): wait half a timeout; otherwise go on at once.
            if reply.next_stream_id == "0-0" {
                next_claim = Instant::now() + visibility / 2;
            }
            claim_cursor = reply.next_stream_id.clone();
            if !reply.claimed.is_empty() {
                tracing::info!(
                    function,
                    claimed = reply.claimed.len(),
                    "took over Redis messages left pending past the visibility timeout"
                );
            }
            taken.extend(reply.claimed.into_iter().map(|id| (id, None)));
        }
        if taken.is_empty() {
            let options = StreamReadOptions::default()
                .group(&cx.group, &cx.consumer)
                .count(held.len())
                .block(READ_BLOCK_MS);
            let reply: Option<StreamReadReply> = reader
                .xread_options(&[&trigger.stream], &[">"], &options)
                .await?;
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                taken.extend(key.ids.into_iter().map(|id| (id, Some(1))));
            }
        }
        for (entry, attempt) in taken {
            let Some(place) = held.pop() else { break };
            tokio::spawn(deliver(cx.clone(), entry, attempt, place));
        }
    }
}

/// The request body of an entry (see the module's docs).
fn body(entry: &StreamId) -> Vec<u8> {
    let text = |v: &redis::Value| -> Vec<u8> {
        match v {
            redis::Value::BulkString(bytes) => bytes.clone(),
            redis::Value::SimpleString(s) => s.clone().into_bytes(),
            other => format!("{other:?}").into_bytes(),
        }
    };
    if entry.map.len() == 1
        && let Some(data) = entry.map.get("data")
    {
        return text(data);
    }
    let fields: serde_json::Map<String, serde_json::Value> = entry
        .map
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(&text(v)).into_owned();
            (k.clone(), serde_json::Value::String(value))
        })
        .collect();
    serde_json::to_vec(&fields).unwrap_or_default()
}

async fn deliver(cx: Arc<Ctx>, entry: StreamId, attempt: Option<u32>, place: OwnedSemaphorePermit) {
    if let Err(e) = try_deliver(&cx, &entry, attempt, place).await {
        // Still pending: claimed again after the visibility timeout, here or elsewhere.
        tracing::warn!(function = %cx.function, message = %entry.id, "a Redis message's delivery was interrupted: {e:#}");
    }
}

async fn try_deliver(
    cx: &Ctx,
    entry: &StreamId,
    attempt: Option<u32>,
    mut place: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let stream = &cx.trigger.stream;
    let mut writer = cx.writer.clone();
    let mut attempt = match attempt {
        Some(attempt) => attempt,
        None => times_delivered(cx, &mut writer, entry).await?,
    };
    let max_deliver = cx.trigger.max_deliver.unwrap_or(DEFAULT_MAX_DELIVER);
    let source = format!("/thaw/redis/{stream}");
    let payload = bytes::Bytes::from(body(entry));
    loop {
        let _running = cx.stats.start();
        let Some(target) = crate::events::current(&cx.events.platform, &cx.function) else {
            return Ok(());
        };
        let mut request = Request::post(thaw_spec::route::split(&target.route).1)
            .body(Full::new(payload.clone()))?;
        CloudEvent {
            id: &entry.id,
            source: &source,
            kind: "dev.thaw.redis.message",
            time: std::time::SystemTime::now(),
            subject: Some(stream),
            attempt,
        }
        .apply(request.headers_mut());
        let outcome = crate::events::deliver(
            &cx.events.platform,
            target,
            request,
            crate::events::EVENT_PEER,
            4096,
        )
        .await;
        if outcome.succeeded() {
            let _: u64 = writer.xack(stream, &cx.group, &[&entry.id]).await?;
            cx.stats
                .acked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        if attempt >= max_deliver {
            let failure = outcome.failure();
            return dead_letter(cx, &mut writer, entry, attempt, &failure, &payload).await;
        }
        cx.stats
            .retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(_running);
        // The place is given back while waiting: a backoff must not stall the stream.
        drop(place);
        let delay = retry_delay(&cx.events, &cx.function, attempt);
        tokio::time::sleep(delay).await;
        place = cx.places.clone().acquire_owned().await?;
        // Claim it again (Redis counts the delivery), only if it stayed idle all along:
        // if another consumer took it over meanwhile (XAUTOCLAIM) or it was acknowledged,
        // it is theirs, and nothing is left to do here.
        let idle_ms = delay.as_millis().saturating_sub(50) as u64;
        let claimed: redis::streams::StreamClaimReply = writer
            .xclaim(stream, &cx.group, &cx.consumer, idle_ms, &[&entry.id])
            .await?;
        if claimed.ids.is_empty() {
            return Ok(());
        }
        attempt += 1;
    }
}

/// How many times Redis has delivered `entry` to the group (1 when it has no count).
async fn times_delivered(
    cx: &Ctx,
    writer: &mut redis::aio::MultiplexedConnection,
    entry: &StreamId,
) -> anyhow::Result<u32> {
    let pending: StreamPendingCountReply = writer
        .xpending_count(&cx.trigger.stream, &cx.group, &entry.id, &entry.id, 1)
        .await?;
    Ok(pending
        .ids
        .first()
        .map_or(1, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX)))
}

/// Adds `entry` to the dead-letter stream with its `failure`, then acknowledges it.
async fn dead_letter(
    cx: &Ctx,
    writer: &mut redis::aio::MultiplexedConnection,
    entry: &StreamId,
    attempt: u32,
    failure: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let stream = &cx.trigger.stream;
    let dead = cx
        .trigger
        .dead_letter_stream
        .clone()
        .unwrap_or_else(|| format!("{stream}:dead"));
    let _: String = writer
        .xadd(
            &dead,
            "*",
            &[
                ("id", entry.id.as_bytes()),
                ("failure", failure.as_bytes()),
                ("attempts", attempt.to_string().as_bytes()),
                ("data", payload),
            ],
        )
        .await?;
    let _: u64 = writer.xack(stream, &cx.group, &[&entry.id]).await?;
    cx.stats
        .dead_letters
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(function = %cx.function, message = %entry.id, attempts = attempt, "a Redis message was dead-lettered to {dead}: {failure}");
    Ok(())
}
