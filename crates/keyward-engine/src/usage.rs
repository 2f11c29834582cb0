//! `last_used_at` tracking off the verify hot path: verifications note the time in memory and
//! a background task writes the batch to the store.

use std::collections::HashMap;
use std::sync::Mutex;

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
