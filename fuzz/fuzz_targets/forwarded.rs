//! The client behind a trusted proxy, from headers the client partly wrote. Whatever the
//! headers say: an untrusted peer is the client; otherwise the client is the peer or an
//! address that appears in the headers, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use thaw_spec::forwarded::{TrustedProxies, client_address};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: the trusted proxies, the peer, then header lines `name: value`.
    let mut lines = text.split('\n');
    let Ok(trusted) = lines.next().unwrap_or("").parse::<TrustedProxies>() else {
        return;
    };
    let Ok(peer) = lines.next().unwrap_or("").trim().parse::<IpAddr>() else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    let mut values = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        values.push_str(value.to_str().unwrap_or(""));
        values.push(' ');
        headers.append(name, value);
    }
    let client = client_address(peer, &headers, &trusted);
    if !trusted.contains(peer) {
        assert_eq!(client, peer);
    } else if client != peer {
        // An address that appears in the headers (IPv6 in brackets, IPv4-mapped as IPv4).
        let v4_mapped = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4) == Some(client),
            IpAddr::V4(_) => false,
        };
        // Every address written in the headers, as the parser may read it (with or without
        // a port, IPv4-mapped ones as IPv4).
        let canonical = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let written = |ip: IpAddr| {
            values
                .split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
                .flat_map(|token| [Some(token), token.rsplit_once(':').map(|(host, _)| host)])
                .flatten()
                .filter_map(|token| token.parse::<IpAddr>().ok())
                .any(|found| canonical(found) == ip)
        };
        assert!(v4_mapped || written(client), "{client} from {values:?}");
    }
});
