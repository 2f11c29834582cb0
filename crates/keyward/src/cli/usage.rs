//! Arguments of `keyward usage` (export).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::client::ClientArgs;

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Write usage rows as CSV (every page of GET /v1/usage): start, key_id, owner, tenant,
    /// code, verifications, credits.
    Export(UsageExportArgs),
}

#[derive(Debug, Args)]
pub struct UsageExportArgs {
    /// Only this key.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Only usage recorded with this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only usage recorded with this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Start, RFC 3339 (rounded down; default: a day or 30 days before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// End, exclusive, RFC 3339 (rounded up; default: the end of the hour or day in progress).
    #[arg(long)]
    pub to: Option<String>,
    /// hour or day (UTC).
    #[arg(long, default_value = "hour")]
    pub granularity: String,
    /// Write the CSV to this file instead of standard output.
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}
