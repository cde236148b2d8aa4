//! A function's outbound allow-list: which hosts it may send HTTP requests to, and which
//! Postgres and Redis servers it may reach.
//!
//! Outbound HTTP is denied by default. A spec lists patterns in the form Spin uses for
//! `allowed_outbound_hosts`, `scheme://host[:port]`:
//!
//! | pattern                      | allows                                              |
//! |------------------------------|-----------------------------------------------------|
//! | `https://api.example.com`    | that host, https, port 443                          |
//! | `http://127.0.0.1:8080`      | that address and port, plain http                   |
//! | `https://*.example.com`      | any subdomain (not `example.com` itself), port 443  |
//! | `*://cache.internal:*`       | that host, any scheme, any port                     |
//! | `https://*:443`              | any host over https on 443                          |
//! | `postgres://db.internal`     | a Postgres at that host, port 5432 (the host pools the connections) |
//! | `redis://cache.internal`     | a Redis at that host, port 6379 (one shared connection per function) |
//!
//! A port left out means the scheme's default port (80, 443, 5432 or 6379), so `http://example.com`
//! does not open `example.com:6379`. Paths, users and queries are refused in a pattern: the
//! allow-list is about where a connection goes, not what is asked there.
//!
//! Patterns are parsed once at deploy time; matching a request allocates nothing.

/// One parsed `scheme://host[:port]` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    scheme: SchemeMatch,
    host: HostMatch,
    port: PortMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SchemeMatch {
    Any,
    Http,
    Https,
    /// `postgres://` (or `postgresql://`): where a function's SQL connections may go.
    Postgres,
    /// `redis://`: where a function's `spin:redis` connections may go.
    Redis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// Lower-case host name, IPv4 address, or `[v6]` literal.
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomain(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortMatch {
    Any,
    /// The scheme's default port.
    Default,
    Exact(u16),
}

/// Why an allow-list entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid outbound host pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl HostPattern {
    /// Parses one pattern.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| err("expected scheme://host[:port]"))?;
        let scheme = match scheme {
            "http" => SchemeMatch::Http,
            "https" => SchemeMatch::Https,
            "postgres" | "postgresql" => SchemeMatch::Postgres,
            "redis" => SchemeMatch::Redis,
            "*" => SchemeMatch::Any,
            _ => return Err(err("the scheme must be http, https, postgres, redis or *")),
        };
        // A trailing slash is harmless and common when pasting URLs; anything after it is not.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(err("the host is missing"));
        }
        if rest.contains(['/', '?', '#', '@', ' ']) || rest.chars().any(|c| c.is_control()) {
            return Err(err(
                "only scheme://host[:port] is allowed: no path, query or user",
            ));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err("malformed host or port"))?;
        let port = match port {
            None => PortMatch::Default,
            Some("*") => PortMatch::Any,
            // Digits only, no leading zero: `u16::from_str` would also take "+80" and "080".
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0') => {
                match p.parse::<u16>() {
                    Ok(p) => PortMatch::Exact(p),
                    Err(_) => return Err(err("the port must be 1-65535 or *")),
                }
            }
            Some(_) => return Err(err("the port must be 1-65535 or *")),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_host(suffix) {
                return Err(err("the host after '*.' is not a valid host name"));
            }
            HostMatch::Subdomain(format!(".{suffix}"))
        } else if valid_host(&host) {
            HostMatch::Exact(host)
        } else {
            return Err(err(
                "the host must be a name, an IP address, '*' or '*.' followed by a name",
            ));
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches; `port` is `None` when the request
    /// names none (the scheme's default applies). `host` must be lower-case.
    pub fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let (scheme_ok, default_port) = match (self.scheme, scheme) {
            (SchemeMatch::Http | SchemeMatch::Any, "http") => (true, 80),
            (SchemeMatch::Https | SchemeMatch::Any, "https") => (true, 443),
            (SchemeMatch::Postgres | SchemeMatch::Any, "postgres" | "postgresql") => (true, 5432),
            (SchemeMatch::Redis | SchemeMatch::Any, "redis") => (true, 6379),
            _ => (false, 0),
        };
        if !scheme_ok {
            return false;
        }
        let port = port.unwrap_or(default_port);
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Default => port == default_port,
            PortMatch::Exact(p) => port == p,
        };
        port_ok
            && match &self.host {
                HostMatch::Any => true,
                HostMatch::Exact(h) => h == host,
                HostMatch::Subdomain(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            }
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        // An IPv6 literal keeps its brackets as the host.
        let end = rest.find(']')?;
        let host = &s[..end + 2];
        return match &s[end + 2..] {
            "" => Some((host, None)),
            after => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match s.split_once(':') {
        None => Some((s, None)),
        Some((host, port)) => Some((host, Some(port))),
    }
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A function's parsed allow-list; empty denies everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<HostPattern>);

impl AllowList {
    /// Parses every pattern; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        patterns
            .iter()
            .map(|p| HostPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// True when no host is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a connection to `scheme://host:port` may go out (`host` lower-case; `port`
    /// `None` for the scheme's default).
    pub fn allows_host(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.0.iter().any(|p| p.matches(scheme, host, port))
    }

    /// Whether a request to `uri` may go out. A URI without a scheme or host never may.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        let host = authority.host();
        // Patterns are stored lower-case; most request hosts already are, so this only
        // allocates for the rare mixed-case host.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            &lowered
        } else {
            host
        };
        let port = authority.port_u16();
        self.0.iter().any(|p| p.matches(scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &[&str], uri: &str) -> bool {
        AllowList::parse(patterns)
            .unwrap()
            .allows(&uri.parse().unwrap())
    }

    #[test]
    fn exact_hosts_and_default_ports() {
        let p = ["https://api.example.com"];
        assert!(allows(&p, "https://api.example.com/v1"));
        assert!(allows(&p, "https://API.example.com:443/v1"));
        assert!(!allows(&p, "http://api.example.com/"));
        assert!(!allows(&p, "https://api.example.com:8443/"));
        assert!(!allows(&p, "https://api.example.com.evil.net/"));
        assert!(!allows(&p, "https://example.com/"));
    }

    #[test]
    fn wildcards() {
        assert!(allows(
            &["https://*.example.com"],
            "https://a.b.example.com/"
        ));
        assert!(!allows(&["https://*.example.com"], "https://example.com/"));
        assert!(!allows(
            &["https://*.example.com"],
            "https://badexample.com/"
        ));
        assert!(allows(&["*://cache:*"], "http://cache:6380/"));
        assert!(allows(&["*://cache:*"], "https://cache/"));
        assert!(allows(&["http://*:8080"], "http://10.0.0.1:8080/"));
        assert!(!allows(&["http://*:8080"], "http://10.0.0.1:8081/"));
        assert!(allows(
            &["http://127.0.0.1:9000"],
            "http://127.0.0.1:9000/x?y"
        ));
        assert!(allows(&["http://[::1]:9000"], "http://[::1]:9000/"));
    }

    #[test]
    fn empty_list_denies_everything() {
        assert!(!allows(&[], "http://127.0.0.1/"));
        assert!(!allows(&["http://*:*"], "/relative"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "http://",
            "http://example.com/path",
            "http://user@example.com",
            "http://example.com:0",
            "http://example.com:99999",
            "http://example.com:+80",
            "http://example.com:080",
            "http://exa mple.com",
            "http://*example.com",
            "http://a..b",
            "http://[zz]:80",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
