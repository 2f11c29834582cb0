//! Bindings: where a key may be used from. An IP allowlist of CIDR blocks (IPv4 and IPv6) and
//! an allowlist of browser origins (exact host or `*.example.com`).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Most CIDR blocks or origins on a key.
pub const MAX_BINDINGS: usize = 64;

/// Parses a CIDR block or a single address (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
///
/// A block inside the IPv4-mapped range (`::ffff:192.0.2.0/120`) becomes the IPv4 block it
/// stands for (`192.0.2.0/24`): [`ip_allowed`] compares a mapped caller as IPv4, so the IPv6
/// form would never match anything.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?
        .trunc();
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    })
}

/// True if the allowlist is empty or `ip` is inside one of its blocks. A restricted key used
/// without an `ip` is refused (fails closed). IPv4-mapped IPv6 addresses match IPv4 blocks.
pub fn ip_allowed(allowlist: &[IpNet], ip: Option<IpAddr>) -> bool {
    if allowlist.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    allowlist.iter().any(|net| net.contains(&ip))
}

/// An allowed origin: an exact host or a `*.` wildcard for its subdomains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginPattern(String);

impl TryFrom<String> for OriginPattern {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::new(&value).ok_or_else(|| format!("invalid origin pattern {value:?}"))
    }
}

impl From<OriginPattern> for String {
    fn from(p: OriginPattern) -> String {
        p.0
    }
}

impl OriginPattern {
    /// Validates `example.com` or `*.example.com` (lower-case host names).
    pub fn new(text: &str) -> Option<Self> {
        let host = text.strip_prefix("*.").unwrap_or(text);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        valid.then(|| Self(text.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches_host(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            // `*.example.com` covers subdomains, not `example.com` itself.
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => host == self.0,
        }
    }
}

/// The host of an `Origin` or `Referer` value (`https://app.example.com:8443/path` →
/// `app.example.com`), lower-cased.
pub fn origin_host(value: &str) -> Option<String> {
    let rest = value.split_once("://").map_or(value, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_once(']').map(|(h, _)| &h[1..])?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// True if the allowlist is empty or the origin's host matches one pattern. A restricted key
/// used without an origin is refused.
pub fn origin_allowed(allowlist: &[OriginPattern], origin: Option<&str>) -> bool {
    if allowlist.is_empty() {
        return true;
    }
    match origin.and_then(origin_host) {
        Some(host) => allowlist.iter().any(|p| p.matches_host(&host)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_v4_and_v6() {
        let list: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
            .iter()
            .map(|c| parse_cidr(c).unwrap())
            .collect();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(ip_allowed(&list, ip("10.1.2.3")));
        assert!(ip_allowed(&list, ip("192.0.2.7")));
        assert!(!ip_allowed(&list, ip("192.0.2.8")));
        assert!(ip_allowed(&list, ip("2001:db8::1")));
        assert!(!ip_allowed(&list, ip("2001:db9::1")));
        assert!(ip_allowed(&list, ip("::ffff:10.9.9.9")), "IPv4-mapped IPv6");
        assert!(!ip_allowed(&list, None), "fails closed");
        assert!(ip_allowed(&[], None));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nonsense").is_none());
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    /// Found by the `binding` fuzz target: an allowlist entry written as an IPv4-mapped IPv6
    /// address or block never matched, not even its own address.
    #[test]
    fn fuzz_binding_ipv4_mapped_entry_matches_its_address() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let single = parse_cidr("::ffff:192.0.2.7").unwrap();
        assert_eq!(single.to_string(), "192.0.2.7/32");
        assert!(ip_allowed(&[single], ip("::ffff:192.0.2.7")));
        assert!(ip_allowed(&[single], ip("192.0.2.7")));
        assert!(!ip_allowed(&[single], ip("192.0.2.8")));
        let block = parse_cidr("::ffff:192.0.2.0/120").unwrap();
        assert_eq!(block.to_string(), "192.0.2.0/24");
        assert!(ip_allowed(&[block], ip("192.0.2.200")));
        // Wider than the mapped range: stays an IPv6 block.
        assert_eq!(
            parse_cidr("::ffff:0:0/95").unwrap().to_string(),
            "::fffe:0:0/95"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let list = vec![
            OriginPattern::new("app.example.com").unwrap(),
            OriginPattern::new("*.partner.io").unwrap(),
        ];
        assert!(origin_allowed(&list, Some("https://app.example.com")));
        assert!(origin_allowed(
            &list,
            Some("https://APP.example.com:8443/x?y")
        ));
        assert!(!origin_allowed(&list, Some("https://evil.app.example.com")));
        assert!(origin_allowed(&list, Some("https://a.b.partner.io/page")));
        assert!(!origin_allowed(&list, Some("https://partner.io")));
        assert!(!origin_allowed(&list, Some("https://evilpartner.io")));
        assert!(!origin_allowed(&list, Some("https://partner.io.evil.com")));
        assert!(!origin_allowed(&list, None));
        assert!(!origin_allowed(&list, Some("null")));
        assert!(OriginPattern::new("Example.com").is_none());
        assert!(OriginPattern::new("*.").is_none());
        assert!(OriginPattern::new("a..b").is_none());
    }
}
