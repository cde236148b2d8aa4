//! How a request got its instance, and how long each part took: per response as a
//! `Server-Timing` header, per function as counters and latency histograms.
//!
//! The histogram is lock-free: a fixed array of atomic counters over logarithmic buckets (four
//! per power of two, from 1 µs to about 70 s), so recording is one `fetch_add` and a
//! percentile is read by walking 104 counters. Percentiles are the upper bound of their
//! bucket, within 19% of the true value: enough to tell 10 µs from 300 µs, which is the point.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::api::Percentiles;

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

/// Buckets per power of two.
const SUB_BUCKETS: u32 = 4;
/// Number of buckets: 26 powers of two above 1 µs (up to 2^26 µs, about 67 s).
const BUCKETS: usize = 26 * SUB_BUCKETS as usize;

/// A lock-free latency histogram in microseconds.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, duration: Duration) {
        self.counts[bucket(duration.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in microseconds, as its bucket's upper bound; `None` if empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(index));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

/// Bucket of a value in µs: `SUB_BUCKETS` per power of two, values below 2 µs in bucket 0.
fn bucket(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let power = 63 - us.leading_zeros(); // floor(log2)
    let fraction = ((us << SUB_BUCKETS) >> power) as u32 - (1 << SUB_BUCKETS); // 0..16
    let sub = (fraction * SUB_BUCKETS) >> SUB_BUCKETS; // 0..SUB_BUCKETS
    ((power * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
}

/// The largest value (µs) that falls into bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let power = index as u32 / SUB_BUCKETS;
    let sub = index as u32 % SUB_BUCKETS;
    let base = 1u64 << power;
    base + (base * u64::from(sub + 1)) / u64::from(SUB_BUCKETS)
}

/// Per-function start statistics.
#[derive(Debug, Default)]
pub struct StartStats {
    kinds: [AtomicU64; 4],
    /// Time to a ready instance (load, compile, instantiate, or nothing for a pool hit).
    pub start: Histogram,
    /// Time in the guest until the response head.
    pub handler: Histogram,
}

impl StartStats {
    /// Records one request's start.
    pub fn record(&self, kind: StartKind, start: Duration, handler: Duration) {
        self.kinds[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.start.record(start);
        self.handler.record(handler);
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
/// `start;desc="pool-hit", instantiate;dur=0.004, handler;dur=0.041` (durations in ms, as the
/// header's specification asks).
pub fn server_timing(
    kind: StartKind,
    load: Option<Duration>,
    instantiate: Duration,
    handler: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut value = String::with_capacity(96);
    let _ = write!(value, "start;desc=\"{}\"", kind.as_str());
    if let Some(load) = load {
        let _ = write!(value, ", load;dur={:.3}", load.as_secs_f64() * 1e3);
    }
    let _ = write!(
        value,
        ", instantiate;dur={:.3}, handler;dur={:.3}",
        instantiate.as_secs_f64() * 1e3,
        handler.as_secs_f64() * 1e3
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            10,
            15,
            16,
            100,
            1_000,
            65_536,
            1 << 40,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(b < BUCKETS);
            if (2..(1 << 26)).contains(&us) {
                assert!(
                    upper_bound(b) >= us,
                    "{us} <= bound of its bucket {}",
                    upper_bound(b)
                );
                assert!(
                    upper_bound(b) as f64 <= us as f64 * 1.26 + 1.0,
                    "{us}: bound {}",
                    upper_bound(b)
                );
            }
            last = b;
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(10));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(5));
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_us(0.5).unwrap();
        assert!((10..=13).contains(&p50), "{p50}");
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((5_000..=6_300).contains(&p99), "{p99}");
    }

    #[test]
    fn header_format() {
        let v = server_timing(
            StartKind::Disk,
            Some(Duration::from_micros(120)),
            Duration::from_micros(13),
            Duration::from_micros(40),
        );
        assert_eq!(
            v,
            "start;desc=\"disk\", load;dur=0.120, instantiate;dur=0.013, handler;dur=0.040"
        );
    }
}
