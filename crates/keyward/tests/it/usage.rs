//! Usage for billing: verifications and credits per key and hour or day, through
//! `GET /v1/usage` (in-process, manual clock) and `keyward usage export` (the real binary).

use serde_json::{Value, json};
use time::Duration;

use crate::KEYWARD;
use keyward_testkit::server::Server;

fn rows(report: &Value) -> Vec<(String, String, String, u64, u64)> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["start"].as_str().unwrap().to_owned(),
                r["key_id"].as_str().unwrap().to_owned(),
                r["code"].as_str().unwrap().to_owned(),
                r["verifications"].as_u64().unwrap(),
                r["credits"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_counted_per_key_hour_and_outcome_and_reported_per_hour_and_day() {
    let s = Server::start().await;
    let (paid, paid_id) = s
        .create(json!({
            "owner": "alice",
            "tenant": "acme",
            "quota": {"credits": 100},
            "limits": [{"name": "hourly", "limit": 8, "period_seconds": 3600}],
        }))
        .await;
    let (free, free_id) = s.create(json!({"owner": "bob"})).await;

    // 09:00-10:00: two admitted requests of cost 5 and 3 use up the limit; the next is refused.
    assert_eq!(
        s.verify(json!({"key": paid, "cost": 5})).await["code"],
        "VALID"
    );
    assert_eq!(
        s.verify(json!({"key": paid, "cost": 3})).await["code"],
        "VALID"
    );
    assert_eq!(s.verify(json!({"key": paid})).await["code"], "RATE_LIMITED");
    assert_eq!(s.verify(json!({"key": free})).await["code"], "VALID");
    // Unknown and malformed keys belong to nobody and are not billed.
    assert_eq!(
        s.verify(json!({"key": "kw_live_nope"})).await["code"],
        "MALFORMED"
    );
    let unknown = keyward_testkit::keys::stranger("kw_live");
    assert_eq!(s.verify(json!({"key": unknown})).await["code"], "NOT_FOUND");
    // Nothing is in the store before the flush: counting stays off the verify path.
    let before = s.admin("GET", "/v1/usage", None).await;
    assert_eq!(before.status, 200);
    assert_eq!(before.json()["items"], json!([]));
    assert_eq!(s.engine.flush_usage().await.unwrap(), 3);

    // 10:00-11:00: the free key is used, then revoked and tried again.
    s.clock.advance(Duration::hours(1));
    assert_eq!(s.verify(json!({"key": free})).await["code"], "VALID");
    let revoked = s.revoke(&free_id, "closed").await;
    assert_eq!(revoked.status, 200);
    assert_eq!(s.verify(json!({"key": free})).await["code"], "REVOKED");
    assert_eq!(s.engine.flush_usage().await.unwrap(), 2);

    let hourly = s
        .admin(
            "GET",
            "/v1/usage?from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(
        hourly.status,
        200,
        "{}",
        String::from_utf8_lossy(&hourly.body)
    );
    let hourly = hourly.json();
    assert_eq!(hourly["granularity"], "hour");
    assert_eq!(hourly["from"], "2026-06-01T00:00:00Z");
    assert_eq!(hourly["to"], "2026-06-02T00:00:00Z");
    assert_eq!(hourly.get("next_cursor"), None);
    let nine = "2026-06-01T09:00:00Z".to_owned();
    let ten = "2026-06-01T10:00:00Z".to_owned();
    let mut expected_nine = vec![
        (
            nine.clone(),
            paid_id.clone(),
            "RATE_LIMITED".to_owned(),
            1,
            0,
        ),
        (nine.clone(), paid_id.clone(), "VALID".to_owned(), 2, 8),
        (nine.clone(), free_id.clone(), "VALID".to_owned(), 1, 0),
    ];
    expected_nine.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
    let mut expected = expected_nine;
    expected.push((ten.clone(), free_id.clone(), "REVOKED".to_owned(), 1, 0));
    expected.push((ten.clone(), free_id.clone(), "VALID".to_owned(), 1, 0));
    assert_eq!(rows(&hourly), expected);
    let alice_row = hourly["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_id"] == paid_id.as_str())
        .unwrap();
    assert_eq!(alice_row["owner"], "alice");
    assert_eq!(alice_row["tenant"], "acme");

    // Per day, the free key's two VALID hours add up; `to` defaults to now, rounded up.
    let daily = s
        .admin("GET", "/v1/usage?granularity=day", None)
        .await
        .json();
    assert_eq!(daily["granularity"], "day");
    assert_eq!(daily["to"], "2026-06-02T00:00:00Z");
    assert_eq!(daily["from"], "2026-05-03T00:00:00Z");
    let day = "2026-06-01T00:00:00Z".to_owned();
    let free_rows: Vec<_> = rows(&daily)
        .into_iter()
        .filter(|r| r.1 == free_id)
        .collect();
    assert_eq!(
        free_rows,
        vec![
            (day.clone(), free_id.clone(), "REVOKED".to_owned(), 1, 0),
            (day.clone(), free_id.clone(), "VALID".to_owned(), 2, 0),
        ]
    );

    // Filters: by key, owner and tenant.
    assert_eq!(daily_rows(&s, &format!("key_id={paid_id}")).await.len(), 2);
    assert_eq!(daily_rows(&s, "owner=bob").await, free_rows);
    let acme = daily_rows(&s, "tenant=acme").await;
    assert_eq!(acme.len(), 2);
    assert!(acme.iter().all(|r| r.1 == paid_id));
    assert!(daily_rows(&s, "owner=nobody").await.is_empty());

    // Pages of one walk all five hourly rows in order.
    let mut walked = Vec::new();
    let mut path = "/v1/usage?from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z&limit=1".to_owned();
    loop {
        let page = s.admin("GET", &path, None).await.json();
        walked.extend(rows(&page));
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(cursor) => {
                path = format!(
                    "/v1/usage?from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z&limit=1&cursor={cursor}"
                )
            }
            None => break,
        }
        assert!(walked.len() <= 5, "the cursor must move forward");
    }
    assert_eq!(walked, expected);
}

async fn daily_rows(s: &Server, query: &str) -> Vec<(String, String, String, u64, u64)> {
    let r = s
        .admin("GET", &format!("/v1/usage?granularity=day&{query}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    rows(&r.json())
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_refuses_bad_queries_and_needs_usage_read() {
    let s = Server::start().await;
    for (query, field) in [
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z", "from"),
        ("from=2026-01-01T00:00:00Z&to=2026-06-01T00:00:00Z", "from"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=-1", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=hour.1.NOT_A_CODE.key_x", "cursor"),
        // Times whose buckets leave the calendar, or that come before the epoch.
        ("to=9999-12-31T23:00:01Z", "to"),
        ("to=9999-12-31T23:30:00-01:00&granularity=day", "to"),
        ("to=0000-01-01T12:00:00Z", "to"),
        ("from=1969-12-31T00:00:00Z", "from"),
        ("to=1970-01-01T05:00:00Z", "from"),
        // A cursor of an hourly page does not continue a daily one, nor another range.
        (
            "granularity=day&cursor=hour.1780304400000.VALID.key_x",
            "cursor",
        ),
        (
            "from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z&cursor=hour.1780000000000.VALID.key_x",
            "cursor",
        ),
        (
            "from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z&cursor=hour.1780304400001.VALID.key_x",
            "cursor",
        ),
    ] {
        let r = s.admin("GET", &format!("/v1/usage?{query}"), None).await;
        let body = r.problem(400, "invalid_field");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    s.admin("GET", "/v1/usage?colour=blue", None)
        .await
        .problem(400, "invalid_request");
    // A 93-day hourly range is allowed, a day range of 10 years is not.
    assert_eq!(
        s.admin(
            "GET",
            "/v1/usage?from=2026-03-01T00:00:00Z&to=2026-06-01T00:00:00Z",
            None
        )
        .await
        .status,
        200
    );
    s.admin(
        "GET",
        "/v1/usage?granularity=day&from=2016-01-01T00:00:00Z&to=2026-06-01T00:00:00Z",
        None,
    )
    .await
    .problem(400, "invalid_field");

    s.http
        .call("GET", "/v1/usage", None, None)
        .await
        .problem(401, "unauthenticated");
    let reader = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "support", "permissions": ["keys.read"]})),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = s.http.call("GET", "/v1/usage", Some(&reader), None).await;
    assert!(
        forbidden.problem(403, "forbidden")["detail"]
            .as_str()
            .unwrap()
            .contains("usage.read")
    );
    let billing = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "billing", "permissions": ["usage.read"]})),
        )
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.http
            .call("GET", "/v1/usage", Some(&billing), None)
            .await
            .status,
        200
    );
}

/// The real binary: counts survive a clean shutdown (flushed on the way out), and
/// `keyward usage export` writes them as CSV, to standard output or a file.
#[test]
fn usage_export_writes_csv_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    // No periodic flush during the test: only the shutdown's flush can write the counts.
    let args = ["--data-dir", &data, "--last-used-flush-seconds", "3600"];
    let mut server = KEYWARD.serve_with(&args, dir.path());
    let root = server.root_key.clone().unwrap();
    let owner = "team, \"quoted\"";
    let created = server.cli(
        &root,
        &["keys", "create", "--owner", owner, "--output", "json"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["record"]["key_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert!(server.cli(&root, &["verify", &key]).status.success());
    }
    server.terminate();

    let server = KEYWARD.serve_with(&args, dir.path());
    let out = server.cli(&root, &["usage", "export", "--granularity", "day"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, rows) = parse_csv(&out.stdout);
    assert_eq!(
        header,
        [
            "start",
            "key_id",
            "owner",
            "tenant",
            "code",
            "verifications",
            "credits"
        ]
    );
    // The verifications may straddle midnight (two daily rows); together they are three.
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(row[0].ends_with("T00:00:00Z"), "{row:?}");
        assert_eq!(&row[1..5], [key_id.as_str(), owner, "", "VALID"], "{row:?}");
        assert_eq!(row[6], "0");
    }
    assert_eq!(verifications(&rows), 3);

    let file = dir.path().join("usage.csv");
    let out = server.cli(
        &root,
        &[
            "usage",
            "export",
            "--key-id",
            &key_id,
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let (_, hourly) = parse_csv(&std::fs::read(&file).unwrap());
    assert!(hourly.iter().all(|row| row[1] == key_id));
    assert_eq!(verifications(&hourly), 3);

    // A refused export names the problem in one line, and leaves an earlier file alone.
    let bad = server.cli(
        &root,
        &[
            "usage",
            "export",
            "--granularity",
            "week",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("granularity"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (_, kept) = parse_csv(&std::fs::read(&file).unwrap());
    assert_eq!(kept, hourly);
}

fn parse_csv(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn verifications(rows: &[Vec<String>]) -> u64 {
    rows.iter().map(|r| r[5].parse::<u64>().unwrap()).sum()
}
