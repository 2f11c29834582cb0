//! The engine tests' fixture: the real SQLite store behind a wrapper that counts lookups (to
//! prove what the cache answers without the store), can fail or saturate on demand and hands
//! out a change feed the test drives; an engine over it with a manual clock and a bootstrapped
//! root key; and small helpers the component tests share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent};
use keyward_core::key::{KeyHash, PlaintextKey, Prefix, generate_key};
use keyward_core::quota::QuotaConfig;
use keyward_core::record::{KeyRecord, Plan};
use keyward_core::validate::LimitSpec;
use keyward_core::verify::{VerifyCode, VerifyRequest};
use keyward_store::{
    AuditFilter, Change, CreditOp, FoundKey, KeyFilter, KeyStore, KeyWrite, Page, PlanWrite,
    SqliteStore, StoreError,
};
use time::OffsetDateTime;

use crate::clock::ManualClock;
use crate::{Created, EngineConfig, Keyward, NewKey, Principal, Verification};

/// The engine tests' instant: the testkit's `T0` plus 59 days and 12 hours (2026-03-01 12:00
/// UTC). Noon, not midnight, because tests such as `daily_refill_follows_the_clock` count on a
/// day boundary falling between two of their steps.
pub(crate) const T0: OffsetDateTime =
    keyward_testkit::T0.saturating_add(time::Duration::hours(59 * 24 + 12));

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
    pub(crate) feed: std::sync::Mutex<Option<ChannelFeed>>,
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
pub(crate) struct ChannelFeed(
    pub(crate) tokio::sync::mpsc::UnboundedReceiver<Result<Change, StoreError>>,
);

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
    /// A root key of owner "ops" holding `permissions`, created by the bootstrap root key.
    pub(crate) async fn create_root(&self, permissions: &[&str]) -> Created {
        let spec = NewKey {
            owner: "ops".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ..NewKey::default()
        };
        self.engine.create_root_key(&self.root, spec).await.unwrap()
    }
    /// Verifies `key` with an empty request (no cost, route or binding); the engine must answer.
    pub(crate) async fn verify(&self, key: &str) -> Verification {
        self.engine
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap()
    }
    pub(crate) async fn code(&self, key: &str) -> VerifyCode {
        self.verify(key).await.code
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

pub(crate) async fn fixture() -> Fixture {
    fixture_with(EngineConfig::default()).await
}

pub(crate) fn limit(name: &str, limit: u64, period_seconds: u64, scope: Option<&str>) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        limit,
        period_seconds,
        burst: None,
        scope: scope.map(Into::into),
        mode: None,
    }
}

pub(crate) async fn create_with(f: &Fixture, spec: NewKey) -> Created {
    f.engine.create_key(&f.root, spec).await.unwrap()
}

pub(crate) async fn codes(f: &Fixture, key: &str, n: usize, cost: u64) -> Vec<VerifyCode> {
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

pub(crate) fn count(codes: &[VerifyCode], code: VerifyCode) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

pub(crate) fn unknown_key() -> PlaintextKey {
    generate_key(&Prefix::new("kw_live").unwrap(), &mut rand::rngs::SysRng).unwrap()
}
