//! Route allowlist patterns: `RoutePattern::new`, `matches`, `is_canonical_path` and
//! `route_allowed`. Input lines: a pattern, a method, a path, then more patterns for the list.
//!
//! Oracles: a pattern keeps its text; only canonical paths match (fail closed); method case and
//! the query string do not change a match; a literal pattern of plain characters matches its own
//! path; `* /**` matches every (short) canonical path; `route_allowed` is "empty list, or any
//! pattern matches", and refuses a restricted key when the method or path is not given.
//!
//! The path normaliser (issue 10, finding 1) gets its own target with the oracle "a path and its
//! normal form choose the same route and allowlist result" once it is merged.

#![no_main]

use keyward_core::route::{RoutePattern, is_canonical_path, route_allowed};
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
    let canonical = is_canonical_path(path);

    let mut routes = Vec::new();
    if let Ok(route) = RoutePattern::new(text) {
        assert_eq!(route.as_str(), text);
        assert_eq!(route.to_string(), text);
        let matched = route.matches(method, path);
        assert!(
            !matched || canonical,
            "{text:?} matched the non-canonical {path:?}"
        );
        assert_eq!(matched, route.matches(&method.to_ascii_lowercase(), path));
        assert_eq!(matched, route.matches(&method.to_ascii_uppercase(), path));
        if !path.contains('?') {
            assert_eq!(matched, route.matches(method, &format!("{path}?a=1&b=/x")));
        }
        let (pattern_method, pattern_path) =
            text.split_once(' ').expect("a valid pattern has a space");
        let plain = pattern_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
        if plain && is_canonical_path(pattern_path) {
            let method = if pattern_method == "*" {
                "DELETE"
            } else {
                pattern_method
            };
            assert!(
                route.matches(method, pattern_path),
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
    if path.len() <= SHORT_PATH {
        assert_eq!(
            everything.matches(method, path),
            canonical,
            "'* /**' on {path:?}"
        );
    }

    assert!(route_allowed(&[], Some(method), Some(path)));
    assert!(route_allowed(&[], None, None));
    let allowed = route_allowed(&routes, Some(method), Some(path));
    assert_eq!(
        allowed,
        routes.is_empty() || routes.iter().any(|r| r.matches(method, path))
    );
    if !routes.is_empty() {
        assert!(!route_allowed(&routes, None, Some(path)));
        assert!(!route_allowed(&routes, Some(method), None));
    }
});
