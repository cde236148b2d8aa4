//! Rate limits: a function's request rate on this host, and each client address's.
//!
//! Both are GCRA limiters from `governor` (a token bucket in effect: `burst` requests at once,
//! refilled at `per_s` a second), checked before anything else a request costs, so a request
//! over its limit never starts a guest; it is answered 429 with `Retry-After`, the seconds
//! until the bucket has room again (at least 1).
//!
//! # Per client
//! Clients are told apart by address ([`crate::forwarded::client_address`]: the socket's
//! peer, or what a trusted proxy forwarded). An IPv6 client counts by its /64: one host is
//! handed a /64 and can choose any address in it, so a per-address limit would be no limit.
//! The keyed limiter holds one entry per client seen; past [`MAX_CLIENTS`] entries the ones
//! back to a full bucket (indistinguishable from new) are dropped, at most once a second (a
//! scan of the table), and past twice that (more distinct clients within one refill than the
//! bound) the table is cleared: the host's memory is bounded, at the price of forgetting who
//! was throttled.
//!
//! # Scope
//! Limits are per host: in a cluster behind a load balancer, each node allows the rate, so a
//! function's rate across N nodes is up to N times it. A version's limiters are its own: a
//! redeploy starts with full buckets.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::spec::{Limits, Rate};

/// Client entries a function's keyed limiter keeps before it forgets the idle ones.
pub const MAX_CLIENTS: usize = 65_536;

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;
type Keyed = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, DefaultClock>;

/// A version's rate limiters.
#[derive(Default)]
pub struct RateLimits {
    function: Option<Direct>,
    /// Swapped whole for an empty one when the table overflows (governor cannot clear one).
    clients: Option<(arc_swap::ArcSwap<Keyed>, Quota)>,
    /// The second (Unix time) the client table was last trimmed in.
    trimmed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("function", &self.function.is_some())
            .field("clients", &self.clients.is_some())
            .finish()
    }
}

fn quota(rate: Rate) -> Quota {
    let nonzero = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    Quota::per_second(nonzero(rate.per_s)).allow_burst(nonzero(rate.burst))
}

impl RateLimits {
    /// The limiters of a version's resolved limits; none when it sets no rate.
    pub fn new(limits: &Limits) -> Self {
        Self {
            function: limits.rate.map(|rate| RateLimiter::direct(quota(rate))),
            clients: limits.client_rate.map(|rate| {
                let quota = quota(rate);
                (
                    arc_swap::ArcSwap::from_pointee(RateLimiter::dashmap(quota)),
                    quota,
                )
            }),
            trimmed: Default::default(),
        }
    }

    /// Whether a client rate applies (so the caller must find the client's address).
    pub fn per_client(&self) -> bool {
        self.clients.is_some()
    }

    /// Takes one request from the buckets; `Err` with the wait before one would be taken.
    /// `client` is only called when a client rate applies.
    pub fn check(&self, client: impl FnOnce() -> IpAddr) -> Result<(), Duration> {
        if let Some((table, quota)) = &self.clients {
            let key = client_key(client());
            let clients = table.load();
            if let Err(not_until) = clients.check_key(&key) {
                return Err(not_until.wait_time_from(DefaultClock::default().now()));
            }
            // Trimmed when over the bound, at most once a second (a scan of the table):
            // new clients between trims only add to it, up to twice the bound, where it is
            // replaced whole.
            if clients.len() > MAX_CLIENTS {
                let second = std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs());
                if self
                    .trimmed
                    .swap(second, std::sync::atomic::Ordering::Relaxed)
                    != second
                {
                    clients.retain_recent();
                }
                if clients.len() > 2 * MAX_CLIENTS {
                    tracing::warn!(
                        clients = clients.len(),
                        "more clients within one refill than the rate limiter keeps; forgetting them all"
                    );
                    table.store(std::sync::Arc::new(RateLimiter::dashmap(*quota)));
                }
            }
        }
        if let Some(function) = &self.function
            && let Err(not_until) = function.check()
        {
            return Err(not_until.wait_time_from(DefaultClock::default().now()));
        }
        Ok(())
    }
}

/// An IPv4 address as it is; an IPv6 one as its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(rate: Option<Rate>, client_rate: Option<Rate>) -> Limits {
        let mut limits = crate::spec::LimitsSpec::default().resolve(&Default::default());
        limits.rate = rate;
        limits.client_rate = client_rate;
        limits
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_says_how_long_to_wait() {
        let rate = Rate { per_s: 1, burst: 3 };
        let limits = RateLimits::new(&resolved(Some(rate), None));
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limits.check(|| local), Ok(()));
        }
        let wait = limits.check(|| local).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // No limits, no refusals, and the client is never asked for.
        let none = RateLimits::new(&resolved(None, None));
        assert!(!none.per_client());
        for _ in 0..1000 {
            assert_eq!(none.check(|| unreachable!()), Ok(()));
        }
    }

    #[test]
    fn clients_have_buckets_of_their_own_and_an_ipv6_client_is_its_64() {
        let rate = Rate { per_s: 1, burst: 1 };
        let limits = RateLimits::new(&resolved(None, Some(rate)));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(limits.check(|| a), Ok(()));
        assert!(limits.check(|| a).is_err());
        assert_eq!(
            limits.check(|| b),
            Ok(()),
            "another client is not throttled"
        );
        let (v6a, v6b): (IpAddr, IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2:ffff::9".parse().unwrap(),
        );
        assert_eq!(limits.check(|| v6a), Ok(()));
        assert!(limits.check(|| v6b).is_err(), "the same /64");
        let other64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limits.check(|| other64), Ok(()));
    }

    #[test]
    fn the_client_table_stays_bounded() {
        let rate = Rate { per_s: 1, burst: 1 };
        let limits = RateLimits::new(&resolved(None, Some(rate)));
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = limits.check(|| ip);
        }
        assert!(limits.clients.as_ref().unwrap().0.load().len() <= 2 * MAX_CLIENTS + 1);
    }
}
