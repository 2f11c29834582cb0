//! Route allowlist patterns: `RoutePattern::new`, `matches` and `route_allowed`, on request
//! paths normalised by `keyward_core::path::normalize` (as every edge does before it checks an
//! allowlist). Input lines: a pattern, a method, a path, then more patterns for the list.
//!
//! Oracles: a pattern keeps its text; a path that cannot be normalised matches nothing (there is
//! no `NormalPath` to match: fail closed by construction); method case and the query string do
//! not change a match; a literal pattern of plain characters matches its own path; `* /**`
//! matches every (short) normalised path; `route_allowed` is "empty list, or any pattern
//! matches", and refuses a restricted key when the method or path is not given. The
//! normaliser's own oracles are in the `request_path` target.

#![no_main]

use keyward_core::path::{PathOptions, normalize, normalize_target};
use keyward_core::route::{RoutePattern, route_allowed};
use libfuzzer_sys::fuzz_target;

/// Paths up to this long get the positive oracles; longer ones may meet a length cap at the edge.
const SHORT_PATH: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some(lines) = keyward_fuzz::lines(data) else {
        return;
    };
    let text = lines.first().copied().unwrap_or_default();
    let method = lines.get(1).copied().unwrap_or("GET");
    let path = lines.get(2).copied().unwrap_or("/");
    let normal = normalize(path.as_bytes(), PathOptions::default()).ok();

    let mut routes = Vec::new();
    if let Ok(route) = RoutePattern::new(text) {
        assert_eq!(route.as_str(), text);
        assert_eq!(route.to_string(), text);
        if let Some(n) = &normal {
            let matched = route.matches(method, n);
            assert_eq!(matched, route.matches(&method.to_ascii_lowercase(), n));
            assert_eq!(matched, route.matches(&method.to_ascii_uppercase(), n));
            let target = format!("{path}?a=1&b=/x");
            if let Ok(with_query) = normalize_target(target.as_bytes(), PathOptions::default()) {
                assert_eq!(matched, route.matches(method, &with_query));
            }
        }
        let (pattern_method, pattern_path) =
            text.split_once(' ').expect("a valid pattern has a space");
        let plain = pattern_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
        if plain && let Ok(own) = normalize(pattern_path.as_bytes(), PathOptions::default()) {
            let method = if pattern_method == "*" {
                "DELETE"
            } else {
                pattern_method
            };
            assert!(
                route.matches(method, &own),
                "{text:?} does not match its own path"
            );
        }
        routes.push(route);
    }
    routes.extend(
        lines
            .iter()
            .skip(3)
            .filter_map(|l| RoutePattern::new(l).ok()),
    );

    let everything = RoutePattern::new("* /**").expect("a valid pattern");
    if let Some(n) = &normal
        && path.len() <= SHORT_PATH
    {
        assert!(everything.matches(method, n), "'* /**' on {path:?}");
    }

    assert!(route_allowed(&[], Some(method), normal.as_ref()));
    assert!(route_allowed(&[], None, None));
    if let Some(n) = &normal {
        let allowed = route_allowed(&routes, Some(method), Some(n));
        assert_eq!(
            allowed,
            routes.is_empty() || routes.iter().any(|r| r.matches(method, n))
        );
    }
    if !routes.is_empty() {
        assert!(!route_allowed(&routes, None, normal.as_ref()));
        assert!(!route_allowed(&routes, Some(method), None));
    }
});
