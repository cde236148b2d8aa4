//! Queue triggers: a function's `trigger = { nats = {...} }` or `{ redis = {...} }`, each
//! message delivered to it as a request ([`super::deliver`]) and acknowledged only once the
//! function answered it with success.
//!
//! # What is common to both brokers
//! - **Pulled, never pushed.** A consumer asks the broker for as many messages as the
//!   function has free delivery places (its `max_concurrency`, else
//!   [`super::DEFAULT_EVENT_CONCURRENCY`]) and no more, so a backlog waits in the broker,
//!   not in thaw's memory, and a burst cannot exhaust the pool.
//! - **At least once.** A message is acknowledged after its request succeeded; a failure is
//!   retried with the function's `async.backoff_ms` (doubled per delivery, with jitter) up
//!   to the trigger's `max_deliver`, then dead-lettered (published to a dead-letter subject
//!   or stream) and only then acknowledged. A crash between the handler and the ack delivers
//!   the message again.
//! - **Ordering** is not promised: messages run concurrently. A function with
//!   `max_concurrency = 1` gets them one at a time, in the broker's order, except for retries.
//! - **A broker that goes away** ends the consumer's session; it is started again with
//!   backoff (100 ms doubling to 5 s), and each restart is counted (`reconnects`).
//! - **Clusters.** Every node runs the same consumer: JetStream's durable consumer and Redis's
//!   consumer group share the messages between them.
//!
//! One task per (function, trigger) on each node, started and stopped as the registry
//! changes (checked every second, like the schedules).

pub mod nats;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Events;
use crate::api::TriggerInfo;
use crate::event_spec::TriggerSpec;

/// A trigger's counters on this node.
#[derive(Debug, Default)]
pub struct TriggerStats {
    /// Deliveries (attempts) started.
    pub delivered: AtomicU64,
    /// Messages acknowledged after success.
    pub acked: AtomicU64,
    /// Failed deliveries handed back for a retry.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_letters: AtomicU64,
    /// Sessions started again after the broker failed.
    pub reconnects: AtomicU64,
    /// Deliveries running now.
    pub running: AtomicU64,
    /// Most deliveries seen running at once.
    pub peak_running: AtomicU64,
}

impl TriggerStats {
    /// Counts a delivery starting (and the peak); the guard counts it ending.
    fn start(self: &Arc<Self>) -> Running {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let now = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_running.fetch_max(now, Ordering::AcqRel);
        Running(self.clone())
    }
}

struct Running(Arc<TriggerStats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One running consumer.
struct Consumer {
    spec: TriggerSpec,
    stop: CancellationToken,
    stats: Arc<TriggerStats>,
    broker: &'static str,
    stream: String,
}

/// Every trigger on this node.
#[derive(Default)]
pub struct Triggers {
    consumers: std::sync::Mutex<HashMap<String, Consumer>>,
}

impl Triggers {
    /// Each trigger's counters, by function; `nats_reconnects` is the NATS client's own
    /// (shared by every NATS trigger), counted with each NATS trigger's restarts.
    pub fn list(&self, nats_reconnects: u64) -> Vec<TriggerInfo> {
        let consumers = self.consumers.lock().unwrap();
        let mut out: Vec<TriggerInfo> = consumers
            .iter()
            .map(|(function, c)| TriggerInfo {
                function: function.clone(),
                broker: c.broker.to_owned(),
                stream: c.stream.clone(),
                delivered: c.stats.delivered.load(Ordering::Relaxed),
                acked: c.stats.acked.load(Ordering::Relaxed),
                retried: c.stats.retried.load(Ordering::Relaxed),
                dead_letters: c.stats.dead_letters.load(Ordering::Relaxed),
                reconnects: c.stats.reconnects.load(Ordering::Relaxed)
                    + if c.broker == "nats" {
                        nats_reconnects
                    } else {
                        0
                    },
                running: c.stats.running.load(Ordering::Relaxed),
                peak_running: c.stats.peak_running.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.function.cmp(&b.function));
        out
    }
}

/// Starts the supervisor: consumers follow the registry.
pub(super) fn start(events: &Arc<Events>) {
    let events = events.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            sync(&events);
        }
    });
}

fn sync(events: &Arc<Events>) {
    let mut wanted: HashMap<String, TriggerSpec> = HashMap::new();
    for set in events.platform.registry().all() {
        let primary = set.primary();
        if let Some(trigger) = &primary.record.spec.trigger {
            wanted.insert(primary.name.to_string(), trigger.clone());
        }
    }
    let mut consumers = events.triggers.consumers.lock().unwrap();
    consumers.retain(|function, consumer| {
        let keep = wanted.get(function) == Some(&consumer.spec);
        if !keep {
            consumer.stop.cancel();
        }
        keep
    });
    for (function, spec) in wanted {
        if consumers.contains_key(&function) {
            continue;
        }
        let stop = CancellationToken::new();
        let stats = Arc::new(TriggerStats::default());
        let (broker, stream) = match (&spec.nats, &spec.redis) {
            (Some(nats), _) => {
                tokio::spawn(nats::run(
                    events.clone(),
                    function.clone(),
                    nats.clone(),
                    stop.clone(),
                    stats.clone(),
                ));
                ("nats", nats.stream.clone())
            }
            (None, Some(redis)) => {
                tokio::spawn(redis::run(
                    events.clone(),
                    function.clone(),
                    redis.clone(),
                    stop.clone(),
                    stats.clone(),
                ));
                ("redis", redis.stream.clone())
            }
            (None, None) => continue,
        };
        consumers.insert(
            function,
            Consumer {
                spec,
                stop,
                stats,
                broker,
                stream,
            },
        );
    }
}

/// Runs `session` until `stop`, starting it again with backoff each time it fails.
async fn supervise<F, Fut>(
    what: &str,
    stop: &CancellationToken,
    stats: &TriggerStats,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            result = session() => result,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{what}: {e:#}; starting again in {} ms",
                    backoff.as_millis()
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How many deliveries of `function` may run at once.
fn places(events: &Events, function: &str) -> usize {
    super::delivery_places(super::current(&events.platform, function).as_deref())
}

/// Waits for a free delivery place, then takes every other free one: what the next fetch
/// from the broker may ask for.
pub(super) async fn free_places(
    places: &Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<Vec<tokio::sync::OwnedSemaphorePermit>> {
    let mut held = vec![places.clone().acquire_owned().await?];
    while let Ok(more) = places.clone().try_acquire_owned() {
        held.push(more);
    }
    Ok(held)
}

/// The delay before delivery `attempt + 1` of a message of `function`.
fn retry_delay(events: &Events, function: &str, attempt: u32) -> Duration {
    let policy = super::current(&events.platform, function)
        .map_or_else(Default::default, |f| super::async_policy(&f));
    policy.retry_delay(attempt, super::invocations::jitter())
}
