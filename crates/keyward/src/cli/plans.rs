//! Arguments of `keyward plans` (create, update, list, show, delete).

use clap::{Args, Subcommand};

use super::client::{ClientArgs, ClientOnly};
use super::keys::LimitArgs;

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Create a plan.
    Create(PlanArgs),
    /// Replace a plan (keys on it follow at once).
    Update(PlanArgs),
    /// List plans.
    List(ClientOnly),
    /// Show a plan.
    Show(PlanIdArgs),
    /// Delete a plan no key follows.
    Delete(PlanIdArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan's name.
    pub plan_id: String,
    /// A permission of keys on the plan (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PlanIdArgs {
    /// The plan's name.
    pub plan_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}
