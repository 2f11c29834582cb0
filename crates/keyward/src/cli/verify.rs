//! Arguments of `keyward verify`.

use clap::Args;

use super::client::ClientArgs;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The key to verify, or '-' to read it from standard input (keeps it out of shell history).
    pub key: String,
    /// A permission the key must hold (repeatable; all are required).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// A permission query instead, e.g. 'orders.read AND (orders.write OR admin.*)'.
    #[arg(long, conflicts_with = "permissions")]
    pub query: Option<String>,
    /// HTTP method of the protected request.
    #[arg(long)]
    pub method: Option<String>,
    /// Path of the protected request.
    #[arg(long)]
    pub path: Option<String>,
    /// The caller's IP address.
    #[arg(long)]
    pub ip: Option<String>,
    /// The request's Origin.
    #[arg(long)]
    pub origin: Option<String>,
    /// Units the request consumes (default 1; 0 checks without consuming).
    #[arg(long)]
    pub cost: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}
