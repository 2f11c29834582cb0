//! `GET /metrics`, the shipped dashboards and alert rules (issue 5): the scrape after a short
//! session has the expected series and no key; every metric a dashboard or rule uses is
//! exported; every alert links an existing runbook; `promtool` accepts the rules.
//!
//! The in-process servers of this binary share one recorder (one per process), so these tests
//! compare counters before and after, on labels no other test uses, never absolute values.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use keyward_testkit::server::Server;

/// The workspace root (`deploy/`, `docs/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scrape: each series (`name{labels}`) with its value, and the `# TYPE` names.
struct Scrape {
    text: String,
    series: HashMap<String, f64>,
    types: BTreeSet<String>,
}

impl Scrape {
    async fn of(s: &Server) -> Self {
        let r = s.http.raw("GET", "/metrics", None, None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.header("content-type")
                .starts_with("text/plain; version=0.0.4"),
            "{}",
            r.header("content-type")
        );
        let text = String::from_utf8(r.body).unwrap();
        let mut series = HashMap::new();
        let mut types = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                types.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, value) = line.rsplit_once(' ').unwrap();
                series.insert(name.to_owned(), value.parse().unwrap());
            }
        }
        Self {
            text,
            series,
            types,
        }
    }

    /// The sum of every series of `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The values of label `label` across the series of `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        let prefix = format!("{name}{{");
        let needle = format!("{label}=\"");
        self.series
            .keys()
            .filter_map(|s| s.strip_prefix(&prefix))
            .filter_map(|rest| rest.split(&needle).nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_a_session_have_the_expected_series_and_no_key() {
    let s = Server::start().await;
    // A tenant of this test's own, so its counts are exact despite the shared recorder.
    let tenant = "metrics-session";
    let before = Scrape::of(&s).await;
    let (key, key_id) = s.create(json!({"owner": "o", "tenant": tenant})).await;
    for _ in 0..6 {
        assert_eq!(s.verify(json!({"key": key})).await["code"], "VALID");
    }
    assert_eq!(
        s.verify(json!({"key": "not a key"})).await["code"],
        "MALFORMED"
    );
    let rotated = s
        .admin(
            "POST",
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_period_seconds": 0})),
        )
        .await;
    assert_eq!(
        rotated.status,
        201,
        "{}",
        String::from_utf8_lossy(&rotated.body)
    );
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    let revoked = s.revoke(&key_id, "leaked").await;
    assert_eq!(revoked.status, 200);
    assert_eq!(s.verify(json!({"key": new_key})).await["code"], "REVOKED");
    let after = Scrape::of(&s).await;

    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    // Verifications, by code and tenant.
    let valid = [("code", "VALID"), ("tenant", tenant)];
    assert_eq!(delta("keyward_verifications_total", &valid), 6.0);
    let revoked = [("code", "REVOKED"), ("tenant", tenant)];
    assert_eq!(delta("keyward_verifications_total", &revoked), 1.0);
    let malformed = [("code", "MALFORMED"), ("tenant", "none")];
    assert!(delta("keyward_verifications_total", &malformed) >= 1.0);
    // One latency sample per verification.
    assert!(delta("keyward_verify_duration_seconds_count", &[]) >= 8.0);
    assert!(after.sum("keyward_verify_duration_seconds_bucket", &[("le", "+Inf")]) >= 8.0);
    // The lifecycle counters.
    for name in [
        "keyward_keys_issued_total",
        "keyward_keys_rotated_total",
        "keyward_keys_revoked_total",
    ] {
        assert!(delta(name, &[]) >= 1.0, "{name}");
    }
    // The key has a label of its own after enough requests, unless other tests in this
    // process already took every slot.
    let labelled = after.label_values("keyward_key_requests_total", "key_id");
    assert!(labelled.contains("other"), "{labelled:?}");
    assert!(
        labelled.contains(&key_id) || labelled.len() > keyward_engine::telemetry::KEY_LABEL_SLOTS,
        "{labelled:?}"
    );
    assert!(labelled.len() <= keyward_engine::telemetry::KEY_LABEL_SLOTS + 1);
    // Caches and the store.
    assert_eq!(
        after.label_values("keyward_cache_hits_total", "cache"),
        ["not_found", "records", "secrets"]
            .map(str::to_owned)
            .into()
    );
    assert!(delta("keyward_cache_hits_total", &[("cache", "secrets")]) >= 1.0);
    assert!(
        delta(
            "keyward_store_operation_duration_seconds_count",
            &[("op", "write_key")]
        ) >= 3.0
    );
    assert!(
        after
            .types
            .contains("keyward_revocation_propagation_seconds")
    );

    // No key in any form: neither the plaintexts nor anything key-shaped.
    for secret in [&key, &new_key, &s.root_key] {
        assert!(!after.text.contains(secret.as_str()));
    }
    assert_eq!(
        keyward_core::redact::redact(&after.text),
        after.text.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_on_the_dashboards_and_in_the_alert_rules_is_exported() {
    let s = Server::start().await;
    let scrape = Scrape::of(&s).await;
    // Every registered name is in the very first scrape of a process, touched or not.
    for (name, _, _) in keyward_engine::telemetry::METRICS {
        assert!(scrape.types.contains(*name), "{name} is not exported");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let dashboards: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dashboards, ["debug", "executive", "oncall"]);
    files.push(root().join("deploy/prometheus/alerts.yml"));
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if file.extension().is_some_and(|e| e == "json") {
            let dashboard: Value = serde_json::from_str(&text).unwrap();
            assert!(
                dashboard["panels"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            );
        }
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{}", file.display());
        for name in names {
            assert!(
                scrape.types.contains(&name),
                "{} uses {name}, which /metrics does not export",
                file.display()
            );
        }
    }
}

/// Every `keyward_...` metric name in `text`, with histogram series suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("keyward_") {
        let start = i + at;
        let preceded = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        let next = text[end..].chars().next();
        let name = &text[start..end];
        // Recording rules are named `keyward:...`; a following ':' or a preceding word
        // character means this is part of something else.
        if !preceded && next != Some(':') {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(name.to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn every_alert_has_a_summary_and_a_runbook_that_exists() {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let alerts = text.matches("- alert:").count();
    assert!(alerts >= 8, "{alerts} alerts");
    let runbooks: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|u| u.trim().trim_matches('"'))
        .collect();
    assert_eq!(runbooks.len(), alerts, "one runbook_url per alert");
    assert_eq!(text.matches("summary:").count(), alerts);
    for url in runbooks {
        let path = url
            .split_once("docs/runbooks/")
            .map(|(_, p)| p.split('#').next().unwrap())
            .unwrap_or_else(|| panic!("{url} is not a docs/runbooks link"));
        assert!(
            root().join("docs/runbooks").join(path).is_file(),
            "{url}: no such runbook"
        );
    }
    for runbook in [
        "compromise",
        "store-outage",
        "propagation-lag",
        "rotation-failure",
    ] {
        assert!(
            root().join(format!("docs/runbooks/{runbook}.md")).is_file(),
            "{runbook}"
        );
    }
}

/// `promtool`, or `None` after saying the test was skipped; with `CI=true` it must be there.
fn promtool(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        // .ci/run installs Debian's prometheus package.
        keyward_testkit::skip(
            test,
            "promtool is not installed (apt-get install prometheus)",
        );
    }
    found
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests() {
    let Some(promtool) = promtool("promtool_accepts_the_alert_rules_and_their_unit_tests") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
