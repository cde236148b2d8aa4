//! Who the client is: the socket's peer, or, when that peer is a proxy the host trusts
//! (`--trusted-proxies`), the address it forwarded in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`.
//!
//! Each proxy appends the address it received the request from, so the list is read from
//! the right: past every trusted proxy, the first address is the client. Everything to its
//! left was written by the client itself and is not believed. A request with both headers is
//! read by `Forwarded`, the standard one. A value that does not parse ends the walk at the
//! last address believed: a proxy that writes garbage must not let a client pick its own
//! address, and the proxy itself is then the client (rate limits it as one).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether there are none (the socket's peer is always the client).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated addresses or CIDR blocks: `127.0.0.1, 10.0.0.0/8, fd00::/8`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{part:?} is not an address or a CIDR block"))?,
            };
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }
}

/// The client of a request that arrived from `peer`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let forwarded = headers.get_all(http::header::FORWARDED);
    let hops: Vec<Option<IpAddr>> = if forwarded.iter().next().is_some() {
        forwarded
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(forwarded_for)
            .collect()
    } else {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(ip);
                if !trusted.contains(client) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// The `for=` address of one `Forwarded` element (`for=192.0.2.1;proto=https`,
/// `for="[2001:db8::1]:4711"`); `None` for an obfuscated or unknown one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let host = match value.rsplit_once(':') {
        // An IPv4 address with a port; a bare IPv6 address is not valid here unquoted.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    };
    host.parse().ok()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_only_from_the_right() {
        let trusted: TrustedProxies = "127.0.0.1, 10.0.0.0/8".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        // An untrusted peer is the client, whatever it says.
        assert_eq!(client_address(stranger, &spoofed, &trusted), stranger);
        // Behind a trusted proxy: the rightmost untrusted hop; what the client wrote to its
        // left is not believed.
        assert_eq!(
            client_address(proxy, &spoofed, &trusted).to_string(),
            "203.0.113.9"
        );
        // Two trusted proxies in a row are skipped.
        let chained = headers(&[("x-forwarded-for", "203.0.113.9, 10.9.9.9")]);
        assert_eq!(
            client_address(proxy, &chained, &trusted).to_string(),
            "203.0.113.9"
        );
        // Split across header lines, as proxies may append.
        let lines = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            client_address(proxy, &lines, &trusted).to_string(),
            "203.0.113.9"
        );
        // Garbage ends the walk at the last address believed (here the proxy itself).
        let garbage = headers(&[("x-forwarded-for", "1.1.1.1, nonsense")]);
        assert_eq!(client_address(proxy, &garbage, &trusted), proxy);
        // No header: the proxy is the client.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for() {
        let trusted: TrustedProxies = "127.0.0.0/8".parse().unwrap();
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        for (value, client) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
            ("For=\"192.0.2.43:8080\"", "192.0.2.43"),
        ] {
            let map = headers(&[("forwarded", value), ("x-forwarded-for", "9.9.9.9")]);
            assert_eq!(
                client_address(proxy, &map, &trusted).to_string(),
                client,
                "{value}"
            );
        }
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_address(proxy, &unknown, &trusted), proxy);
    }

    #[test]
    fn proxies_parse_as_addresses_or_blocks() {
        let trusted: TrustedProxies = "::1, fd00::/8 ,192.168.1.5/16".parse().unwrap();
        assert!(trusted.contains("192.168.200.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:192.168.0.9".parse().unwrap()));
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        assert!(!trusted.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("example.com".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }
}
