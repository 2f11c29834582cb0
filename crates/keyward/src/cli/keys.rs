//! Arguments of `keyward keys` (issue, list, show, update, rotate, revoke, credits); the
//! list and revoke arguments are `keyward root`'s too.

use clap::{Args, Subcommand};

use super::client::{ClientArgs, PageArgs};

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process.
pub enum KeysCommand {
    /// Issue a key; prints the secret once.
    Create(KeysCreateArgs),
    /// List keys.
    List(KeysListArgs),
    /// Show a key's record.
    Show(KeyIdArgs),
    /// Change a key's metadata.
    Update(KeysUpdateArgs),
    /// Give a key a new secret; prints it once.
    Rotate(KeysRotateArgs),
    /// Revoke every secret of a key, effective immediately.
    Revoke(RevokeArgs),
    /// Show or change a key's quota credits.
    Credits(CreditsArgs),
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// Who is accountable for the key.
    #[arg(long)]
    pub owner: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Tenant (customer).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Environment (default live; test, dev, staging and sandbox get the kw_test prefix).
    #[arg(long)]
    pub environment: Option<String>,
    /// Why the key exists.
    #[arg(long)]
    pub purpose: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A granted permission (repeatable), e.g. orders.read, orders.*, *.
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// An allowed route (repeatable), e.g. 'GET /v1/orders/*'.
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Meta as a JSON object.
    #[arg(long)]
    pub meta: Option<String>,
    /// Expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z.
    #[arg(long, conflicts_with = "ttl")]
    pub expires_at: Option<String>,
    /// Lifetime, e.g. 3600, 90s, 15m, 12h, 30d, 2w.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Create the key disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Key prefix, [a-z][a-z0-9_]{0,19}.
    #[arg(long)]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Limits, quota, plan and bindings of a key or plan.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Plan the key follows.
    #[arg(long)]
    pub plan: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// An allowed caller address or CIDR block (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<String>,
    /// An allowed browser origin, host or *.host (repeatable).
    #[arg(long = "origin")]
    pub origins: Vec<String>,
}

/// Rate limits and quota, of a key or of a plan.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// A rate limit (repeatable): NAME=LIMIT/PERIOD[,burst=N][,scope=key|owner|tenant][,mode=exact|local_first],
    /// e.g. per_second=50/1s,burst=100 or per_day=100000/1d.
    #[arg(long = "limit")]
    pub limits: Vec<String>,
    /// Quota: starting credit balance.
    #[arg(long)]
    pub credits: Option<u64>,
    /// Quota refill: daily:AMOUNT or monthly:DAY:AMOUNT (needs --credits).
    #[arg(long, requires = "credits")]
    pub refill: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeysListArgs {
    /// Only keys of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only keys of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// active, revoked or expired.
    #[arg(long)]
    pub status: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeysUpdateArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// New display name.
    #[arg(long, conflicts_with = "clear_name")]
    pub name: Option<String>,
    /// Remove the display name.
    #[arg(long)]
    pub clear_name: bool,
    /// Replace the permissions with these (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Remove all permissions.
    #[arg(long, conflicts_with = "permissions")]
    pub clear_permissions: bool,
    /// Replace the routes with these (repeatable).
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Remove the route allowlist (any endpoint).
    #[arg(long, conflicts_with = "routes")]
    pub clear_routes: bool,
    /// Replace the tags with these (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Remove all tags.
    #[arg(long, conflicts_with = "tags")]
    pub clear_tags: bool,
    /// Replace meta with this JSON object.
    #[arg(long)]
    pub meta: Option<String>,
    /// New expiry as RFC 3339.
    #[arg(long, conflicts_with = "no_expiry")]
    pub expires_at: Option<String>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
    /// Enable the key.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the key.
    #[arg(long)]
    pub disable: bool,
    /// Take the key off its plan.
    #[arg(long, conflicts_with = "plan")]
    pub no_plan: bool,
    /// Remove the key's own limits.
    #[arg(long, conflicts_with = "limits")]
    pub clear_limits: bool,
    /// Remove the key's own quota.
    #[arg(long, conflicts_with = "credits")]
    pub clear_quota: bool,
    /// Remove the IP allowlist.
    #[arg(long, conflicts_with = "ips")]
    pub clear_ips: bool,
    /// Remove the allowed origins.
    #[arg(long, conflicts_with = "origins")]
    pub clear_origins: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// How long the previous secret keeps working, e.g. 0, 10m, 24h (default 0: it stops now).
    #[arg(long, default_value = "0")]
    pub grace: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// Why the key is revoked.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CreditsArgs {
    /// The key's identifier (key_...).
    pub key_id: String,
    /// Set the balance.
    #[arg(long, conflicts_with_all = ["increase", "decrease"])]
    pub set: Option<u64>,
    /// Add credits.
    #[arg(long, conflicts_with = "decrease")]
    pub increase: Option<u64>,
    /// Remove credits (not below zero).
    #[arg(long)]
    pub decrease: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}
