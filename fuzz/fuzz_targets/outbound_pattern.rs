//! Outbound allow-list patterns come from specs, request URIs from guests: parsing and
//! matching must never panic, and an empty allow-list must deny everything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::outbound::AllowList;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (patterns, uri) = text.rsplit_once('\n').unwrap_or(("", text));
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return;
    };
    assert!(!AllowList::default().allows(&uri));
    let patterns: Vec<&str> = patterns.split('\n').filter(|p| !p.is_empty()).collect();
    if let Ok(list) = AllowList::parse(&patterns) {
        let _ = list.allows(&uri);
    }
});
