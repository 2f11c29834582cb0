//! Per-key endpoint allowlists: `METHOD /path/glob`.
//!
//! `METHOD` is an HTTP method name in upper case or `*` for any method. The path is matched
//! segment by segment:
//! - a literal segment matches itself;
//! - `*` inside a segment matches any run of characters within that segment
//!   (`/v1/orders/*` matches `/v1/orders/42`, not `/v1/orders/42/items`; `/files/*.pdf` works);
//! - a whole segment `**` matches zero or more segments (`/v1/orders/**`).
//!
//! Request paths are checked strictly, failing closed: the query string is ignored, and a path
//! that is not absolute or that contains empty, `.` or `..` segments or percent-encoded `/`,
//! `\` or `.` never matches, so an allowlist cannot be bypassed with a path a proxy would
//! normalise differently.

use std::fmt;

/// Longest accepted route pattern, in bytes.
pub const MAX_ROUTE_LEN: usize = 256;

/// A validated route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    method: Option<String>,
    segments: Vec<String>,
}

/// Why a route pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {value:?}: {reason}")]
pub struct InvalidRoute {
    /// The rejected text.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl RoutePattern {
    /// Parses `METHOD /path/glob`.
    pub fn new(text: &str) -> Result<Self, InvalidRoute> {
        let invalid = |reason| InvalidRoute {
            value: text.chars().take(MAX_ROUTE_LEN).collect(),
            reason,
        };
        if text.len() > MAX_ROUTE_LEN {
            return Err(invalid("it is longer than 256 bytes"));
        }
        let (method, path) = text
            .split_once(' ')
            .ok_or_else(|| invalid("expected 'METHOD /path', e.g. 'GET /v1/orders/*'"))?;
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(m.to_owned()),
            _ => return Err(invalid("the method must be upper-case letters or '*'")),
        };
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| invalid("the path must start with '/'"))?;
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the path must not contain whitespace"));
        }
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').map(str::to_owned).collect()
        };
        if segments
            .iter()
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid(
                "the path must not contain empty, '.' or '..' segments",
            ));
        }
        if segments.iter().any(|s| s.contains("**") && s != "**") {
            return Err(invalid("'**' must be a whole segment"));
        }
        Ok(Self {
            text: text.to_owned(),
            method,
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if a request with `method` and `path` is allowed by this pattern.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self
            .method
            .as_ref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        match request_segments(path) {
            Some(segments) => match_segments(&self.segments, &segments),
            None => false,
        }
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// True if `path` (without its query) is absolute and has no empty, `.` or `..` segments and
/// no percent-encoded `/`, `\` or `.`: the paths route allowlists accept.
pub fn is_canonical_path(path: &str) -> bool {
    request_segments(path).is_some()
}

/// Splits a request path into segments, or `None` if it is not in canonical form.
fn request_segments(path: &str) -> Option<Vec<&str>> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path.strip_prefix('/')?;
    let lower = rest.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e"].iter().any(|enc| lower.contains(enc)) || rest.contains('\\') {
        return None;
    }
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return None;
    }
    Some(segments)
}

/// Matches path segments against pattern segments where `**` stands for any run of segments.
///
/// The classic wildcard algorithm: on a mismatch, backtrack only to the most recent `**` and let
/// it absorb one more segment. Work is bounded by pattern length × path length, whatever the
/// number of `**` (a recursive search is exponential in it, which a hostile path could exploit).
fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while s < path.len() {
        if pattern.get(p).is_some_and(|seg| seg == "**") {
            resume = Some((p + 1, s));
            p += 1;
        } else if pattern.get(p).is_some_and(|seg| match_glob(seg, path[s])) {
            p += 1;
            s += 1;
        } else if let Some((after_star, absorbed)) = resume {
            p = after_star;
            s = absorbed + 1;
            resume = Some((after_star, absorbed + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|seg| seg == "**")
}

/// Matches one segment against a pattern where `*` stands for any run of characters.
fn match_glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(i) => middle = &middle[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// True if `routes` is empty (no restriction) or one of them allows the request.
///
/// A key restricted to routes is refused when the caller does not say which route it is
/// calling: an allowlist fails closed.
pub fn route_allowed(routes: &[RoutePattern], method: Option<&str>, path: Option<&str>) -> bool {
    if routes.is_empty() {
        return true;
    }
    match (method, path) {
        (Some(m), Some(p)) => routes.iter().any(|r| r.matches(m, p)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, method: &str, path: &str, expected: bool) {
        let p = RoutePattern::new(pattern).unwrap();
        assert_eq!(
            p.matches(method, path),
            expected,
            "{pattern} vs {method} {path}"
        );
    }

    #[test]
    fn single_segment_wildcards() {
        check("GET /v1/orders/*", "GET", "/v1/orders/42", true);
        check("GET /v1/orders/*", "get", "/v1/orders/42", true);
        check("GET /v1/orders/*", "POST", "/v1/orders/42", false);
        check("GET /v1/orders/*", "GET", "/v1/orders/42/items", false);
        check("GET /v1/orders/*", "GET", "/v1/orders", false);
        check("GET /v1/orders/*", "GET", "/v1/orders/42?expand=1", true);
        check("* /files/*.pdf", "DELETE", "/files/report.pdf", true);
        check("* /files/*.pdf", "GET", "/files/report.txt", false);
        check("GET /a/x*y*z", "GET", "/a/x1y2z", true);
        check("GET /a/x*y*z", "GET", "/a/xz", false);
        check("GET /", "GET", "/", true);
    }

    #[test]
    fn double_star_spans_segments() {
        check("GET /v1/orders/**", "GET", "/v1/orders", true);
        check("GET /v1/orders/**", "GET", "/v1/orders/1/items/2", true);
        check("GET /v1/**/items", "GET", "/v1/orders/1/items", true);
        check("GET /v1/**/items", "GET", "/v1/orders/1/other", false);
    }

    #[test]
    fn many_double_stars_against_a_long_path_stay_cheap() {
        // Regression: a recursive matcher took time exponential in the number of `**`.
        let pattern = format!("GET /{}/x", vec!["**"; 40].join("/"));
        let p = RoutePattern::new(&pattern).unwrap();
        let path = format!("/{}", vec!["a"; 5000].join("/"));
        assert!(!p.matches("GET", &path));
        assert!(p.matches("GET", &format!("{path}/x")));
        check("GET /a/**/b/**/c", "GET", "/a/b/c", true);
        check("GET /a/**/b/**/c", "GET", "/a/1/b/2/3/c", true);
        check("GET /a/**/b/**/c", "GET", "/a/1/c/2/b", false);
        check("GET /**", "GET", "/", true);
    }

    #[test]
    fn non_canonical_paths_never_match() {
        for path in [
            "/v1/orders/../admin",
            "/v1/orders/./42",
            "/v1//orders/42",
            "/v1/orders%2F42",
            "/v1/orders/%2e%2e",
            "v1/orders/42",
            "/v1/orders/42\\x",
        ] {
            check("* /v1/**", "GET", path, false);
        }
        check("GET /v1/orders/*", "GET", "/v1/orders/..", false);
    }

    #[test]
    fn canonical_paths() {
        assert!(is_canonical_path("/"));
        assert!(is_canonical_path("/orders/1?x=../y"));
        for bad in [
            "/orders/../admin",
            "//x",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a%2fb",
            "relative",
        ] {
            assert!(!is_canonical_path(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in [
            "/v1/orders",
            "get /v1",
            "GET v1",
            "GET /v1//x",
            "GET /a/../b",
            "GET /a/b**",
            "GET /a b",
        ] {
            assert!(RoutePattern::new(bad).is_err(), "{bad}");
        }
        assert!(RoutePattern::new(&format!("GET /{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn empty_allowlist_allows_and_restricted_key_needs_a_route() {
        assert!(route_allowed(&[], None, None));
        let routes = vec![RoutePattern::new("GET /v1/*").unwrap()];
        assert!(!route_allowed(&routes, None, None));
        assert!(!route_allowed(&routes, Some("GET"), None));
        assert!(route_allowed(&routes, Some("GET"), Some("/v1/x")));
    }
}
