//! Arguments of `keyward root` (create, list, revoke root keys).

use clap::{Args, Subcommand};

use super::client::ClientArgs;
use super::keys::{KeysListArgs, RevokeArgs};

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Create a root key; prints it once.
    Create(RootCreateArgs),
    /// List root keys.
    List(KeysListArgs),
    /// Revoke a root key.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct RootCreateArgs {
    /// Who is accountable for the root key.
    #[arg(long)]
    pub owner: Option<String>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Confine the root key to this tenant's keys, audit events, usage and reports.
    #[arg(long)]
    pub tenant: Option<String>,
    /// A root permission (repeatable; at least one): keys.create, keys.read, keys.update,
    /// keys.revoke, keys.verify, audit.read, root.manage, or * for all.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Lifetime, e.g. 30d.
    #[arg(long)]
    pub ttl: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}
