//! Permissions a key is granted, and the query language a verify call checks them with.
//!
//! # Grants
//! A grant is a dot-separated name such as `orders.read` (segments of `A-Z a-z 0-9 _ : -`).
//! `orders.*` grants every permission under `orders.` (at any depth) and `*` grants everything.
//! A wildcard may only be the whole last segment.
//!
//! # Queries
//! A verify call may ask for a boolean combination of permissions:
//!
//! ```text
//! query      = or_expr
//! or_expr    = and_expr { "OR" and_expr }
//! and_expr   = primary { "AND" primary }
//! primary    = permission | "(" or_expr ")"
//! permission = one or more of  A-Z a-z 0-9 _ : - . *   (not the words AND / OR)
//! ```
//!
//! `AND` binds tighter than `OR`; the keywords are case-insensitive; whitespace separates
//! tokens. A permission in a query is literal: `orders.read` is satisfied by the grants
//! `orders.read`, `orders.*` or `*`. Queries are limited to [`MAX_QUERY_LEN`] bytes,
//! [`MAX_QUERY_TERMS`] permissions and [`MAX_QUERY_DEPTH`] levels of parentheses, so a hostile
//! query costs a bounded amount of work. A query that does not parse is rejected with the
//! byte offset where parsing failed.
//!
//! ```
//! use keyward_core::permission::{Permission, PermissionQuery};
//!
//! let grants = [Permission::new("orders.read").unwrap(), Permission::new("admin.*").unwrap()];
//! let query = PermissionQuery::parse("orders.read AND (orders.write OR admin.users)").unwrap();
//! assert!(query.is_satisfied_by(&grants));
//! ```

use std::fmt;

/// Longest accepted query, in bytes.
pub const MAX_QUERY_LEN: usize = 1024;
/// Most permissions a query may name.
pub const MAX_QUERY_TERMS: usize = 64;
/// Deepest nesting of parentheses in a query.
pub const MAX_QUERY_DEPTH: usize = 16;
/// Longest permission name, in bytes.
pub const MAX_PERMISSION_LEN: usize = 128;

/// A validated permission grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(String);

/// Why a permission grant is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission {value:?}: {reason}")]
pub struct InvalidPermission {
    /// The rejected text (permissions are not secret).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-')
}

impl Permission {
    /// Validates a grant.
    pub fn new(value: &str) -> Result<Self, InvalidPermission> {
        let invalid = |reason| InvalidPermission {
            value: value.chars().take(MAX_PERMISSION_LEN).collect(),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if value.len() > MAX_PERMISSION_LEN {
            return Err(invalid("it is longer than 128 bytes"));
        }
        if value == "*" {
            return Ok(Self(value.to_owned()));
        }
        let mut segments = value.split('.').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            if segment.is_empty() {
                return Err(invalid("it has an empty segment"));
            }
            if segment == "*" {
                if !last {
                    return Err(invalid("a wildcard '*' may only be the last segment"));
                }
            } else if !segment.chars().all(is_segment_char) {
                return Err(invalid(
                    "segments may contain only A-Z a-z 0-9 _ : - (and a final '*')",
                ));
            }
        }
        Ok(Self(value.to_owned()))
    }

    /// The grant text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if this grant covers the literal permission `required`.
    pub fn grants(&self, required: &str) -> bool {
        let grant = self.0.as_str();
        if grant == "*" || grant == required {
            return true;
        }
        match grant.strip_suffix('*') {
            // `orders.*` covers `orders.read` and `orders.items.read`, not `orders` itself.
            Some(stem) => required.len() > stem.len() && required.starts_with(stem),
            None => false,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True if any of `grants` covers `required`.
pub fn granted(grants: &[Permission], required: &str) -> bool {
    grants.iter().any(|g| g.grants(required))
}

/// A parsed permission query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionQuery {
    /// A single literal permission.
    Require(String),
    /// All of the sub-queries.
    All(Vec<PermissionQuery>),
    /// Any of the sub-queries.
    Any(Vec<PermissionQuery>),
}

/// Why a query did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission query error at byte {position}: {message}")]
pub struct QueryError {
    /// Byte offset in the query where the problem was found.
    pub position: usize,
    /// What was expected or what limit was exceeded.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    And,
    Or,
    Name(&'a str),
}

impl Token<'_> {
    fn describe(&self) -> String {
        match self {
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::And => "AND".into(),
            Token::Or => "OR".into(),
            Token::Name(n) => format!("permission {n:?}"),
        }
    }
}

fn is_name_char(c: char) -> bool {
    is_segment_char(c) || matches!(c, '.' | '*')
}

fn tokenize(input: &str) -> Result<Vec<(usize, Token<'_>)>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' {
            tokens.push((pos, Token::Open));
            chars.next();
        } else if c == ')' {
            tokens.push((pos, Token::Close));
            chars.next();
        } else if is_name_char(c) {
            let mut end = pos;
            while let Some(&(p, c)) = chars.peek() {
                if !is_name_char(c) {
                    break;
                }
                end = p + c.len_utf8();
                chars.next();
            }
            let word = &input[pos..end];
            let token = if word.eq_ignore_ascii_case("and") {
                Token::And
            } else if word.eq_ignore_ascii_case("or") {
                Token::Or
            } else if word.len() > MAX_PERMISSION_LEN {
                return Err(QueryError {
                    position: pos,
                    message: format!("permission is longer than {MAX_PERMISSION_LEN} bytes"),
                });
            } else {
                Token::Name(word)
            };
            tokens.push((pos, token));
        } else {
            return Err(QueryError {
                position: pos,
                message: format!("unexpected character {c:?}"),
            });
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token<'a>)>,
    next: usize,
    end: usize,
    terms: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(p, _)| *p)
    }

    fn error(&self, message: impl Into<String>) -> QueryError {
        QueryError {
            position: self.position(),
            message: message.into(),
        }
    }

    fn or_expr(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        let mut parts = vec![self.and_expr(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            parts.push(self.and_expr(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            PermissionQuery::Any(parts)
        })
    }

    fn and_expr(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        let mut parts = vec![self.primary(depth)?];
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            parts.push(self.primary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            PermissionQuery::All(parts)
        })
    }

    fn primary(&mut self, depth: usize) -> Result<PermissionQuery, QueryError> {
        match self.peek().cloned() {
            Some(Token::Name(name)) => {
                self.terms += 1;
                if self.terms > MAX_QUERY_TERMS {
                    return Err(self.error(format!(
                        "the query names more than {MAX_QUERY_TERMS} permissions"
                    )));
                }
                self.next += 1;
                Ok(PermissionQuery::Require(name.to_owned()))
            }
            Some(Token::Open) => {
                if depth >= MAX_QUERY_DEPTH {
                    return Err(self.error(format!(
                        "parentheses are nested deeper than {MAX_QUERY_DEPTH} levels"
                    )));
                }
                self.next += 1;
                let inner = self.or_expr(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error(match self.peek() {
                        Some(t) => format!("expected ')' but found {}", t.describe()),
                        None => "expected ')' but the query ended".to_owned(),
                    }));
                }
                self.next += 1;
                Ok(inner)
            }
            Some(other) => Err(self.error(format!(
                "expected a permission or '(' but found {}",
                other.describe()
            ))),
            None => Err(self.error("expected a permission or '(' but the query ended")),
        }
    }
}

impl PermissionQuery {
    /// Parses a query; see the module documentation for the grammar and limits.
    pub fn parse(input: &str) -> Result<Self, QueryError> {
        if input.len() > MAX_QUERY_LEN {
            return Err(QueryError {
                position: MAX_QUERY_LEN,
                message: format!("the query is longer than {MAX_QUERY_LEN} bytes"),
            });
        }
        let mut parser = Parser {
            tokens: tokenize(input)?,
            next: 0,
            end: input.len(),
            terms: 0,
        };
        if parser.tokens.is_empty() {
            return Err(parser.error("the query is empty"));
        }
        let query = parser.or_expr(0)?;
        if let Some(token) = parser.peek() {
            return Err(parser.error(format!(
                "expected AND, OR or the end of the query but found {}",
                token.describe()
            )));
        }
        Ok(query)
    }

    /// A query requiring every permission in `required` (what repeated CLI flags mean).
    pub fn all_of<I: IntoIterator<Item = S>, S: Into<String>>(required: I) -> Self {
        Self::All(
            required
                .into_iter()
                .map(|p| Self::Require(p.into()))
                .collect(),
        )
    }

    /// Evaluates the query against a key's grants.
    pub fn is_satisfied_by(&self, grants: &[Permission]) -> bool {
        match self {
            Self::Require(p) => granted(grants, p),
            Self::All(parts) => parts.iter().all(|q| q.is_satisfied_by(grants)),
            Self::Any(parts) => parts.iter().any(|q| q.is_satisfied_by(grants)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| Permission::new(p).unwrap()).collect()
    }

    fn check(query: &str, key_grants: &[&str], expected: bool) {
        let q = PermissionQuery::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(
            q.is_satisfied_by(&grants(key_grants)),
            expected,
            "{query} vs {key_grants:?}"
        );
    }

    fn check_error(query: &str, position: usize, fragment: &str) {
        let err = PermissionQuery::parse(query).unwrap_err();
        assert_eq!(err.position, position, "{query}: {err}");
        assert!(err.message.contains(fragment), "{query}: {err}");
    }

    #[test]
    fn grant_wildcards() {
        check("orders.read", &["orders.read"], true);
        check("orders.read", &["orders.write"], false);
        check("orders.read", &["orders.*"], true);
        check("orders.items.read", &["orders.*"], true);
        check("orders", &["orders.*"], false);
        check("ordersx.read", &["orders.*"], false);
        check("anything.at.all", &["*"], true);
        check("orders.read", &[], false);
    }

    #[test]
    fn boolean_structure_and_precedence() {
        let key = ["orders.read", "admin.*"];
        check("orders.read AND (orders.write OR admin.users)", &key, true);
        check(
            "orders.read AND (orders.write OR billing.users)",
            &key,
            false,
        );
        // AND binds tighter than OR: a OR (b AND c).
        check("orders.write OR orders.read AND admin.x", &key, true);
        check("orders.write OR orders.read AND billing.x", &key, false);
        check("(orders.write OR orders.read) and admin.x", &key, true);
        check("((((orders.read))))", &key, true);
    }

    #[test]
    fn parse_errors_name_the_position() {
        check_error("", 0, "empty");
        check_error("orders.read AND", 15, "ended");
        check_error("AND orders.read", 0, "found AND");
        check_error("(orders.read", 12, "expected ')'");
        check_error("orders.read)", 11, "found ')'");
        check_error("orders.read orders.write", 12, "expected AND, OR");
        check_error("orders.read & x", 12, "unexpected character '&'");
        check_error("a OR ()", 6, "found ')'");
    }

    #[test]
    fn hostile_queries_are_bounded() {
        let long = "a ".repeat(600);
        check_error(&long, MAX_QUERY_LEN, "longer than");
        let deep = format!("{}a{}", "(".repeat(20), ")".repeat(20));
        check_error(&deep, MAX_QUERY_DEPTH, "nested deeper");
        let many = vec!["p"; 65].join(" OR ");
        assert!(
            PermissionQuery::parse(&many)
                .unwrap_err()
                .message
                .contains("more than 64")
        );
        let wide = "x".repeat(129);
        check_error(&wide, 0, "longer than 128");
    }

    #[test]
    fn grant_validation() {
        for ok in [
            "orders.read",
            "*",
            "orders.*",
            "a:b-c_d.e",
            "orders.items.*",
        ] {
            assert!(Permission::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "orders.",
            "*.read",
            "orders.*.read",
            "or ders",
            "orders.re*d",
            "ü",
        ] {
            assert!(Permission::new(bad).is_err(), "{bad}");
        }
        assert!(Permission::new(&"a".repeat(129)).is_err());
    }

    #[test]
    fn all_of_requires_each() {
        let q = PermissionQuery::all_of(["a", "b"]);
        assert!(q.is_satisfied_by(&grants(&["a", "b"])));
        assert!(!q.is_satisfied_by(&grants(&["a"])));
    }
}
