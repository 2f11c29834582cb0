//! `keyward plans`: create, replace, list, show and delete plans through `/v1/plans`.

use std::process::ExitCode;

use anyhow::bail;
use keyward_wire::{PlanList, PlanRequest, PlanView};

use super::http::connect;
use super::parse::{parse_limits, parse_quota};
use crate::cli::plans::{PlanArgs, PlansCommand};

/// Runs one `keyward plans` subcommand.
pub async fn run(cmd: PlansCommand) -> anyhow::Result<ExitCode> {
    let plan_body = |a: &PlanArgs, with_id: bool| -> anyhow::Result<PlanRequest> {
        Ok(PlanRequest {
            plan_id: with_id.then(|| a.plan_id.clone()),
            limits: parse_limits(&a.limits.limits)?,
            quota: parse_quota(a.limits.credits, a.limits.refill.as_deref())?,
            permissions: a.permissions.clone(),
        })
    };
    let plan_path = |id: &str| -> anyhow::Result<String> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            bail!("{id:?} is not a plan name (A-Z a-z 0-9 _ . : -)");
        }
        Ok(format!("/v1/plans/{id}"))
    };
    match cmd {
        PlansCommand::Create(a) => {
            let (client, out) = connect(&a.client)?;
            let plan: PlanView = client.post("/v1/plans", &plan_body(&a, true)?).await?;
            out.plan(&plan)?;
        }
        PlansCommand::Update(a) => {
            let (client, out) = connect(&a.client)?;
            let plan: PlanView = client
                .put(&plan_path(&a.plan_id)?, &plan_body(&a, false)?)
                .await?;
            out.plan(&plan)?;
        }
        PlansCommand::List(a) => {
            let (client, out) = connect(&a.client)?;
            let list: PlanList = client.get("/v1/plans", &()).await?;
            out.plan_list(&list)?;
        }
        PlansCommand::Show(a) => {
            let (client, out) = connect(&a.client)?;
            let plan: PlanView = client.get(&plan_path(&a.plan_id)?, &()).await?;
            out.plan(&plan)?;
        }
        PlansCommand::Delete(a) => {
            let (client, _) = connect(&a.client)?;
            client.delete(&plan_path(&a.plan_id)?).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
