//! `keyward audit`: list audit events (`GET /v1/audit`) and check the hash chain
//! (`POST /v1/audit/verify`, exit [`EXIT_NOT_VALID`] if it is broken).

use std::process::ExitCode;

use keyward_wire::{AuditList, AuditVerifyReport};
use serde::Serialize;
use serde_json::Value;

use super::http::connect;
use super::verify::EXIT_NOT_VALID;
use crate::cli::audit::{AuditCommand, AuditListArgs};
use crate::cli::client::{ClientOnly, PageArgs};

/// Runs one `keyward audit` subcommand.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::List(args) => list(args).await,
        AuditCommand::Verify(args) => verify(args).await,
    }
}

async fn list(args: AuditListArgs) -> anyhow::Result<ExitCode> {
    let (client, out) = connect(&args.client)?;
    #[derive(Serialize)]
    struct Q {
        #[serde(skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        #[serde(flatten)]
        page: PageArgs,
    }
    let q = Q {
        key_id: args.key_id,
        action: args.action,
        page: args.page,
    };
    let list: AuditList = client.get("/v1/audit", &q).await?;
    out.audit_list(&list)?;
    Ok(ExitCode::SUCCESS)
}

async fn verify(args: ClientOnly) -> anyhow::Result<ExitCode> {
    let (client, out) = connect(&args.client)?;
    let report: AuditVerifyReport = client.post("/v1/audit/verify", &Value::Null).await?;
    out.audit_report(&report)?;
    Ok(if report.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_VALID)
    })
}
