//! Arguments of `keyward audit` (list, verify).

use clap::{Args, Subcommand};

use super::client::{ClientArgs, ClientOnly};

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
    /// Page size (1 to 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}
