//! The engine's event bus: events for operators' systems, published on a bounded broadcast
//! channel ([`crate::Keyward::publish`], [`crate::Keyward::subscribe`]); a slow or absent
//! subscriber never blocks a publisher (it misses the oldest events and is told how many).
//! The [`Event`] type and its JSON live in `keyward-events`, so that its consumers (webhooks)
//! need not depend on the engine.

pub use keyward_events::Event;

/// Capacity of the broadcast channel: events a lagging subscriber may fall behind by.
pub const EVENT_BUFFER: usize = 4096;
