//! The recent history of the host's counters, for the dashboard's charts.
//!
//! A task samples the platform's totals (requests and failures per function, starts by kind,
//! limit hits) every [`INTERVAL`] into a ring of [`SAMPLES`], so the last minutes are there
//! when someone opens the dashboard, not only the minutes since. Rates are the
//! differences of consecutive samples, computed by the reader; a total can go down when a
//! version is unloaded (rolled back from) or the host restarts, and a reader treats that as
//! a new start.
//!
//! Prometheus keeps history properly and for as long as one likes; this is the dashboard's
//! short memory, so that a single binary shows something useful without one. A sample costs
//! a walk of the registry's counters (no locks on the request path) and a few maps of small
//! strings, once per interval.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::{History as HistoryView, HistorySample};
use crate::control::Platform;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept (with [`INTERVAL`], the window the dashboard shows).
pub const SAMPLES: usize = 300;

/// The ring of samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<HistorySample>>,
}

impl History {
    /// A history sampled from `platform` every [`INTERVAL`] by a task on the current
    /// runtime, until the returned `Arc` is dropped.
    pub fn spawn(platform: Arc<Platform>) -> Arc<Self> {
        let history = Arc::new(Self::default());
        let weak = Arc::downgrade(&history);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(history) = weak.upgrade() else { break };
                history.record(sample(&platform));
            }
        });
        history
    }

    /// Adds a sample, dropping the oldest beyond [`SAMPLES`].
    pub fn record(&self, sample: HistorySample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first, and one taken now (so a reader always sees the latest).
    pub fn view(&self, platform: &Platform) -> HistoryView {
        let mut samples: Vec<HistorySample> = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        samples.push(sample(platform));
        HistoryView {
            interval_ms: INTERVAL.as_millis() as u64,
            samples,
        }
    }
}

/// The platform's totals now.
pub fn sample(platform: &Platform) -> HistorySample {
    let mut sample = HistorySample {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ..Default::default()
    };
    for set in platform.registry().all() {
        let (mut requests, mut failures) = (0, 0);
        for version in set.versions() {
            requests += version
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed);
            failures += version
                .stats
                .failures
                .load(std::sync::atomic::Ordering::Relaxed);
            add(&mut sample.starts, version.starts.by_kind());
            add(&mut sample.limit_hits, version.stats.limit_hits.by_name());
        }
        sample.requests.insert(set.name.to_string(), requests);
        sample.failures.insert(set.name.to_string(), failures);
    }
    sample
}

fn add(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (key, n) in from {
        *into.entry(key).or_default() += n;
    }
}
