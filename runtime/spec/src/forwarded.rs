//! Who the client is: the socket's peer, or, when that peer is a proxy the host trusts
//! (`--trusted-proxies`), the address it forwarded in `X-Forwarded-For` (what HAProxy's
//! `option forwardfor` and nginx's `proxy_add_x_forwarded_for` append) or, when the operator
//! says the proxies write it (`--forwarded-header forwarded`), in `Forwarded` (RFC 7239).
//!
//! Only the header the proxies write is read: the other one arrives as the client wrote it,
//! and reading it would let a client pick its address. Each proxy appends the address it
//! received the request from, so the list is read from the right: past every trusted proxy,
//! the first address is the client. Everything to its left was written by the client itself
//! and is not believed. An address may carry a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
//! A value that does not parse ends the walk at the last address believed: a proxy that
//! writes garbage must not let a client pick its own address, and the proxy itself is then
//! the client (rate limits it as one).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

/// The header trusted proxies write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (HAProxy, nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!("{other:?} is not x-forwarded-for or forwarded")),
        }
    }
}

impl TrustedProxies {
    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether there are none (the socket's peer is always the client).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// These proxies, writing `header`.
    pub fn with_header(self, header: ForwardedHeader) -> Self {
        Self { header, ..self }
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
        Ok(Self {
            nets,
            header: ForwardedHeader::default(),
        })
    }
}

/// The client of a request that arrived from `peer`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let (name, parse): (_, fn(&str) -> Option<IpAddr>) = match trusted.header {
        ForwardedHeader::XForwardedFor => ("x-forwarded-for", address),
        ForwardedHeader::Forwarded => ("forwarded", forwarded_for),
    };
    // Header lines and their comma-separated hops, last first. (Collected: a header map's
    // values do not iterate backwards; only a request from a trusted proxy to a function with
    // a client rate gets here.)
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    let hops = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .map(parse);
    let mut client = peer;
    for hop in hops {
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

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`.
fn address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.parse().ok().or_else(|| {
        let (host, port) = hop.rsplit_once(':')?;
        port.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    })
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
    address(value)
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
    fn only_the_header_the_proxies_write_is_read() {
        let xff: TrustedProxies = "127.0.0.0/8".parse().unwrap();
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        // The default: X-Forwarded-For; a Forwarded the client wrote is not read.
        let both = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "192.0.2.9"),
        ]);
        assert_eq!(client_address(proxy, &both, &xff).to_string(), "192.0.2.9");
        // Ports on X-Forwarded-For hops.
        for (value, client) in [
            ("192.0.2.1:4711", "192.0.2.1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("2001:db8::2", "2001:db8::2"),
        ] {
            let map = headers(&[("x-forwarded-for", value)]);
            assert_eq!(
                client_address(proxy, &map, &xff).to_string(),
                client,
                "{value}"
            );
        }
        // Proxies that write Forwarded: that header, and X-Forwarded-For is not read.
        let forwarded = xff.clone().with_header(ForwardedHeader::Forwarded);
        for (value, client) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
            ("For=\"192.0.2.43:8080\"", "192.0.2.43"),
        ] {
            let map = headers(&[("forwarded", value), ("x-forwarded-for", "9.9.9.9")]);
            assert_eq!(
                client_address(proxy, &map, &forwarded).to_string(),
                client,
                "{value}"
            );
        }
        let unknown = headers(&[("forwarded", "for=unknown"), ("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(client_address(proxy, &unknown, &forwarded), proxy);
        assert!("Forwarded".parse::<ForwardedHeader>().is_ok());
        assert!("via".parse::<ForwardedHeader>().is_err());
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
