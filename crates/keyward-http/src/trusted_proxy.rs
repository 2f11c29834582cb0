//! Trusted proxies: which address a request comes from when keyward sits behind a load
//! balancer or another proxy.
//!
//! IP allowlists, anomaly detection and the audit log all need the client's address. Without
//! configuration it is the socket peer, and nothing a client sends can change that. With
//! trusted proxies (`--trusted-proxy CIDR`, `trusted_proxies = [...]` in the gateway's TOML)
//! a peer inside one of those blocks is believed about the address it forwards for: its
//! `X-Forwarded-For` is read from the right, every entry that is itself a trusted proxy is
//! skipped, and the first entry that is not is the client. Entries left of that one were
//! written by the client and are never read. A peer outside the blocks is the client, whatever
//! it sends. A PROXY protocol header ([`crate::proxy_protocol`]) is the other way a trusted
//! peer names the client; the listener reads it, and its source address then stands where the
//! socket peer stood in the rule above.
//!
//! The walk stops at an entry that does not parse as an address (garbage, `unknown`, an
//! obfuscated identifier): the address to its right, the hop that reported it, is the client.
//! If every entry is trusted, the leftmost is. At most [`MAX_FORWARDED_HOPS`] entries are read.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// Most `X-Forwarded-For` entries read, right to left; a longer chain stops at this one.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The `X-Forwarded-For` header.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The address blocks whose peers are believed about the client they forward for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A trusted-proxy entry that is neither a CIDR block nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR block or an IP address (e.g. 10.0.0.0/8, 2001:db8::/32)")]
pub struct InvalidCidr(pub String);

impl TrustedProxies {
    /// Blocks given as text (`10.0.0.0/8`, `2001:db8::/32`, or one address).
    pub fn parse<S: AsRef<str>>(blocks: &[S]) -> Result<Self, InvalidCidr> {
        blocks
            .iter()
            .map(|b| {
                let b = b.as_ref().trim();
                keyward_core::binding::parse_cidr(b).ok_or_else(|| InvalidCidr(b.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// No proxy is trusted: the socket peer is always the client.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form) is in a block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Where a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The client, by the rule in the module documentation.
    pub client: IpAddr,
    /// The peer whose word was weighed: the socket peer, or the PROXY protocol source.
    pub peer: IpAddr,
    /// Whether `peer` is a trusted proxy (and so its forwarding headers were read).
    pub peer_trusted: bool,
}

/// The client of a request that arrived from `peer` with `headers`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Resolved {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Resolved {
            client: peer,
            peer,
            peer_trusted: false,
        };
    }
    let mut client = peer;
    let mut hops = 0;
    // Right to left over every X-Forwarded-For field line: several lines are one list, in order.
    let lines: Vec<&HeaderValue> = headers.get_all(FORWARDED_FOR).iter().collect();
    'walk: for line in lines.iter().rev() {
        let Ok(text) = line.to_str() else { break };
        for entry in text.rsplit(',') {
            hops += 1;
            if hops > MAX_FORWARDED_HOPS {
                break 'walk;
            }
            let Some(ip) = parse_entry(entry) else {
                break 'walk;
            };
            client = ip;
            if !trusted.contains(ip) {
                break 'walk;
            }
        }
    }
    Resolved {
        client,
        peer,
        peer_trusted: true,
    }
}

/// One `X-Forwarded-For` entry: an address, a bracketed IPv6 address, either with a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (ip, port) = entry.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The `X-Forwarded-For` to send upstream: a trusted peer's chain with the peer appended, or
/// only the peer when it is not trusted (an untrusted client's entries are its own claims,
/// and forwarding them would hand them to an upstream that may believe them).
pub fn forwarded_for(headers: &HeaderMap, resolved: &Resolved) -> Option<HeaderValue> {
    let peer = resolved.peer.to_string();
    if resolved.peer_trusted {
        let previous: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .map(HeaderValue::to_str)
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let previous: Vec<&str> = previous
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if !previous.is_empty() {
            return HeaderValue::from_str(&format!("{}, {peer}", previous.join(", "))).ok();
        }
    }
    HeaderValue::from_str(&peer).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(blocks).unwrap()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn client(peer: &str, lines: &[&str], blocks: &[&str]) -> String {
        resolve(peer.parse().unwrap(), &headers(lines), &trusted(blocks))
            .client
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(client("203.0.113.9", &["10.1.1.1"], &[]), "203.0.113.9");
        assert_eq!(
            client("203.0.113.9", &["10.1.1.1"], &["10.0.0.0/8"]),
            "203.0.113.9"
        );
    }

    #[test]
    fn a_trusted_peer_forwards_the_rightmost_untrusted_entry() {
        let lb = ["10.0.0.0/8"];
        assert_eq!(client("10.0.0.2", &["198.51.100.7"], &lb), "198.51.100.7");
        // The client's own spoofed entries sit left of what the proxies appended.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1, 198.51.100.7, 10.0.0.5"], &lb),
            "198.51.100.7"
        );
        // Several field lines are one list, in order.
        assert_eq!(
            client("10.0.0.2", &["1.1.1.1", "198.51.100.7", "10.0.0.5"], &lb),
            "198.51.100.7"
        );
        // No header: the trusted peer itself is the client.
        assert_eq!(client("10.0.0.2", &[], &lb), "10.0.0.2");
    }

    #[test]
    fn every_hop_trusted_gives_the_leftmost() {
        assert_eq!(
            client("10.0.0.2", &["10.9.9.9, 10.0.0.5"], &["10.0.0.0/8"]),
            "10.9.9.9"
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_hop_that_reported_it() {
        let lb = ["10.0.0.0/8"];
        for garbage in [
            "unknown",
            "",
            "_hidden",
            "1.2.3",
            "1.2.3.4.5",
            "fe80::1%eth0",
            "[::1",
        ] {
            let line = format!("203.0.113.1, {garbage}, 10.0.0.5");
            assert_eq!(client("10.0.0.2", &[&line], &lb), "10.0.0.5", "{line:?}");
        }
        assert_eq!(client("10.0.0.2", &["junk"], &lb), "10.0.0.2");
    }

    #[test]
    fn ipv6_ports_and_mapped_addresses() {
        let lb = ["10.0.0.0/8", "2001:db8::/32"];
        assert_eq!(
            client("2001:db8::1", &["2001:db8:ffff::9"], &lb),
            "2001:db8:ffff::9"
        );
        assert_eq!(
            client("2001:db8::1", &["[2001:db9::9]:443"], &lb),
            "2001:db9::9"
        );
        assert_eq!(client("2001:db8::1", &["2001:db9::9"], &lb), "2001:db9::9");
        assert_eq!(
            client("10.0.0.2", &["198.51.100.7:5555"], &lb),
            "198.51.100.7"
        );
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; they are still trusted.
        assert_eq!(
            client("::ffff:10.0.0.2", &["198.51.100.7"], &lb),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.2", &["::ffff:198.51.100.7"], &lb),
            "198.51.100.7"
        );
        assert_eq!(
            client("::ffff:203.0.113.9", &["1.1.1.1"], &lb),
            "203.0.113.9"
        );
        // A port on a bare IPv6 address is ambiguous: garbage.
        assert_eq!(client("10.0.0.2", &["2001:db9::9:99999"], &lb), "10.0.0.2");
    }

    #[test]
    fn a_long_chain_is_read_only_so_far() {
        let chain = vec!["10.0.0.9"; MAX_FORWARDED_HOPS + 5].join(", ");
        let line = format!("203.0.113.1, {chain}");
        assert_eq!(client("10.0.0.2", &[&line], &["10.0.0.0/8"]), "10.0.0.9");
    }

    #[test]
    fn forwarded_for_keeps_only_a_trusted_chain() {
        let lb = trusted(&["10.0.0.0/8"]);
        let spoofed = headers(&["6.6.6.6"]);
        let direct = resolve("203.0.113.9".parse().unwrap(), &spoofed, &lb);
        assert_eq!(forwarded_for(&spoofed, &direct).unwrap(), "203.0.113.9");
        let chain = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.5"]);
        let via = resolve("10.0.0.2".parse().unwrap(), &chain, &lb);
        assert_eq!(
            forwarded_for(&chain, &via).unwrap(),
            "6.6.6.6, 198.51.100.7, 10.0.0.5, 10.0.0.2"
        );
    }

    #[test]
    fn bad_blocks_are_named() {
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err(),
            InvalidCidr("10.0.0.0/33".into())
        );
        assert!(TrustedProxies::parse(&["192.0.2.7", "::1/128"]).is_ok());
    }
}
