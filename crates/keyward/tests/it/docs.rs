//! The documentation's links and cited code resolve, so a moved file, a renamed heading or a
//! renamed function cannot leave a doc pointing at nothing (docs/testing.md, "Documentation
//! checks", says the same for readers).
//!
//! Checked: README.md, ARCHITECTURE.md, SECURITY.md, BENCHMARKS.md, bench/README.md and every
//! `docs/**/*.md`, outside fenced code blocks.
//!
//! - **Links.** Every inline link `[text](target)` whose target is not a URL (`scheme:...`)
//!   names a file or directory that exists, relative to the linking file. A `#fragment` must
//!   match a heading of the target Markdown file (or of the linking file, for `#fragment`
//!   alone) under GitHub's slug rules: lower case, every character but letters, digits, spaces,
//!   `-` and `_` dropped, spaces turned into `-`, and `-1`, `-2`, ... appended to repeats.
//! - **Evidence.** A backticked span is cited as evidence, and checked, when it is
//!   1. a repository path: it starts with `crates/`, `docs/`, `deploy/`, `examples/`,
//!      `bench/`, `fuzz/` or `.ci/`, or with a crate's directory (`keyward-core/...`, read
//!      under `crates/`). It must exist. `{a,b}` is expanded; a span with `*`, `<`, `...`,
//!      `…` or a segment in capitals (a placeholder such as `TARGET`) is a pattern and is
//!      not checked;
//!   2. `path.rs::item`, with a path as in 1: the file exists and holds the word `item`;
//!   3. a Rust path `a::b::c` (identifiers joined by `::`, anything from a `(` or `<` on
//!      ignored). If `a` is a workspace crate (`keyward_core`, ...), its modules are followed
//!      as far as files exist in its `src/`, and the remaining names must occur as words in
//!      that file (in any file of the crate's `src/` when no module matched). If `a` is lower
//!      case and a module file `a.rs` (or `a/mod.rs`) exists under some crate's `src/`, the
//!      rest must occur in one of them. If `a` starts with a capital (a type), every name
//!      must occur in one `.rs` file under `crates/`. Anything else (`std::fs::File`) names
//!      another crate and is not checked;
//!   4. a test or function name: a lower-case identifier of five or more `_`-separated words
//!      (`usage_export_writes_csv_after_a_clean_shutdown`). It must occur as a word in a
//!      `.rs` file under `crates/` or `fuzz/`.
//!
//! This file is not read as a source: its self-test names things that must not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Top-level directories whose paths are cited as evidence.
const PATH_PREFIXES: [&str; 7] = [
    "crates/",
    "docs/",
    "deploy/",
    "examples/",
    "bench/",
    "fuzz/",
    ".ci/",
];

/// The files the checks read, as paths relative to the root.
fn checked_files(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = [
        "README.md",
        "ARCHITECTURE.md",
        "SECURITY.md",
        "BENCHMARKS.md",
        "bench/README.md",
    ]
    .map(String::from)
    .to_vec();
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                let relative = path.strip_prefix(root).unwrap();
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files.sort();
    files
}

/// The text with fenced code blocks blanked (lines kept, so line numbers stay right).
fn without_fences(text: &str) -> String {
    let mut fence: Option<&str> = None;
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push_str(line),
            _ => {}
        }
        out.push('\n');
    }
    out
}

/// The code spans of `text` (backtick runs of equal length), with the byte range each covers.
fn code_spans(text: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let bytes = text.as_bytes();
    let run = |at: usize| bytes[at..].iter().take_while(|&&b| b == b'`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let open = run(i);
        let mut j = i + open;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let n = run(j);
                if n == open {
                    close = Some(j);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                let content = text[i + open..end].replace('\n', " ");
                spans.push((i..end + open, content.trim().to_owned()));
                i = end + open;
            }
            None => i += open,
        }
    }
    spans
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown text's headings, repeats numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in without_fences(text).lines() {
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links of `text` (fences and code spans excluded), with the line
/// each is on.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut text = without_fences(text);
    for (range, _) in code_spans(&text) {
        // Byte for byte, so the later ranges stay right.
        let blank: String = text.as_bytes()[range.clone()]
            .iter()
            .map(|&b| if b == b'\n' { '\n' } else { ' ' })
            .collect();
        text.replace_range(range, &blank);
    }
    let mut out = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        let line = text[..at].matches('\n').count() + 1;
        out.push((line, target.to_owned()));
    }
    out
}

/// Every `.rs` file under `crates/` and `fuzz/` (no build output, not this file), with the
/// words it holds.
struct Sources {
    files: Vec<(String, BTreeSet<String>)>,
}

impl Sources {
    fn read(root: &Path) -> Self {
        let mut files = Vec::new();
        let mut dirs = vec![root.join("crates"), root.join("fuzz")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("target") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("tests/it/docs.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let words = text
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| !w.is_empty())
                        .map(String::from)
                        .collect();
                    let relative = path.strip_prefix(root).unwrap();
                    files.push((relative.to_string_lossy().replace('\\', "/"), words));
                }
            }
        }
        Self { files }
    }

    /// Whether one file whose path `accept`s holds every word of `words`.
    fn found(&self, accept: impl Fn(&str) -> bool, words: &[&str]) -> bool {
        self.files
            .iter()
            .any(|(path, w)| accept(path) && words.iter().all(|word| w.contains(*word)))
    }
}

/// The crate directories under `crates/`.
fn crate_dirs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A cited path as a path from the root, or `None` when the span is not a repository path.
fn repository_path(span: &str, crates: &BTreeSet<String>) -> Option<String> {
    if span.contains(char::is_whitespace) {
        return None;
    }
    if PATH_PREFIXES.iter().any(|p| span.starts_with(p)) {
        return Some(span.to_owned());
    }
    let (first, _) = span.split_once('/')?;
    crates.contains(first).then(|| format!("crates/{span}"))
}

/// `a/{b,c}/d` as `a/b/d` and `a/c/d` (one group).
fn expand_braces(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) if open < close => path[open + 1..close]
            .split(',')
            .map(|alt| format!("{}{alt}{}", &path[..open], &path[close + 1..]))
            .collect(),
        _ => vec![path.to_owned()],
    }
}

fn is_placeholder_or_pattern(path: &str) -> bool {
    ["*", "<", "...", "…"].iter().any(|p| path.contains(p))
        || path.split('/').any(|segment| {
            segment.len() > 1
                && segment
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c == '-')
        })
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What is wrong with one document: broken links and cited code that does not exist.
fn problems(root: &Path, file: &str, text: &str, sources: &Sources) -> Vec<String> {
    let crates = crate_dirs(root);
    let mut problems = Vec::new();
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));

    for (line, target) in link_targets(text) {
        if target.contains(':') || target.is_empty() {
            continue; // a URL (https:, mailto:) or not a link
        }
        let (path, fragment) = match target.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (target.as_str(), None),
        };
        let resolved = match path.strip_prefix('/') {
            Some(from_root) => root.join(from_root),
            None => root.join(dir).join(path),
        };
        if !path.is_empty() && !resolved.exists() {
            problems.push(format!("{file}:{line}: link to {target}: no such file"));
            continue;
        }
        if let Some(fragment) = fragment {
            let heading_found = if path.is_empty() {
                anchors(text).contains(fragment)
            } else {
                resolved.extension().is_some_and(|e| e == "md")
                    && anchors(&std::fs::read_to_string(&resolved).unwrap()).contains(fragment)
            };
            if !heading_found {
                problems.push(format!("{file}:{line}: link to {target}: no such heading"));
            }
        }
    }

    let unfenced = without_fences(text);
    for (range, span) in code_spans(&unfenced) {
        let line = unfenced[..range.start].matches('\n').count() + 1;
        let span = span.as_str();
        // 2. `path.rs::item`
        if let Some((path, item)) = span.split_once(".rs::")
            && let Some(path) = repository_path(&format!("{path}.rs"), &crates)
        {
            let item = item.split(['(', '<']).next().unwrap_or("");
            if !sources.found(|p| p == path.as_str(), &[item]) {
                problems.push(format!("{file}:{line}: `{span}`: {path} has no `{item}`"));
            }
            continue;
        }
        // 1. a repository path
        if let Some(path) = repository_path(span, &crates) {
            if is_placeholder_or_pattern(&path) {
                continue;
            }
            for path in expand_braces(&path) {
                if !root.join(&path).exists() {
                    problems.push(format!("{file}:{line}: `{span}`: {path} does not exist"));
                }
            }
            continue;
        }
        // 3. a Rust path
        let rust_path = span.split(['(', '<']).next().unwrap_or("");
        let names: Vec<&str> = rust_path.split("::").collect();
        if names.len() > 1 && names.iter().all(|n| is_identifier(n)) {
            if let Some(missing) = missing_rust_path(&names, &crates, sources) {
                problems.push(format!("{file}:{line}: `{span}`: {missing}"));
            }
            continue;
        }
        // 4. a test or function name
        if is_identifier(span)
            && span.split('_').filter(|w| !w.is_empty()).count() >= 5
            && span == span.to_lowercase()
            && !sources.found(|_| true, &[span])
        {
            problems.push(format!(
                "{file}:{line}: `{span}`: no such name in crates/ or fuzz/"
            ));
        }
    }
    problems
}

/// Why a cited Rust path does not resolve, or `None` when it does or is not checked.
fn missing_rust_path(
    names: &[&str],
    crates: &BTreeSet<String>,
    sources: &Sources,
) -> Option<String> {
    let first = names[0];
    let crate_dir = first.replace('_', "-");
    if crates.contains(&crate_dir) {
        // Follow the modules as far as files exist.
        let mut module = format!("crates/{crate_dir}/src");
        let mut file = None;
        let mut rest = &names[1..];
        while let Some((name, after)) = rest.split_first() {
            let candidates = [
                format!("{module}/{name}.rs"),
                format!("{module}/{name}/mod.rs"),
            ];
            let Some(found) = candidates
                .into_iter()
                .find(|c| sources.found(|p| p == c.as_str(), &[]))
            else {
                break;
            };
            module = format!("{module}/{name}");
            file = Some(found);
            rest = after;
        }
        let found = match &file {
            Some(file) => sources.found(|p| p == file.as_str(), rest),
            None => {
                let src = format!("crates/{crate_dir}/src/");
                sources.found(|p| p.starts_with(&src), rest)
            }
        };
        let place = file.unwrap_or(format!("crates/{crate_dir}/src/"));
        return (!found).then(|| format!("{} not found in {place}", rest.join("::")));
    }
    if first.starts_with(|c: char| c.is_ascii_uppercase()) {
        let found = sources.found(|p| p.starts_with("crates/"), names);
        return (!found).then(|| "not found together in any file of crates/".to_owned());
    }
    let module_file = |p: &str| {
        p.starts_with("crates/")
            && p.contains("/src/")
            && (p.ends_with(&format!("/{first}.rs")) || p.ends_with(&format!("/{first}/mod.rs")))
    };
    if !sources.found(module_file, &[]) {
        return None; // another crate's path, such as `std::fs::File`
    }
    let found = sources.found(module_file, &names[1..]);
    (!found).then(|| format!("no module file {first}.rs holds {}", names[1..].join("::")))
}

#[test]
fn docs_links_resolve_and_cited_code_exists() {
    let root = root();
    let sources = Sources::read(&root);
    let mut all = Vec::new();
    for file in checked_files(&root) {
        let text = std::fs::read_to_string(root.join(&file)).unwrap();
        all.extend(problems(&root, &file, &text, &sources));
    }
    assert!(
        all.is_empty(),
        "broken references in the docs:\n{}",
        all.join("\n")
    );
}

/// The checker itself fails on what it is meant to catch (a synthetic document, checked as if
/// it were docs/check.md).
#[test]
fn docs_checker_reports_broken_links_and_missing_code() {
    let root = root();
    let sources = Sources::read(&root);
    let doc = "\
# Check

[ok](testing.md) [ok](../README.md#run-a-cluster) [ok](#check) [url](https://example.com)
[gone](no-such-file.md) [bad heading](../README.md#no-such-heading)
`crates/keyward/src/main.rs` `crates/no/such.rs` `keyward_core::path::normalize`
`keyward_core::path::no_such_function` `Keyward::no_such_method` `std::fs::File`
`crates/keyward/src/main.rs::no_such_item` `a_test_name_that_does_not_exist_anywhere`

```text
[inside a fence](not-checked.md) `crates/not/checked.rs`
```
";
    let found = problems(&root, "docs/check.md", doc, &sources);
    let expected = [
        "docs/check.md:4: link to no-such-file.md: no such file",
        "docs/check.md:4: link to ../README.md#no-such-heading: no such heading",
        "docs/check.md:5: `crates/no/such.rs`: crates/no/such.rs does not exist",
        "docs/check.md:6: `keyward_core::path::no_such_function`: no_such_function not found in crates/keyward-core/src/path.rs",
        "docs/check.md:6: `Keyward::no_such_method`: not found together in any file of crates/",
        "docs/check.md:7: `crates/keyward/src/main.rs::no_such_item`: crates/keyward/src/main.rs has no `no_such_item`",
        "docs/check.md:7: `a_test_name_that_does_not_exist_anywhere`: no such name in crates/ or fuzz/",
    ];
    assert_eq!(found, expected);
}

#[test]
fn headings_get_github_anchors() {
    let check = |heading: &str, expected: &str| assert_eq!(slug(heading), expected, "{heading}");
    check("Metrics: `GET /metrics`", "metrics-get-metrics");
    check("3. Envoy `ext_authz`", "3-envoy-ext_authz");
    check(
        "Revocation propagation (3 nodes, PostgreSQL + Redis)",
        "revocation-propagation-3-nodes-postgresql--redis",
    );
    check("Dashboards (`deploy/grafana/`)", "dashboards-deploygrafana");
    let repeated = anchors("# A\n## A\n```\n# not a heading\n```\n### A\n");
    assert_eq!(repeated, ["a", "a-1", "a-2"].map(String::from).into());
}
