//! Bindings: CIDR blocks (`parse_cidr`, `ip_allowed`) and origins (`OriginPattern::new`,
//! `origin_host`, `origin_allowed`). Input lines: a CIDR, an address, an origin pattern, an
//! `Origin` header value.
//!
//! Oracles: a parsed block is truncated to its network, contains its first and last address
//! (outside the IPv4-mapped range; an IPv4 block also as IPv4-mapped IPv6), reparses from its
//! display form and refuses a missing address; an address is admitted by its own entry, whatever
//! its form; an exact origin pattern admits its own host in any case and with any port;
//! `*.example.com` admits subdomains but not `example.com`; patterns round-trip through JSON;
//! `origin_host` gives a non-empty lower-case host; empty allowlists admit everything.

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
        // An IPv4-mapped address is an IPv4 caller: IPv6 blocks do not cover it (`::/0` means
        // every IPv6 caller), so only the ends outside the mapped range must pass.
        for end in [net.network(), net.broadcast()] {
            let mapped = matches!(end, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
            assert!(
                mapped || ip_allowed(&list, Some(end)),
                "{net} refused {end}"
            );
        }
        assert!(!ip_allowed(&list, None), "a missing address passed {net}");
        if let IpNet::V4(v4) = net {
            let mapped = IpAddr::V6(v4.network().to_ipv6_mapped());
            assert!(
                ip_allowed(&list, Some(mapped)),
                "mapped address refused by {net}"
            );
        }
        let _ = ip_allowed(&list, address);
    }
    if let Some(ip) = address {
        // The address as an entry of its own admits it, whatever its form (IPv4-mapped
        // entries were dead before `parse_cidr` turned them into IPv4 blocks).
        let own = parse_cidr(&ip.to_string()).expect("an address is a block");
        assert!(
            ip_allowed(&[own], Some(ip)),
            "{ip} refused by its own entry {own}"
        );
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
