//! Per-key endpoint allowlists: `METHOD /path/glob`.
//!
//! `METHOD` is an HTTP method name in upper case or `*` for any method. The path is matched
//! segment by segment:
//! - a literal segment matches itself;
//! - `*` inside a segment matches any run of characters within that segment
//!   (`/v1/orders/*` matches `/v1/orders/42`, not `/v1/orders/42/items`; `/files/*.pdf` works);
//! - a whole segment `**` matches zero or more segments (`/v1/orders/**`).
//!
//! Patterns and request paths are both in the normal form of [`crate::path`]: a request path
//! that cannot be normalised never reaches a match (the edges refuse it), and a pattern's path
//! is normalised when it is parsed, so `/caf%c3%a9` and `/café` are the same pattern.
//! Matching takes a path split once ([`NormalPath`]) and allocates nothing.
//!
//! **Case is compared exactly.** An allowlist only grants, so the safe error is to refuse: a
//! path that differs from a listed one only in case is not listed. On a case-insensitive
//! upstream that refuses a spelling the key could have used (the client should use the listed
//! one); matching case-insensitively would instead grant, on a case-sensitive upstream, paths
//! the allowlist never named. (Gateway routes take the other side for the same reason, see
//! [`crate::path::PathPrefix`]: there a more specific route is the stricter one.)

use std::fmt;

use crate::path::{NormalPath, PathError, PathOptions, normalize};

/// Longest accepted route pattern, in bytes.
pub const MAX_ROUTE_LEN: usize = 256;

/// A validated route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    method: Option<String>,
    segments: Vec<PatternSegment>,
    /// False only for a stored pattern that today's rules refuse: it matches nothing.
    matchable: bool,
}

/// One segment of a pattern, split at parse time so matching allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    /// `**`: any run of segments.
    AnySegments,
    /// A segment without `*`.
    Literal(String),
    /// A segment with `*`: the literal parts between the stars (at least two, possibly empty).
    Glob(Vec<String>),
}

/// Why a route pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {value:?}: {reason}")]
pub struct InvalidRoute {
    /// The rejected text.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RoutePattern {
    /// Parses `METHOD /path/glob`.
    pub fn new(text: &str) -> Result<Self, InvalidRoute> {
        let invalid = |reason: &str| InvalidRoute {
            value: text.chars().take(MAX_ROUTE_LEN).collect(),
            reason: reason.to_owned(),
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
        let normal = normalize(path.as_bytes(), PathOptions::default()).map_err(|e| match e {
            PathError::InvalidCharacter | PathError::ControlCharacter => {
                invalid("the path must not contain whitespace, control characters, '#' or '?'")
            }
            PathError::NotAbsolute => invalid("the path must start with '/'"),
            PathError::EmptySegment | PathError::DotSegment => {
                invalid("the path must not contain empty, '.' or '..' segments")
            }
            other => invalid(&other.to_string()),
        })?;
        if normal.has_trailing_slash() {
            return Err(invalid(
                "the path must not end with '/' (a trailing slash is ignored in matching)",
            ));
        }
        let segments = normal
            .segments()
            .map(|s| match s {
                "**" => Ok(PatternSegment::AnySegments),
                s if s.contains("**") => Err(invalid("'**' must be a whole segment")),
                s if s.contains('*') => Ok(PatternSegment::Glob(
                    s.split('*').map(str::to_owned).collect(),
                )),
                s => Ok(PatternSegment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            method,
            segments,
            matchable: true,
        })
    }

    /// A pattern read back from the store. One that today's rules refuse (stored before they
    /// were tightened, e.g. with `;`) is kept, so the key still loads, but matches nothing:
    /// a request path with such a segment is refused at the edge anyway.
    pub fn from_stored(text: &str) -> Self {
        Self::new(text).unwrap_or_else(|_| Self {
            text: text.to_owned(),
            method: None,
            segments: Vec::new(),
            matchable: false,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if a request with `method` and the normalised `path` is allowed by this pattern.
    pub fn matches(&self, method: &str, path: &NormalPath) -> bool {
        self.matchable
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && match_segments(&self.segments, path)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Matches path segments against pattern segments where `**` stands for any run of segments.
///
/// The classic wildcard algorithm: on a mismatch, backtrack only to the most recent `**` and let
/// it absorb one more segment. Work is bounded by pattern length × path length, whatever the
/// number of `**` (a recursive search is exponential in it, which a hostile path could exploit).
fn match_segments(pattern: &[PatternSegment], path: &NormalPath) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while let Some(segment) = path.segment(s) {
        match pattern.get(p) {
            Some(PatternSegment::AnySegments) => {
                resume = Some((p + 1, s));
                p += 1;
            }
            Some(seg) if match_one(seg, segment) => {
                p += 1;
                s += 1;
            }
            _ => match resume {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    s = absorbed + 1;
                    resume = Some((after_star, absorbed + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|seg| *seg == PatternSegment::AnySegments))
}

/// Matches one segment, where a glob's `*` stands for any run of characters.
fn match_one(pattern: &PatternSegment, text: &str) -> bool {
    let parts = match pattern {
        PatternSegment::AnySegments => return true,
        PatternSegment::Literal(literal) => return literal == text,
        PatternSegment::Glob(parts) => parts,
    };
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if text.len() < first.len() + last.len()
        || !text.starts_with(first.as_str())
        || !text.ends_with(last.as_str())
    {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part.as_str()) {
            Some(i) => middle = &middle[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// True if `routes` is empty (no restriction) or one of them allows the request.
///
/// A key restricted to routes is refused when the caller does not say which route it is
/// calling: an allowlist fails closed. The path is normalised and split once by the caller,
/// then matched against every pattern.
pub fn route_allowed(
    routes: &[RoutePattern],
    method: Option<&str>,
    path: Option<&NormalPath>,
) -> bool {
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

    fn path(p: &str) -> NormalPath {
        normalize(p.as_bytes(), PathOptions::default()).unwrap()
    }

    fn check(pattern: &str, method: &str, request: &str, expected: bool) {
        let p = RoutePattern::new(pattern).unwrap();
        assert_eq!(
            p.matches(method, &path(request)),
            expected,
            "{pattern} vs {method} {request}"
        );
    }

    #[test]
    fn single_segment_wildcards() {
        check("GET /v1/orders/*", "GET", "/v1/orders/42", true);
        check("GET /v1/orders/*", "get", "/v1/orders/42", true);
        check("GET /v1/orders/*", "POST", "/v1/orders/42", false);
        check("GET /v1/orders/*", "GET", "/v1/orders/42/items", false);
        check("GET /v1/orders/*", "GET", "/v1/orders", false);
        check("* /files/*.pdf", "DELETE", "/files/report.pdf", true);
        check("* /files/*.pdf", "GET", "/files/report.txt", false);
        check("GET /a/x*y*z", "GET", "/a/x1y2z", true);
        check("GET /a/x*y*z", "GET", "/a/xz", false);
        check("GET /a/x*x", "GET", "/a/x", false);
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
        let long = format!("/{}", vec!["a"; crate::path::MAX_SEGMENTS - 1].join("/"));
        assert!(!p.matches("GET", &path(&long)));
        assert!(p.matches("GET", &path(&format!("{long}/x"))));
        check("GET /a/**/b/**/c", "GET", "/a/b/c", true);
        check("GET /a/**/b/**/c", "GET", "/a/1/b/2/3/c", true);
        check("GET /a/**/b/**/c", "GET", "/a/1/c/2/b", false);
        check("GET /**", "GET", "/", true);
    }

    #[test]
    fn finding_1_allowlists_match_the_normal_form() {
        // Percent-encoded unreserved characters are the characters themselves, in the pattern
        // and in the path; other escapes compare with upper-case hex.
        check("GET /orders/admin/*", "GET", "/orders/%61dmin/users", true);
        check("GET /orders/%61dmin/*", "GET", "/orders/admin/users", true);
        check("GET /caf%c3%a9/*", "GET", "/caf\u{e9}/x", true);
        check("GET /caf\u{e9}/*", "GET", "/caf%C3%A9/x", true);
        // A trailing slash is ignored: `/orders/` is `/orders`, not a segment `*` matches.
        check("GET /orders", "GET", "/orders/", true);
        check("GET /orders/*", "GET", "/orders/", false);
    }

    #[test]
    fn finding_1_allowlists_compare_case_exactly() {
        // Allowlists grant: a spelling that is not listed is refused, never granted.
        check("GET /public/*", "GET", "/public/x", true);
        check("GET /public/*", "GET", "/PUBLIC/x", false);
        check("GET /files/*.pdf", "GET", "/files/a.PDF", false);
    }

    #[test]
    fn finding_1_path_parameters_match_by_segment_name() {
        // On a route that accepts parameters, `admin;x` is the segment `admin`.
        let with_params = normalize(
            b"/orders/admin;x/users",
            PathOptions {
                allow_path_params: true,
            },
        )
        .unwrap();
        let p = RoutePattern::new("GET /orders/admin/*").unwrap();
        assert!(p.matches("GET", &with_params));
        let public = RoutePattern::new("GET /public/**").unwrap();
        assert!(!public.matches("GET", &with_params));
    }

    #[test]
    fn finding_13_one_split_path_is_matched_against_every_pattern() {
        // The path is normalised and split once; each of 64 patterns then walks the same
        // segments (the signature takes a `NormalPath`, so no pattern can re-split it).
        let routes: Vec<RoutePattern> = (0..64)
            .map(|i| RoutePattern::new(&format!("GET /r{i}/**/end")).unwrap())
            .collect();
        let deep = format!("/r63/{}/end", vec!["seg"; 120].join("/"));
        let split = path(&deep);
        assert_eq!(split.len(), 122);
        assert!(route_allowed(&routes, Some("GET"), Some(&split)));
        assert!(!route_allowed(
            &routes,
            Some("GET"),
            Some(&path("/r64/end"))
        ));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in [
            "/v1/orders",
            "get /v1",
            "GET v1",
            "GET /v1//x",
            "GET /a/../b",
            "GET /a/%2e%2e/b",
            "GET /a/b**",
            "GET /a b",
            "GET /a;b",
            "GET /a%2Fb",
            "GET /a\\b",
            "GET /a/",
            "GET /a/%zz",
        ] {
            assert!(RoutePattern::new(bad).is_err(), "{bad}");
        }
        assert!(RoutePattern::new(&format!("GET /{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn stored_patterns_that_todays_rules_refuse_load_but_match_nothing() {
        let old = RoutePattern::from_stored("GET /a;b/*");
        assert_eq!(old.as_str(), "GET /a;b/*");
        let params = normalize(
            b"/a;b/x",
            PathOptions {
                allow_path_params: true,
            },
        )
        .unwrap();
        assert!(!old.matches("GET", &params));
        assert!(!old.matches("GET", &path("/a/x")));
        assert_eq!(
            RoutePattern::from_stored("GET /v1/*"),
            RoutePattern::new("GET /v1/*").unwrap()
        );
    }

    #[test]
    fn empty_allowlist_allows_and_restricted_key_needs_a_route() {
        assert!(route_allowed(&[], None, None));
        let routes = vec![RoutePattern::new("GET /v1/*").unwrap()];
        assert!(!route_allowed(&routes, None, None));
        assert!(!route_allowed(&routes, Some("GET"), None));
        assert!(route_allowed(&routes, Some("GET"), Some(&path("/v1/x"))));
    }
}
