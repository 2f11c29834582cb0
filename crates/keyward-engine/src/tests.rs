//! Engine tests over the real SQLite store, with a manual clock and a store wrapper that
//! counts lookups (to prove what the cache answers without the store).

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use keyward_core::audit::AuditEvent;
use keyward_store::{FoundKey, SqliteStore};

use time::macros::datetime;

use super::*;
use crate::clock::ManualClock;

const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

/// Pauses one `find_by_hash` after its store read: signals `.0`, waits for `.1`.
pub(crate) type Gate = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

pub(crate) struct CountingStore {
    inner: SqliteStore,
    pub(crate) finds: AtomicUsize,
    gets: AtomicUsize,
    pub(crate) gate: tokio::sync::Mutex<Option<Gate>>,
    /// When set, reads fail as if the backend could not be reached.
    pub(crate) down: std::sync::atomic::AtomicBool,
    /// When set, reads fail as a saturated store's do (no connection free in time).
    pub(crate) saturated: std::sync::atomic::AtomicBool,
    /// The change feed `changes()` hands out (once), as a shared store would.
    feed: std::sync::Mutex<Option<ChannelFeed>>,
}

impl CountingStore {
    /// A SQLite store in `dir` behind the wrapper.
    pub(crate) async fn open(dir: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            inner: SqliteStore::open(dir).await.unwrap(),
            finds: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            gate: tokio::sync::Mutex::new(None),
            down: std::sync::atomic::AtomicBool::new(false),
            saturated: std::sync::atomic::AtomicBool::new(false),
            feed: std::sync::Mutex::new(None),
        })
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("connection refused (test)".into()));
        }
        if self.saturated.load(Ordering::SeqCst) {
            return Err(StoreError::Saturated("pool timed out (test)".into()));
        }
        Ok(())
    }
}

/// A change feed driven by the test.
struct ChannelFeed(tokio::sync::mpsc::UnboundedReceiver<Result<Change, StoreError>>);

#[async_trait]
impl keyward_store::ChangeFeed for ChannelFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        match self.0.recv().await {
            Some(item) => item,
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let found = self.inner.find_by_hash(hash, now).await;
        let gate = self.gate.lock().await.take();
        if let Some((reached, release)) = gate {
            reached.send(()).unwrap();
            release.await.unwrap();
        }
        found
    }
    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        self.inner.get_key(key_id, now).await
    }
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError> {
        self.inner.list_keys(filter).await
    }
    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError> {
        self.inner.write_key(write).await
    }
    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError> {
        self.inner.append_audit(draft).await
    }
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError> {
        self.inner.list_audit(filter).await
    }
    async fn touch_last_used(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        self.inner.touch_last_used(uses).await
    }
    async fn add_usage(
        &self,
        counts: &[keyward_core::usage::UsageCount],
    ) -> Result<(), StoreError> {
        self.check_up()?;
        self.inner.add_usage(counts).await
    }
    async fn list_usage(
        &self,
        filter: &keyward_store::UsageFilter,
    ) -> Result<keyward_store::UsagePage, StoreError> {
        self.inner.list_usage(filter).await
    }
    async fn count_root_keys(&self) -> Result<u64, StoreError> {
        self.inner.count_root_keys().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check_up()?;
        self.inner.ping().await
    }
    async fn changes(&self) -> Result<Option<Box<dyn keyward_store::ChangeFeed>>, StoreError> {
        let feed = self.feed.lock().unwrap().take();
        Ok(feed.map(|f| Box::new(f) as Box<dyn keyward_store::ChangeFeed>))
    }
    async fn change_head(&self) -> Result<i64, StoreError> {
        self.inner.change_head().await
    }
    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        self.check_up()?;
        self.inner.get_plan(plan_id).await
    }
    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.inner.list_plans().await
    }
    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError> {
        self.inner.write_plan(write).await
    }
    async fn take_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<(u64, keyward_core::quota::Balance), StoreError> {
        self.inner.take_credits(key_id, config, want, now).await
    }
    async fn adjust_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        unspent: u64,
        op: CreditOp,
        audit: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<keyward_core::quota::Balance, StoreError> {
        self.inner
            .adjust_credits(key_id, config, unspent, op, audit, now)
            .await
    }
    async fn give_back_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        amount: u64,
        period: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.inner
            .give_back_credits(key_id, config, amount, period, now)
            .await
    }
    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<keyward_core::quota::Balance, StoreError> {
        self.check_up()?;
        self.inner.balance(key_id, config, now).await
    }
}

pub(crate) struct Fixture {
    pub(crate) engine: Keyward,
    pub(crate) store: Arc<CountingStore>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) root: Principal,
    pub(crate) root_key: PlaintextKey,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn finds(&self) -> usize {
        self.store.finds.load(Ordering::SeqCst)
    }
    pub(crate) fn store_reads(&self) -> usize {
        self.finds() + self.store.gets.load(Ordering::SeqCst)
    }
    pub(crate) async fn create(&self, permissions: &[&str]) -> Created {
        let spec = NewKey {
            owner: "billing-team".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ..NewKey::default()
        };
        self.engine.create_key(&self.root, spec).await.unwrap()
    }
    async fn code(&self, key: &str) -> VerifyCode {
        self.engine
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap()
            .code
    }
}

pub(crate) async fn fixture_with(config: EngineConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = CountingStore::open(dir.path()).await;
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Keyward::new(store.clone(), clock.clone(), config);
    let boot = engine
        .bootstrap()
        .await
        .unwrap()
        .expect("an empty store bootstraps a root key");
    assert!(
        engine.bootstrap().await.unwrap().is_none(),
        "bootstrap happens once"
    );
    Fixture {
        root: Principal::new(boot.record.clone()),
        root_key: boot.key,
        engine,
        store,
        clock,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(EngineConfig::default()).await
}

#[tokio::test]
async fn malformed_keys_never_reach_the_store() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let mut bad_checksum = created.key.expose().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let before = f.store_reads();
    for input in [
        "",
        "garbage",
        "kw_live_short",
        bad_checksum.as_str(),
        &"x".repeat(100_000),
    ] {
        assert_eq!(f.code(input).await, VerifyCode::Malformed, "{input:.40}");
    }
    assert_eq!(f.store_reads(), before);
}

#[tokio::test]
async fn cached_valid_verify_does_not_touch_the_store() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    let after_first = f.store_reads();
    for _ in 0..10 {
        assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    }
    assert_eq!(f.store_reads(), after_first);
}

#[tokio::test]
async fn not_found_is_cached_and_bounded() {
    let mut config = EngineConfig::default();
    config.cache.max_not_found = 50;
    let f = fixture_with(config).await;
    let prefix = Prefix::new("kw_live").unwrap();
    let unknown = generate_key(&prefix, &mut rand::rngs::SysRng).unwrap();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    let finds = f.finds();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    assert_eq!(
        f.finds(),
        finds,
        "a repeated unknown key is answered from the negative cache"
    );
    for _ in 0..500 {
        let k = generate_key(&prefix, &mut rand::rngs::SysRng).unwrap();
        assert_eq!(f.code(k.expose()).await, VerifyCode::NotFound);
    }
    let sizes = f.engine.cache_sizes();
    assert!(sizes.not_found <= 50, "{sizes:?}");
}

#[tokio::test]
async fn writes_invalidate_the_cache_at_once() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let read = PermissionQuery::parse("orders.read").unwrap();
    let req = VerifyRequest {
        query: Some(&read),
        ..VerifyRequest::default()
    };
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );

    let patch = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    f.engine.update_key(&f.root, &id, patch).await.unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Disabled
    );

    let patch = KeyPatch {
        enabled: Some(true),
        permissions: Some(vec!["orders.write".into()]),
        ..KeyPatch::default()
    };
    f.engine.update_key(&f.root, &id, patch).await.unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::InsufficientPermissions
    );

    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "leaked")
        .await
        .unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert!(matches!(
        f.engine
            .revoke_key(&f.root, KeyKind::Api, &id, "again")
            .await,
        Err(EngineError::Revoked { .. })
    ));
    assert!(matches!(
        f.engine
            .update_key(
                &f.root,
                &id,
                KeyPatch {
                    enabled: Some(true),
                    ..KeyPatch::default()
                }
            )
            .await,
        Err(EngineError::Revoked { .. })
    ));
}

#[tokio::test]
async fn rotation_grace_period_and_second_rotation() {
    let f = fixture().await;
    let first = f.create(&[]).await;
    let id = first.record.key_id.clone();
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Valid);

    let second = f
        .engine
        .rotate_key(&f.root, &id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(second.record.key_id, id, "key_id stays the same");
    assert_eq!(
        second.plan.previous.as_ref().unwrap().expires_at,
        T0 + Duration::hours(1)
    );
    let old = f
        .engine
        .verify(first.key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(old.code, VerifyCode::Valid);
    assert_eq!(old.deprecated_until, Some(T0 + Duration::hours(1)));
    let new = f
        .engine
        .verify(second.key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!((new.code, new.deprecated_until), (VerifyCode::Valid, None));
    assert_eq!(second.record.secrets.len(), 2);

    // Rotating again during the grace period ends the oldest secret at once.
    f.clock.advance(Duration::minutes(10));
    let third = f
        .engine
        .rotate_key(&f.root, &id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(third.plan.ended.len(), 1);
    assert_eq!(third.plan.ended[0].start, first.record.secrets[0].start);
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Valid);
    assert_eq!(f.code(third.key.expose()).await, VerifyCode::Valid);
    assert_eq!(third.record.secrets.len(), 2, "at most two live secrets");

    // When the grace period ends the previous secret stops; the current one goes on.
    f.clock.advance(Duration::hours(1));
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(third.key.expose()).await, VerifyCode::Valid);

    // Revocation reaches every secret.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "done")
        .await
        .unwrap();
    for k in [&first.key, &second.key, &third.key] {
        assert_eq!(f.code(k.expose()).await, VerifyCode::Revoked);
    }
}

#[tokio::test]
async fn zero_grace_ends_the_old_secret_immediately() {
    let f = fixture().await;
    let first = f.create(&[]).await;
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Valid);
    let second = f
        .engine
        .rotate_key(&f.root, &first.record.key_id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(f.code(first.key.expose()).await, VerifyCode::Expired);
    assert_eq!(f.code(second.key.expose()).await, VerifyCode::Valid);
    assert!(second.key.expose().starts_with("kw_live_"));
    assert!(matches!(
        f.engine.rotate_key(&f.root, &first.record.key_id, Duration::days(31)).await,
        Err(EngineError::Invalid(e)) if e.field == "grace_period_seconds"
    ));
}

#[tokio::test]
async fn ttl_expiry_follows_the_clock() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "ci".into(),
        ttl_seconds: Some(60),
        environment: Some("test".into()),
        ..NewKey::default()
    };
    let created = f.engine.create_key(&f.root, spec).await.unwrap();
    assert!(created.key.expose().starts_with("kw_test_"));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(59));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Expired);
}

#[tokio::test]
async fn invalid_input_names_the_field() {
    let f = fixture().await;
    let cases: Vec<(NewKey, &str)> = vec![
        (
            NewKey {
                owner: " ".into(),
                ..NewKey::default()
            },
            "owner",
        ),
        (
            NewKey {
                owner: "o".into(),
                permissions: vec!["bad perm".into()],
                ..NewKey::default()
            },
            "permissions[0]",
        ),
        (
            NewKey {
                owner: "o".into(),
                routes: vec!["nope".into()],
                ..NewKey::default()
            },
            "routes[0]",
        ),
        (
            NewKey {
                owner: "o".into(),
                ttl_seconds: Some(1),
                expires_at: Some(T0),
                ..NewKey::default()
            },
            "ttl_seconds",
        ),
        (
            NewKey {
                owner: "o".into(),
                expires_at: Some(T0),
                ..NewKey::default()
            },
            "expires_at",
        ),
        (
            NewKey {
                owner: "o".into(),
                prefix: Some("BAD".into()),
                ..NewKey::default()
            },
            "prefix",
        ),
        (
            NewKey {
                owner: "o".into(),
                tenant: Some("a b".into()),
                ..NewKey::default()
            },
            "tenant",
        ),
    ];
    for (spec, field) in cases {
        match f.engine.create_key(&f.root, spec).await {
            Err(EngineError::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let bad_root = NewKey {
        owner: "o".into(),
        permissions: vec!["orders.read".into()],
        ..NewKey::default()
    };
    assert!(
        matches!(f.engine.create_root_key(&f.root, bad_root).await, Err(EngineError::Invalid(e)) if e.field == "permissions[0]")
    );
}

#[tokio::test]
async fn root_keys_and_api_keys_do_not_mix() {
    let f = fixture().await;
    let api = f.create(&["*"]).await;
    // The root key does not verify as an API key, and an API key cannot administer keyward.
    assert_eq!(f.code(f.root_key.expose()).await, VerifyCode::NotFound);
    assert!(matches!(
        f.engine
            .authenticate(
                Some(api.key.expose()),
                "keys.read",
                Some([127, 0, 0, 1].into())
            )
            .await,
        Err(AuthError::Unauthenticated)
    ));
    let principal = f
        .engine
        .authenticate(Some(f.root_key.expose()), "keys.read", None)
        .await
        .unwrap();
    assert_eq!(principal, f.root);

    let reader = f
        .engine
        .create_root_key(
            &f.root,
            NewKey {
                owner: "ops".into(),
                permissions: vec!["keys.read".into()],
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    assert!(reader.key.expose().starts_with("kwroot_"));
    assert!(
        f.engine
            .authenticate(Some(reader.key.expose()), "keys.read", None)
            .await
            .is_ok()
    );
    assert!(matches!(
        f.engine
            .authenticate(Some(reader.key.expose()), "keys.create", None)
            .await,
        Err(AuthError::Forbidden {
            permission: "keys.create"
        })
    ));
    f.engine
        .revoke_key(
            &f.root,
            KeyKind::Root,
            &reader.record.key_id,
            "rotated staff",
        )
        .await
        .unwrap();
    assert!(matches!(
        f.engine
            .authenticate(Some(reader.key.expose()), "keys.read", None)
            .await,
        Err(AuthError::Unauthenticated)
    ));
    assert!(matches!(
        f.engine.authenticate(None, "keys.read", None).await,
        Err(AuthError::Unauthenticated)
    ));

    let failures = f
        .engine
        .list_audit(None, Some("auth.failed".into()), None, None)
        .await
        .unwrap();
    let reasons: Vec<_> = failures
        .items
        .iter()
        .map(|e| e.summary["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "NOT_FOUND",
            "INSUFFICIENT_PERMISSIONS",
            "REVOKED",
            "MISSING"
        ]
    );
    assert_eq!(failures.items[0].summary["remote_addr"], "127.0.0.1");
    for event in &failures.items {
        assert!(!event.summary.to_string().contains(api.key.expose()));
        assert!(!event.summary.to_string().contains(reader.key.expose()));
    }
}

#[tokio::test]
async fn failed_authentications_are_audited_at_a_bounded_rate() {
    let f = fixture().await;
    // Anonymous failures from many addresses: the total cap holds (one address alone is
    // capped lower, see auth_audit.rs).
    for i in 0..(AUTH_FAILURE_EVENTS_PER_MINUTE + 10) {
        let from = std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let _ = f
            .engine
            .authenticate(Some("junk"), "keys.read", Some(from))
            .await;
    }
    let count = |page: Page<AuditEvent>| page.items.len();
    let audited = count(
        f.engine
            .list_audit(None, Some("auth.failed".into()), Some(1000), None)
            .await
            .unwrap(),
    );
    assert_eq!(audited, AUTH_FAILURE_EVENTS_PER_MINUTE as usize);
    f.clock.advance(Duration::minutes(1));
    let _ = f.engine.authenticate(Some("junk"), "keys.read", None).await;
    let page = f
        .engine
        .list_audit(None, Some("auth.failed".into()), Some(1000), None)
        .await
        .unwrap();
    let last = page.items.last().unwrap();
    assert_eq!(last.summary["suppressed_before"], 10);
}

#[tokio::test]
async fn last_used_is_written_by_the_flush_not_the_verify() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    f.clock.advance(Duration::seconds(5));
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
    let id = &created.record.key_id;
    assert_eq!(
        f.engine
            .get_key(KeyKind::Api, id)
            .await
            .unwrap()
            .last_used_at,
        None
    );
    assert_eq!(f.engine.flush_last_used().await.unwrap(), 1);
    assert_eq!(
        f.engine
            .get_key(KeyKind::Api, id)
            .await
            .unwrap()
            .last_used_at,
        Some(T0 + Duration::seconds(5))
    );
    assert_eq!(f.engine.flush_last_used().await.unwrap(), 0);
}

#[tokio::test]
async fn every_write_is_audited_in_an_intact_chain() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let id = created.record.key_id.clone();
    f.engine
        .update_key(
            &f.root,
            &id,
            KeyPatch {
                name: Some(Some("n".into())),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    f.engine
        .rotate_key(&f.root, &id, Duration::ZERO)
        .await
        .unwrap();
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "leaked")
        .await
        .unwrap();
    let page = f
        .engine
        .list_audit(Some(id.clone()), None, None, None)
        .await
        .unwrap();
    let actions: Vec<_> = page.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["key.create", "key.update", "key.rotate", "key.revoke"]
    );
    assert_eq!(
        page.items[1].summary,
        json!({"before": {"name": null}, "after": {"name": "n"}})
    );
    assert_eq!(page.items[3].summary["reason"], "leaked");
    assert!(
        page.items
            .iter()
            .all(|e| e.actor.as_deref() == Some(f.root.key_id.as_str()))
    );
    let report = f.engine.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, report.first_broken, report.head_seq),
        (5, None, 5)
    );
    let last = f
        .engine
        .list_audit(None, None, None, Some(4))
        .await
        .unwrap();
    assert_eq!(report.head_hash, last.items[0].hash);
}

#[tokio::test]
async fn list_limits_are_validated() {
    let f = fixture().await;
    for bad in [0, MAX_PAGE + 1] {
        let q = ListKeys {
            limit: Some(bad),
            ..ListKeys::default()
        };
        assert!(
            matches!(f.engine.list_keys(KeyKind::Api, q).await, Err(EngineError::Invalid(e)) if e.field == "limit")
        );
    }
    assert!(matches!(
        f.engine.get_key(KeyKind::Api, "not-a-key-id").await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(matches!(
        f.engine.get_key(KeyKind::Api, &f.root.key_id).await,
        Err(EngineError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_fill_that_read_the_store_before_a_revoke_is_not_cached() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    *f.store.gate.lock().await = Some((reached_tx, release_rx));
    let none = VerifyRequest::default();
    // The verify reads the key from the store, then stalls; the revoke commits meanwhile.
    let verify = f.engine.verify(created.key.expose(), &none);
    let revoke = async {
        reached_rx.await.unwrap();
        f.engine
            .revoke_key(&f.root, KeyKind::Api, &created.record.key_id, "leaked")
            .await
            .unwrap();
        release_tx.send(()).unwrap();
    };
    let (overlapping, ()) = tokio::join!(verify, revoke);
    // The overlapping call read the key before the revoke: VALID is its honest answer.
    assert_eq!(overlapping.unwrap().code, VerifyCode::Valid);
    // But what it read must not have been cached over the revoke's invalidation.
    assert_eq!(f.code(created.key.expose()).await, VerifyCode::Revoked);
}

fn limit(name: &str, limit: u64, period_seconds: u64, scope: Option<&str>) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        limit,
        period_seconds,
        burst: None,
        scope: scope.map(Into::into),
        mode: None,
    }
}

async fn create_with(f: &Fixture, spec: NewKey) -> Created {
    f.engine.create_key(&f.root, spec).await.unwrap()
}

async fn codes(f: &Fixture, key: &str, n: usize, cost: u64) -> Vec<VerifyCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            f.engine
                .verify_cost(key, &VerifyRequest::default(), cost)
                .await
                .unwrap()
                .code,
        );
    }
    out
}

fn count(codes: &[VerifyCode], code: VerifyCode) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_admitted_under_concurrency() {
    let f = Arc::new(fixture().await);
    let spec = NewKey {
        owner: "o".into(),
        limits: vec![limit("per_minute", 50, 60, None)],
        ..NewKey::default()
    };
    let key = Arc::new(create_with(&f, spec).await.key.expose().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (f, key) = (Arc::clone(&f), Arc::clone(&key));
        tasks.push(tokio::spawn(async move { codes(&f, &key, 40, 1).await }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(count(&all, VerifyCode::Valid), 50, "not 49, not 51");
    assert_eq!(count(&all, VerifyCode::RateLimited), 320 - 50);
}

#[tokio::test]
async fn limits_are_all_or_nothing_and_report_their_state() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        limits: vec![
            limit("per_second", 5, 1, None),
            limit("per_minute", 7, 60, None),
        ],
        ..NewKey::default()
    };
    let key = create_with(&f, spec).await.key;
    assert_eq!(
        count(&codes(&f, key.expose(), 10, 1).await, VerifyCode::Valid),
        5
    );
    f.clock.advance(Duration::seconds(1));
    // per_second would admit 5 more, per_minute only 2: and refusals consume nothing.
    assert_eq!(
        count(&codes(&f, key.expose(), 10, 1).await, VerifyCode::Valid),
        2
    );
    let v = f
        .engine
        .verify(key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::RateLimited);
    let minute = v.limits.iter().find(|l| l.name == "per_minute").unwrap();
    assert_eq!(
        (minute.limit, minute.remaining, minute.period_seconds),
        (7, 0, 60)
    );
    assert!(v.retry_after.unwrap() >= 1);
    let second = v.limits.iter().find(|l| l.name == "per_second").unwrap();
    assert_eq!(
        second.remaining, 3,
        "the refused requests took nothing from per_second"
    );
}

#[tokio::test]
async fn owner_limits_are_one_pool_for_all_keys() {
    let f = fixture().await;
    let spec = || NewKey {
        owner: "acme".into(),
        limits: vec![limit("per_hour", 3, 3600, Some("owner"))],
        ..NewKey::default()
    };
    let a = create_with(&f, spec()).await.key;
    let b = create_with(&f, spec()).await.key;
    let mut all = codes(&f, a.expose(), 2, 1).await;
    all.extend(codes(&f, b.expose(), 3, 1).await);
    assert_eq!(
        count(&all, VerifyCode::Valid),
        3,
        "minting more keys does not multiply the allowance"
    );
}

#[tokio::test]
async fn quota_is_spent_by_cost_and_refused_requests_cost_nothing() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 10,
            ..QuotaSpec::default()
        }),
        limits: vec![limit("per_minute", 20, 60, None)],
        ..NewKey::default()
    };
    let created = create_with(&f, spec).await;
    let key = created.key.expose();
    let got = codes(&f, key, 3, 3).await;
    assert_eq!(
        got,
        [VerifyCode::Valid, VerifyCode::Valid, VerifyCode::Valid]
    );
    // 1 credit left: a cost-3 request is USAGE_EXCEEDED and takes nothing from the limit.
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(
        (v.code, v.credits_remaining),
        (VerifyCode::UsageExceeded, Some(1))
    );
    assert_eq!(v.retry_after, Some(EXHAUSTED_QUOTA_RETRY_SECONDS));
    assert_eq!(v.limits[0].remaining, 11);
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 1)
        .await
        .unwrap();
    assert_eq!((v.code, v.credits_remaining), (VerifyCode::Valid, Some(0)));
    assert_eq!(v.limits[0].remaining, 10);
    // A request the limit refuses costs no credits.
    f.engine
        .adjust_credits(&f.root, &created.record.key_id, CreditOp::Set(50))
        .await
        .unwrap();
    let v = f
        .engine
        .verify_cost(key, &VerifyRequest::default(), 11)
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::RateLimited);
    assert_eq!(f.engine.credits(&created.record).await.unwrap(), Some(50));
}

#[tokio::test]
async fn daily_refill_follows_the_clock() {
    let f = fixture().await;
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 2,
            refill_amount: Some(3),
            refill_interval: Some("daily".into()),
            refill_day: None,
        }),
        ..NewKey::default()
    };
    let key = create_with(&f, spec).await.key;
    assert_eq!(
        count(&codes(&f, key.expose(), 5, 1).await, VerifyCode::Valid),
        2
    );
    let v = f
        .engine
        .verify(key.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(
        v.retry_after,
        Some(12 * 3600),
        "T0 is noon: the refill is at midnight"
    );
    f.clock.advance(Duration::hours(12));
    assert_eq!(
        count(&codes(&f, key.expose(), 5, 1).await, VerifyCode::Valid),
        3
    );
}

#[tokio::test]
async fn a_crash_overcharges_at_most_one_lease_and_never_refunds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (engine, created) = quota_engine(dir.path(), clock.clone()).await;
    for _ in 0..13 {
        let v = engine
            .verify(created.key.expose(), &VerifyRequest::default())
            .await
            .unwrap();
        assert_eq!(v.code, VerifyCode::Valid);
    }
    // The process dies: no shutdown code runs, the unspent lease is lost.
    drop(engine);
    let after_crash = reopened(dir.path(), clock.clone()).await;
    let left = after_crash.credits(&created.record).await.unwrap().unwrap();
    assert!(left <= 100 - 13, "never refunds: {left}");
    assert!(100 - 13 - left < 5, "overcharge below one lease: {left}");
    assert_eq!(left, 85, "13 spent from three leases of 5");
    // A clean shutdown gives unspent credits back.
    for _ in 0..2 {
        after_crash
            .verify(created.key.expose(), &VerifyRequest::default())
            .await
            .unwrap();
    }
    after_crash.release_leases().await.unwrap();
    assert_eq!(
        after_crash.credits(&created.record).await.unwrap(),
        Some(83)
    );
}

#[tokio::test]
async fn plans_apply_to_their_keys_and_changes_reach_them_at_once() {
    let f = fixture().await;
    let plan = PlanSpec {
        limits: vec![limit("per_minute", 2, 60, None)],
        quota: None,
        permissions: vec!["orders.read".into()],
    };
    f.engine
        .put_plan(&f.root, "free", plan.clone(), true)
        .await
        .unwrap();
    assert!(matches!(
        f.engine.put_plan(&f.root, "free", plan.clone(), true).await,
        Err(EngineError::PlanExists { .. })
    ));
    let on_plan = create_with(
        &f,
        NewKey {
            owner: "o".into(),
            plan: Some("free".into()),
            ..NewKey::default()
        },
    )
    .await;
    let q = PermissionQuery::parse("orders.read").unwrap();
    let req = VerifyRequest {
        query: Some(&q),
        ..VerifyRequest::default()
    };
    let key = on_plan.key.expose();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid,
        "permissions come from the plan"
    );
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::RateLimited
    );
    // Raising the plan's limit changes the key at once.
    let pro = PlanSpec {
        limits: vec![limit("per_minute", 5, 60, None)],
        ..plan
    };
    f.engine
        .put_plan(&f.root, "free", pro, false)
        .await
        .unwrap();
    assert_eq!(
        f.engine.verify(key, &req).await.unwrap().code,
        VerifyCode::Valid
    );
    // A key's own limit of the same name overrides the plan's.
    let own = create_with(
        &f,
        NewKey {
            owner: "o".into(),
            plan: Some("free".into()),
            limits: vec![limit("per_minute", 1, 60, None)],
            ..NewKey::default()
        },
    )
    .await;
    assert_eq!(
        count(&codes(&f, own.key.expose(), 3, 1).await, VerifyCode::Valid),
        1
    );
    // Unknown plans are refused; a plan in use cannot be deleted.
    let bad = NewKey {
        owner: "o".into(),
        plan: Some("gold".into()),
        ..NewKey::default()
    };
    assert!(
        matches!(f.engine.create_key(&f.root, bad).await, Err(EngineError::Invalid(e)) if e.field == "plan")
    );
    assert!(matches!(
        f.engine.delete_plan(&f.root, "free").await,
        Err(EngineError::PlanInUse { .. })
    ));
    let audit = f
        .engine
        .list_audit(Some("free".into()), None, None, None)
        .await
        .unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["plan.create", "plan.update"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_lease_one_block_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (engine, created) = quota_engine(dir.path(), clock.clone()).await;
    let key = Arc::new(created.key.expose().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (engine, key) = (Arc::clone(&engine), Arc::clone(&key));
        tasks.push(tokio::spawn(async move {
            engine
                .verify(&key, &VerifyRequest::default())
                .await
                .unwrap()
                .code
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), VerifyCode::Valid);
    }
    drop(engine);
    let after_crash = reopened(dir.path(), clock).await;
    let left = after_crash.credits(&created.record).await.unwrap().unwrap();
    assert!(left <= 100 - 8, "never refunds: {left}");
    assert!(
        100 - 8 - left < 5,
        "concurrent misses did not each take a block: {left}"
    );
}

#[tokio::test]
async fn owner_pools_are_per_tenant() {
    let f = fixture().await;
    let spec = |tenant: &str| NewKey {
        owner: "admin".into(),
        tenant: Some(tenant.into()),
        limits: vec![limit("per_hour", 1, 3600, Some("owner"))],
        ..NewKey::default()
    };
    let a = create_with(&f, spec("acme")).await.key;
    let b = create_with(&f, spec("globex")).await.key;
    assert_eq!(f.code(a.expose()).await, VerifyCode::Valid);
    assert_eq!(
        f.code(b.expose()).await,
        VerifyCode::Valid,
        "another tenant's admin is another pool"
    );
    assert_eq!(f.code(a.expose()).await, VerifyCode::RateLimited);
}

/// An engine over the store in `dir` with a quota lease of 5, and a key with 100 credits.
async fn quota_engine(dir: &std::path::Path, clock: Arc<ManualClock>) -> (Arc<Keyward>, Created) {
    let config = EngineConfig {
        quota_lease: 5,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Keyward::new(
        Arc::new(SqliteStore::open(dir).await.unwrap()),
        clock,
        config,
    ));
    let boot = engine.bootstrap().await.unwrap().unwrap();
    let root = Principal::new(boot.record.clone());
    let spec = NewKey {
        owner: "o".into(),
        quota: Some(QuotaSpec {
            credits: 100,
            ..QuotaSpec::default()
        }),
        ..NewKey::default()
    };
    let created = engine.create_key(&root, spec).await.unwrap();
    (engine, created)
}

/// The engine after a crash: a new one over the same store, nothing handed back.
async fn reopened(dir: &std::path::Path, clock: Arc<ManualClock>) -> Keyward {
    let config = EngineConfig {
        quota_lease: 5,
        ..EngineConfig::default()
    };
    Keyward::new(
        Arc::new(SqliteStore::open(dir).await.unwrap()),
        clock,
        config,
    )
}

// ---- Store outages and the change feed (issue 4) ----

pub(crate) fn unknown_key() -> PlaintextKey {
    generate_key(&Prefix::new("kw_live").unwrap(), &mut rand::rngs::SysRng).unwrap()
}

#[tokio::test]
async fn a_store_outage_serves_cached_keys_until_stale_if_error_and_fails_unknown_keys_closed() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let unknown = unknown_key();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    f.store.down.store(true, Ordering::SeqCst);

    // Fresh entries need no store at all.
    let v = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));

    // Past the staleness bound the store is asked; it fails, so the stale entry answers.
    f.clock.advance(Duration::seconds(31));
    let v = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.degraded, Some(Degraded::StaleCache { age_seconds: 31 }));
    // Permissions still come from the cached record.
    let admin = PermissionQuery::parse("orders.admin").unwrap();
    let request = VerifyRequest {
        query: Some(&admin),
        ..VerifyRequest::default()
    };
    let v = f.engine.verify(key, &request).await.unwrap();
    assert_eq!(v.code, VerifyCode::InsufficientPermissions);

    // An unknown key fails closed with the store's error.
    let err = f
        .engine
        .verify(unknown.expose(), &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    // Malformed keys need no store.
    assert_eq!(f.code("kw_live_garbage").await, VerifyCode::Malformed);

    // Beyond stale-if-error (5 minutes by default) even known keys fail closed.
    f.clock.advance(Duration::seconds(300));
    let err = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::Backend(_))),
        "{err:?}"
    );

    // The store is back: after the probe interval, fresh answers again, without a degraded
    // marker.
    f.store.down.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::seconds(1));
    let v = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!((v.code, v.degraded), (VerifyCode::Valid, None));
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
}

#[tokio::test]
async fn fail_open_admits_unknown_keys_only_when_configured_and_only_while_the_store_is_down() {
    let f = fixture_with(EngineConfig {
        fail_open_unknown_keys: true,
        ..EngineConfig::default()
    })
    .await;
    let unknown = unknown_key();
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
    f.clock.advance(Duration::seconds(31));
    f.store.down.store(true, Ordering::SeqCst);
    let v = f
        .engine
        .verify(unknown.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.degraded, Some(Degraded::FailOpenUnknownKey));
    assert!(v.key.is_none(), "no identity is invented");
    assert_eq!(f.code("kw_live_garbage").await, VerifyCode::Malformed);
    // Root keys never fail open: the admin API needs the store.
    let err = f
        .engine
        .authenticate(Some(unknown_root().expose()), "keys.read", None)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Engine(_)), "{err:?}");
    f.store.down.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.code(unknown.expose()).await, VerifyCode::NotFound);
}

/// With `fail_open_unknown_keys`, a route that requires a tenant or environment still never
/// admits a key whose tenant and environment cannot be read.
#[tokio::test]
async fn finding_6_fail_open_never_admits_where_a_tenant_or_environment_is_required() {
    let f = fixture_with(EngineConfig {
        fail_open_unknown_keys: true,
        ..EngineConfig::default()
    })
    .await;
    let unknown = unknown_key();
    f.store.down.store(true, Ordering::SeqCst);
    for request in [
        VerifyRequest {
            tenant: Some("acme"),
            ..VerifyRequest::default()
        },
        VerifyRequest {
            environment: Some("live"),
            ..VerifyRequest::default()
        },
    ] {
        let refused = f.engine.verify(unknown.expose(), &request).await;
        assert!(matches!(refused, Err(EngineError::Store(_))), "{refused:?}");
    }
    let admitted = f
        .engine
        .verify(unknown.expose(), &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(
        admitted.code,
        VerifyCode::Valid,
        "fail-open itself still works"
    );
}

fn unknown_root() -> PlaintextKey {
    generate_key(&Prefix::new("kwroot").unwrap(), &mut rand::rngs::SysRng).unwrap()
}

/// Two engines over one store: `f.engine` is node A (it writes), `node_b` only verifies and
/// learns of A's writes through the change feed the test drives.
async fn node_b(
    f: &Fixture,
) -> (
    Arc<Keyward>,
    tokio::sync::mpsc::UnboundedSender<Result<Change, StoreError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    *f.store.feed.lock().unwrap() = Some(ChannelFeed(rx));
    let b = Arc::new(Keyward::new(
        f.store.clone(),
        f.clock.clone(),
        EngineConfig::default(),
    ));
    tokio::spawn(Arc::clone(&b).follow_changes());
    // Once the follower has taken the feed it has also cleared the cache (no await between).
    until(|| f.store.feed.lock().unwrap().is_none()).await;
    (b, tx)
}

/// Lets the feed follower run until `done` holds (bounded: the follower needs a few polls).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn other_nodes_changes_evict_this_nodes_cache_through_the_feed() {
    let f = fixture().await;
    let created = f.create(&["orders.read"]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    let verify_b = |b: Arc<Keyward>| async move {
        b.verify(key, &VerifyRequest::default()).await.unwrap().code
    };
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Valid);
    let reads = f.store_reads();
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Valid);
    assert_eq!(f.store_reads(), reads, "node B answers from its cache");

    // Node A revokes. Without a notification node B's cache would still say VALID.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "test")
        .await
        .unwrap();
    assert_eq!(
        verify_b(b.clone()).await,
        VerifyCode::Valid,
        "not yet notified"
    );
    feed.send(Ok(Change::Key {
        key_id: id.clone(),
        written_at: None,
    }))
    .unwrap();
    until(|| b.cache.record(&id).is_none()).await;
    assert_eq!(verify_b(b.clone()).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn a_rotation_elsewhere_evicts_the_old_secret_too() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let old = created.key.expose().to_owned();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    assert_eq!(
        b.verify(&old, &VerifyRequest::default())
            .await
            .unwrap()
            .code,
        VerifyCode::Valid
    );
    // Rotated with no grace: the old secret ends now.
    f.engine
        .rotate_key(&f.root, &id, Duration::ZERO)
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(1));
    feed.send(Ok(Change::Key {
        key_id: id.clone(),
        written_at: None,
    }))
    .unwrap();
    until(|| b.cache.record(&id).is_none()).await;
    assert_eq!(
        b.verify(&old, &VerifyRequest::default())
            .await
            .unwrap()
            .code,
        VerifyCode::Expired
    );
}

#[tokio::test]
async fn a_lost_feed_stops_cache_answers_until_it_is_back_and_resynced() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    let id = created.record.key_id.clone();
    let (b, feed) = node_b(&f).await;
    assert!(b.change_feed_trusted());
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    // The feed breaks: node B no longer trusts its cache and reads the store every time.
    feed.send(Err(StoreError::Backend("listener lost (test)".into())))
        .unwrap();
    until(|| !b.change_feed_trusted()).await;
    let reads = f.store_reads();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    assert!(f.store_reads() > reads, "an untrusted cache is not served");
    // A revoke made while the feed was down (its notification lost) is seen at once.
    f.engine
        .revoke_key(&f.root, KeyKind::Api, &id, "test")
        .await
        .unwrap();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    // The feed is back: nothing cached before the resync counts as fresh, so the next answer
    // is read from the store, and the cache is trusted again after that.
    f.clock.advance(Duration::milliseconds(1));
    feed.send(Ok(Change::Resync)).unwrap();
    until(|| b.change_feed_trusted()).await;
    let reads = f.store_reads();
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Revoked
    );
    assert_eq!(
        f.store_reads(),
        reads + 1,
        "filled once, then served from the cache"
    );
}

#[tokio::test]
async fn a_revocation_is_published_as_an_event_without_the_secret() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let mut events = f.engine.subscribe();
    f.engine
        .revoke_key(
            &f.root,
            KeyKind::Api,
            &created.record.key_id,
            "leaked in a log",
        )
        .await
        .unwrap();
    let event = events.try_recv().unwrap();
    assert_eq!(event.kind(), "key_revoked");
    let json = serde_json::to_string(&event).unwrap();
    assert!(json.contains(&created.record.key_id), "{json}");
    assert!(json.contains("leaked in a log"), "{json}");
    assert!(!json.contains(created.key.expose()), "{json}");
    // Root keys are not announced.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn a_failing_store_is_probed_once_a_second_not_on_every_verify() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    f.clock.advance(Duration::seconds(31));
    f.store.down.store(true, Ordering::SeqCst);
    let v = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert!(v.degraded.is_some());
    let reads = f.store_reads();
    for _ in 0..10 {
        let v = f
            .engine
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        assert_eq!(v.code, VerifyCode::Valid);
        assert!(v.degraded.is_some());
        // Unknown keys fail closed at once too.
        assert!(
            f.engine
                .verify(unknown_key().expose(), &VerifyRequest::default())
                .await
                .is_err()
        );
    }
    assert_eq!(
        f.store_reads(),
        reads,
        "no store call within the probe interval"
    );
    f.clock.advance(Duration::seconds(1));
    let _ = f
        .engine
        .verify(key, &VerifyRequest::default())
        .await
        .unwrap();
    assert_eq!(f.store_reads(), reads + 1, "one probe per interval");
}

#[tokio::test]
async fn a_resync_keeps_old_entries_for_stale_if_error_but_not_as_fresh() {
    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    let (b, feed) = node_b(&f).await;
    assert_eq!(
        b.verify(key, &VerifyRequest::default()).await.unwrap().code,
        VerifyCode::Valid
    );
    // The feed flaps: lost, then back (resync), then the store fails.
    feed.send(Err(StoreError::Backend("lost (test)".into())))
        .unwrap();
    until(|| !b.change_feed_trusted()).await;
    f.clock.advance(Duration::milliseconds(1));
    feed.send(Ok(Change::Resync)).unwrap();
    until(|| b.change_feed_trusted()).await;
    f.store.down.store(true, Ordering::SeqCst);
    // Not fresh (filled before the resync), so the store is tried; it fails, and the entry
    // still answers under stale-if-error rather than a 503.
    let v = b.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert!(
        matches!(v.degraded, Some(Degraded::StaleCache { .. })),
        "{v:?}"
    );
}

#[tokio::test]
async fn usage_counts_survive_a_failed_flush_and_are_written_once() {
    use keyward_core::usage::Granularity;

    let f = fixture().await;
    let created = f.create(&[]).await;
    let key = created.key.expose();
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    let query = || UsageQuery {
        granularity: Granularity::Hour,
        from: None,
        to: None,
        key_id: Some(created.record.key_id.clone()),
        owner: None,
        tenant: None,
        limit: None,
        after: None,
    };
    f.store.down.store(true, Ordering::SeqCst);
    assert!(f.engine.flush_usage().await.is_err());
    // Counted while the store is down, too (the key is cached).
    assert_eq!(f.code(key).await, VerifyCode::Valid);
    f.store.down.store(false, Ordering::SeqCst);
    assert_eq!(f.engine.flush_usage().await.unwrap(), 1);
    assert_eq!(
        f.engine.flush_usage().await.unwrap(),
        0,
        "nothing is written twice"
    );
    let report = f.engine.usage(query()).await.unwrap();
    assert_eq!(report.items.len(), 1);
    assert_eq!(report.items[0].verifications, 3);
    assert_eq!(report.items[0].code, VerifyCode::Valid);
    assert_eq!(report.items[0].owner, "billing-team");
}
