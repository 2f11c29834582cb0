//! One store read per secret hash at a time (issue 10, finding 5): verifications that miss the
//! cache for the same key while a read of it is in flight wait for that read instead of each
//! making their own, so a burst of one key (a cold cache, a flood replaying one unknown key)
//! costs one read, not one per request.
//!
//! **Freshness.** A verification joins a read in flight only if that read started at the same
//! cache generation (and the same trust in the change feed) as the verification sees now. A
//! read that began before a write committed may return the state from before it, and a
//! verification that began after the write must not be answered from it: the same rule that
//! drops such a read's cache fill. Otherwise the verification starts a read of its own, which
//! replaces the older one for later arrivals.
//!
//! **Cancellation.** The read runs inside the first caller's future; if that caller goes away
//! (its client disconnected), a waiting caller runs the read instead (`tokio::sync::OnceCell`).
//! Each caller, on its way out, removes the flight from the map once it has landed or nobody
//! else holds it, so the map holds only reads in progress.
//!
//! **Errors.** Waiters get a copy of the result. A store error reaches them as the same kind
//! (unreachable stays [`StoreError::Backend`], saturated stays [`StoreError::Saturated`]) with
//! its message but not its source chain; the caller that read gets the original.
//!
//! The map is consulted only on the store-miss path, never on a cache hit.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use keyward_core::key::KeyHash;
use keyward_core::record::{KeyRecord, SecretInfo};
use keyward_store::StoreError;

use crate::error::EngineError;

/// What a store read of a hash found.
pub(crate) type Found = Option<(Arc<KeyRecord>, Arc<SecretInfo>)>;

const SHARDS: usize = 16;

/// A store error as waiters see it.
#[derive(Debug, Clone)]
enum SharedError {
    Backend(String),
    Saturated(String),
    Corrupt(String),
}

impl SharedError {
    fn of(e: &EngineError) -> Self {
        match e {
            EngineError::Store(StoreError::Saturated(_)) => Self::Saturated(error_chain(e)),
            EngineError::Store(StoreError::Corrupt(what)) => Self::Corrupt(what.clone()),
            // Anything else from a read means the store could not answer it.
            _ => Self::Backend(error_chain(e)),
        }
    }

    fn to_engine(&self) -> EngineError {
        EngineError::Store(match self {
            Self::Backend(text) => StoreError::Backend(text.clone().into()),
            Self::Saturated(text) => StoreError::Saturated(text.clone().into()),
            Self::Corrupt(text) => StoreError::Corrupt(text.clone()),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct Flight {
    generation: u64,
    trusted: bool,
    landed: tokio::sync::OnceCell<Result<Found, SharedError>>,
}

type Shard = Mutex<HashMap<KeyHash, Arc<Flight>>>;

/// The reads in flight, by secret hash.
pub(crate) struct Flights {
    shards: Vec<Shard>,
    hasher: std::hash::RandomState,
}

/// Takes a caller's flight out of the map when it leaves (see the module docs).
struct Leaving<'a> {
    shard: &'a Shard,
    hash: KeyHash,
    flight: Option<Arc<Flight>>,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        let mut map = self.shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = self.flight.take() {
            let ours = map.get(&self.hash).is_some_and(|f| Arc::ptr_eq(f, &flight));
            // The map's reference and ours: nobody else waits for it.
            if ours && (flight.landed.initialized() || Arc::strong_count(&flight) <= 2) {
                map.remove(&self.hash);
            }
            // Dropped under the lock, so two callers leaving at once cannot both count the
            // other and both leave the entry behind.
            drop(flight);
        }
    }
}

impl Flights {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Runs `read` for `hash`, or waits for the same read already in flight; the flag is true
    /// if this caller's `read` ran.
    pub(crate) async fn read<F, Fut>(
        &self,
        hash: &KeyHash,
        generation: u64,
        trusted: bool,
        read: F,
    ) -> (Result<Found, EngineError>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Found, EngineError>>,
    {
        let shard = &self.shards[(self.hasher.hash_one(hash) as usize) % SHARDS];
        let flight = {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(hash) {
                Some(f) if f.generation == generation && f.trusted == trusted => Arc::clone(f),
                _ => {
                    let f = Arc::new(Flight {
                        generation,
                        trusted,
                        landed: tokio::sync::OnceCell::new(),
                    });
                    map.insert(*hash, Arc::clone(&f));
                    f
                }
            }
        };
        let leaving = Leaving {
            shard,
            hash: *hash,
            flight: Some(Arc::clone(&flight)),
        };
        let mut mine: Option<Result<Found, EngineError>> = None;
        let slot = &mut mine;
        let landed = flight
            .landed
            .get_or_init(move || async move {
                let result = read().await;
                let shared = match &result {
                    Ok(found) => Ok(found.clone()),
                    Err(e) => Err(SharedError::of(e)),
                };
                *slot = Some(result);
                shared
            })
            .await
            .clone();
        drop(leaving);
        match mine {
            Some(result) => (result, true),
            None => (landed.map_err(|e| e.to_engine()), false),
        }
    }

    /// Reads in flight (for tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}
