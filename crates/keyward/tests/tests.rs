//! keyward's integration tests, compiled into one binary. The `keyward-testkit` crate boots
//! the real server (in-process on port 0 with a manual clock, or the real binary as a child
//! process, [`KEYWARD`]) and holds every fixture the tests share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The keyward binary built for these tests: only this crate's tests know its path.
pub(crate) const KEYWARD: keyward_testkit::process::Binary =
    keyward_testkit::process::Binary::at(env!("CARGO_BIN_EXE_keyward"));

#[path = "it/anomaly.rs"]
mod anomaly;
#[path = "it/api.rs"]
mod api;
#[path = "it/authz_matrix.rs"]
mod authz_matrix;
#[path = "it/bad_input.rs"]
mod bad_input;
#[path = "it/cli.rs"]
mod cli;
#[path = "it/connections.rs"]
mod connections;
#[path = "it/docs.rs"]
mod docs;
#[path = "it/edge.rs"]
mod edge;
#[path = "it/edge_routing.rs"]
mod edge_routing;
#[path = "it/ext_authz.rs"]
mod ext_authz;
#[path = "it/gateway.rs"]
mod gateway;
#[path = "it/hot_path.rs"]
mod hot_path;
#[path = "it/limits.rs"]
mod limits;
#[path = "it/metrics.rs"]
mod metrics;
#[path = "it/nginx.rs"]
mod nginx;
#[path = "it/no_leak.rs"]
mod no_leak;
#[path = "it/outage.rs"]
mod outage;
#[path = "it/postgres.rs"]
mod postgres;
#[path = "it/process.rs"]
mod process;
#[path = "it/shared_limits.rs"]
mod shared_limits;
#[path = "it/tenant_scope.rs"]
mod tenant_scope;
#[path = "it/traces.rs"]
mod traces;
#[path = "it/usage.rs"]
mod usage;
#[path = "it/webhooks.rs"]
mod webhooks;
