//! How a request got its instance, and how long each part took: per response as a
//! `Server-Timing` header, per function as counters and latency histograms
//! ([`crate::histogram`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::api::Percentiles;
pub use crate::histogram::Histogram;

/// How the instance that served a request came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartKind {
    /// A pre-instantiated instance was waiting in the function's warm pool.
    PoolHit,
    /// The function was loaded; the request instantiated a fresh instance.
    Fresh,
    /// The function's artifact was loaded from disk by this request, then instantiated.
    Disk,
    /// The function had to be compiled by this request (its artifact was missing or stale).
    Compile,
}

impl StartKind {
    /// All kinds, in the order counters are reported.
    pub const ALL: [StartKind; 4] = [
        StartKind::PoolHit,
        StartKind::Fresh,
        StartKind::Disk,
        StartKind::Compile,
    ];

    /// The name used in `Server-Timing` and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::PoolHit => "pool-hit",
            StartKind::Fresh => "fresh",
            StartKind::Disk => "disk",
            StartKind::Compile => "compile",
        }
    }
}

/// Per-function start statistics.
#[derive(Debug, Default)]
pub struct StartStats {
    kinds: [AtomicU64; 4],
    /// Time to a ready instance (load, compile, instantiate, or nothing for a pool hit).
    pub start: Histogram,
    /// The same, per start kind (indexed as [`StartKind::ALL`]).
    pub start_by_kind: [Histogram; 4],
    /// Time in the guest until the response head.
    pub handler: Histogram,
}

impl StartStats {
    /// Records one request's start.
    pub fn record(&self, kind: StartKind, start: Duration, handler: Duration) {
        self.kinds[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.start.record(start);
        self.start_by_kind[kind as usize].record(start);
        self.handler.record(handler);
    }

    /// The start-time histogram of one kind.
    pub fn start_of(&self, kind: StartKind) -> &Histogram {
        &self.start_by_kind[kind as usize]
    }

    /// How many requests started this way.
    pub fn count(&self, kind: StartKind) -> u64 {
        self.kinds[kind as usize].load(Ordering::Relaxed)
    }

    /// Requests by start kind, for the admin API.
    pub fn by_kind(&self) -> std::collections::BTreeMap<String, u64> {
        StartKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), self.count(*k)))
            .collect()
    }

    /// The start and handler percentiles, for the admin API.
    pub fn percentiles(&self) -> (Percentiles, Percentiles) {
        let of = |h: &Histogram| Percentiles {
            p50: h.quantile_us(0.5),
            p99: h.quantile_us(0.99),
        };
        (of(&self.start), of(&self.handler))
    }
}

/// The `Server-Timing` value for one request, e.g.
/// `start;desc="pool-hit", instantiate;dur=0.004, handler;dur=0.041, cpu;dur=0.030`
/// (durations in ms, as the header's specification asks; `cpu` is the guest's CPU time until
/// the response head, where it was metered: see [`crate::function::cost`]).
pub fn server_timing(
    kind: StartKind,
    load: Option<Duration>,
    instantiate: Duration,
    handler: Duration,
    cpu: Option<Duration>,
) -> String {
    use std::fmt::Write as _;
    // Milliseconds with three decimals, from whole microseconds (rounded half up): integer
    // formatting, where `{:.3}` of an `f64` runs the float formatter on every request.
    struct Ms(Duration);
    impl std::fmt::Display for Ms {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let us = (self.0.as_nanos() + 500) / 1000;
            write!(f, "{}.{:03}", us / 1000, us % 1000)
        }
    }
    let mut value = String::with_capacity(128); // the longest value, with load and cpu, fits
    let _ = write!(value, "start;desc=\"{}\"", kind.as_str());
    if let Some(load) = load {
        let _ = write!(value, ", load;dur={}", Ms(load));
    }
    let _ = write!(
        value,
        ", instantiate;dur={}, handler;dur={}",
        Ms(instantiate),
        Ms(handler)
    );
    if let Some(cpu) = cpu {
        let _ = write!(value, ", cpu;dur={}", Ms(cpu));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_format() {
        let v = server_timing(
            StartKind::Disk,
            Some(Duration::from_micros(120)),
            Duration::from_micros(13),
            Duration::from_micros(40),
            Some(Duration::from_micros(31)),
        );
        assert_eq!(
            v,
            "start;desc=\"disk\", load;dur=0.120, instantiate;dur=0.013, handler;dur=0.040, cpu;dur=0.031"
        );
        // Rounded to the microsecond, half up; seconds and more carry into the integer part.
        let v = server_timing(
            StartKind::PoolHit,
            None,
            Duration::from_nanos(1_499),
            Duration::from_nanos(2_345_500),
            None,
        );
        assert_eq!(
            v,
            "start;desc=\"pool-hit\", instantiate;dur=0.001, handler;dur=2.346"
        );
    }
}
