//! Routing takes the request path as the client sent it. Against a naive reference: the
//! longest valid route that equals the path or is a prefix of it on a '/' boundary, else
//! "/" if deployed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::route::longest_prefix;
use thaw_spec::spec::validate_route;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: routes, then the path last.
    let mut lines: Vec<&str> = text.split('\n').collect();
    let path = lines.pop().unwrap_or("");
    let routes: Vec<&str> = lines
        .into_iter()
        .filter(|r| validate_route(r).is_ok())
        .collect();

    let found = longest_prefix(path, |p| routes.iter().find(|r| **r == p).copied());

    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let reference = routes
        .iter()
        .copied()
        .filter(|r| {
            *r != "/"
                && (trimmed == *r
                    || (trimmed.starts_with(r) && trimmed.as_bytes().get(r.len()) == Some(&b'/')))
        })
        .max_by_key(|r| r.len())
        .or_else(|| routes.iter().copied().find(|r| *r == "/"));
    assert_eq!(found, reference, "path {path:?}, routes {routes:?}");
});
