//! Bookkeeping off the verify hot path: verifications note `last_used_at` and usage counts in
//! memory, and a background task writes each batch to the store.

use std::collections::HashMap;
use std::sync::Mutex;

use keyward_core::record::KeyRecord;
use keyward_core::usage::UsageCount;
use keyward_core::verify::VerifyCode;
use time::OffsetDateTime;

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

    use super::*;

    fn record(key_id: &str, owner: &str) -> KeyRecord {
        let mut r = crate::rotation::tests::sample_record();
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
}
