//! The client commands: each talks to a running server's admin API over HTTP ([`http`]),
//! speaking only `keyward-wire` types, and prints the answer as text or JSON ([`output`]).
//! One module per command group; `main.rs` dispatches to their `run` functions.
//!
//! Errors are one line for the user. `verify` exits [`verify::EXIT_NOT_VALID`] when the key is
//! not valid, and `audit verify` does when the hash chain is broken.

pub mod audit;
pub mod http;
pub mod keys;
pub mod output;
pub mod parse;
pub mod plans;
pub mod root;
pub mod usage;
pub mod verify;
