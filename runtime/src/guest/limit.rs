//! The limits a guest can run into, and the per-function count of hits.
//!
//! Which limits exist, where each is enforced and what a hit costs is documented in
//! [`crate::function::limits`]; this module is only the names and the counters, kept at the
//! guest layer because the guest's own host state (the outbound hook) counts hits too.

use std::sync::atomic::{AtomicU64, Ordering};

/// A limit a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The wall-clock timeout.
    Timeout,
    /// CPU fuel.
    Fuel,
    /// Linear memory.
    Memory,
    /// The function's concurrency limit and its queue, or the host's instance slots.
    Concurrency,
    /// Request body size.
    RequestBody,
    /// A buffered request body that arrived too slowly (CGI).
    SlowRequestBody,
    /// Request header size or count.
    Headers,
    /// Response body size.
    ResponseBody,
    /// An outbound request to a host the allow-list does not name.
    OutboundHost,
    /// More outbound requests than one invocation may send.
    OutboundRequests,
    /// A key-value value larger than the function may store.
    KvValueSize,
    /// More key-value keys than the function may have.
    KvKeys,
    /// More key-value bytes than the function may have.
    KvBytes,
    /// More host resources (fields, bodies, streams, pollables) than one instance may hold.
    HostResources,
    /// `async.max_queued`: asynchronous invocations queued at once.
    AsyncQueue,
    /// `rate_per_s` or `client_rate_per_s`: requests over the function's or its client's
    /// rate.
    Rate,
}

impl Limit {
    /// Every limit, in reporting order.
    pub const ALL: [Limit; 16] = [
        Limit::Timeout,
        Limit::Fuel,
        Limit::Memory,
        Limit::Concurrency,
        Limit::RequestBody,
        Limit::SlowRequestBody,
        Limit::Headers,
        Limit::ResponseBody,
        Limit::OutboundHost,
        Limit::OutboundRequests,
        Limit::KvValueSize,
        Limit::KvKeys,
        Limit::KvBytes,
        Limit::HostResources,
        Limit::AsyncQueue,
        Limit::Rate,
    ];

    /// The name in logs and in the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Timeout => "timeout",
            Limit::Fuel => "fuel",
            Limit::Memory => "memory",
            Limit::Concurrency => "concurrency",
            Limit::RequestBody => "request_body",
            Limit::SlowRequestBody => "slow_request_body",
            Limit::Headers => "headers",
            Limit::ResponseBody => "response_body",
            Limit::OutboundHost => "outbound_host",
            Limit::OutboundRequests => "outbound_requests",
            Limit::KvValueSize => "kv_value_size",
            Limit::KvKeys => "kv_keys",
            Limit::KvBytes => "kv_bytes",
            Limit::HostResources => "host_resources",
            Limit::AsyncQueue => "async_queue",
            Limit::Rate => "rate",
        }
    }
}

/// How often each limit was hit, for one function.
#[derive(Debug, Default)]
pub struct LimitHits([AtomicU64; Limit::ALL.len()]);

impl LimitHits {
    /// Counts a hit of `limit` by `function` and logs it with `detail`.
    pub fn hit(&self, function: &str, limit: Limit, detail: &dyn std::fmt::Display) {
        self.count(limit);
        tracing::info!(function, limit = limit.name(), "limit hit: {detail}");
    }

    /// Counts a hit the caller logs itself.
    pub fn count(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits of `limit` so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit as usize].load(Ordering::Relaxed)
    }

    /// Hits by limit name, for the admin API.
    pub fn by_name(&self) -> std::collections::BTreeMap<String, u64> {
        Limit::ALL
            .iter()
            .map(|&l| (l.name().to_owned(), self.get(l)))
            .collect()
    }
}
