//! keyward's domain, free of I/O and of the clock.
//!
//! This crate knows what a keyward key looks like ([`key`]), how it is hashed for storage,
//! what a key record holds ([`record`]), how a permission query is parsed and evaluated
//! ([`permission`]), how a request path is normalised and a gateway route chosen ([`path`]),
//! how a route allowlist matches a request ([`route`]), how a verify decision is reached
//! ([`verify`]), how a rotation changes a key's secrets ([`rotation`]) and how the
//! audit log's hash chain is computed and checked ([`audit`]), and how usage is bucketed for
//! billing ([`usage`]).
//!
//! It never reads the clock (time is always a parameter, see [`clock::Clock`]) and never touches
//! a file, a socket or a database; the `clippy.toml` beside this crate enforces the first rule.
//!
//! ```
//! use keyward_core::key::{ParsedKey, Prefix, generate_key};
//!
//! let prefix = Prefix::new("kw_live").unwrap();
//! let key = generate_key(&prefix, &mut TestRng(7)).unwrap();
//! let parsed = ParsedKey::parse(key.expose()).unwrap();
//! assert_eq!(parsed.prefix(), "kw_live");
//! # struct TestRng(u8);
//! # impl rand_core::TryRng for TestRng {
//! #     type Error = core::convert::Infallible;
//! #     fn try_next_u32(&mut self) -> Result<u32, Self::Error> { Ok(0) }
//! #     fn try_next_u64(&mut self) -> Result<u64, Self::Error> { Ok(0) }
//! #     fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
//! #         for b in dst { self.0 = self.0.wrapping_mul(31).wrapping_add(17); *b = self.0; }
//! #         Ok(())
//! #     }
//! # }
//! # impl rand_core::TryCryptoRng for TestRng {}
//! ```

pub mod anomaly;
pub mod audit;
pub mod base62;
pub mod binding;
pub mod clock;
pub mod key;
pub mod limit;
pub mod path;
pub mod permission;
pub mod quota;
pub mod record;
pub mod redact;
pub mod rotation;
pub mod route;
pub mod usage;
pub mod validate;
pub mod verify;
