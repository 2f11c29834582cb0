//! The `keyward` binary's modules, as a library: `main.rs` is a thin `main` over them, and tools
//! outside the crate can reach their entry points (the fuzz targets in `fuzz/` parse gateway
//! configs with [`gateway::parse_config`]). This is not a stable API; nothing here is published.

pub mod bootstrap;
pub mod cli;
pub mod client;
pub mod connections;
pub mod gateway;
pub mod notify;
pub mod serve;
pub mod simulate;
pub mod store;
