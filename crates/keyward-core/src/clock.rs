//! The clock abstraction: every component that needs "now" is handed a [`Clock`].
//!
//! Implementations that read real time live outside this crate (`keyward-engine`), so that
//! expiry, grace periods and (later) rate limits are tested by moving a manual clock, not by
//! sleeping.

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time in UTC.
    fn now(&self) -> OffsetDateTime;
}
