//! Bindings: CIDR blocks (`parse_cidr`, `ip_allowed`) and origins (`OriginPattern::new`,
//! `origin_host`, `origin_allowed`). Input lines: a CIDR, an address, an origin pattern, an
//! `Origin` header value.
//!
//! Oracles: a parsed block is truncated to its network, contains its first and last address
//! (also IPv4-mapped), reparses from its display form, and refuses a missing address; an exact
//! origin pattern admits its own host in any case and with any port; `*.example.com` admits
//! subdomains but not `example.com`; patterns round-trip through JSON; `origin_host` gives a
//! non-empty lower-case host; empty allowlists admit everything.

#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use keyward_core::binding::{OriginPattern, ip_allowed, origin_allowed, origin_host, parse_cidr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(lines) = keyward_fuzz::lines(data) else {
        return;
    };
    let field = |i: usize| lines.get(i).copied().unwrap_or_default();
    let (cidr, address, pattern, origin) = (field(0), field(1), field(2), field(3));

    let address = address.parse::<IpAddr>().ok();
    assert!(ip_allowed(&[], address));
    if let Some(net) = parse_cidr(cidr) {
        assert_eq!(net, net.trunc());
        assert_eq!(
            parse_cidr(&net.to_string()),
            Some(net),
            "{net} does not reparse"
        );
        let list = [net];
        assert!(ip_allowed(&list, Some(net.network())));
        assert!(ip_allowed(&list, Some(net.broadcast())));
        assert!(!ip_allowed(&list, None), "a missing address passed {net}");
        if let IpNet::V4(v4) = net {
            let mapped = IpAddr::V6(v4.network().to_ipv6_mapped());
            assert!(
                ip_allowed(&list, Some(mapped)),
                "mapped address refused by {net}"
            );
        }
        if let Some(ip) = address {
            let _ = ip_allowed(&list, Some(ip));
            assert!(ip_allowed(&[IpNet::from(ip)], Some(ip)));
        }
    }

    assert!(origin_allowed(&[], Some(origin)));
    assert!(origin_allowed(&[], None));
    if let Some(host) = origin_host(origin) {
        assert!(!host.is_empty());
        assert!(
            !host.bytes().any(|b| b.is_ascii_uppercase()),
            "{host:?} not lower-cased"
        );
    }
    if let Some(p) = OriginPattern::new(pattern) {
        assert_eq!(p.as_str(), pattern);
        let json = serde_json::to_string(&p).expect("a string serializes");
        let back: OriginPattern = serde_json::from_str(&json).expect("a pattern reparses");
        assert_eq!(back, p);
        let list = [p];
        let _ = origin_allowed(&list, Some(origin));
        assert!(!origin_allowed(&list, None));
        match pattern.strip_prefix("*.") {
            None => {
                for form in [
                    format!("https://{pattern}"),
                    format!("http://{}:8443/path?q", pattern.to_ascii_uppercase()),
                    pattern.to_owned(),
                ] {
                    assert!(
                        origin_allowed(&list, Some(&form)),
                        "{pattern:?} refused {form:?}"
                    );
                }
            }
            Some(suffix) => {
                let apex = format!("https://{suffix}");
                assert!(
                    !origin_allowed(&list, Some(&apex)),
                    "{pattern:?} admitted {apex:?}"
                );
                let sub = format!("https://api.{suffix}:443");
                assert!(
                    origin_allowed(&list, Some(&sub)),
                    "{pattern:?} refused {sub:?}"
                );
            }
        }
    }
});
