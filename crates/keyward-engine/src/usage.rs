//! Bookkeeping off the verify hot path: verifications note `last_used_at` and usage counts in
//! memory ([`Usage`]), a background task writes each batch to the store, and usage is read
//! back for billing.

// Keyed by key ids, which keyward mints: foldhash (seeded per map) rather than SipHash.
use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::clock::Clock;
use keyward_core::record::KeyRecord;
use keyward_core::usage::UsageCount;
use keyward_core::validate::{self, FieldError};
use keyward_core::verify::VerifyCode;
use keyward_store::KeyStore;
use time::{Duration, OffsetDateTime};

use crate::error::EngineError;
use crate::types::{UsageQuery, UsageReport};

/// The `last_used_at` and usage buffers, their flushes, and usage reads.
pub(crate) struct Usage {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    last_used: LastUsedBuffer,
    counts: UsageBuffer,
}

impl Usage {
    pub(crate) fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            last_used: LastUsedBuffer::default(),
            counts: UsageBuffer::default(),
        }
    }

    /// Notes that `key_id` verified at `at` (written by [`flush_last_used`](Self::flush_last_used)).
    #[inline]
    pub(crate) fn record_last_used(&self, key_id: &str, at: OffsetDateTime) {
        self.last_used.record(key_id, at);
    }

    /// Counts one verification of `record` in the hour starting at `hour`.
    #[inline]
    pub(crate) fn count(
        &self,
        record: &KeyRecord,
        hour: OffsetDateTime,
        code: VerifyCode,
        credits: u64,
    ) {
        self.counts.record(record, hour, code, credits);
    }

    /// Writes buffered `last_used_at` times to the store; the server calls it periodically
    /// and at shutdown. Returns how many keys were written.
    pub(crate) async fn flush_last_used(&self) -> Result<usize, EngineError> {
        let batch = self.last_used.drain();
        if let Err(e) = self.store.touch_last_used(&batch).await {
            // Put them back so the next flush retries; later uses win on merge.
            self.last_used.restore(batch);
            return Err(e.into());
        }
        Ok(batch.len())
    }

    /// Adds the usage counted since the last flush to the store; the server calls it
    /// periodically and at shutdown. Returns how many (key, hour, outcome) rows were written.
    /// A failed flush keeps the counts for the next one.
    /// Cancelling it (dropping the future mid-write) also keeps them; only a write whose
    /// commit is lost on its way back is counted twice by the retry.
    pub(crate) async fn flush_usage(&self) -> Result<usize, EngineError> {
        let batch = self.counts.take_batch();
        self.store.add_usage(batch.counts()).await?;
        Ok(batch.written())
    }

    /// Reads usage for billing (written by [`flush_usage`](Self::flush_usage), so counts of
    /// the last flush interval are not in it yet).
    pub(crate) async fn report(&self, query: UsageQuery) -> Result<UsageReport, EngineError> {
        let granularity = query.granularity;
        let out_of_range = |field: &'static str| {
            FieldError::new(
                field,
                "must be a time from 1970-01-01T00:00:00Z to before 9000-01-01T00:00:00Z",
            )
        };
        for (field, t) in [("from", query.from), ("to", query.to)] {
            if t.is_some_and(|t| !keyward_core::usage::in_range(t)) {
                return Err(out_of_range(field).into());
            }
        }
        // By default the bucket in progress is included (its counts so far). Within the
        // range checked above, rounding and the default span cannot leave the calendar.
        let to = match query.to {
            Some(to) => granularity.ceil(to),
            None => granularity
                .floor(self.clock.now())
                .and_then(|t| t.checked_add(Duration::milliseconds(granularity.millis()))),
        }
        .ok_or_else(|| out_of_range("to"))?;
        let from = match query.from {
            Some(from) => Some(from),
            None => to.checked_sub(granularity.default_span()),
        }
        .and_then(|from| granularity.floor(from))
        .filter(|from| keyward_core::usage::in_range(*from))
        .ok_or_else(|| out_of_range("from"))?;
        if from >= to {
            return Err(FieldError::new("from", "must be before 'to'").into());
        }
        let longest = granularity.max_span();
        if to - from > longest {
            return Err(FieldError::new(
                "from",
                format!(
                    "the range may span at most {} days at granularity '{}'",
                    longest.whole_days(),
                    granularity.as_str()
                ),
            )
            .into());
        }
        // A cursor belongs to a page of this granularity and range: its row starts a bucket
        // inside it (a cursor from another query would silently skip rows).
        if let Some(after) = &query.after
            && (granularity.floor(after.start) != Some(after.start)
                || after.start < from
                || after.start >= to)
        {
            return Err(FieldError::new(
                "cursor",
                "does not belong to this granularity and range: pass the same from, to and \
                 granularity as the request that returned it",
            )
            .into());
        }
        let limit = validate::usage_page_limit(query.limit)?;
        let filter = keyward_store::UsageFilter {
            granularity,
            from,
            to,
            key_id: query.key_id,
            owner: query.owner,
            tenant: query.tenant,
            limit,
            after: query.after,
        };
        let page = self.store.list_usage(&filter).await?;
        Ok(UsageReport {
            granularity,
            from,
            to,
            items: page.items,
            next: page.next,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct LastUsedBuffer(Mutex<HashMap<String, OffsetDateTime>>);

impl LastUsedBuffer {
    /// Notes a use; allocates only the first time a key is seen between flushes.
    pub fn record(&self, key_id: &str, at: OffsetDateTime) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key_id) {
            Some(t) if *t >= at => {}
            Some(t) => *t = at,
            None => {
                map.insert(key_id.to_owned(), at);
            }
        }
    }

    pub fn drain(&self) -> Vec<(String, OffsetDateTime)> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.drain().collect()
    }

    pub fn restore(&self, batch: Vec<(String, OffsetDateTime)>) {
        for (key_id, at) in batch {
            self.record(&key_id, at);
        }
    }
}

/// Usage for billing, counted off the verify hot path: a verification adds to an in-memory
/// count for its key, hour and outcome, and a background task adds the batch to the store
/// (see `keyward_core::usage`). A batch the store refuses is put back and retried, so counts
/// are lost only if the process dies between flushes.
#[derive(Debug, Default)]
pub(crate) struct UsageBuffer(Mutex<HashMap<String, KeyUsage>>);

#[derive(Debug)]
struct KeyUsage {
    owner: String,
    tenant: Option<String>,
    /// (hour, code) -> (verifications, credits); a handful of entries per key per flush.
    counts: Vec<(OffsetDateTime, VerifyCode, u64, u64)>,
}

impl UsageBuffer {
    /// Counts one verification of `record` in the hour starting at `hour`.
    pub fn record(&self, record: &KeyRecord, hour: OffsetDateTime, code: VerifyCode, credits: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let usage = match map.get_mut(&record.key_id) {
            Some(usage) => usage,
            None => map
                .entry(record.key_id.clone())
                .or_insert_with(|| KeyUsage {
                    owner: record.owner.clone(),
                    tenant: record.tenant.clone(),
                    counts: Vec::new(),
                }),
        };
        // The latest use names the owner, as the store does per hour.
        if usage.owner != record.owner {
            usage.owner.clone_from(&record.owner);
        }
        if usage.tenant != record.tenant {
            usage.tenant.clone_from(&record.tenant);
        }
        add(&mut usage.counts, hour, code, 1, credits);
    }

    /// Takes every count out of the buffer.
    pub fn drain(&self) -> Vec<UsageCount> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.drain()
            .flat_map(|(key_id, usage)| {
                let KeyUsage {
                    owner,
                    tenant,
                    counts,
                } = usage;
                counts
                    .into_iter()
                    .map(move |(start, code, verifications, credits)| UsageCount {
                        start,
                        key_id: key_id.clone(),
                        owner: owner.clone(),
                        tenant: tenant.clone(),
                        code,
                        verifications,
                        credits,
                    })
            })
            .collect()
    }

    /// Takes every count out of the buffer for a write; unless the write is confirmed with
    /// [`PendingUsage::written`], the counts go back into the buffer when the batch is dropped,
    /// so a failed write, or a flush cancelled while it waits for the store (a task aborted
    /// at shutdown), loses nothing.
    pub fn take_batch(&self) -> PendingUsage<'_> {
        PendingUsage {
            buffer: self,
            counts: self.drain(),
            written: false,
        }
    }

    /// Puts counts the store did not take back, adding them to any counted since.
    pub fn restore(&self, batch: Vec<UsageCount>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for c in batch {
            // Counts made since the drain carry the newer owner; keep it.
            let usage = map.entry(c.key_id).or_insert_with(|| KeyUsage {
                owner: c.owner,
                tenant: c.tenant,
                counts: Vec::new(),
            });
            add(
                &mut usage.counts,
                c.start,
                c.code,
                c.verifications,
                c.credits,
            );
        }
    }
}

/// A batch of usage counts on its way to the store (see [`UsageBuffer::take_batch`]).
pub(crate) struct PendingUsage<'a> {
    buffer: &'a UsageBuffer,
    counts: Vec<UsageCount>,
    written: bool,
}

impl PendingUsage<'_> {
    pub fn counts(&self) -> &[UsageCount] {
        &self.counts
    }

    /// The store has the batch: it is not put back. Returns its size.
    pub fn written(mut self) -> usize {
        self.written = true;
        self.counts.len()
    }
}

impl Drop for PendingUsage<'_> {
    fn drop(&mut self) {
        if !self.written {
            self.buffer.restore(std::mem::take(&mut self.counts));
        }
    }
}

fn add(
    counts: &mut Vec<(OffsetDateTime, VerifyCode, u64, u64)>,
    hour: OffsetDateTime,
    code: VerifyCode,
    verifications: u64,
    credits: u64,
) {
    match counts
        .iter_mut()
        .find(|(h, c, _, _)| *h == hour && *c == code)
    {
        Some((_, _, n, spent)) => {
            *n = n.saturating_add(verifications);
            *spent = spent.saturating_add(credits);
        }
        None => counts.push((hour, code, verifications, credits)),
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::usage::Granularity;
    use time::macros::datetime;

    use std::sync::atomic::Ordering;

    use keyward_core::record::KeyKind;

    use super::*;
    use crate::test_fixture::{T0, fixture};

    fn record(key_id: &str, owner: &str) -> KeyRecord {
        let mut r = crate::rotation_policy::tests::sample_record();
        r.key_id = key_id.into();
        r.owner = owner.into();
        r
    }

    fn sorted(
        mut batch: Vec<UsageCount>,
    ) -> Vec<(String, String, OffsetDateTime, VerifyCode, u64, u64)> {
        batch.sort_by(|a, b| {
            (&a.key_id, a.start, a.code.as_str()).cmp(&(&b.key_id, b.start, b.code.as_str()))
        });
        batch
            .into_iter()
            .map(|c| {
                (
                    c.key_id,
                    c.owner,
                    c.start,
                    c.code,
                    c.verifications,
                    c.credits,
                )
            })
            .collect()
    }

    #[test]
    fn counts_per_key_hour_and_outcome_and_puts_back_what_the_store_refused() {
        let buffer = UsageBuffer::default();
        let h0 = Granularity::Hour
            .floor(datetime!(2026-11-28 10:15 UTC))
            .unwrap();
        let h1 = h0 + time::Duration::hours(1);
        let a = record("key_a", "alice");
        buffer.record(&a, h0, VerifyCode::Valid, 5);
        buffer.record(&a, h0, VerifyCode::Valid, 5);
        buffer.record(&a, h0, VerifyCode::RateLimited, 0);
        buffer.record(&a, h1, VerifyCode::Valid, 1);
        buffer.record(&record("key_b", "bob"), h0, VerifyCode::Revoked, 0);
        let batch = buffer.drain();
        let expected = vec![
            (
                "key_a".into(),
                "alice".into(),
                h0,
                VerifyCode::RateLimited,
                1,
                0,
            ),
            ("key_a".into(), "alice".into(), h0, VerifyCode::Valid, 2, 10),
            ("key_a".into(), "alice".into(), h1, VerifyCode::Valid, 1, 1),
            ("key_b".into(), "bob".into(), h0, VerifyCode::Revoked, 1, 0),
        ];
        assert_eq!(sorted(batch.clone()), expected);
        assert!(buffer.drain().is_empty(), "a drain empties the buffer");

        // The store refused the batch; meanwhile key_a was used again and changed hands.
        buffer.record(&record("key_a", "carol"), h0, VerifyCode::Valid, 5);
        buffer.restore(batch);
        let again = sorted(buffer.drain());
        assert_eq!(
            again[1],
            ("key_a".into(), "carol".into(), h0, VerifyCode::Valid, 3, 15),
            "restored counts add to newer ones, under the newer owner"
        );
        assert_eq!(again.len(), 4);
    }

    #[test]
    fn a_batch_not_confirmed_as_written_goes_back() {
        let buffer = UsageBuffer::default();
        let h0 = Granularity::Hour
            .floor(datetime!(2026-11-28 10:15 UTC))
            .unwrap();
        buffer.record(&record("key_a", "alice"), h0, VerifyCode::Valid, 0);
        // Dropped unconfirmed (the write failed, or the flush was cancelled mid-write).
        let batch = buffer.take_batch();
        assert_eq!(batch.counts().len(), 1);
        drop(batch);
        let batch = buffer.take_batch();
        assert_eq!(batch.counts().len(), 1, "the counts came back");
        assert_eq!(batch.written(), 1);
        assert!(buffer.drain().is_empty(), "a written batch is not put back");
    }

    #[tokio::test]
    async fn last_used_is_written_by_the_flush_not_the_verify() {
        let f = fixture().await;
        let created = f.create(&[]).await;
        f.clock.advance(Duration::seconds(5));
        assert_eq!(f.code(created.key.expose()).await, VerifyCode::Valid);
        let id = &created.record.key_id;
        let last_used = || async {
            let record = f.engine.get_key(KeyKind::Api, id).await.unwrap();
            record.last_used_at
        };
        assert_eq!(last_used().await, None);
        assert_eq!(f.engine.flush_last_used().await.unwrap(), 1);
        assert_eq!(last_used().await, Some(T0 + Duration::seconds(5)));
        assert_eq!(f.engine.flush_last_used().await.unwrap(), 0);
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
}
