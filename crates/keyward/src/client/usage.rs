//! `keyward usage export`: every page of `GET /v1/usage`, written as CSV to standard output
//! or, replaced only once complete, to a file.

use std::process::ExitCode;

use anyhow::Context;
use keyward_wire::UsageReportView;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use super::http::Client;
use crate::cli::usage::{UsageCommand, UsageExportArgs};

/// Runs one `keyward usage` subcommand.
pub async fn run(cmd: UsageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UsageCommand::Export(args) => export(args).await,
    }
}

/// `keyward usage export`: every page of `GET /v1/usage`, as CSV.
async fn export(args: UsageExportArgs) -> anyhow::Result<ExitCode> {
    #[derive(Serialize)]
    struct Q {
        #[serde(skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        granularity: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    }
    let client = Client::new(&args.client.url)?;
    // A file is written beside its destination and renamed into place at the end, so a
    // failed export never replaces an earlier good one.
    let mut partial = match &args.file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let file = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            Some((path, file))
        }
        None => None,
    };
    let sink: Box<dyn std::io::Write + '_> = match &mut partial {
        Some((_, file)) => Box::new(file.as_file_mut()),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut csv = csv::Writer::from_writer(sink);
    csv.write_record([
        "start",
        "key_id",
        "owner",
        "tenant",
        "code",
        "verifications",
        "credits",
    ])?;
    let mut q = Q {
        key_id: args.key_id,
        owner: args.owner,
        tenant: args.tenant,
        from: args.from,
        to: args.to,
        granularity: args.granularity,
        cursor: None,
    };
    loop {
        let page: UsageReportView = client.get("/v1/usage", &q).await?;
        for row in &page.items {
            csv.write_record([
                row.start.0.format(&Rfc3339)?.as_str(),
                &row.key_id,
                &row.owner,
                row.tenant.as_deref().unwrap_or(""),
                &row.code,
                &row.verifications.to_string(),
                &row.credits.to_string(),
            ])?;
        }
        let Some(cursor) = page.next_cursor else {
            break;
        };
        // Later pages ask for the first page's rounded range, so "now" moving on while pages
        // are fetched cannot shift the export.
        q.cursor = Some(cursor);
        q.from = Some(page.from.0.format(&Rfc3339)?);
        q.to = Some(page.to.0.format(&Rfc3339)?);
    }
    csv.flush().context("cannot write the CSV")?;
    drop(csv);
    if let Some((path, file)) = partial {
        file.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
