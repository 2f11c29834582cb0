//! Storage for keyward: the [`KeyStore`] trait, its embedded SQLite implementation
//! ([`SqliteStore`]) and its PostgreSQL implementation for clusters ([`PostgresStore`]).
//!
//! The trait speaks only domain types from `keyward-core`; no SQL type or SQL error crosses
//! it, so a backend can be swapped without touching the layers above. Every write is a [`KeyWrite`]: the new state of one key, the version it
//! expects to replace (optimistic concurrency), the secret changes, and the audit event that
//! commits atomically with it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyward_store::StoreError> {
//! let store = keyward_store::SqliteStore::open(std::path::Path::new("./keyward-data")).await?;
//! store.ping().await?;
//! # Ok(()) }
//! # use keyward_store::KeyStore;
//! ```

mod data_dir;
mod dialect;
mod postgres;
mod reads;
mod sql;
mod sqlite;
mod statement;
#[cfg(test)]
mod testsuite;
mod usage;
mod writes;

use async_trait::async_trait;
use keyward_core::audit::{AuditDraft, AuditEvent};
use keyward_core::key::KeyHash;
use keyward_core::quota::{Balance, QuotaConfig};
use keyward_core::record::{KeyKind, KeyRecord, KeyStatus, Plan, SecretInfo};
use keyward_core::usage::{Granularity, UsageCount, UsageCursor};
use time::OffsetDateTime;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// Errors from a store. Backend errors are carried as opaque sources, never as SQL types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key changed since it was read (its version moved on); re-read and retry.
    #[error("the key was changed concurrently")]
    Conflict,
    /// A key_id or secret hash already exists.
    #[error("a key with this identifier or secret already exists")]
    Duplicate,
    /// The key names a plan that does not exist (checked inside the write's transaction, so a
    /// concurrent plan deletion cannot leave a key pointing at nothing).
    #[error("no plan named {0}")]
    PlanMissing(String),
    /// The store could not be opened at startup.
    #[error("cannot open the store at {location}: {reason}")]
    Open {
        /// Where the store was expected.
        location: String,
        /// What went wrong, in words an operator can act on.
        reason: String,
    },
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed (connection, I/O, timeout).
    #[error("store backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store is busy, not down: no pooled connection was free in time while the server
    /// kept answering other calls, or the server shed the statement (too many connections, a
    /// statement timeout). Callers retry shortly; it is never a reason to treat the store as
    /// unreachable.
    #[error("store saturated")]
    Saturated(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The write would leave no usable root key holding `root.manage` (enabled, not revoked,
    /// not expired). Checked inside the write's transaction, so two writes racing on two such
    /// keys cannot both pass.
    #[error("{0} is the last usable root key with root.manage")]
    LastRootKey(String),
}

/// A key found by the hash of one of its secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundKey {
    /// The key's record, with its live secrets.
    pub record: KeyRecord,
    /// The secret whose hash matched (possibly rotated out).
    pub secret: SecretInfo,
}

/// A write of one key's new state, committed atomically with its audit event.
#[derive(Debug, Clone)]
pub struct KeyWrite {
    /// The new state. `record.version` must be the new version; `last_used_at` and `secrets`
    /// are ignored (they are written through their own paths).
    pub record: KeyRecord,
    /// `None` to insert a new key; `Some(v)` to replace the state at version `v`.
    pub expected_version: Option<i64>,
    /// A secret to add.
    pub new_secret: Option<SecretInfo>,
    /// Existing secrets whose end time changes.
    pub secret_ends: Vec<(KeyHash, OffsetDateTime)>,
    /// The audit event.
    pub audit: AuditDraft,
}

/// Filters for listing keys.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    /// API keys or root keys.
    pub kind: KeyKind,
    /// Only keys of this owner.
    pub owner: Option<String>,
    /// Only keys of this tenant.
    pub tenant: Option<String>,
    /// Only keys in this status at `now`.
    pub status: Option<KeyStatus>,
    /// The time `status` is evaluated at.
    pub now: OffsetDateTime,
    /// Page size.
    pub limit: u32,
    /// Continue after this position (from a previous page's `next_cursor`).
    pub after: Option<i64>,
}

/// Filters for listing audit events.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events about this key_id.
    pub target: Option<String>,
    /// Only events with this action name.
    pub action: Option<String>,
    /// Only events whose target or actor is a key of this tenant (a tenant-scoped root key's
    /// view). Checked per event by key_id, so a page costs a walk over the events between
    /// matches; a key's tenant never changes, so the answer for an event never does either.
    pub tenant: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Continue after this sequence number.
    pub after: Option<i64>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in stable order.
    pub items: Vec<T>,
    /// Cursor for the next page, if there may be one.
    pub next_cursor: Option<i64>,
}

/// Filters for reading usage.
#[derive(Debug, Clone)]
pub struct UsageFilter {
    /// Hourly rows, or their sums per day.
    pub granularity: Granularity,
    /// Buckets starting at or after this time (a bucket start).
    pub from: OffsetDateTime,
    /// Buckets starting before this time.
    pub to: OffsetDateTime,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only usage recorded with this owner.
    pub owner: Option<String>,
    /// Only usage recorded with this tenant.
    pub tenant: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Continue after this row.
    pub after: Option<UsageCursor>,
}

/// One page of usage rows, ordered by (start, key_id, code).
#[derive(Debug, Clone, PartialEq)]
pub struct UsagePage {
    /// The rows.
    pub items: Vec<UsageCount>,
    /// Where the next page starts, if there may be one.
    pub next: Option<UsageCursor>,
}

/// A write of one plan, committed atomically with its audit event.
#[derive(Debug, Clone)]
pub struct PlanWrite {
    /// The new state (`version` must be the new version).
    pub plan: Plan,
    /// `None` to insert; `Some(v)` to replace version `v`.
    pub expected_version: Option<i64>,
    /// Delete the plan instead (refused with `Conflict` while keys reference it).
    pub delete: bool,
    /// The audit event.
    pub audit: AuditDraft,
}

/// How a credit adjustment changes a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditOp {
    /// Set the balance to this value.
    Set(u64),
    /// Add this many credits.
    Increase(u64),
    /// Remove this many credits (not below zero).
    Decrease(u64),
}

/// A committed change to how keys verify, as seen by every node sharing a store.
///
/// Sequence numbers are the audit log's: every write that changes how a key verifies appends
/// an audit event in the same transaction, so the audit head is the store's change head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key's record or secrets changed (created, updated, rotated, revoked, disabled).
    Key {
        /// The key.
        key_id: String,
        /// When the writer wrote the change (its clock, millisecond precision), if the
        /// notification carried it: a node subtracts it from its own clock on receipt to
        /// measure how long a revocation took to reach it. `None` from writers that predate it.
        written_at: Option<OffsetDateTime>,
    },
    /// A plan changed or was deleted: any key may inherit from it.
    Plan {
        /// The plan.
        plan_id: String,
    },
    /// A key's credit balance was adjusted through the API.
    Credits {
        /// The key.
        key_id: String,
    },
    /// Notifications may have been missed (the feed was disconnected and is back): nothing
    /// cached before this point may be trusted.
    Resync,
}

/// A subscription to the changes every process commits to a shared store.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next change. An error means the backend is unreachable now; the caller
    /// waits and calls again, and the first change after an error is always [`Change::Resync`].
    async fn next(&mut self) -> Result<Change, StoreError>;
}

/// Where keys, secrets and the audit log live.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Subscribes to changes committed by every process sharing this store, or `None` when
    /// this process is the store's only writer (the embedded SQLite store), so its own writes
    /// are all there is to see.
    async fn changes(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }

    /// The store's change head: the sequence number of the latest audit event (0 when empty).
    async fn change_head(&self) -> Result<i64, StoreError>;

    /// Finds the key owning the secret with `hash`; the record carries its secrets live at `now`.
    async fn find_by_hash(
        &self,
        hash: &KeyHash,
        now: OffsetDateTime,
    ) -> Result<Option<FoundKey>, StoreError>;

    /// Reads a key by key_id.
    async fn get_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Lists keys, oldest first.
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyRecord>, StoreError>;

    /// Applies a write and its audit event atomically; returns the event's sequence number.
    async fn write_key(&self, write: KeyWrite) -> Result<i64, StoreError>;

    /// Appends an audit event that changes no key (for example a failed authentication).
    async fn append_audit(&self, draft: AuditDraft) -> Result<i64, StoreError>;

    /// Lists audit events in sequence order.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEvent>, StoreError>;

    /// Records when keys were last used; later times win, earlier ones are ignored.
    async fn touch_last_used(&self, uses: &[(String, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Adds hourly usage counts (each `start` an hour) to the stored ones; rows that do not
    /// exist yet are created. Counts from several nodes for the same hour add up.
    async fn add_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError>;

    /// Reads usage, summed per `filter.granularity`.
    async fn list_usage(&self, filter: &UsageFilter) -> Result<UsagePage, StoreError>;

    /// Number of root keys ever created (revoked ones included).
    async fn count_root_keys(&self) -> Result<u64, StoreError>;

    /// Writes `write` (a new root key) only if the store has never had a root key, with the
    /// check and the write in one serialised transaction, so two nodes bootstrapping an empty
    /// shared store at once mint one root key between them. Returns the audit sequence
    /// number, or `None` when a root key already exists (nothing is written).
    ///
    /// The default checks [`count_root_keys`](Self::count_root_keys) and then writes, which is
    /// only exact for a store with a single writer; every backend here overrides it.
    async fn create_first_root_key(&self, write: KeyWrite) -> Result<Option<i64>, StoreError> {
        if self.count_root_keys().await? > 0 {
            return Ok(None);
        }
        self.write_key(write).await.map(Some)
    }

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Reads a plan.
    async fn get_plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError>;

    /// Lists every plan, by name.
    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError>;

    /// Creates, replaces or deletes a plan with its audit event.
    async fn write_plan(&self, write: PlanWrite) -> Result<i64, StoreError>;

    /// Takes up to `want` credits from a key's durable balance (refilled first if a scheduled
    /// refill passed); returns how many were taken and the balance left.
    async fn take_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<(u64, Balance), StoreError>;

    /// Applies `op` after returning `unspent` leased credits to the balance, with an audit event.
    async fn adjust_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        unspent: u64,
        op: CreditOp,
        audit: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError>;

    /// Returns `amount` unspent leased credits of refill period `period` to the balance (they
    /// are dropped if the balance has been refilled since).
    async fn give_back_credits(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        amount: u64,
        period: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Reads a key's durable balance at `now` without changing it.
    async fn balance(
        &self,
        key_id: &str,
        config: &QuotaConfig,
        now: OffsetDateTime,
    ) -> Result<Balance, StoreError>;
}
