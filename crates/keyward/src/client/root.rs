//! `keyward root`: create, list and revoke root keys (the admin API's credentials) through
//! `/v1/root-keys`.

use std::process::ExitCode;

use keyward_wire::{CreateRootKeyRequest, CreatedKey};

use super::http::connect;
use super::keys;
use super::parse::parse_duration;
use crate::cli::root::RootCommand;

/// Runs one `keyward root` subcommand.
pub async fn run(cmd: RootCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RootCommand::Create(a) => {
            let (client, out) = connect(&a.client)?;
            let body = CreateRootKeyRequest {
                owner: a.owner,
                name: a.name,
                tenant: a.tenant,
                permissions: a.permissions,
                expires_at: None,
                ttl_seconds: a.ttl.as_deref().map(parse_duration).transpose()?,
            };
            let created: CreatedKey = client.post("/v1/root-keys", &body).await?;
            out.created(&created)?;
        }
        RootCommand::List(a) => keys::list_keys("/v1/root-keys", &a).await?,
        RootCommand::Revoke(a) => keys::revoke_key("/v1/root-keys", a).await?,
    }
    Ok(ExitCode::SUCCESS)
}
