//! Arguments of `keyward audit` (list, verify).

use clap::{Args, Subcommand};

use super::client::{ClientArgs, ClientOnly, PageArgs};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events.
    List(AuditListArgs),
    /// Walk the hash chain and report the first broken link (exit 3 if broken).
    Verify(ClientOnly),
}

#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only events about this key_id.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only this action, e.g. key.revoke.
    #[arg(long)]
    pub action: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}
