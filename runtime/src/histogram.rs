//! A lock-free latency histogram: a fixed array of atomic counters over logarithmic buckets
//! (four per power of two, from 1 µs to about 70 s), so recording is two `fetch_add`s (the
//! bucket and the sum) and a percentile is read by walking 104 counters. Percentiles are the
//! upper bound of their bucket, within 19% of the true value: enough to tell 10 µs from
//! 300 µs, which is the point. The same counts are what `/metrics` exposes as a Prometheus
//! histogram (at coarser bounds, see [`crate::metrics`]).
//!
//! At the bottom of the layers (no dependencies): the engine times compiles with it, the
//! functions their starts and requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per power of two.
const SUB_BUCKETS: u32 = 4;
/// Number of buckets: 26 powers of two above 1 µs (up to 2^26 µs, about 67 s).
const BUCKETS: usize = 26 * SUB_BUCKETS as usize;

/// A lock-free latency histogram in microseconds.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, duration: Duration) {
        self.record_value(duration.as_micros() as u64);
    }

    /// Records one value in a unit of the caller's: the same buckets serve any quantity that
    /// spans orders of magnitude (the peak-memory histogram counts KiB). The methods named
    /// `_us` then read in that unit.
    pub fn record_value(&self, value: u64) {
        self.counts[bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(value, Ordering::Relaxed);
    }

    /// The sum of the recorded durations, µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// Each bucket's upper bound (µs, inclusive) and count, in order. Read without a lock: a
    /// concurrent `record` may or may not be in it.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(|(index, count)| (upper_bound(index), count.load(Ordering::Relaxed)))
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
}
