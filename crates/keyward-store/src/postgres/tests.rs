//! PostgreSQL store tests. They need a server: set `KEYWARD_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Without it each test says it was skipped, and
//! with `CI=true` a missing URL fails the test instead. Every test works in a schema of its
//! own (`keyward_testkit::postgres::Schema`), so they run in parallel against one database.

use std::time::Duration;

use keyward_core::audit::{AuditAction, AuditDraft, ChainVerifier};
use keyward_core::quota::QuotaConfig;
use keyward_core::record::{KeyKind, Plan};
use keyward_testkit::postgres::Schema;
use serde_json::json;

use super::feed::{PgChangeFeed, parse_payload};
use super::*;
use crate::testsuite::{T0, draft, new_key_write};
use crate::{AuditFilter, Change, ChangeFeed, CreditOp, KeyStore, PlanWrite};
use keyward_core::key::KeyHash;

/// How long a test waits for a change to arrive before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// The testkit's schema of one test, with this crate's store built on it; [`TestDb::drop`]
/// removes the schema at the end.
struct TestDb(Schema);

impl std::ops::Deref for TestDb {
    type Target = Schema;

    fn deref(&self) -> &Schema {
        &self.0
    }
}

impl TestDb {
    /// The test database, or `None` (after saying so) when none is configured.
    fn new(test: &str) -> Option<Self> {
        Schema::new(test).map(Self)
    }

    fn options(&self, node: &str) -> PostgresOptions {
        PostgresOptions {
            schema: Some(self.schema.clone()),
            application_name: format!("{}_{node}", self.schema),
            ..PostgresOptions::default()
        }
    }

    /// A store on this test's schema; `node` names its connections.
    async fn store(&self, node: &str) -> PostgresStore {
        PostgresStore::connect(&self.url, self.options(node))
            .await
            .unwrap()
    }

    async fn drop(self) {
        self.0.drop().await;
    }
}

async fn next(feed: &mut Box<dyn ChangeFeed>) -> Change {
    match next_raw(feed).await {
        // The write time is checked on its own (`key_changes_carry_their_write_time`).
        Change::Key { key_id, .. } => Change::Key {
            key_id,
            written_at: None,
        },
        other => other,
    }
}

async fn next_raw(feed: &mut Box<dyn ChangeFeed>) -> Change {
    tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("a change within the timeout")
        .unwrap()
}

#[tokio::test]
async fn key_changes_carry_their_write_time() {
    let Some(db) = TestDb::new("key_changes_carry_their_write_time") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let mut feed = a.changes().await.unwrap().expect("postgres has a feed");
    let key_id = "key_AAAAAAAAAAAAAAAAAAAW";
    let write = new_key_write(key_id, "kw_live_time");
    let time = write.audit.time;
    b.write_key(write).await.unwrap();
    let Change::Key { written_at, .. } = next_raw(&mut feed).await else {
        panic!("expected a key change");
    };
    let millis = |t: time::OffsetDateTime| t.unix_timestamp_nanos() / 1_000_000;
    assert_eq!(written_at.map(millis), Some(millis(time)));
}

#[tokio::test]
async fn behaviour_suite_passes_on_postgres() {
    let Some(db) = TestDb::new("behaviour_suite_passes_on_postgres") else {
        return;
    };
    let store = db.store("a").await;
    crate::testsuite::run_all(&store).await;
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let Some(db) = TestDb::new("migrations_are_idempotent") else {
        return;
    };
    let first = db.store("a").await;
    first
        .write_key(new_key_write("key_AAAAAAAAAAAAAAAAAAAA", "kw_live_again"))
        .await
        .unwrap();
    first.close().await;
    PostgresStore::migrate(&db.url, db.options("m"))
        .await
        .unwrap();
    let second = db.store("b").await;
    let found = second
        .find_by_hash(&KeyHash::sha256_of("kw_live_again"), T0)
        .await
        .unwrap();
    assert_eq!(found.unwrap().record.key_id, "key_AAAAAAAAAAAAAAAAAAAA");
    second.close().await;
    db.drop().await;
}

#[tokio::test]
async fn audit_log_rejects_updates_and_deletes() {
    let Some(db) = TestDb::new("audit_log_rejects_updates_and_deletes") else {
        return;
    };
    let store = db.store("a").await;
    store
        .write_key(new_key_write("key_AAAAAAAAAAAAAAAAAAAB", "kw_live_x"))
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn statement_timeout_applies_to_every_connection() {
    let Some(db) = TestDb::new("statement_timeout_applies_to_every_connection") else {
        return;
    };
    let store = PostgresStore::connect(
        &db.url,
        PostgresOptions {
            statement_timeout: Duration::from_millis(200),
            ..db.options("a")
        },
    )
    .await
    .unwrap();
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(&store.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    store.close().await;
    db.drop().await;
}

/// Issue 10, finding 5: a pool with every connection busy is saturation, not an outage. With
/// one connection held, a lookup times out waiting for the pool; the server answered a call
/// moments ago, so the error is `Saturated` (which the engine sheds without marking the store
/// down or failing open). The same timeout with no answer from the server in the last acquire
/// timeout is an outage (`Backend`): sqlx reports a refused connection the same way.
#[tokio::test]
async fn finding_5_a_full_pool_is_saturation_not_an_outage() {
    let Some(db) = TestDb::new("finding_5_a_full_pool_is_saturation_not_an_outage") else {
        return;
    };
    let store = PostgresStore::connect(
        &db.url,
        PostgresOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(300),
            ..db.options("a")
        },
    )
    .await
    .unwrap();
    store.ping().await.unwrap();
    let held = store.pool.acquire().await.unwrap();
    let hash = KeyHash::sha256_of("kw_live_flood");
    let err = store.find_by_hash(&hash, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Saturated(_)), "{err:?}");

    // A node whose server has not answered within the acquire timeout: an outage.
    let silent = PostgresStore {
        answered: Arc::new(Answered::new()),
        ..store.clone()
    };
    let err = silent.find_by_hash(&hash, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");

    drop(held);
    assert_eq!(store.find_by_hash(&hash, T0).await.unwrap(), None);
    store.close().await;
    db.drop().await;
}

#[test]
fn a_server_that_never_answered_has_not_answered_lately() {
    let answered = Answered::new();
    assert!(!answered.within(Duration::from_secs(3600)));
    answered.note();
    assert!(answered.within(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_read_survives_its_connection_being_killed() {
    let Some(db) = TestDb::new("a_read_survives_its_connection_being_killed") else {
        return;
    };
    let store = db.store("a").await;
    store.ping().await.unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}_a'",
        db.schema
    ))
    .await;
    // The pool's connection is dead; the read is retried once on a new one.
    store.ping().await.unwrap();
    assert_eq!(store.change_head().await.unwrap(), 0);
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn change_feed_delivers_other_nodes_writes() {
    let Some(db) = TestDb::new("change_feed_delivers_other_nodes_writes") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let mut feed = a.changes().await.unwrap().expect("postgres has a feed");
    let key_id = "key_AAAAAAAAAAAAAAAAAAAC";
    b.write_key(new_key_write(key_id, "kw_live_feed"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Change::Key {
            key_id: key_id.into(),
            written_at: None
        }
    );
    // A write that fails sends nothing: its notification rolls back with it.
    assert!(matches!(
        b.write_key(new_key_write(key_id, "kw_live_dup")).await,
        Err(StoreError::Duplicate)
    ));
    let plan = Plan {
        plan_id: "pro".into(),
        limits: vec![],
        quota: None,
        permissions: vec![],
        version: 1,
        created_at: T0,
        updated_at: T0,
    };
    b.write_plan(PlanWrite {
        plan,
        expected_version: None,
        delete: false,
        audit: draft(AuditAction::PlanCreate, "pro"),
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Change::Plan {
            plan_id: "pro".into()
        }
    );
    let config = QuotaConfig {
        credits: 10,
        refill: None,
    };
    // Taking credits is not a change of how keys verify, so it is not announced.
    b.take_credits(key_id, &config, 1, T0).await.unwrap();
    b.adjust_credits(
        key_id,
        &config,
        0,
        CreditOp::Set(5),
        draft(AuditAction::CreditsAdjust, key_id),
        T0,
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Change::Credits {
            key_id: key_id.into()
        }
    );
    // Another schema's writes are not this feed's business.
    let Some(other) = TestDb::new("change_feed_delivers_other_nodes_writes") else {
        return;
    };
    let stranger = other.store("c").await;
    stranger
        .write_key(new_key_write("key_AAAAAAAAAAAAAAAAAAAD", "kw_live_other"))
        .await
        .unwrap();
    b.write_key(new_key_write("key_AAAAAAAAAAAAAAAAAAAE", "kw_live_mine"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Change::Key {
            key_id: "key_AAAAAAAAAAAAAAAAAAAE".into(),
            written_at: None
        }
    );
    drop(feed);
    for store in [a, b, stranger] {
        store.close().await;
    }
    other.drop().await;
    db.drop().await;
}

#[tokio::test]
async fn a_killed_feed_connection_resyncs_then_delivers() {
    let Some(db) = TestDb::new("a_killed_feed_connection_resyncs_then_delivers") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let mut feed = a.changes().await.unwrap().unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}_a-feed'",
        db.schema
    ))
    .await;
    // Errors may come first (while the feed cannot listen); the first item after them is a
    // resync, never a change that could hide a missed one.
    let resync = tokio::time::timeout(WAIT, async {
        loop {
            match feed.next().await {
                Ok(change) => return change,
                Err(_) => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(resync, Change::Resync);
    let key_id = "key_AAAAAAAAAAAAAAAAAAAF";
    b.write_key(new_key_write(key_id, "kw_live_after"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Change::Key {
            key_id: key_id.into(),
            written_at: None
        }
    );
    drop(feed);
    a.close().await;
    b.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_gap_is_reported_even_when_calls_are_cancelled_while_it_reconnects() {
    let Some(db) = TestDb::new("a_gap_is_reported_even_when_calls_are_cancelled") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let mut feed = a.changes().await.unwrap().unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}_a-feed'",
        db.schema
    ))
    .await;
    // A change committed while the feed has no connection is missed by LISTEN.
    b.write_key(new_key_write("key_AAAAAAAAAAAAAAAAAAAG", "kw_live_gap"))
        .await
        .unwrap();
    // Callers that give up on `next` (a select!, a timeout) cancel it at any point, including
    // in the middle of reconnecting; none of that may swallow the gap. The first item any
    // call returns, cancelled attempts included, must be the resync.
    let mut first = None;
    'attempts: for micros in [1, 10, 100, 1_000, 5_000, 20_000] {
        for _ in 0..5 {
            if let Ok(Ok(change)) =
                tokio::time::timeout(Duration::from_micros(micros), feed.next()).await
            {
                first = Some(change);
                break 'attempts;
            }
        }
    }
    let first = match first {
        Some(change) => change,
        None => tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(change) = feed.next().await {
                    return change;
                }
            }
        })
        .await
        .unwrap(),
    };
    assert_eq!(first, Change::Resync, "a lost connection must resync first");
    drop(feed);
    a.close().await;
    b.close().await;
    db.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_feed_error_then_a_resync() {
    let Some(db) = TestDb::new("an_unreachable_server_is_a_feed_error_then_a_resync") else {
        return;
    };
    let a = db.store("a").await;
    // A feed pointed at a port nothing listens on stands in for a server that went away.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut feed = PgChangeFeed {
        connect: a.feed_connect.clone().port(port),
        channel: a.channel.clone(),
        timeout: Duration::from_secs(2),
        idle_check: Duration::from_secs(10),
        listener: None,
        resync_due: true,
    };
    let result = tokio::time::timeout(WAIT, feed.next()).await.unwrap();
    assert!(result.is_err(), "{result:?}");
    // Once it can listen again, the first item is a resync.
    feed.connect = a.feed_connect.clone();
    assert_eq!(
        tokio::time::timeout(WAIT, feed.next())
            .await
            .unwrap()
            .unwrap(),
        Change::Resync
    );
    drop(feed);
    a.close().await;
    db.drop().await;
}

#[tokio::test]
async fn two_nodes_appending_at_once_leave_one_valid_chain() {
    let Some(db) = TestDb::new("two_nodes_appending_at_once_leave_one_valid_chain") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let mut tasks = Vec::new();
    for (node, store) in [("a", a.clone()), ("b", b.clone())] {
        for worker in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    if i % 2 == 0 {
                        let key_id = format!("key_{node}{worker}{i:0>17}");
                        store
                            .write_key(new_key_write(&key_id, &format!("kw_live_{key_id}")))
                            .await
                            .unwrap();
                    } else {
                        store
                            .append_audit(AuditDraft {
                                time: T0,
                                actor: None,
                                action: AuditAction::AuthFailed,
                                target: None,
                                summary: json!({"node": node, "worker": worker, "i": i}),
                            })
                            .await
                            .unwrap();
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut verifier = ChainVerifier::default();
    let page = a
        .list_audit(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 80);
    for (i, event) in page.items.iter().enumerate() {
        assert_eq!(event.seq, i as i64 + 1);
        verifier.check(event).unwrap();
    }
    assert_eq!(a.change_head().await.unwrap(), 80);
    a.close().await;
    b.close().await;
    db.drop().await;
}

#[tokio::test]
async fn two_nodes_bootstrapping_at_once_mint_one_root_key() {
    let Some(db) = TestDb::new("two_nodes_bootstrapping_at_once_mint_one_root_key") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let root = |key_id: &str| {
        let mut write = new_key_write(key_id, &format!("kwroot_{key_id}"));
        write.record.kind = KeyKind::Root;
        write.audit.action = AuditAction::RootCreate;
        write
    };
    let (first, second) = tokio::join!(
        a.create_first_root_key(root("key_AAAAAAAAAAAAAAAAAAA1")),
        b.create_first_root_key(root("key_AAAAAAAAAAAAAAAAAAA2")),
    );
    let written = [first.unwrap(), second.unwrap()];
    assert_eq!(written.iter().filter(|w| w.is_some()).count(), 1);
    assert_eq!(a.count_root_keys().await.unwrap(), 1);
    a.close().await;
    b.close().await;
    db.drop().await;
}

#[tokio::test]
async fn credits_taken_by_two_nodes_at_once_are_never_spent_twice() {
    let Some(db) = TestDb::new("credits_taken_by_two_nodes_at_once_are_never_spent_twice") else {
        return;
    };
    let (a, b) = (db.store("a").await, db.store("b").await);
    let key_id = "key_AAAAAAAAAAAAAAAAAAAG";
    a.write_key(new_key_write(key_id, "kw_live_credits"))
        .await
        .unwrap();
    let config = QuotaConfig {
        credits: 100,
        refill: None,
    };
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..20 {
                got += store.take_credits(key_id, &config, 3, T0).await.unwrap().0;
            }
            got
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 100, "exactly the balance is handed out");
    assert_eq!(a.balance(key_id, &config, T0).await.unwrap().remaining, 0);
    a.close().await;
    b.close().await;
    db.drop().await;
}

#[tokio::test]
async fn bad_urls_and_schemas_are_clear_open_errors() {
    let err = PostgresStore::connect("mysql://nope", PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let err = PostgresStore::connect(
        "postgres://u:hunter2@127.0.0.1:1/db",
        PostgresOptions {
            schema: Some("Robert'); DROP TABLE".into()),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("schema"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is not echoed: {text}"
    );
    for bad in ["", "1abc", "pg_x", "UPPER", "a-b", &"x".repeat(41)] {
        assert!(check_schema(bad).is_err(), "{bad:?}");
    }
    assert!(check_schema("kw_test_1").is_ok());
    assert_eq!(
        parse_payload("plan:a:b"),
        Some(Change::Plan {
            plan_id: "a:b".into()
        })
    );
    assert_eq!(parse_payload("nonsense"), None);
    // Payloads from writers that predate the write time still parse.
    assert_eq!(
        parse_payload("key:key_A"),
        Some(Change::Key {
            key_id: "key_A".into(),
            written_at: None
        })
    );
    assert_eq!(
        parse_payload("key:key_A@1000"),
        Some(Change::Key {
            key_id: "key_A".into(),
            written_at: Some(time::OffsetDateTime::from_unix_timestamp(1).unwrap())
        })
    );
    assert_eq!(
        split_schema("postgres://h/db?sslmode=disable&schema=kw&application_name=x"),
        (
            "postgres://h/db?sslmode=disable&application_name=x".to_owned(),
            Some("kw".to_owned())
        )
    );
    assert_eq!(
        split_schema("postgres://h/db?schema=kw"),
        ("postgres://h/db".to_owned(), Some("kw".to_owned()))
    );
    assert_eq!(
        split_schema("postgres://h/db"),
        ("postgres://h/db".to_owned(), None)
    );
}

#[tokio::test]
async fn the_schema_can_come_from_the_url() {
    let Some(db) = TestDb::new("the_schema_can_come_from_the_url") else {
        return;
    };
    let store = PostgresStore::connect(
        &format!("{}?schema={}", db.url, db.schema),
        PostgresOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        store.location().contains(&db.schema),
        "{}",
        store.location()
    );
    assert_eq!(store.channel(), format!("keyward_changes_{}", db.schema));
    store.close().await;
    db.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_open_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = PostgresStore::connect(
        &format!("postgres://keyward:secret@127.0.0.1:{port}/db"),
        PostgresOptions {
            acquire_timeout: Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// An hourly usage page can seek the bytewise index from its start (the row value) and needs
/// no sort, so its cost does not grow with the rows of the window before it (found linear by
/// bench/scale.sh). Sequential scans are off for the plan: on a small table PostgreSQL rightly
/// prefers one.
#[tokio::test]
async fn an_hourly_usage_page_seeks_the_index() {
    use crate::dialect::Dialect as _;
    let Some(db) = TestDb::new("an_hourly_usage_page_seeks_the_index") else {
        return;
    };
    let store = db.store("a").await;
    // An hour of traffic on 5,000 keys, not yet analysed: the plan must not depend on
    // statistics the planner may not have yet.
    let hour = T0;
    let counts: Vec<keyward_core::usage::UsageCount> = (0..5_000)
        .map(|i| keyward_core::usage::UsageCount {
            start: hour,
            key_id: format!("key_{i:020}"),
            owner: "o".into(),
            tenant: None,
            code: keyward_core::verify::VerifyCode::Valid,
            verifications: 1,
            credits: 0,
        })
        .collect();
    store.add_usage(&counts).await.unwrap();
    let hour = keyward_core::audit::unix_millis(hour);
    let mut tx = store.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    // A constant of this crate, not input: safe to format into the statement.
    let explain = format!("EXPLAIN {}", sqlx::Postgres::LIST_USAGE_HOURLY);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind(hour + 3_600_000)
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(hour)
        .bind("key_00000000000000002500")
        .bind("VALID")
        .bind(10_i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("usage_hourly_pkey") && plan.contains("ROW(hour"),
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");
    tx.rollback().await.unwrap();
    store.close().await;
    db.drop().await;
}

/// A page of keys reads one index in seq order from its cursor and needs no sort, so its cost
/// does not grow with the key count (found linear on SQLite by bench/scale.sh).
#[tokio::test]
async fn a_page_of_keys_needs_no_sort() {
    let Some(db) = TestDb::new("a_page_of_keys_needs_no_sort") else {
        return;
    };
    let store = db.store("a").await;
    let mut tx = store.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The statement of `reads::list_keys`, with its binds.
    let explain = format!("EXPLAIN {}", crate::reads::LIST_KEYS);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind("api")
        .bind(0_i64)
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(0_i64)
        .bind(101_i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("Index Scan"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
    tx.rollback().await.unwrap();
    store.close().await;
    db.drop().await;
}
