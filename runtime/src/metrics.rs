//! `GET /metrics`: the platform's counters in the Prometheus text format (OpenMetrics), with
//! the `prometheus-client` crate.
//!
//! # Read at scrape time, counted once
//! The request path already keeps its numbers in atomics (per function: responses by status
//! class, start kinds, latency histograms, limit hits; per host: slots, queue waits,
//! compiles). A [`Collector`] reads them when Prometheus scrapes, so exposing metrics adds
//! nothing to a request: no second set of counters, no label lookup, no lock. The price is
//! that the histograms have thaw's bucket layout (four per power of two, see
//! [`crate::histogram`]); they are exposed at every second power of two (4 µs, 16 µs, ...,
//! about 67 s), thirteen bounds, which is what `histogram_quantile` needs for a latency
//! spread of seven orders of magnitude.
//!
//! # Cached for a second, one rendering at a time
//! Rendering reads every function's counters; with hundreds of functions that is real work,
//! and `/metrics` can be open to anyone who reaches `--metrics-listen`. So a rendering is
//! reused for [`CACHE_FOR`], and scrapes that arrive while one renders wait for it instead of
//! rendering again ([`Exposition`]); the rendering runs on a blocking thread, off the
//! workers that serve functions. A scraper sees numbers at most a second old, well inside
//! any scrape interval.
//!
//! # Names and labels
//! Every name has the `thaw_` prefix; counters end in `_total`, durations are in seconds.
//! Labels are bounded: `function` and `version` (the function's generation, `v3`), plus a
//! closed set per metric (`code` is the status class, `kind` the start kind, `limit` the
//! limit's name). Never a path, a query or a header: a client cannot create series.
//! A function's counters start with its version: a redeploy starts a new series, which
//! `rate()` and `increase()` handle as a counter reset.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::control::Platform;
use crate::events::Events;
use crate::function::Function;
use crate::function::timing::StartKind;
use crate::guest::limit::Limit;
use crate::histogram::Histogram;

/// The `Content-Type` of [`render`]'s OpenMetrics output (what Prometheus asks for).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic text format (what `curl` and `promtool` get).
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one rendering is served again.
pub const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The exposition's cache (see "Cached for a second"): the last rendering of each format.
#[derive(Default)]
pub struct Exposition(Arc<tokio::sync::Mutex<Cache>>, Option<Arc<Events>>);

type Cache = [Option<(std::time::Instant, bytes::Bytes)>; 2];

impl Exposition {
    /// An exposition that includes the host's events (queues and schedules).
    pub fn with_events(events: Arc<Events>) -> Self {
        Self(Arc::default(), Some(events))
    }

    /// The exposition, rendered at most [`CACHE_FOR`] ago; `None` if rendering failed (a
    /// scraper must see an error, not an empty page that looks healthy).
    ///
    /// The lock and the rendering belong to a task of their own: a scraper that goes away
    /// mid-request drops only its wait, so the rendering still finishes, fills the cache and
    /// lets the next one in (a dropped guard would let each abandoned scrape start another
    /// rendering).
    pub async fn get(&self, platform: &Arc<Platform>, openmetrics: bool) -> Option<bytes::Bytes> {
        let cache = self.0.clone();
        let platform = platform.clone();
        let events = self.1.clone();
        let rendering = tokio::spawn(async move {
            let mut cache = cache.lock_owned().await;
            let slot = &mut cache[usize::from(openmetrics)];
            if let Some((at, body)) = slot
                && at.elapsed() < CACHE_FOR
            {
                return Some(body.clone());
            }
            let body =
                match tokio::task::spawn_blocking(move || render(&platform, events, openmetrics))
                    .await
                {
                    Ok(body) => bytes::Bytes::from(body),
                    Err(e) => {
                        tracing::error!("rendering the metrics failed: {e}");
                        return None;
                    }
                };
            *slot = Some((std::time::Instant::now(), body.clone()));
            Some(body)
        });
        rendering.await.ok().flatten()
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does; a client that
/// asks for nothing in particular gets the classic text format, as from Go's client).
pub fn wants_openmetrics(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| {
        String::from_utf8_lossy(a)
            .to_ascii_lowercase()
            .contains("application/openmetrics-text")
    })
}

/// The status classes, as the `code` label shows them.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The platform's metrics, encoded as OpenMetrics or, with `openmetrics` false, in the
/// classic text format. Called per scrape (allocates; not the request path).
pub fn render(platform: &Arc<Platform>, events: Option<Arc<Events>>, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PlatformCollector(platform.clone())));
    if let Some(events) = events {
        registry.register_collector(Box::new(EventsCollector(events)));
    }
    let mut out = String::with_capacity(16 << 10);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    if openmetrics {
        out
    } else {
        to_classic_text(&out)
    }
}

/// OpenMetrics to the classic text format (0.0.4): the two differ, for what thaw writes, in
/// a counter family's name (OpenMetrics names the family `x` and its sample `x_total`; the
/// classic format names both `x_total`), and in the `# UNIT` and `# EOF` lines, which the
/// classic format does not have. `prometheus-client` writes only OpenMetrics.
fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct PlatformCollector(Arc<Platform>);

/// One function's label values.
fn labels(function: &Function) -> [(&'static str, String); 2] {
    [
        ("function", function.name.to_string()),
        ("version", format!("v{}", function.record.generation)),
    ]
}

/// Writes one metric family: its descriptor, then one sample per label set.
fn family<S, F>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: S,
    mut write: F,
) -> std::fmt::Result
where
    S: IntoIterator,
    F: FnMut(&mut MetricEncoder, S::Item) -> std::fmt::Result,
{
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for sample in samples {
        write(&mut metric, sample)?;
    }
    Ok(())
}

fn counter(encoder: &mut MetricEncoder, value: u64) -> std::fmt::Result {
    encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut MetricEncoder, value: i64) -> std::fmt::Result {
    encoder.encode_gauge(&value)
}

/// A [`Histogram`] as a Prometheus histogram in seconds, at every second power of two.
fn histogram(encoder: &mut MetricEncoder, h: &Histogram) -> std::fmt::Result {
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(16);
    let mut pending = 0;
    let mut count = 0;
    for (upper_us, n) in h.buckets() {
        pending += n;
        count += n;
        // Bounds at 4^k µs. A bucket holds values below its upper bound, and durations are
        // floored to whole µs, so everything in it is at most that bound: `le` is the bound
        // itself. (The first buckets share the bound 1 µs: it is written once.)
        if upper_us.is_power_of_two()
            && upper_us.trailing_zeros() % 2 == 0
            && buckets
                .last()
                .is_none_or(|(le, _)| *le < upper_us as f64 / 1e6)
        {
            buckets.push((upper_us as f64 / 1e6, pending));
            pending = 0;
        }
    }
    buckets.push((f64::MAX, pending));
    encoder.encode_histogram::<NoLabelSet>(h.sum_us() as f64 / 1e6, count, &buckets, None)
}

/// The peak-memory histogram ([`crate::function::cost::CostStats::peak_memory_kib`], which
/// records each size in KiB less one) as a Prometheus histogram in bytes, at every second
/// power of two from 64 KiB to 64 GiB.
fn histogram_kib_as_bytes(encoder: &mut MetricEncoder, h: &Histogram) -> std::fmt::Result {
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(16);
    let mut pending = 0;
    let mut count = 0;
    for (upper, n) in h.buckets() {
        pending += n;
        count += n;
        // A bucket holds recorded values below `upper`: sizes of at most `upper` KiB.
        if upper >= 64 && upper.is_power_of_two() && upper.trailing_zeros() % 2 == 0 {
            buckets.push(((upper * 1024) as f64, pending));
            pending = 0;
        }
    }
    buckets.push((f64::MAX, pending));
    let sum_kib = h.sum_us() + count; // each was recorded one less
    encoder.encode_histogram::<NoLabelSet>((sum_kib * 1024) as f64, count, &buckets, None)
}

impl Collector for PlatformCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let platform = &self.0;
        let sets = platform.registry().all();
        // Per version: those a request can reach, and those that served requests (a version
        // rolled back from keeps its series while it is kept). Bounded by the kept versions
        // and the split's, per function.
        let functions: Vec<&Arc<Function>> = sets
            .iter()
            .flat_map(|set| {
                set.versions().iter().filter(|f| {
                    set.traffic().percent(f.record.generation).is_some()
                        || f.stats.requests.load(Ordering::Relaxed) > 0
                })
            })
            .collect();
        encode_functions(&mut encoder, &functions)?;
        encode_host(&mut encoder, platform)
    }
}

/// The per-function (per-version) families.
fn encode_functions(e: &mut DescriptorEncoder, functions: &[&Arc<Function>]) -> std::fmt::Result {
    family(
        e,
        "thaw_requests",
        "Requests answered, by status class",
        None,
        MetricType::Counter,
        functions,
        |m, f| {
            let base = labels(f);
            for (class, n) in STATUS_CLASSES.iter().zip(&f.stats.responses) {
                let set = [
                    base[0].clone(),
                    base[1].clone(),
                    ("code", (*class).to_owned()),
                ];
                counter(&mut m.encode_family(&set)?, n.load(Ordering::Relaxed))?;
            }
            Ok(())
        },
    )?;
    family(
        e,
        "thaw_request_duration",
        "From a request's arrival at the function to its response head",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        functions,
        |m, f| histogram(&mut m.encode_family(&labels(f))?, &f.stats.duration),
    )?;
    family(
        e,
        "thaw_starts",
        "How requests got their instance: pool-hit, fresh, disk (code loaded from disk) or compile",
        None,
        MetricType::Counter,
        functions,
        |m, f| {
            for kind in StartKind::ALL {
                let set = start_labels(f, kind);
                counter(&mut m.encode_family(&set)?, f.starts.count(kind))?;
            }
            Ok(())
        },
    )?;
    family(
        e,
        "thaw_start_duration",
        "Time from admission to a ready instance, by start kind",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        functions,
        |m, f| {
            for kind in StartKind::ALL {
                let set = start_labels(f, kind);
                histogram(&mut m.encode_family(&set)?, f.starts.start_of(kind))?;
            }
            Ok(())
        },
    )?;
    encode_function_resources(e, functions)
}

/// The per-function (per-version) families of what requests ran into and held: limit hits,
/// outbound requests, instances warm and in use.
fn encode_function_resources(
    e: &mut DescriptorEncoder,
    functions: &[&Arc<Function>],
) -> std::fmt::Result {
    family(
        e,
        "thaw_limit_hits",
        "Requests (or guest calls) stopped by a limit, by limit",
        None,
        MetricType::Counter,
        functions,
        |m, f| {
            let base = labels(f);
            for limit in Limit::ALL {
                let set = [
                    base[0].clone(),
                    base[1].clone(),
                    ("limit", limit.name().to_owned()),
                ];
                counter(&mut m.encode_family(&set)?, f.stats.limit_hits.get(limit))?;
            }
            Ok(())
        },
    )?;
    family(
        e,
        "thaw_outbound_requests",
        "Outbound HTTP requests guests sent (denied ones are limit hits)",
        None,
        MetricType::Counter,
        functions,
        |m, f| {
            counter(
                &mut m.encode_family(&labels(f))?,
                f.stats.outbound_requests.load(Ordering::Relaxed),
            )
        },
    )?;
    family(
        e,
        "thaw_asset_responses",
        "Requests a function's static assets answered, without the guest",
        None,
        MetricType::Counter,
        functions,
        |m, f| {
            counter(
                &mut m.encode_family(&labels(f))?,
                f.stats.asset_responses.load(Ordering::Relaxed),
            )
        },
    )?;
    family(
        e,
        "thaw_function_cpu",
        "Guest CPU time of the function's requests (the polling thread's CPU clock around each guest call; WASIp3 functions are not metered)",
        Some(&Unit::Seconds),
        MetricType::Counter,
        functions,
        |m, f| {
            let seconds = f.cost.cpu_total().as_secs_f64();
            m.encode_family(&labels(f))?
                .encode_counter::<NoLabelSet, f64, u64>(&seconds, None)
        },
    )?;
    family(
        e,
        "thaw_instance_peak_memory",
        "Peak linear memory of the instance that served each request",
        Some(&Unit::Bytes),
        MetricType::Histogram,
        functions,
        |m, f| histogram_kib_as_bytes(&mut m.encode_family(&labels(f))?, &f.cost.peak_memory_kib),
    )?;
    family(
        e,
        "thaw_instances_warm",
        "Pre-instantiated instances waiting in the function's pool",
        None,
        MetricType::Gauge,
        functions,
        |m, f| gauge(&mut m.encode_family(&labels(f))?, f.pool.len() as i64),
    )?;
    family(
        e,
        "thaw_instances_in_use",
        "Requests of the function running now (components; CGI runs are not counted)",
        None,
        MetricType::Gauge,
        functions,
        |m, f| gauge(&mut m.encode_family(&labels(f))?, f.pool.in_flight() as i64),
    )?;

    Ok(())
}

/// The host's families.
fn encode_host(e: &mut DescriptorEncoder, platform: &Platform) -> std::fmt::Result {
    let status = platform.status();
    let host_gauges: [(&str, &str, i64); 5] = [
        (
            "thaw_instance_slots",
            "Instances that may exist at once (--instance-slots)",
            i64::from(status.instance_slots),
        ),
        (
            "thaw_instance_slots_in_use",
            "Slots taken by running or warm instances",
            status.slots_in_use as i64,
        ),
        (
            "thaw_functions",
            "Functions deployed",
            status.functions as i64,
        ),
        (
            "thaw_functions_loaded",
            "Functions with their code loaded",
            status.functions_loaded as i64,
        ),
        (
            "thaw_artifacts_unchecked",
            "Artifacts the start-up scrub has still to check",
            status.artifacts_unchecked as i64,
        ),
    ];
    for (name, help, value) in host_gauges {
        family(e, name, help, None, MetricType::Gauge, [value], |m, v| {
            gauge(m, v)
        })?;
    }
    encode_host_counters(e, platform)
}

/// The host's counters: queue waits, compilations, artifacts, closed connections, the
/// compilation cache, deploys and compile time.
fn encode_host_counters(e: &mut DescriptorEncoder, platform: &Platform) -> std::fmt::Result {
    let status = platform.status();
    let stats = platform.cache().stats();
    let mut host_counters: Vec<(&str, &str, u64)> = vec![
        (
            "thaw_queue_waits",
            "Requests that found every slot taken and waited for one",
            platform
                .invoke_context()
                .queue_waits
                .load(Ordering::Relaxed),
        ),
        (
            "thaw_compilations",
            "Cranelift compilations (deploys, tier-ups, rebuilt artifacts)",
            status.compilations,
        ),
        (
            "thaw_artifact_loads",
            "Compiled artifacts loaded from disk",
            status.artifact_loads,
        ),
        (
            "thaw_artifact_rebuilds",
            "Artifacts found missing or damaged and rebuilt",
            status.artifact_rebuilds,
        ),
        (
            "thaw_slow_clients_closed",
            "Connections closed for sending their headers too slowly",
            status.slow_clients_closed,
        ),
        (
            "thaw_stalled_readers_closed",
            "Connections closed because their client stopped reading",
            status.stalled_readers_closed,
        ),
    ];
    if let (Some(hits), Some(misses)) = (status.compile_cache_hits, status.compile_cache_misses) {
        host_counters.push((
            "thaw_compile_cache_hits",
            "Functions whose compiled code came from the incremental compilation cache",
            hits,
        ));
        host_counters.push((
            "thaw_compile_cache_misses",
            "Functions compiled for want of an incremental compilation cache entry",
            misses,
        ));
    }
    for (name, help, value) in host_counters {
        family(e, name, help, None, MetricType::Counter, [value], |m, v| {
            counter(m, v)
        })?;
    }
    let (deployed, refused) = platform.deploys();
    family(
        e,
        "thaw_deploys",
        "Deploys (admin API and manifests given to thaw serve), by result",
        None,
        MetricType::Counter,
        [("ok", deployed), ("refused", refused)],
        |m, (result, n)| counter(&mut m.encode_family(&[("result", result)])?, n),
    )?;
    family(
        e,
        "thaw_compile_duration",
        "Cranelift compiles, with serialisation and the artifact's write",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        [&stats.compile_time],
        histogram,
    )?;
    Ok(())
}

fn start_labels(function: &Function, kind: StartKind) -> [(&'static str, String); 3] {
    let [name, version] = labels(function);
    [name, version, ("kind", kind.as_str().to_owned())]
}

/// Asynchronous invocations' queues and schedules, per function (no version label: a queue
/// belongs to the function, whichever version runs its next attempt).
struct EventsCollector(Arc<Events>);

impl std::fmt::Debug for EventsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventsCollector")
    }
}

impl Collector for EventsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let queues = self.0.queue_stats();
        let function = |name: &str| [("function", name.to_owned())];
        type Stat = fn(&crate::api::QueueInfo) -> u64;
        let counts: [(&str, &str, MetricType, Stat); 4] = [
            (
                "thaw_async_queue_depth",
                "Asynchronous invocations queued or running",
                MetricType::Gauge,
                |q| q.depth,
            ),
            (
                "thaw_async_attempts",
                "Attempts at asynchronous invocations, since the host started",
                MetricType::Counter,
                |q| q.attempts,
            ),
            (
                "thaw_async_dead_letters",
                "Asynchronous invocations dead-lettered, since the host started",
                MetricType::Counter,
                |q| q.dead_letters,
            ),
            (
                "thaw_async_succeeded",
                "Asynchronous invocations that succeeded, since the host started",
                MetricType::Counter,
                |q| q.succeeded,
            ),
        ];
        for (name, help, kind, value) in counts {
            family(&mut e, name, help, None, kind, &queues, |m, q| {
                let labels = function(&q.function);
                let m = &mut m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => counter(m, value(q)),
                    _ => gauge(m, value(q) as i64),
                }
            })?;
        }
        family(
            &mut e,
            "thaw_async_oldest_age",
            "Age of the oldest asynchronous invocation queued or running",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            &queues,
            |m, q| {
                m.encode_family(&function(&q.function))?
                    .encode_gauge(&(q.oldest_age_ms as f64 / 1e3))
            },
        )?;
        let schedules = self.0.schedules.list().schedules;
        let schedule = |s: &crate::api::ScheduleInfo| {
            [("function", s.function.clone()), ("cron", s.cron.clone())]
        };
        type Field = fn(&crate::api::ScheduleInfo) -> u64;
        let ticks: [(&str, &str, Field); 3] = [
            ("thaw_schedule_runs", "Ticks this node ran", |s| s.runs),
            (
                "thaw_schedule_skipped",
                "Ticks skipped: the previous run still going, or missed while down",
                |s| s.skipped,
            ),
            (
                "thaw_schedule_claimed_elsewhere",
                "Ticks another node of the cluster ran",
                |s| s.claimed_elsewhere,
            ),
        ];
        for (name, help, value) in ticks {
            family(
                &mut e,
                name,
                help,
                None,
                MetricType::Counter,
                &schedules,
                |m, s| counter(&mut m.encode_family(&schedule(s))?, value(s)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_their_samples() {
        let open = "# HELP thaw_requests Requests.\n# TYPE thaw_requests counter\n\
                    thaw_requests_total{code=\"2xx\"} 3\n# HELP thaw_d Time.\n\
                    # TYPE thaw_d histogram\n# UNIT thaw_d seconds\nthaw_d_seconds_sum 1.5\n# EOF\n";
        assert_eq!(
            to_classic_text(open),
            "# HELP thaw_requests_total Requests.\n# TYPE thaw_requests_total counter\n\
             thaw_requests_total{code=\"2xx\"} 3\n# HELP thaw_d Time.\n\
             # TYPE thaw_d histogram\nthaw_d_seconds_sum 1.5\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_curl_the_classic_format() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some(b"*/*")));
        assert!(!wants_openmetrics(None));
    }
}
