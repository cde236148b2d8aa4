//! Routing a request path to a route prefix.
//!
//! Routing is by longest matching prefix on segment boundaries: `/api/users` serves
//! `/api/users` and `/api/users/42` but not `/api/usersx`; `/` serves everything no longer
//! route claims. Finding the longest match looks up the path's own prefixes from longest to
//! shortest, so the cost grows with the number of segments in the path, not the number of
//! functions, and it allocates nothing.

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
    fn root_route_catches_the_rest() {
        let routes = ["/", "/hello"];
        assert_eq!(route(&routes, "/anything/else"), Some("/"));
        assert_eq!(route(&routes, "/hello/x"), Some("/hello"));
        assert_eq!(route(&routes, "/"), Some("/"));
    }
}
