//! What a function says about the events that start it besides HTTP: its schedules and its
//! asynchronous invocations' delivery policy.
//!
//! Both arrive in the [`FunctionSpec`](crate::spec::FunctionSpec) (`schedule = [...]` and
//! `async = {...}` in a manifest, or the deploy's JSON) and are checked here, before anything
//! is compiled, so a bad cron expression or time zone is a 400 that names its field and
//! changes nothing. The runtime's `events` module runs them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A field of the spec that is not usable: its path (`schedule[0].tz`) and why. The spec
/// module turns it into its own error (this module does not depend on it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct FieldError {
    /// The field's path in the spec.
    pub field: String,
    /// Why it is refused.
    pub why: String,
}

fn field_error(field: impl Into<String>, why: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        why: why.into(),
    }
}

/// Most schedules one function may have: each is a timer the host keeps.
pub const MAX_SCHEDULES: usize = 16;

/// One schedule: a cron expression, read in a time zone.
///
/// In a manifest either a string (`"*/5 * * * *"`, UTC, no catch-up) or a table
/// (`{ cron = "0 3 * * *", tz = "Europe/Paris", catch_up = true }`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduleSpec {
    /// Five fields (minute, hour, day of month, month, day of week), or six with seconds
    /// first. Names (`MON`, `JAN`) and `L`, `W`, `#` as in Vixie cron and croner.
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`); absent means UTC. Ticks that a daylight saving
    /// change skips run at the first instant after it; repeated ones run once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// After downtime, run the one most recent tick that was missed. Off by default: a missed
    /// tick is skipped and logged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
}

impl<'de> Deserialize<'de> for ScheduleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            cron: String,
            #[serde(default)]
            tz: Option<String>,
            #[serde(default)]
            catch_up: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Cron(String),
            Table(Table),
        }
        Ok(
            match Either::deserialize(d).map_err(|_| {
                serde::de::Error::custom(
                    "a schedule is a cron string or a table { cron, tz, catch_up }",
                )
            })? {
                Either::Cron(cron) => Self {
                    cron,
                    tz: None,
                    catch_up: false,
                },
                Either::Table(t) => Self {
                    cron: t.cron,
                    tz: t.tz,
                    catch_up: t.catch_up,
                },
            },
        )
    }
}

impl ScheduleSpec {
    /// A schedule in UTC without catch-up (`thaw deploy --schedule`).
    pub fn utc(cron: impl Into<String>) -> Self {
        Self {
            cron: cron.into(),
            tz: None,
            catch_up: false,
        }
    }

    /// The parsed expression.
    pub fn parse(&self) -> Result<croner::Cron, String> {
        let fields = self.cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "{:?} has {fields} fields; a cron expression has 5 (minute hour day-of-month \
                 month day-of-week), or 6 with seconds first",
                self.cron
            ));
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&self.cron)
            .map_err(|e| format!("{:?} is not a cron expression: {e}", self.cron))
    }

    /// The time zone the expression is read in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> {
        match &self.tz {
            None => Ok(jiff::tz::TimeZone::UTC),
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|_| format!("{name:?} is not an IANA time zone (like Europe/Paris)")),
        }
    }

    /// The first tick strictly after `after`.
    pub fn next_after(
        cron: &croner::Cron,
        tz: &jiff::tz::TimeZone,
        after: jiff::Timestamp,
    ) -> Option<jiff::Timestamp> {
        cron.find_next_occurrence(&after.to_zoned(tz.clone()), false)
            .ok()
            .map(|zoned| zoned.timestamp())
    }
}

/// Checks every schedule of a function.
pub fn validate_schedules(schedules: &[ScheduleSpec]) -> Result<(), FieldError> {
    if schedules.len() > MAX_SCHEDULES {
        return Err(field_error(
            "schedule",
            format!(
                "{} schedules, over the limit of {MAX_SCHEDULES}",
                schedules.len()
            ),
        ));
    }
    for (i, schedule) in schedules.iter().enumerate() {
        let cron = schedule
            .parse()
            .map_err(|why| field_error(format!("schedule[{i}].cron"), why))?;
        let tz = schedule
            .time_zone()
            .map_err(|why| field_error(format!("schedule[{i}].tz"), why))?;
        // An expression that never fires (`0 0 31 2 *`) is a mistake, not a schedule.
        if ScheduleSpec::next_after(&cron, &tz, jiff::Timestamp::now()).is_none() {
            return Err(field_error(
                format!("schedule[{i}].cron"),
                format!("{:?} never fires", schedule.cron),
            ));
        }
    }
    Ok(())
}

/// Default attempts of one asynchronous invocation (the first and two retries, as Lambda).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default age after which an invocation that has not succeeded is dead-lettered (Lambda's
/// default too).
pub const DEFAULT_MAX_AGE_S: u64 = 6 * 3600;
/// The most an invocation may wait (`async.max_age_s`'s upper bound).
pub const MAX_ASYNC_AGE: Duration = Duration::from_secs(MAX_AGE_S_LIMIT);
const MAX_AGE_S_LIMIT: u64 = 7 * 24 * 3600;
/// Default delay before the first retry; each later one doubles it (with jitter).
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Default most invocations of one function queued (waiting or running) at once; past it,
/// an asynchronous request is answered 429.
pub const DEFAULT_MAX_QUEUED: u32 = 10_000;
/// The longest a retry waits, whatever the backoff and attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How a function's asynchronous invocations are delivered (`async = {...}`); unset fields
/// take the defaults above.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncSpec {
    /// Attempts before the invocation is dead-lettered, 1..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Seconds after which an invocation is dead-lettered instead of retried, 1..=604800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
    /// The first retry's delay in ms, doubled for each later one, 1..=3600000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// Most invocations queued at once, 1..=1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
}

/// [`AsyncSpec`] with the defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncPolicy {
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Age before dead-lettering.
    pub max_age: Duration,
    /// The first retry's delay.
    pub backoff: Duration,
    /// Most invocations queued.
    pub max_queued: u32,
}

impl Default for AsyncPolicy {
    fn default() -> Self {
        AsyncSpec::default().resolve()
    }
}

impl AsyncSpec {
    /// The policy, defaults filled in.
    pub fn resolve(&self) -> AsyncPolicy {
        AsyncPolicy {
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            max_age: Duration::from_secs(self.max_age_s.unwrap_or(DEFAULT_MAX_AGE_S)),
            backoff: Duration::from_millis(self.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS)),
            max_queued: self.max_queued.unwrap_or(DEFAULT_MAX_QUEUED),
        }
    }

    /// Every field given within its range.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, value, max) in [
            ("async.max_attempts", self.max_attempts.map(u64::from), 100),
            ("async.max_age_s", self.max_age_s, MAX_AGE_S_LIMIT),
            ("async.backoff_ms", self.backoff_ms, 3_600_000),
            (
                "async.max_queued",
                self.max_queued.map(u64::from),
                1_000_000,
            ),
        ] {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                return Err(field_error(
                    field,
                    format!("{v} is out of range: must be 1..={max}"),
                ));
            }
        }
        Ok(())
    }
}

impl AsyncPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` (from 1) failed: the backoff
    /// doubled per earlier retry, capped at [`MAX_BACKOFF`], then "full jitter" (a uniform
    /// draw in its upper half, `jitter` in 0..1) so that retries of a burst spread out
    /// instead of arriving together again.
    pub fn retry_delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(MAX_BACKOFF);
        doubled.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A queue the function consumes (`trigger = { nats = {...} }` or `{ redis = {...} }`):
/// each message is a request to it, acknowledged once the function answers 2xx.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A NATS JetStream stream (the host's `--events-nats` server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsTrigger>,
    /// A Redis stream (the host's `--events-redis` server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTrigger>,
}

/// Default deliveries of one message before it is dead-lettered.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// A JetStream stream, consumed by a durable pull consumer named `thaw-<function>` (shared by
/// every node of a cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTrigger {
    /// The stream; it must exist (a deploy naming an unknown stream is refused).
    pub stream: String,
    /// Only messages on these subjects (`orders.>`); absent means all of the stream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Deliveries before dead-lettering, 1..=100 [default: 5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    /// Where dead letters are published [default: `thaw.dead.<function>`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_subject: Option<String>,
}

/// A Redis stream, consumed by a consumer group (shared by every node of a cluster, each a
/// consumer of its own name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTrigger {
    /// The stream's key (created, with the group, if absent).
    pub stream: String,
    /// The consumer group [default: `thaw-<function>`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Deliveries before dead-lettering, 1..=100 [default: 5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    /// A message delivered to a consumer that has not acknowledged it for this long is
    /// claimed by another (`XAUTOCLAIM`), in ms, 1000..=3600000 [default: the function's
    /// timeout plus 30 s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
    /// The stream dead letters are added to [default: `<stream>:dead`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<String>,
}

impl TriggerSpec {
    /// Names and ranges (whether the stream exists is the host's check, at deploy).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.nats.is_some() && self.redis.is_some() {
            return Err(field_error("trigger", "one of nats or redis, not both"));
        }
        let max_deliver = |field: &str, v: Option<u32>| match v {
            Some(v) if !(1..=100).contains(&v) => Err(field_error(
                field,
                format!("{v} is out of range: must be 1..=100"),
            )),
            _ => Ok(()),
        };
        if let Some(nats) = &self.nats {
            // JetStream's rule for stream names: no whitespace, '.', '*', '>', path separators.
            let bad = nats.stream.is_empty()
                || nats.stream.len() > 255
                || nats
                    .stream
                    .contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c));
            if bad {
                return Err(field_error(
                    "trigger.nats.stream",
                    format!("{:?} is not a JetStream stream name", nats.stream),
                ));
            }
            max_deliver("trigger.nats.max_deliver", nats.max_deliver)?;
        }
        if let Some(redis) = &self.redis {
            if redis.stream.is_empty() || redis.stream.len() > 1024 {
                return Err(field_error(
                    "trigger.redis.stream",
                    "must be 1 to 1024 bytes",
                ));
            }
            max_deliver("trigger.redis.max_deliver", redis.max_deliver)?;
            if let Some(ms) = redis.visibility_timeout_ms
                && !(1000..=3_600_000).contains(&ms)
            {
                return Err(field_error(
                    "trigger.redis.visibility_timeout_ms",
                    format!("{ms} is out of range: must be 1000..=3600000"),
                ));
            }
        }
        Ok(())
    }
}

/// Reads `s` as a cron string for a flag (`thaw deploy --schedule`), checking it now.
pub fn parse_schedule_flag(s: &str) -> Result<ScheduleSpec, String> {
    let schedule = ScheduleSpec::utc(s);
    schedule.parse()?;
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_as_strings_or_tables() {
        #[derive(Deserialize)]
        struct M {
            schedule: Vec<ScheduleSpec>,
        }
        let m: M = toml::from_str(
            r#"schedule = ["*/5 * * * *", { cron = "0 3 * * *", tz = "Europe/Paris", catch_up = true }]"#,
        )
        .unwrap();
        assert_eq!(m.schedule[0], ScheduleSpec::utc("*/5 * * * *"));
        assert_eq!(m.schedule[1].tz.as_deref(), Some("Europe/Paris"));
        assert!(m.schedule[1].catch_up);
        validate_schedules(&m.schedule).unwrap();
    }

    #[test]
    fn bad_schedules_name_their_field() {
        let bad = |cron: &str, tz: Option<&str>| {
            let s = ScheduleSpec {
                cron: cron.into(),
                tz: tz.map(Into::into),
                catch_up: false,
            };
            validate_schedules(&[ScheduleSpec::utc("* * * * *"), s])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("61 * * * *", None).contains("schedule[1].cron"));
        assert!(bad("* * *", None).contains("has 3 fields"));
        assert!(bad("0 0 31 2 *", None).contains("never fires"));
        assert!(bad("* * * * *", Some("Mars/Olympus")).contains("schedule[1].tz"));
    }

    #[test]
    fn seconds_are_optional_and_ticks_follow_the_time_zone() {
        let s = ScheduleSpec::utc("*/2 * * * * *");
        let cron = s.parse().unwrap();
        let t: jiff::Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let next = ScheduleSpec::next_after(&cron, &jiff::tz::TimeZone::UTC, t).unwrap();
        assert_eq!(next.to_string(), "2026-01-01T00:00:02Z");
        let paris = ScheduleSpec {
            cron: "0 3 * * *".into(),
            tz: Some("Europe/Paris".into()),
            catch_up: false,
        };
        let next =
            ScheduleSpec::next_after(&paris.parse().unwrap(), &paris.time_zone().unwrap(), t)
                .unwrap();
        assert_eq!(next.to_string(), "2026-01-01T02:00:00Z");
    }

    #[test]
    fn retry_delays_double_with_jitter_and_a_cap() {
        let policy = AsyncSpec {
            backoff_ms: Some(100),
            ..Default::default()
        }
        .resolve();
        assert_eq!(policy.retry_delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.retry_delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(policy.retry_delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(policy.retry_delay(60, 1.0), MAX_BACKOFF);
        let bad = AsyncSpec {
            max_attempts: Some(0),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("async.max_attempts")
        );
    }
}
