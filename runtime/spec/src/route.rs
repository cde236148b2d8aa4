//! Routing a request to a route: by host name, then by path prefix.
//!
//! A route is a path prefix (`/api`), optionally after a host name (`api.example.com/v1`) or
//! a wildcard one (`*.example.com/v1`; a host alone, `api.example.com`, is its `/`).
//!
//! - **Paths** match by longest prefix on segment boundaries: `/api/users` serves
//!   `/api/users` and `/api/users/42` but not `/api/usersx`; `/` serves everything no longer
//!   route claims. Finding the longest match looks up the path's own prefixes from longest to
//!   shortest, so the cost grows with the number of segments in the path, not the number of
//!   functions, and it allocates nothing.
//! - **Hosts** come first: a request's host (its `Host`, or an absolute-form target's, without
//!   the port, any case) is matched against the routes of that exact host, then against the
//!   wildcards from the most specific (`*.a.example.com` before `*.example.com`; a wildcard
//!   matches any depth of subdomain but not the bare domain), and only then against the
//!   host-less routes. The first of these with a path match serves. A host with no route of
//!   its own is served by the host-less routes, and is a 404 where none matches.

/// A route's host (`None` for a host-less route) and path:
/// `api.example.com/v1` is `(Some("api.example.com"), "/v1")`, `*.example.com` is
/// `(Some("*.example.com"), "/")`, `/v1` is `(None, "/v1")`.
pub fn split(route: &str) -> (Option<&str>, &str) {
    if route.starts_with('/') {
        return (None, route);
    }
    match route.find('/') {
        Some(i) => (Some(&route[..i]), &route[i..]),
        None => (Some(route), "/"),
    }
}

/// Whether `host` is a route's host: a lower-case DNS name with a dot (`api.example.com`) or
/// a wildcard over one (`*.example.com`), no port, no IP literal brackets; the reason if not.
pub fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("a host is 1 to 253 characters");
    }
    if name.contains(':') {
        return Err("a route's host has no port (it matches on any port)");
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if !labels_ok {
        return Err(
            "a host is lower-case letters, digits and '-' in dot-separated labels, optionally after '*.'",
        );
    }
    // A DNS name's last label is never all digits: that is an IPv4 address, which a
    // host-less route serves.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("a route's host is a name, not an IP address");
    }
    // `hello` for `/hello` is a slip, not a host: a route's host has a dot.
    if !name.contains('.') {
        return Err(
            "must start with '/' (a path) or a host name with a dot (api.example.com/v1, *.example.com)",
        );
    }
    Ok(())
}

/// A request's `Host` (or an absolute-form target's authority) without its port, for
/// matching a route's host; `None` when there is none.
pub fn request_host(authority: &str) -> Option<&str> {
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Tries `path`, then each shorter prefix ending before a '/', then "/"; returns the first
/// `lookup` hit. `path` is whatever the client sent (hyper has checked it is a valid URI
/// path, nothing more).
pub fn longest_prefix<T>(path: &str, mut lookup: impl FnMut(&str) -> Option<T>) -> Option<T> {
    let mut candidate = path.strip_suffix('/').unwrap_or(path);
    while !candidate.is_empty() {
        if let Some(found) = lookup(candidate) {
            return Some(found);
        }
        candidate = &candidate[..candidate.rfind('/').unwrap_or(0)];
    }
    lookup("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'a>(routes: &[&'a str], path: &str) -> Option<&'a str> {
        longest_prefix(path, |p| routes.iter().find(|r| **r == p).copied())
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let routes = ["/api", "/api/users", "/hello"];
        assert_eq!(route(&routes, "/api/users/42"), Some("/api/users"));
        assert_eq!(route(&routes, "/api/users"), Some("/api/users"));
        assert_eq!(route(&routes, "/api/usersx"), Some("/api"));
        assert_eq!(route(&routes, "/api/"), Some("/api"));
        assert_eq!(route(&routes, "/hello"), Some("/hello"));
        assert_eq!(route(&routes, "/hellox"), None);
        assert_eq!(route(&routes, "/"), None);
        assert_eq!(route(&routes, ""), None);
    }

    #[test]
    fn routes_split_into_host_and_path_and_hosts_are_checked() {
        assert_eq!(split("/v1"), (None, "/v1"));
        assert_eq!(
            split("api.example.com/v1"),
            (Some("api.example.com"), "/v1")
        );
        assert_eq!(split("*.example.com"), (Some("*.example.com"), "/"));
        for ok in ["api.example.com", "*.example.com", "a-1.b2.io"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "API.example.com",
            "api.example.com:8080",
            "*.com.",
            "a..b",
            "-a.b",
            "a_b.c",
            "*",
            "*.",
            "*.localhost",
            "localhost",
            "hello",
            "a.*.b",
            "[::1]",
            "exa mple.com",
            "127.0.0.1",
            "*.0.0.1",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            request_host("api.example.com:8080"),
            Some("api.example.com")
        );
        assert_eq!(request_host("api.example.com."), Some("api.example.com"));
        assert_eq!(request_host("[::1]:80"), Some("[::1]"));
        assert_eq!(request_host("[::1]"), Some("[::1]"));
        assert_eq!(request_host(""), None);
    }

    #[test]
    fn root_route_catches_the_rest() {
        let routes = ["/", "/hello"];
        assert_eq!(route(&routes, "/anything/else"), Some("/"));
        assert_eq!(route(&routes, "/hello/x"), Some("/hello"));
        assert_eq!(route(&routes, "/"), Some("/"));
    }
}
