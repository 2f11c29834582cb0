//! Command-line definitions: the top-level [`Cli`] and its [`Command`]s, with each command
//! group's arguments in a submodule. The `--help` text generated from here is committed as
//! `docs/cli-help.txt` and checked by a test.
//!
//! [`server`] and [`anomaly`] hold the flags of the commands that run a node; their argument
//! groups also turn themselves into the settings they describe (the webhook and listener
//! groups live with their settings, in [`crate::notify`] and [`crate::connections`]). The
//! other submodules hold one client command group's arguments each, which the module of the
//! same name in [`crate::client`] carries out.

pub mod anomaly;
pub mod audit;
pub mod client;
pub mod keys;
pub mod plans;
pub mod root;
pub mod server;
pub mod usage;
pub mod verify;

use clap::{Parser, Subcommand};

use self::anomaly::SimulateLeakArgs;
use self::audit::AuditCommand;
use self::keys::KeysCommand;
use self::plans::PlansCommand;
use self::root::RootCommand;
use self::server::{GatewayArgs, MigrateArgs, ServeArgs};
use self::usage::UsageCommand;
use self::verify::VerifyArgs;

/// keyward: a self-hosted API key service.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process; boxing buys nothing.
pub enum Command {
    /// Run the keyward server.
    Serve(ServeArgs),
    /// Run the gateway: a reverse proxy that enforces keys (see --config).
    Gateway(GatewayArgs),
    /// Create or upgrade the PostgreSQL schema, then exit (serve and gateway also do this on
    /// start).
    Migrate(MigrateArgs),
    /// Manage API keys on a running server.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify an API key (exit 0 if VALID, 3 if not).
    Verify(VerifyArgs),
    /// Read and check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage root keys (credentials of the admin API).
    #[command(subcommand)]
    Root(RootCommand),
    /// Manage plans (templates of limits, quota and permissions).
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Read usage for billing (verifications and credits per key, hour or day).
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Replay a leaked key's traffic in-process (simulated time, no network) and show how
    /// fast anomaly detection catches it.
    SimulateLeak(SimulateLeakArgs),
}
