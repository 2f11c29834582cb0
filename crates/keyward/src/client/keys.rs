//! `keyward keys`: issue, list, show, update, rotate and revoke keys and change their credits,
//! through `/v1/keys`. Listing and revoking serve `keyward root` too.

use std::process::ExitCode;

use anyhow::bail;
use keyward_wire::{
    CreateKeyRequest, CreatedKey, Credits, CreditsRequest, KeyList, KeyView, RevokeKeyRequest,
    RotateKeyRequest, RotatedKey, UpdateKeyRequest,
};
use serde::Serialize;

use super::http::connect;
use super::parse::{parse_duration, parse_limits, parse_meta, parse_quota, parse_time};
use crate::cli::client::PageArgs;
use crate::cli::keys::{KeysCommand, KeysListArgs, RevokeArgs};

/// The query of a key list (`GET /v1/keys`, `GET /v1/root-keys`).
#[derive(Serialize)]
struct ListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(flatten)]
    page: PageArgs,
}

impl From<&KeysListArgs> for ListQuery {
    fn from(a: &KeysListArgs) -> Self {
        Self {
            owner: a.owner.clone(),
            tenant: a.tenant.clone(),
            status: a.status.clone(),
            page: a.page.clone(),
        }
    }
}

/// Rejects key_ids that would change the request path.
fn key_path(base: &str, key_id: &str, action: &str) -> anyhow::Result<String> {
    if key_id.is_empty()
        || !key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("{key_id:?} is not a key_id (key_ followed by letters and digits)");
    }
    Ok(format!("{base}/{key_id}{action}"))
}

/// Lists the keys under `base` (`/v1/keys` or `/v1/root-keys`), one page.
pub async fn list_keys(base: &str, a: &KeysListArgs) -> anyhow::Result<()> {
    let (client, out) = connect(&a.client)?;
    let list: KeyList = client.get(base, &ListQuery::from(a)).await?;
    out.key_list(&list)
}

/// Revokes the key `a.key_id` under `base` (`/v1/keys` or `/v1/root-keys`).
pub async fn revoke_key(base: &str, a: RevokeArgs) -> anyhow::Result<()> {
    let (client, out) = connect(&a.client)?;
    let body = RevokeKeyRequest { reason: a.reason };
    let key: KeyView = client
        .post(&key_path(base, &a.key_id, "/revoke")?, &body)
        .await?;
    out.key(&key)
}

/// Runs one `keyward keys` subcommand.
pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create(a) => {
            let (client, out) = connect(&a.client)?;
            let body = CreateKeyRequest {
                owner: a.owner,
                name: a.name,
                tenant: a.tenant,
                environment: a.environment,
                purpose: a.purpose,
                tags: a.tags,
                meta: a.meta.as_deref().map(parse_meta).transpose()?,
                permissions: a.permissions,
                routes: a.routes,
                expires_at: a.expires_at.as_deref().map(parse_time).transpose()?,
                ttl_seconds: a.ttl.as_deref().map(parse_duration).transpose()?,
                enabled: a.disabled.then_some(false),
                prefix: a.prefix,
                plan: a.policy.plan.clone(),
                limits: parse_limits(&a.policy.limits.limits)?,
                quota: parse_quota(a.policy.limits.credits, a.policy.limits.refill.as_deref())?,
                ip_allowlist: a.policy.ips.clone(),
                origins: a.policy.origins.clone(),
            };
            let created: CreatedKey = client.post("/v1/keys", &body).await?;
            out.created(&created)?;
        }
        KeysCommand::List(a) => list_keys("/v1/keys", &a).await?,
        KeysCommand::Show(a) => {
            let (client, out) = connect(&a.client)?;
            let key: KeyView = client
                .get(&key_path("/v1/keys", &a.key_id, "")?, &())
                .await?;
            out.key(&key)?;
        }
        KeysCommand::Update(a) => {
            let (client, out) = connect(&a.client)?;
            let list =
                |values: Vec<String>, clear: bool| (clear || !values.is_empty()).then_some(values);
            let body = UpdateKeyRequest {
                name: if a.clear_name {
                    Some(None)
                } else {
                    a.name.map(Some)
                },
                permissions: list(a.permissions, a.clear_permissions),
                routes: list(a.routes, a.clear_routes),
                tags: list(a.tags, a.clear_tags),
                meta: a.meta.as_deref().map(parse_meta).transpose()?,
                expires_at: if a.no_expiry {
                    Some(None)
                } else {
                    a.expires_at
                        .as_deref()
                        .map(parse_time)
                        .transpose()?
                        .map(Some)
                },
                enabled: if a.enable {
                    Some(true)
                } else if a.disable {
                    Some(false)
                } else {
                    None
                },
                plan: if a.no_plan {
                    Some(None)
                } else {
                    a.policy.plan.clone().map(Some)
                },
                limits: if a.clear_limits {
                    Some(Vec::new())
                } else {
                    Some(parse_limits(&a.policy.limits.limits)?).filter(|l| !l.is_empty())
                },
                quota: if a.clear_quota {
                    Some(None)
                } else {
                    parse_quota(a.policy.limits.credits, a.policy.limits.refill.as_deref())?
                        .map(Some)
                },
                ip_allowlist: list(a.policy.ips.clone(), a.clear_ips),
                origins: list(a.policy.origins.clone(), a.clear_origins),
            };
            let key: KeyView = client
                .patch(&key_path("/v1/keys", &a.key_id, "")?, &body)
                .await?;
            out.key(&key)?;
        }
        KeysCommand::Rotate(a) => {
            let (client, out) = connect(&a.client)?;
            let grace = if a.grace == "0" {
                0
            } else {
                parse_duration(&a.grace)?
            };
            let body = RotateKeyRequest {
                grace_period_seconds: grace,
            };
            let rotated: RotatedKey = client
                .post(&key_path("/v1/keys", &a.key_id, "/rotate")?, &body)
                .await?;
            out.rotated(&rotated)?;
        }
        KeysCommand::Credits(a) => {
            let (client, out) = connect(&a.client)?;
            let path = key_path("/v1/keys", &a.key_id, "/credits")?;
            let op = match (a.set, a.increase, a.decrease) {
                (Some(n), _, _) => Some(("set", n)),
                (_, Some(n), _) => Some(("increase", n)),
                (_, _, Some(n)) => Some(("decrease", n)),
                _ => None,
            };
            let credits: Credits = match op {
                Some((op, amount)) => {
                    client
                        .post(
                            &path,
                            &CreditsRequest {
                                op: op.to_owned(),
                                amount,
                            },
                        )
                        .await?
                }
                None => client.get(&path, &()).await?,
            };
            out.credits(&credits)?;
        }
        KeysCommand::Revoke(a) => revoke_key("/v1/keys", a).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_cannot_escape_the_path() {
        assert!(key_path("/v1/keys", "key_abc", "/revoke").is_ok());
        assert!(key_path("/v1/keys", "../audit", "").is_err());
        assert!(key_path("/v1/keys", "a?b", "").is_err());
    }
}
