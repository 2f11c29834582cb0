//! Test support shared by keyward's crates, so that no fixture is written twice: a fixed
//! instant [`T0`], a PostgreSQL schema per test ([`postgres`]), a Redis namespace per test
//! ([`redis`]), a TCP proxy a test can cut ([`proxy`]), a log writer to inspect
//! ([`logs`]), well-formed keys for leak checks ([`keys`]), an HTTP client ([`http`]), a
//! bounded wait for what happens on another schedule ([`eventually`]), and keyward itself as
//! a child process ([`process`]) or inside the test process ([`server`]).
//!
//! It is a dev-dependency only (`publish = false`); nothing in a release build links it.
//!
//! ```
//! use keyward_testkit::T0;
//! use time::Duration;
//!
//! // Every test clock starts at T0; instants a test needs are written relative to it.
//! let tomorrow = T0 + Duration::days(1);
//! assert_eq!(tomorrow.date().day(), 2);
//! ```
//!
//! # Services
//!
//! PostgreSQL and Redis tests read `KEYWARD_TEST_POSTGRES_URL` and `KEYWARD_TEST_REDIS_URL`.
//! Without the variable a test prints `SKIPPED <test>: …` to standard error (past the
//! harness's capture) and returns; with `CI=true` a missing variable fails the test instead,
//! so CI cannot pass by skipping ([`skip`] does the same for a test that lacks a tool, such
//! as nginx). Each test gets a schema or namespace of its own, so tests run in parallel
//! against one server.
//!
//! # Dependency cycles, and why the crate is cut the way it is
//!
//! A crate X that dev-depends on the testkit while the testkit depends on X links *two*
//! copies of X into X's unit tests: the one under test (compiled with `cfg(test)`) and the
//! library the testkit was built against. Cargo allows this, and it is harmless as long as
//! no type of X crosses between the test and the testkit; if one does, the test fails to
//! compile with "expected `X::Foo`, found `X::Foo`". So:
//!
//! - The base of the crate (the modules above, except [`keys`] and [`server`]) depends on
//!   **no keyward crate**. Its fixtures speak in plain values: a [`time::OffsetDateTime`], a
//!   URL and a schema or namespace name, bytes of log output. Any crate's unit tests,
//!   including keyward-core's, keyward-store's and keyward-engine's, can use them: a store
//!   test builds its own `PostgresStore` from [`postgres::Schema`]'s URL and schema name.
//! - [`keys`] (feature `keys`) depends on keyward-core, for a key with a valid checksum. Use
//!   it from crates above the core; keyward-core's own tests generate keys with their own
//!   functions.
//! - [`server`] (feature `server`) boots the engine, the store and the HTTP crate in the test
//!   process. Only the binary's integration tests (`crates/keyward/tests`) turn the feature
//!   on; no crate below the binary may use it in its unit tests, where its types would be
//!   the second copy. (Cargo unifies features across a build, so a workspace-wide
//!   `cargo test` compiles the engine once more for, say, the store's tests; that costs
//!   compile time, not correctness, since those tests never touch [`server`].)
//!
//! The process runners take the binary's path as an argument ([`process::Binary::at`]):
//! `CARGO_BIN_EXE_keyward` exists only while compiling the binary crate's own integration
//! tests, so the test crate passes `env!("CARGO_BIN_EXE_keyward")` in.
//!
//! Helpers panic on failure (they are test code: a broken fixture is a failed test), hence
//! the crate-wide allowance below.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod http;
#[cfg(feature = "keys")]
pub mod keys;
pub mod logs;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod redis;
#[cfg(feature = "server")]
pub mod server;
mod service;
mod wait;

pub use service::skip;
pub use wait::eventually;

use time::OffsetDateTime;
use time::macros::datetime;

/// The instant every test clock starts at: midnight UTC at the start of a year, a month and a
/// day, so that `T0 + n hours` or `T0 + n days` lands on the hour and day buckets a test
/// names. A test whose assertions need another instant (noon, say, for a refill that happens
/// at midnight) writes it as `T0 + …` with a comment, rather than a literal of its own.
pub const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
