//! Events: a request that thaw sent because of a schedule, an asynchronous invocation or a
//! queue's message, read as a CloudEvent.
//!
//! thaw delivers every event as an HTTP request with CloudEvents 1.0 binary-mode headers
//! (`ce-id`, `ce-source`, `ce-type`, `ce-time`, `ce-subject`); the body is the event's data.
//! [`Event::from`] reads them, so one handler can tell a client's request from an event:
//!
//! ```
//! use thaw_sdk::event::Event;
//!
//! let req: thaw_sdk::Request = thaw_sdk::http::Request::post("/nightly")
//!     .header("ce-specversion", "1.0")
//!     .header("ce-id", "1767225600000-0")
//!     .header("ce-source", "/thaw/schedules/nightly")
//!     .header("ce-type", "dev.thaw.schedule.tick")
//!     .header("ce-time", "2026-01-01T00:00:00.000Z")
//!     .header("ce-subject", "0 0 * * *")
//!     .body(Vec::new())
//!     .unwrap();
//! let event = Event::from(&req).expect("an event");
//! assert!(event.is_schedule_tick());
//! assert_eq!(event.subject, Some("0 0 * * *"));
//! assert_eq!(event.attempt, 1);
//! ```
//!
//! Delivery is at least once: a retry or a restart can deliver one event again, with the
//! same `id`. A handler whose effect must not repeat keys it by [`Event::id`] (a
//! [`crate::kv::Store`] key, say).

use crate::Request;

/// `ce-type` of a schedule's tick.
pub const SCHEDULE_TICK: &str = "dev.thaw.schedule.tick";
/// `ce-type` of an asynchronous invocation (`Prefer: respond-async`).
pub const ASYNC_INVOCATION: &str = "dev.thaw.invocation";
/// `ce-type` of a message from a NATS JetStream trigger.
pub const NATS_MESSAGE: &str = "dev.thaw.nats.message";
/// `ce-type` of a message from a Redis Streams trigger.
pub const REDIS_MESSAGE: &str = "dev.thaw.redis.message";

/// A request's CloudEvents attributes, borrowed from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Unique within its source; the same on every retry of the event.
    pub id: &'a str,
    /// Where it comes from: `/thaw/schedules/<function>`, `/thaw/functions/<function>`.
    pub source: &'a str,
    /// What happened: [`SCHEDULE_TICK`], [`ASYNC_INVOCATION`], [`NATS_MESSAGE`],
    /// [`REDIS_MESSAGE`], or a client's own type.
    pub kind: &'a str,
    /// When it happened (RFC 3339), if said.
    pub time: Option<&'a str>,
    /// What it is about within the source (a schedule's cron expression, an invocation's
    /// path), if said.
    pub subject: Option<&'a str>,
    /// Which delivery attempt this is, from 1 (thaw's `ce-thawattempt`; 1 if absent).
    pub attempt: u32,
    /// The event's data: the request body.
    pub data: &'a [u8],
}

impl<'a> Event<'a> {
    /// The event `req` carries, or `None` if it lacks the required `ce-id`, `ce-source`
    /// or `ce-type` (a plain HTTP request).
    pub fn from(req: &'a Request) -> Option<Self> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        Some(Self {
            id: header("ce-id")?,
            source: header("ce-source")?,
            kind: header("ce-type")?,
            time: header("ce-time"),
            subject: header("ce-subject"),
            attempt: header("ce-thawattempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1),
            data: req.body(),
        })
    }

    /// Whether a schedule sent it.
    pub fn is_schedule_tick(&self) -> bool {
        self.kind == SCHEDULE_TICK
    }

    /// Whether it is an asynchronous invocation.
    pub fn is_async_invocation(&self) -> bool {
        self.kind == ASYNC_INVOCATION
    }

    /// Whether a queue trigger (NATS or Redis) sent it.
    pub fn is_queue_message(&self) -> bool {
        self.kind == NATS_MESSAGE || self.kind == REDIS_MESSAGE
    }
}
