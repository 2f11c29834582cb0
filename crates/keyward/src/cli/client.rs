//! The flags every client command shares: where the server is (`--url`) and how to print
//! (`--output`); and the paging flags of every list command.

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Where the client finds the server and how it prints.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the keyward server (http only; terminate TLS in front of keyward).
    #[arg(
        long,
        env = "KEYWARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

/// Which page of a list to fetch; serialised as the list endpoints' query parameters.
#[derive(Debug, Clone, Args, Serialize)]
pub struct PageArgs {
    /// Page size (1 to 1000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    pub client: ClientArgs,
}
