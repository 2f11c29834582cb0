//! The one request-path normaliser, and the prefix matching the gateway chooses routes with.
//!
//! Every edge (the gateway, `/v1/auth`, ext_authz, `POST /v1/keys/verify`) normalises the
//! request path here once, chooses routes and checks allowlists on the normal form, and the
//! gateway forwards exactly that form. A path and an upstream's reading of it can then only
//! differ in ways this module refuses, so no spelling of a path can reach another route's
//! endpoint than the one keyward checked.
//!
//! The normal form follows RFC 3986 section 6.2.2, made stricter where upstreams disagree:
//!
//! - percent-encoded characters that are allowed raw in a segment and mean the same to every
//!   server are decoded (the unreserved `A-Z a-z 0-9 - . _ ~` and also `: @ ! $ & ' ( ) , =`,
//!   so `/v1/users%3Asearch` cannot dodge a `/v1/users:search` route); every other
//!   percent-encoding keeps its escape with upper-case hex (`%c3%a9` becomes `%C3%A9`);
//! - raw bytes outside ASCII and raw `" < > [ ] ^ ` { | }` are percent-encoded, as a browser
//!   would send them;
//! - `+` and `*` stay as they are, raw or encoded (some servers read `+` as a space; `*` is the
//!   allowlist wildcard).
//!
//! Refused ([`PathError`]), because servers disagree about what they mean: a path that is not
//! absolute, longer than [`MAX_PATH_BYTES`] or with more than [`MAX_SEGMENTS`] segments; `;`
//! path parameters (raw `;` unless [`PathOptions::allow_path_params`]; `%3B` always); `%2F`;
//! `\` raw or encoded; `.` and `..` segments, also encoded (`%2e%2e`) or before a parameter
//! (`..;x`); empty segments (`//`); NUL and other control characters, raw or encoded; a raw
//! space, `#` or `?` (callers split the query off first, see [`split_query`]); a `%` not
//! followed by two hex digits; double encoding (`%25` followed by two hex digits); and
//! percent-encoded bytes that are not UTF-8 (overlong forms such as `%C0%AE` are read as `.`
//! by some decoders).
//!
//! One trailing slash is kept in the forwarded form but ignored for matching: `/orders/` is
//! matched as `/orders`, so a trailing slash can neither gain nor lose access.
//!
//! Case is kept. Gateway routes compare ASCII letters case-insensitively unless a route is
//! case-sensitive, and take `%2B` for `+` and `%2A` for `*` ([`PathPrefix`]); key allowlists
//! compare exactly ([`crate::route`]).
//!
//! ```
//! use keyward_core::path::{PathOptions, PathPrefix, longest_prefix, normalize};
//!
//! let path = normalize(b"/orders/%61dmin/users", PathOptions::default()).unwrap();
//! assert_eq!(path.as_str(), "/orders/admin/users");
//! let routes = [
//!     PathPrefix::new("/orders", false).unwrap(),
//!     PathPrefix::new("/orders/admin", false).unwrap(),
//! ];
//! let upper = normalize(b"/orders/ADMIN/users", PathOptions::default()).unwrap();
//! let chosen = longest_prefix(&routes, &upper, |p| p).unwrap();
//! assert_eq!(chosen.as_str(), "/orders/admin");
//! assert!(normalize(b"/orders/..;/admin", PathOptions::default()).is_err());
//! ```

use std::fmt;

/// Longest request path accepted, in bytes, before normalisation (the query not included).
pub const MAX_PATH_BYTES: usize = 4096;

/// Most segments a path may have. Real APIs use a handful; the cap bounds the work of
/// matching a path against allowlist patterns with `**`.
pub const MAX_SEGMENTS: usize = 128;

/// What a caller allows beyond the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Accept raw `;` path parameters (`/cars;color=red/1`). Matching then uses each segment's
    /// name, the part before its first `;`, and the forwarded form keeps the parameters. Only
    /// for upstreams known to read parameters; `%3B` is refused even then.
    pub allow_path_params: bool,
}

/// Why a path cannot be normalised safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_BYTES`].
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// The path has more than [`MAX_SEGMENTS`] segments.
    #[error("the path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// An empty segment (`//`), or a segment that is only path parameters (`/;x/`).
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    /// A `.` or `..` segment, raw, percent-encoded or before path parameters.
    #[error("the path has a '.' or '..' segment (also when percent-encoded)")]
    DotSegment,
    /// `%2F`: a `/` inside a segment, which some servers split on and others do not.
    #[error("the path has a percent-encoded '/' (%2F)")]
    EncodedSlash,
    /// `\` raw or as `%5C`, which some servers read as `/`.
    #[error("the path has a backslash (raw or %5C)")]
    Backslash,
    /// A raw `;` where path parameters are not allowed, or `%3B` anywhere.
    #[error("the path has a ';' path parameter (raw or %3B), which this route does not accept")]
    PathParameter,
    /// NUL or another control character, raw or percent-encoded.
    #[error("the path has a control character (raw or percent-encoded)")]
    ControlCharacter,
    /// A raw space, `#` or `?`.
    #[error("the path has a character that is not allowed raw in a path (space, '#' or '?')")]
    InvalidCharacter,
    /// `%` not followed by two hex digits.
    #[error("the path has a '%' not followed by two hex digits")]
    InvalidPercentEncoding,
    /// `%25` followed by two hex digits: an escape meant to survive one decoding.
    #[error("the path is double percent-encoded (%25 followed by hex digits)")]
    DoubleEncoding,
    /// Percent-encoded or raw bytes that are not UTF-8 (overlong forms included).
    #[error("the path's percent-encoded bytes are not UTF-8")]
    InvalidUtf8,
}

/// A path in normal form, split into segments once.
#[derive(Clone, PartialEq, Eq)]
pub struct NormalPath {
    text: String,
    segments: Vec<Segment>,
    trailing_slash: bool,
    has_params: bool,
}

/// Byte offsets of one segment in the normal text: `text[start..name_end]` is its name (before
/// any `;`), `text[start..end]` the whole segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u32,
    name_end: u32,
}

impl NormalPath {
    /// The normal form, as forwarded upstream.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many segments the path has (`/` has none; a trailing slash adds none).
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True for `/`.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The name of segment `i` (without its path parameters), the unit of every match.
    pub fn segment(&self, i: usize) -> Option<&str> {
        let s = self.segments.get(i)?;
        self.text.get(s.start as usize..s.name_end as usize)
    }

    /// Every segment's name, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.segments.len()).filter_map(|i| self.segment(i))
    }

    /// True if the path ends with `/` after at least one segment.
    pub fn has_trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// True if some segment carries `;` path parameters.
    pub fn has_params(&self) -> bool {
        self.has_params
    }
}

impl fmt::Debug for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NormalPath").field(&self.text).finish()
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits a request target into its path and query at the first `?`.
pub fn split_query(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// Normalises the path of a request target (`/a/b?query`), as `/v1/auth`'s `X-Original-URI`,
/// ext_authz's `path` and verify's `path` carry it. The query is not looked at.
pub fn normalize_target(target: &[u8], options: PathOptions) -> Result<NormalPath, PathError> {
    normalize(split_query(target).0, options)
}

/// Characters a percent-encoding is decoded to: allowed raw in a segment, and read the same
/// raw or encoded by every server. `;` (parameters), `+` (a space to some), `*` (the
/// allowlist wildcard), `/` and `%` are not among them.
fn decodes(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b','
                | b'='
        )
}

/// Characters kept raw in the normal form: the `pchar` of RFC 3986 less `;` and `%`, which
/// are handled on their own.
fn raw_allowed(b: u8) -> bool {
    decodes(b) || matches!(b, b'+' | b'*')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
}

/// Checks that the high bytes of a path, raw or percent-encoded, form UTF-8. Only called for
/// paths that have any, so a plain ASCII path costs nothing more.
fn decoded_is_utf8(bytes: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h << 4) | l);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Normalises a request path (without its query; see [`split_query`]).
pub fn normalize(path: &[u8], options: PathOptions) -> Result<NormalPath, PathError> {
    // Checked before anything is read: an oversized path costs nothing more.
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let Some((&b'/', rest)) = path.split_first() else {
        return Err(PathError::NotAbsolute);
    };
    // Bytes, all ASCII: raw bytes outside ASCII are escaped on the way in.
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 8);
    let mut segments = Vec::new();
    let mut trailing_slash = false;
    let mut has_params = false;
    let mut high_bytes = false;
    let mut i = 0;
    loop {
        // One segment: rest[i..] up to the next '/' or the end.
        out.push(b'/');
        let start = out.len();
        let mut name_end = None;
        while let Some(&b) = rest.get(i) {
            if b == b'/' {
                break;
            }
            i += 1;
            match b {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        rest.get(i).copied().and_then(hex),
                        rest.get(i + 1).copied().and_then(hex),
                    ) else {
                        return Err(PathError::InvalidPercentEncoding);
                    };
                    i += 2;
                    let v = (h << 4) | l;
                    match v {
                        b'/' => return Err(PathError::EncodedSlash),
                        b'\\' => return Err(PathError::Backslash),
                        b';' => return Err(PathError::PathParameter),
                        0..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                        v if decodes(v) => out.push(v),
                        v => {
                            high_bytes |= v >= 0x80;
                            push_escaped(&mut out, v);
                        }
                    }
                }
                b';' if options.allow_path_params => {
                    has_params = true;
                    name_end.get_or_insert(out.len());
                    out.push(b';');
                }
                b';' => return Err(PathError::PathParameter),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                b' ' | b'#' | b'?' => return Err(PathError::InvalidCharacter),
                b if raw_allowed(b) => out.push(b),
                b => {
                    high_bytes |= b >= 0x80;
                    push_escaped(&mut out, b);
                }
            }
        }
        let end = out.len();
        let name_end = name_end.unwrap_or(end);
        let at_end = i >= rest.len();
        if end == start {
            if at_end {
                // `/` itself, or one trailing slash after the last segment.
                out.pop();
                trailing_slash = !segments.is_empty();
                if trailing_slash {
                    out.push(b'/');
                }
                break;
            }
            return Err(PathError::EmptySegment);
        }
        match &out[start..name_end] {
            b"" => return Err(PathError::EmptySegment),
            b"." | b".." => return Err(PathError::DotSegment),
            _ => {}
        }
        if segments.len() == MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        // Offsets fit: the text is at most three times MAX_PATH_BYTES long.
        segments.push(Segment {
            start: u32::try_from(start).map_err(|_| PathError::TooLong)?,
            name_end: u32::try_from(name_end).map_err(|_| PathError::TooLong)?,
        });
        if at_end {
            break;
        }
        i += 1; // the '/'
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // Double encoding is checked on the output, not the input: `%25%36%31` decodes its
    // unreserved `%36%31` to `61`, so the normal form `%2561` would read as `a` to an upstream
    // that decodes twice, though no `%25` in the input was followed by two hex digits.
    if out
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoding);
    }
    if high_bytes && !decoded_is_utf8(&out) {
        return Err(PathError::InvalidUtf8);
    }
    // Always ASCII, so this never fails; the check is the price of no `unsafe`.
    let text = String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)?;
    Ok(NormalPath {
        text,
        segments,
        trailing_slash,
        has_params,
    })
}

/// A gateway route's path prefix, normalised, with how its case is compared.
///
/// A prefix matches a path whose first segments equal its segments, so `/orders` covers
/// `/orders` and `/orders/1` but not `/ordersx`. ASCII letters are compared
/// case-insensitively unless the prefix is case-sensitive: routes guard the paths under them,
/// so `/orders/ADMIN` must fall under an `/orders/admin` route on an upstream that ignores
/// case. Mark a route case-sensitive only for an upstream known to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    text: String,
    normal: NormalPath,
    case_sensitive: bool,
}

impl PathPrefix {
    /// Parses a configured prefix (a path, normalised like a request's; a trailing slash is
    /// ignored).
    pub fn new(prefix: &str, case_sensitive: bool) -> Result<Self, PathError> {
        Ok(Self {
            text: prefix.to_owned(),
            normal: normalize(prefix.as_bytes(), PathOptions::default())?,
            case_sensitive,
        })
    }

    /// The prefix as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The prefix in normal form.
    pub fn normal(&self) -> &NormalPath {
        &self.normal
    }

    /// True if letters are compared exactly.
    pub fn is_case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// True if `path` starts with this prefix, segment by segment (`%2B` and `+`, `%2A` and
    /// `*` compared as equal, see `same_segment`).
    pub fn matches(&self, path: &NormalPath) -> bool {
        path.len() >= self.normal.len()
            && self
                .normal
                .segments()
                .zip(path.segments())
                .all(|(p, s)| same_segment(p, s, !self.case_sensitive))
    }

    /// True if the two prefixes are the same path ignoring ASCII case: two such routes would
    /// make the choice depend on case or on their order, so a configuration refuses them.
    pub fn overlaps(&self, other: &PathPrefix) -> bool {
        self.normal.len() == other.normal.len()
            && self
                .normal
                .segments()
                .zip(other.normal.segments())
                .all(|(a, b)| same_segment(a, b, true))
    }
}

/// Compares two normal-form segments for route choice. The normal form keeps `%2B` and `%2A`
/// apart from `+` and `*` (some servers read a raw `+` as a space, and `*` is the allowlist
/// wildcard), but most upstreams decode them to `+` and `*`: if route choice told them apart,
/// `/files/a%2Bb` would fall under a `/files` route and reach `/files/a+b` without a
/// `/files/a+b` route's requirements. So here each is equal to its escape. Other escapes have
/// one spelling in the normal form (upper-case hex), so they compare byte by byte.
fn same_segment(a: &str, b: &str, fold_case: bool) -> bool {
    let same_byte = |x: u8, y: u8| {
        if fold_case {
            x.eq_ignore_ascii_case(&y)
        } else {
            x == y
        }
    };
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if !a.contains(&b'%') && !b.contains(&b'%') {
        return a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same_byte(x, y));
    }
    // One unit: `%2B` as `+`, `%2A` as `*`, any other byte as itself.
    let unit = |s: &[u8]| -> Option<(u8, usize)> {
        match s {
            [b'%', b'2', b'B', ..] => Some((b'+', 3)),
            [b'%', b'2', b'A', ..] => Some((b'*', 3)),
            [x, ..] => Some((*x, 1)),
            [] => None,
        }
    };
    let (mut i, mut j) = (0, 0);
    loop {
        match (unit(&a[i..]), unit(&b[j..])) {
            (None, None) => return true,
            (Some((x, n)), Some((y, m))) if same_byte(x, y) => {
                i += n;
                j += m;
            }
            _ => return false,
        }
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The item whose prefix matches `path` with the most segments (the first of equals), as the
/// gateway chooses its route. Pure, so a fuzz oracle can call it without a gateway.
pub fn longest_prefix<'a, T>(
    items: &'a [T],
    path: &NormalPath,
    prefix: impl Fn(&T) -> &PathPrefix,
) -> Option<&'a T> {
    let mut best: Option<(&T, usize)> = None;
    for item in items {
        let p = prefix(item);
        if p.matches(path) && best.is_none_or(|(_, len)| p.normal.len() > len) {
            best = Some((item, p.normal.len()));
        }
    }
    best.map(|(item, _)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path.as_bytes(), PathOptions::default()).map(|p| p.as_str().to_owned())
    }

    fn with_params(path: &str) -> Result<NormalPath, PathError> {
        normalize(
            path.as_bytes(),
            PathOptions {
                allow_path_params: true,
            },
        )
    }

    #[test]
    fn finding_1_equivalent_spellings_share_one_normal_form() {
        for (input, expected) in [
            ("/orders/%61dmin/users", "/orders/admin/users"),
            ("/orders/%41DMIN/users", "/orders/ADMIN/users"),
            ("/a/%7e%2D%2e%5F", "/a/~-._"),
            ("/v1/users%3asearch", "/v1/users:search"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/\u{e9}", "/a/%C3%A9"),
            ("/a/%2b+%2a*", "/a/%2B+%2A*"),
            ("/a/%20b", "/a/%20b"),
            ("/a/{x}|\"", "/a/%7Bx%7D%7C%22"),
            ("/", "/"),
            ("/orders/", "/orders/"),
            ("/...", "/..."),
            ("/a.b/.c/d.", "/a.b/.c/d."),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(expected), "{input}");
            // Idempotent: the normal form is its own normal form.
            assert_eq!(norm(expected).as_deref(), Ok(expected), "{expected}");
        }
    }

    #[test]
    fn finding_1_unsafe_paths_are_refused() {
        use PathError::*;
        for (input, error) in [
            ("", NotAbsolute),
            ("orders", NotAbsolute),
            ("*", NotAbsolute),
            ("http://h/x", NotAbsolute),
            ("//orders", EmptySegment),
            ("/orders//admin", EmptySegment),
            ("/orders//", EmptySegment),
            ("/orders/../admin", DotSegment),
            ("/orders/./admin", DotSegment),
            ("/orders/..", DotSegment),
            ("/orders/%2e%2e/admin", DotSegment),
            ("/orders/.%2E/admin", DotSegment),
            ("/orders/%2e", DotSegment),
            ("/orders/admin;x/users", PathParameter),
            ("/orders/..;/admin", PathParameter),
            ("/orders/admin%3bx", PathParameter),
            ("/orders%2Fadmin", EncodedSlash),
            ("/orders%2fadmin", EncodedSlash),
            ("/orders\\admin", Backslash),
            ("/orders%5cadmin", Backslash),
            ("/orders/\0", ControlCharacter),
            ("/orders/%00", ControlCharacter),
            ("/orders/%0d%0aX-Evil:1", ControlCharacter),
            ("/orders/\x7f", ControlCharacter),
            ("/orders/a b", InvalidCharacter),
            ("/orders/a#b", InvalidCharacter),
            ("/orders/a?b", InvalidCharacter),
            ("/orders/%", InvalidPercentEncoding),
            ("/orders/%4", InvalidPercentEncoding),
            ("/orders/%zz", InvalidPercentEncoding),
            ("/orders/%2561dmin", DoubleEncoding),
            // Found by the request_path fuzz target: unreserved escapes decoded after a `%25`
            // made a double encoding the input did not spell out.
            ("/orders/%25%36%31dmin", DoubleEncoding),
            ("/%25%63erx(@", DoubleEncoding),
            ("/%25c%65", DoubleEncoding),
            ("/orders/%c0%ae%c0%ae/admin", InvalidUtf8),
            ("/orders/%ff", InvalidUtf8),
        ] {
            assert_eq!(norm(input), Err(error), "{input:?}");
        }
        // A literal '%' (not followed by hex) is fine as %25.
        assert_eq!(norm("/a/100%25").as_deref(), Ok("/a/100%25"));
        assert_eq!(norm("/a/%25zz").as_deref(), Ok("/a/%25zz"));
    }

    /// Every path of up to five bytes over an alphabet of separators, dots, escapes and
    /// letters: a normal form is its own normal form, chooses the route its path chose, and
    /// never contains what the normaliser refuses.
    #[test]
    fn the_normal_form_is_a_fixed_point_for_every_short_path() {
        const ALPHABET: &[u8] = b"/.%2eEfFaA;\\";
        let routes = [
            prefix("/a"),
            prefix("/a/a"),
            prefix("/%2e%2ea"),
            prefix("/A."),
        ];
        let mut normalised = 0;
        let mut stack: Vec<Vec<u8>> = vec![b"/".to_vec()];
        while let Some(path) = stack.pop() {
            if path.len() < 6 {
                for &b in ALPHABET {
                    let mut longer = path.clone();
                    longer.push(b);
                    stack.push(longer);
                }
            }
            for options in [
                PathOptions::default(),
                PathOptions {
                    allow_path_params: true,
                },
            ] {
                let Ok(normal) = normalize(&path, options) else {
                    continue;
                };
                normalised += 1;
                let again = normalize(normal.as_str().as_bytes(), options);
                assert_eq!(again.as_ref(), Ok(&normal), "{path:?}");
                let route =
                    |p: &NormalPath| longest_prefix(&routes, p, |r| r).map(PathPrefix::as_str);
                assert_eq!(route(&normal), route(&again.unwrap()), "{path:?}");
                let text = normal.as_str();
                assert!(!text.contains('\\') && !text.contains("//"), "{text}");
                assert!(
                    normal
                        .segments()
                        .all(|s| s != "." && s != ".." && !s.is_empty())
                );
            }
        }
        assert!(
            normalised > 1000,
            "the alphabet exercises the normaliser: {normalised}"
        );
    }

    #[test]
    fn path_parameters_only_where_allowed_and_matched_by_name() {
        let p = with_params("/orders/admin;x=1/users;jsessionid=2").unwrap();
        assert_eq!(p.as_str(), "/orders/admin;x=1/users;jsessionid=2");
        assert!(p.has_params());
        assert_eq!(
            p.segments().collect::<Vec<_>>(),
            ["orders", "admin", "users"]
        );
        for (bad, error) in [
            ("/orders/..;/admin", PathError::DotSegment),
            ("/orders/.;x", PathError::DotSegment),
            ("/orders/%2e%2e;/admin", PathError::DotSegment),
            ("/orders/;x/admin", PathError::EmptySegment),
            ("/orders/a%3Bb", PathError::PathParameter),
        ] {
            assert_eq!(with_params(bad), Err(error), "{bad}");
        }
        assert!(!with_params("/orders/1").unwrap().has_params());
    }

    #[test]
    fn trailing_slash_is_kept_but_not_a_segment() {
        let p = normalize(b"/orders/", PathOptions::default()).unwrap();
        assert_eq!(p.as_str(), "/orders/");
        assert_eq!(p.len(), 1);
        assert!(p.has_trailing_slash());
        let root = normalize(b"/", PathOptions::default()).unwrap();
        assert!(root.is_empty() && !root.has_trailing_slash());
    }

    #[test]
    fn finding_13_limits_are_checked_before_the_path_is_read() {
        // 64 KB ending in a NUL: refused for its length, before a byte of it is scanned.
        let mut long = "/a".repeat(32 * 1024).into_bytes();
        long.push(0);
        assert_eq!(
            normalize(&long, PathOptions::default()),
            Err(PathError::TooLong)
        );
        let at_cap = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert!(normalize(at_cap.as_bytes(), PathOptions::default()).is_ok());
        let over = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(
            normalize(over.as_bytes(), PathOptions::default()),
            Err(PathError::TooLong)
        );
        let many = "/a".repeat(MAX_SEGMENTS);
        assert_eq!(
            normalize(many.as_bytes(), PathOptions::default()).map(|p| p.len()),
            Ok(MAX_SEGMENTS)
        );
        let too_many = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(
            normalize(too_many.as_bytes(), PathOptions::default()),
            Err(PathError::TooManySegments)
        );
    }

    #[test]
    fn split_query_splits_at_the_first_question_mark() {
        assert_eq!(split_query(b"/a?b=1?c"), (&b"/a"[..], Some(&b"b=1?c"[..])));
        assert_eq!(split_query(b"/a"), (&b"/a"[..], None));
        let target = normalize_target(b"/%61/b?x=../%2F", PathOptions::default()).unwrap();
        assert_eq!(target.as_str(), "/a/b");
    }

    fn prefix(p: &str) -> PathPrefix {
        PathPrefix::new(p, false).unwrap()
    }

    fn chosen<'a>(routes: &'a [PathPrefix], path: &str) -> Option<&'a str> {
        let path = normalize(path.as_bytes(), PathOptions::default()).unwrap();
        longest_prefix(routes, &path, |p| p).map(PathPrefix::as_str)
    }

    #[test]
    fn finding_1_routes_are_chosen_on_the_normal_form_ignoring_case() {
        let routes = [prefix("/"), prefix("/orders"), prefix("/orders/admin")];
        for path in [
            "/orders/admin/users",
            "/orders/%61dmin/users",
            "/orders/ADMIN/users",
            "/ORDERS/Admin",
            "/orders/admin/",
        ] {
            assert_eq!(chosen(&routes, path), Some("/orders/admin"), "{path}");
        }
        assert_eq!(chosen(&routes, "/orders/1"), Some("/orders"));
        assert_eq!(chosen(&routes, "/ordersx"), Some("/"));
        assert_eq!(chosen(&[prefix("/orders")], "/ordersx"), None);
        assert_eq!(chosen(&[prefix("/orders/")], "/orders"), Some("/orders/"));
        assert_eq!(
            chosen(&[prefix("/caf%C3%A9")], "/caf\u{e9}/x"),
            Some("/caf%C3%A9")
        );
    }

    #[test]
    fn a_case_sensitive_prefix_compares_exactly() {
        let exact = PathPrefix::new("/orders/admin", true).unwrap();
        let routes = [prefix("/orders"), exact];
        assert_eq!(chosen(&routes, "/orders/admin/x"), Some("/orders/admin"));
        assert_eq!(chosen(&routes, "/orders/ADMIN/x"), Some("/orders"));
    }

    #[test]
    fn overlapping_prefixes_are_detected() {
        assert!(prefix("/Orders").overlaps(&prefix("/orders/")));
        assert!(prefix("/%61").overlaps(&prefix("/A")));
        assert!(!prefix("/orders").overlaps(&prefix("/orders/admin")));
        assert!(PathPrefix::new("/a/../b", false).is_err());
    }
}
