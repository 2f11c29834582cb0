//! The permission-query parser (`PermissionQuery::parse`) and grants (`Permission::new`,
//! `Permission::grants`). Input: the query on the first line, grants on the following lines.
//!
//! Oracles: an error points inside the query; a parsed query is refused by no grants and
//! admitted by `*` (there is no negation); adding a grant never turns an admission into a
//! refusal; printing the parsed tree and parsing it again gives the same tree; a grant covers
//! itself.

#![no_main]

use keyward_core::permission::{
    MAX_QUERY_DEPTH, MAX_QUERY_LEN, MAX_QUERY_TERMS, Permission, PermissionQuery,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(lines) = keyward_fuzz::lines(data) else {
        return;
    };
    let (query, grant_lines) = lines.split_first().expect("split yields a line");
    let mut grants = Vec::new();
    for line in grant_lines {
        if let Ok(grant) = Permission::new(line) {
            assert!(
                grant.grants(grant.as_str()),
                "{grant} does not cover itself"
            );
            grants.push(grant);
        }
    }

    let parsed = match PermissionQuery::parse(query) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.position <= query.len(), "error past the end: {e}");
            return;
        }
    };
    let (terms, depth) = shape(&parsed);
    assert!(terms <= MAX_QUERY_TERMS, "{terms} terms parsed");
    // Each level of parentheses (and the top) adds at most an OR and an AND node above the
    // permissions: the tree is at most 2 × 17 + 1 deep.
    assert!(depth <= 2 * (MAX_QUERY_DEPTH + 1) + 1, "tree {depth} deep");

    assert!(!parsed.is_satisfied_by(&[]), "satisfied without grants");
    let everything = [Permission::new("*").expect("'*' is a grant")];
    assert!(
        parsed.is_satisfied_by(&everything),
        "'*' does not satisfy it"
    );
    if parsed.is_satisfied_by(&grants) {
        let mut more = grants.clone();
        more.push(Permission::new("extra.grant").expect("a valid grant"));
        assert!(parsed.is_satisfied_by(&more), "a further grant refused it");
    }

    let printed = print(&parsed);
    match PermissionQuery::parse(&printed) {
        Ok(again) => assert_eq!(again, parsed, "{printed:?} reparses differently"),
        // Printing adds parentheses and spaces, which can pass the limits the original met.
        Err(e) => assert!(
            printed.len() > MAX_QUERY_LEN || e.message.contains("nested deeper"),
            "{printed:?} does not reparse: {e}"
        ),
    }
});

/// Number of permissions and depth of the tree.
fn shape(query: &PermissionQuery) -> (usize, usize) {
    match query {
        PermissionQuery::Require(_) => (1, 1),
        PermissionQuery::All(parts) | PermissionQuery::Any(parts) => parts
            .iter()
            .map(shape)
            .fold((0, 0), |(t, d), (pt, pd)| (t + pt, d.max(pd + 1))),
    }
}

/// The query as text, every compound operand in parentheses.
fn print(query: &PermissionQuery) -> String {
    let operand = |q: &PermissionQuery| match q {
        PermissionQuery::Require(name) => name.clone(),
        compound => format!("({})", print(compound)),
    };
    match query {
        PermissionQuery::Require(name) => name.clone(),
        PermissionQuery::All(parts) => parts.iter().map(operand).collect::<Vec<_>>().join(" AND "),
        PermissionQuery::Any(parts) => parts.iter().map(operand).collect::<Vec<_>>().join(" OR "),
    }
}
