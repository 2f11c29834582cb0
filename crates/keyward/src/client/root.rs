//! `keyward root`: create, list and revoke root keys (the admin API's credentials) through
//! `/v1/root-keys`.

use std::process::ExitCode;

use keyward_wire::{CreateRootKeyRequest, CreatedKey, KeyList, KeyView, RevokeKeyRequest};

use super::http::connect;
use super::keys::{ListQuery, key_path};
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
        RootCommand::List(a) => {
            let (client, out) = connect(&a.client)?;
            let list: KeyList = client.get("/v1/root-keys", &ListQuery::from(&a)).await?;
            out.key_list(&list)?;
        }
        RootCommand::Revoke(a) => {
            let (client, out) = connect(&a.client)?;
            let body = RevokeKeyRequest { reason: a.reason };
            let key: KeyView = client
                .post(&key_path("/v1/root-keys", &a.key_id, "/revoke")?, &body)
                .await?;
            out.key(&key)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
