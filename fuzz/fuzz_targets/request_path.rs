//! The request-path normaliser (issue 10, finding 1): `keyward_core::path::normalize` and
//! `normalize_target`, with gateway prefixes (`longest_prefix`, what `choose_route` does) and key
//! allowlists (`route_allowed`). Input lines (bytes, split on `\n`): a request path, a method,
//! then gateway prefixes (`/x`, or `!/x` for a case-sensitive one) and allowlist patterns
//! (`METHOD /glob`).
//!
//! The oracle: every spelling of a path that a server reads as the same path chooses the same
//! route and gets the same allowlist answer, and what is refused stays refused. Spellings tried:
//! the normal form itself (normalising is a fixed point), an unreserved character
//! percent-encoded, escapes in lower-case hex, the query string appended, and (where every
//! prefix ignores case) the whole path in upper case for the route choice. Beyond that, a
//! normal form never holds what the normaliser exists to refuse: dot or empty segments, `\`,
//! control characters, `%2F`, `%5C`, `%2E`, `%25`+hex, or an escape in lower-case hex.

#![no_main]

use keyward_core::path::{
    MAX_PATH_BYTES, NormalPath, PathOptions, PathPrefix, longest_prefix, normalize,
    normalize_target,
};
use keyward_core::route::{RoutePattern, route_allowed};
use libfuzzer_sys::fuzz_target;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The first unreserved character that is not part of a `%XX` escape.
fn unescaped_unreserved(raw: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            i += 3;
        } else if is_unreserved(raw[i]) {
            return Some(i);
        } else {
            i += 1;
        }
    }
    None
}

/// What must never be in a normal form.
fn check_normal_form(n: &NormalPath) {
    let text = n.as_str();
    let bytes = text.as_bytes();
    assert!(text.starts_with('/'), "{text:?}");
    assert!(bytes.len() <= 3 * MAX_PATH_BYTES, "{} bytes", bytes.len());
    assert!(
        !bytes.iter().any(|&b| b < 0x20 || b >= 0x7f || b == b'\\'),
        "{text:?} has a control, non-ASCII or backslash byte"
    );
    let body = text.strip_suffix('/').unwrap_or(text);
    for segment in body.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or_default();
        assert!(
            !matches!(name, "" | "." | ".."),
            "{text:?} has a dot or empty segment"
        );
    }
    for (i, _) in text.match_indices('%') {
        let hex = &bytes[i + 1..(i + 3).min(bytes.len())];
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{text:?}: an escape that is not upper-case hex"
        );
        let escaped = &text[i..i + 3];
        assert!(
            !matches!(escaped, "%2F" | "%5C" | "%2E" | "%00" | "%3B"),
            "{text:?} keeps {escaped}"
        );
        let decoded = u8::from_str_radix(&escaped[1..], 16).unwrap_or_default();
        assert!(
            !is_unreserved(decoded),
            "{text:?}: an unreserved character stayed encoded"
        );
        if escaped == "%25" {
            let next = &bytes[i + 3..(i + 5).min(bytes.len())];
            assert!(
                !(next.len() == 2 && next.iter().all(u8::is_ascii_hexdigit)),
                "{text:?} is double-encoded"
            );
        }
    }
}

/// The route chosen and the allowlist answer for a normalised path.
fn decision(
    prefixes: &[PathPrefix],
    patterns: &[RoutePattern],
    method: &str,
    path: &NormalPath,
) -> (Option<usize>, bool) {
    let chosen = longest_prefix(prefixes, path, |p| p).map(|p| {
        prefixes
            .iter()
            .position(|q| std::ptr::eq(p, q))
            .unwrap_or(usize::MAX)
    });
    (chosen, route_allowed(patterns, Some(method), Some(path)))
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let raw = lines.next().unwrap_or_default();
    let method = lines
        .next()
        .and_then(|m| std::str::from_utf8(m).ok())
        .filter(|m| !m.is_empty())
        .unwrap_or("GET");
    let mut prefixes = Vec::new();
    let mut patterns = Vec::new();
    for line in lines.take(16) {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix('!') {
            prefixes.extend(PathPrefix::new(rest, true).ok());
        } else if line.starts_with('/') {
            prefixes.extend(PathPrefix::new(line, false).ok());
        } else {
            patterns.extend(RoutePattern::new(line).ok());
        }
    }
    let all_insensitive = prefixes.iter().all(|p| !p.is_case_sensitive());

    for options in [
        PathOptions::default(),
        PathOptions {
            allow_path_params: true,
        },
    ] {
        let normal = normalize(raw, options);

        // The query never changes the path part.
        let mut target = raw.to_vec();
        target.extend_from_slice(b"?a=%2F..&b=/x");
        if !raw.contains(&b'?') && !raw.contains(&b'#') {
            assert_eq!(normalize_target(&target, options), normal);
        }

        // An unreserved character percent-encoded is the same path.
        if let Some(at) = unescaped_unreserved(raw) {
            let mut encoded = raw[..at].to_vec();
            encoded.extend_from_slice(format!("%{:02X}", raw[at]).as_bytes());
            encoded.extend_from_slice(&raw[at + 1..]);
            if encoded.len() <= MAX_PATH_BYTES {
                let other = normalize(&encoded, options);
                assert_eq!(
                    other.as_ref().ok(),
                    normal.as_ref().ok(),
                    "encoding {:?} changed the normal form",
                    raw[at] as char
                );
                assert_eq!(other.is_ok(), normal.is_ok());
            }
        }

        // Hex case in escapes does not matter.
        let lower: Vec<u8> = {
            let mut out = raw.to_vec();
            let mut i = 0;
            while i < out.len() {
                if out[i] == b'%' && i + 2 < out.len() {
                    out[i + 1] = out[i + 1].to_ascii_lowercase();
                    out[i + 2] = out[i + 2].to_ascii_lowercase();
                    i += 3;
                } else {
                    i += 1;
                }
            }
            out
        };
        assert_eq!(
            normalize(&lower, options),
            normal,
            "hex case changed the result"
        );

        let Ok(n) = normal else {
            continue;
        };
        check_normal_form(&n);
        assert!(n.segments().count() <= keyward_core::path::MAX_SEGMENTS);

        // Normalising is a fixed point: forwarding the normal form upstream and checking it
        // again gives the same route and answer.
        let again = normalize(n.as_str().as_bytes(), options)
            .unwrap_or_else(|e| panic!("the normal form {n:?} is refused: {e}"));
        assert_eq!(again, n);
        let decided = decision(&prefixes, &patterns, method, &n);
        assert_eq!(decision(&prefixes, &patterns, method, &again), decided);

        // Case cannot walk around a route that ignores case.
        if all_insensitive {
            if let Ok(upper) = normalize(&raw.to_ascii_uppercase(), options) {
                assert_eq!(
                    decision(&prefixes, &patterns, method, &upper).0,
                    decided.0,
                    "upper case chose another route"
                );
            }
        }
    }
});
