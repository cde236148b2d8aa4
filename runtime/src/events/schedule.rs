//! Schedules: a function's `schedule = ["*/5 * * * *", ...]`, each tick run as a request.
//!
//! One task per host keeps every schedule's next tick and sleeps until the earliest (or a
//! second, after which it reads the registry again, so a deploy's schedules start within a
//! second). A tick is a `POST` to the function's route with the CloudEvents headers
//! `ce-type: dev.thaw.schedule.tick`, `ce-source: /thaw/schedules/<function>`, `ce-id:
//! <tick ms>-<index>`, `ce-time` the tick and `ce-subject` the cron expression.
//!
//! # Policy
//! - **No overlap.** A tick that comes while the same schedule's previous run is still going
//!   on this node is skipped, counted and logged.
//! - **Downtime.** The last tick run is stored; when the host comes back and a schedule's
//!   most recent tick was missed, `catch_up = true` runs that one tick now (one, however
//!   many were missed); otherwise it is skipped and logged.
//! - **Clusters.** Each tick runs on exactly one node: every node that reaches it asks
//!   [`TickClaims`], and etcd's transaction lets one win (`cluster`'s implementation). On
//!   one host, [`LocalClaims`] always says yes. A node that cannot reach etcd runs no ticks
//!   (it logs that), rather than risk running one twice.
//! - **Which version.** The schedules are the primary version's (the one with the largest
//!   share of traffic); a tick goes to the version the split picks, like a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::Request;
use http_body_util::Full;

use super::store::{EventStore, Write};
use super::{CloudEvent, Events, now_ms, time_of};
use crate::api::{ScheduleInfo, ScheduleList};
use crate::event_spec::ScheduleSpec;

/// Decides which node runs a tick.
pub trait TickClaims: Send + Sync {
    /// Whether this node runs tick `tick_ms` of schedule `index` of `function`: `true` on
    /// exactly one of the nodes that ask.
    fn claim<'a>(
        &'a self,
        function: &'a str,
        index: usize,
        tick_ms: u64,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// One host: every tick is this host's.
pub struct LocalClaims;

impl TickClaims for LocalClaims {
    fn claim<'a>(&'a self, _: &'a str, _: usize, _: u64) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async { Ok(true) })
    }
}

/// How much of a tick's response is read (its status is what is kept).
const TICK_BODY_BYTES: usize = 4096;

/// One schedule of one function, and what happened to it on this node.
struct Schedule {
    function: String,
    index: usize,
    spec: ScheduleSpec,
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
    /// The store's key: a changed expression or zone is a new schedule.
    key: String,
    next_ms: AtomicU64,
    last_ms: AtomicU64,
    last_status: AtomicU16,
    running: AtomicBool,
    runs: AtomicU64,
    skipped: AtomicU64,
    claimed_elsewhere: AtomicU64,
}

impl Schedule {
    fn next_after(&self, ms: u64) -> Option<u64> {
        let after = jiff::Timestamp::from_millisecond(ms as i64).ok()?;
        ScheduleSpec::next_after(&self.cron, &self.tz, after)
            .map(|t| t.as_millisecond().max(0) as u64)
    }

    /// The most recent tick at or before `ms`.
    fn previous(&self, ms: u64) -> Option<u64> {
        let at = jiff::Timestamp::from_millisecond(ms as i64).ok()?;
        self.cron
            .find_previous_occurrence(&at.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|t| t.timestamp().as_millisecond().max(0) as u64)
    }

    fn info(&self) -> ScheduleInfo {
        let some = |v: u64| (v != 0).then_some(v);
        ScheduleInfo {
            function: self.function.clone(),
            cron: self.spec.cron.clone(),
            tz: self.spec.tz.clone().unwrap_or_else(|| "UTC".into()),
            catch_up: self.spec.catch_up,
            next_ms: some(self.next_ms.load(Ordering::Relaxed)),
            last_ms: some(self.last_ms.load(Ordering::Relaxed)),
            last_status: match self.last_status.load(Ordering::Relaxed) {
                0 => None,
                status => Some(status),
            },
            running: self.running.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            claimed_elsewhere: self.claimed_elsewhere.load(Ordering::Relaxed),
        }
    }
}

/// Every function's schedules on this node.
pub struct Scheduler {
    schedules: Mutex<HashMap<String, Arc<Schedule>>>,
    /// The last tick run of each schedule, as stored.
    last_ticks: Mutex<HashMap<String, u64>>,
}

impl Scheduler {
    pub(super) fn new(store: &EventStore) -> anyhow::Result<Self> {
        Ok(Self {
            schedules: Mutex::default(),
            last_ticks: Mutex::new(store.ticks()?),
        })
    }

    /// Every schedule, by function and then order in its spec.
    pub fn list(&self) -> ScheduleList {
        let mut schedules: Vec<(String, usize, ScheduleInfo)> = self
            .schedules
            .lock()
            .unwrap()
            .values()
            .map(|s| (s.function.clone(), s.index, s.info()))
            .collect();
        schedules.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        ScheduleList {
            schedules: schedules.into_iter().map(|(_, _, info)| info).collect(),
        }
    }
}

fn key(function: &str, index: usize, spec: &ScheduleSpec) -> String {
    format!(
        "{function}\n{index}\n{}\n{}",
        spec.cron,
        spec.tz.as_deref().unwrap_or("UTC")
    )
}

/// Starts the scheduler.
pub(super) fn start(events: &Arc<Events>, claims: Arc<dyn TickClaims>) {
    let events = events.clone();
    tokio::spawn(async move {
        loop {
            sync(&events, &claims);
            let now = now_ms();
            // Read the registry again within a second, whatever the ticks.
            let mut wake = now + 1000;
            let due: Vec<Arc<Schedule>> = {
                let schedules = events.schedules.schedules.lock().unwrap();
                schedules
                    .values()
                    .filter(|s| {
                        let next = s.next_ms.load(Ordering::Relaxed);
                        if next != 0 && next > now {
                            wake = wake.min(next);
                        }
                        next != 0 && next <= now
                    })
                    .cloned()
                    .collect()
            };
            for schedule in due {
                let tick = schedule.next_ms.load(Ordering::Relaxed);
                let mut next = schedule.next_after(tick).unwrap_or(0);
                if next != 0 && next <= now {
                    // The host fell behind (suspended, overloaded): the ticks in between
                    // are skipped, not run in a burst.
                    let missed = next;
                    next = schedule.next_after(now).unwrap_or(0);
                    schedule.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(function = %schedule.function, cron = %schedule.spec.cron, "ticks from {} skipped: the scheduler fell behind", humantime::format_rfc3339_millis(time_of(missed)));
                }
                schedule.next_ms.store(next, Ordering::Relaxed);
                if next != 0 {
                    wake = wake.min(next);
                }
                fire(&events, &claims, &schedule, tick);
            }
            let wait = wake.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    });
}

/// Brings the schedules in line with the registry: new ones start (catching up if they
/// ask), removed ones stop.
fn sync(events: &Arc<Events>, claims: &Arc<dyn TickClaims>) {
    let mut wanted: HashMap<String, (String, usize, ScheduleSpec)> = HashMap::new();
    for set in events.platform.registry().all() {
        let primary = set.primary();
        for (index, spec) in primary.record.spec.schedule.iter().enumerate() {
            wanted.insert(
                key(&primary.name, index, spec),
                (primary.name.to_string(), index, spec.clone()),
            );
        }
    }
    let mut added = Vec::new();
    {
        let mut schedules = events.schedules.schedules.lock().unwrap();
        schedules.retain(|key, _| wanted.contains_key(key));
        for (key, (function, index, spec)) in wanted {
            if schedules.contains_key(&key) {
                continue;
            }
            // Checked at deploy; a record from an older host is checked again here.
            let (Ok(cron), Ok(tz)) = (spec.parse(), spec.time_zone()) else {
                tracing::warn!(%function, cron = %spec.cron, "a schedule that does not parse is ignored");
                continue;
            };
            let schedule = Arc::new(Schedule {
                function,
                index,
                spec,
                cron,
                tz,
                key: key.clone(),
                next_ms: AtomicU64::new(0),
                last_ms: AtomicU64::new(0),
                last_status: AtomicU16::new(0),
                running: AtomicBool::new(false),
                runs: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                claimed_elsewhere: AtomicU64::new(0),
            });
            let now = now_ms();
            schedule
                .next_ms
                .store(schedule.next_after(now).unwrap_or(0), Ordering::Relaxed);
            schedules.insert(key, schedule.clone());
            added.push(schedule);
        }
    }
    for schedule in added {
        let last = events
            .schedules
            .last_ticks
            .lock()
            .unwrap()
            .get(&schedule.key)
            .copied();
        let Some(last) = last else { continue };
        schedule.last_ms.store(last, Ordering::Relaxed);
        let Some(missed) = schedule.previous(now_ms()).filter(|&t| t > last) else {
            continue;
        };
        let at = humantime::format_rfc3339_millis(time_of(missed));
        if schedule.spec.catch_up {
            tracing::info!(function = %schedule.function, cron = %schedule.spec.cron, "running the tick of {at}, missed while the host was down (catch_up)");
            fire(events, claims, &schedule, missed);
        } else {
            schedule.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(function = %schedule.function, cron = %schedule.spec.cron, "the tick of {at} was missed while the host was down; skipped (catch_up is off)");
        }
    }
}

/// Runs one tick, unless the previous run is still going or another node claims it.
fn fire(events: &Arc<Events>, claims: &Arc<dyn TickClaims>, schedule: &Arc<Schedule>, tick: u64) {
    if schedule.running.swap(true, Ordering::AcqRel) {
        schedule.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(function = %schedule.function, cron = %schedule.spec.cron, "a tick was skipped: the previous run is still going");
        return;
    }
    /// Clears `running` however the run ends (a panic included).
    struct Ran(Arc<Schedule>);
    impl Drop for Ran {
        fn drop(&mut self) {
            self.0.running.store(false, Ordering::Release);
        }
    }
    let (events, claims, schedule) = (events.clone(), claims.clone(), schedule.clone());
    tokio::spawn(async move {
        let ran = Ran(schedule);
        run(&events, &*claims, &ran.0, tick).await;
    });
}

async fn run(events: &Events, claims: &dyn TickClaims, schedule: &Schedule, tick: u64) {
    let name = &schedule.function;
    match claims.claim(name, schedule.index, tick).await {
        Ok(true) => {}
        Ok(false) => {
            schedule.claimed_elsewhere.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            schedule.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(function = %name, cron = %schedule.spec.cron, "a tick was not run: it could not be claimed: {e:#}");
            return;
        }
    }
    schedule.last_ms.store(tick, Ordering::Relaxed);
    events
        .schedules
        .last_ticks
        .lock()
        .unwrap()
        .insert(schedule.key.clone(), tick);
    if let Err(e) = events
        .store
        .write(vec![Write::Tick(schedule.key.clone(), tick)])
        .await
    {
        tracing::warn!(function = %name, "the tick was not stored (catch_up may run it again): {e:#}");
    }
    let Some(function) = super::current(&events.platform, name) else {
        return;
    };
    let id = format!("{tick}-{}", schedule.index);
    let source = format!("/thaw/schedules/{name}");
    let mut request = match Request::post(thaw_spec::route::split(&function.route).1)
        .body(Full::new(Bytes::new()))
    {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(function = %name, "a tick's request: {e}");
            return;
        }
    };
    CloudEvent {
        id: &id,
        source: &source,
        kind: "dev.thaw.schedule.tick",
        time: time_of(tick),
        subject: Some(&schedule.spec.cron),
        attempt: 1,
    }
    .apply(request.headers_mut());
    let outcome = super::deliver(
        &events.platform,
        function,
        request,
        super::EVENT_PEER,
        TICK_BODY_BYTES,
    )
    .await;
    schedule.runs.fetch_add(1, Ordering::Relaxed);
    schedule
        .last_status
        .store(outcome.status.as_u16(), Ordering::Relaxed);
    if !outcome.succeeded() {
        tracing::warn!(function = %name, cron = %schedule.spec.cron, "a scheduled run failed: {}", outcome.failure());
    }
}
