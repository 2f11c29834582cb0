//! The `keyward` binary: `serve` runs the server; the other commands are clients of a running
//! server. Errors print as one line (`error: ...`) with exit status 1; `verify` exits 3 when
//! the key is not valid, and `audit verify` exits 3 when the chain is broken.

use keyward::{cli, client, gateway, output, serve, simulate, store};

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use keyward_wire::{
    AuditList, AuditVerifyReport, CreateKeyRequest, CreateRootKeyRequest, CreatedKey, Credits,
    CreditsRequest, KeyList, KeyView, LimitSpec, PlanList, PlanRequest, PlanView, QuotaSpec,
    RevokeKeyRequest, RotateKeyRequest, RotatedKey, Timestamp, UpdateKeyRequest, UsageReportView,
    VerifyKeyRequest, VerifyKeyResponse,
};
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{
    AuditCommand, Cli, ClientArgs, Command, KeysCommand, PlansCommand, RootCommand, UsageCommand,
    UsageExportArgs,
};
use crate::client::Client;
use crate::output::Printer;

/// mimalloc: the edge allocates a few small objects per request (headers, strings); glibc's
/// allocator showed up as about a tenth of the gateway's CPU profile under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a verified key is not valid, or the audit chain is broken.
const EXIT_NOT_VALID: u8 = 3;

fn main() -> ExitCode {
    // A panic message may quote request data; print only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "keyward: internal error (panic){location}; the message is withheld because it may contain request data"
        );
    }));
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut Cli::command()).exit(),
    };
    // The gateway's anomaly settings given as flags or variables win over its file's.
    let anomaly_given: Vec<&'static str> = matches
        .subcommand_matches("gateway")
        .map(|m| {
            cli::AnomalyArgs::IDS
                .into_iter()
                .filter(|id| {
                    matches!(
                        m.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // KEYWARD_WORKER_THREADS sizes the async runtime (default: one thread per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("KEYWARD_WORKER_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &anomaly_given)) {
        Ok(code) => code,
        // A closed pipe (`keyward audit list | head`) is the reader's choice, not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", keyward_core::redact::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, anomaly_given: &[&str]) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Gateway(args) => gateway::run(
            &args.config,
            args.store.as_deref(),
            args.redis.config(),
            args.anomaly,
            |id| anomaly_given.contains(&id),
            &args.traces,
        )
        .await
        .map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => {
            store::migrate(&args.store).await?;
            println!("keyward: the store's schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => keys(cmd).await,
        Command::Verify(args) => {
            let (client, out) = connect(&args.client)?;
            let key = if args.key == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the key from standard input")?;
                text.trim().to_owned()
            } else {
                args.key
            };
            let permissions = match (args.query, args.permissions.is_empty()) {
                (Some(q), _) => Some(q),
                (None, false) => Some(args.permissions.join(" AND ")),
                (None, true) => None,
            };
            let body = VerifyKeyRequest {
                key,
                permissions,
                method: args.method,
                path: args.path,
                ip: args.ip,
                origin: args.origin,
                cost: args.cost,
                tenant: None,
                environment: None,
            };
            let response: VerifyKeyResponse = client.post("/v1/keys/verify", &body).await?;
            out.verification(&response)?;
            Ok(if response.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NOT_VALID)
            })
        }
        Command::Audit(AuditCommand::List(args)) => {
            let (client, out) = connect(&args.client)?;
            #[derive(Serialize)]
            struct Q {
                #[serde(skip_serializing_if = "Option::is_none")]
                key_id: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                action: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                limit: Option<u32>,
                #[serde(skip_serializing_if = "Option::is_none")]
                cursor: Option<String>,
            }
            let q = Q {
                key_id: args.key_id,
                action: args.action,
                limit: args.limit,
                cursor: args.cursor,
            };
            let list: AuditList = client.get("/v1/audit", &q).await?;
            out.audit_list(&list)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            let (client, out) = connect(&args.client)?;
            let report: AuditVerifyReport = client.post("/v1/audit/verify", &Value::Null).await?;
            out.audit_report(&report)?;
            Ok(if report.intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NOT_VALID)
            })
        }
        Command::Root(cmd) => root(cmd).await,
        Command::Plans(cmd) => plans(cmd).await,
        Command::Usage(UsageCommand::Export(args)) => usage_export(args).await,
        Command::SimulateLeak(args) => simulate::run(&args).await,
    }
}

async fn plans(cmd: PlansCommand) -> anyhow::Result<ExitCode> {
    let plan_body = |a: &cli::PlanArgs, with_id: bool| -> anyhow::Result<PlanRequest> {
        Ok(PlanRequest {
            plan_id: with_id.then(|| a.plan_id.clone()),
            limits: parse_limits(&a.limits)?,
            quota: parse_quota(a.credits, a.refill.as_deref())?,
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

/// Parses `NAME=LIMIT/PERIOD[,burst=N][,scope=S][,mode=M]`.
fn parse_limits(specs: &[String]) -> anyhow::Result<Vec<LimitSpec>> {
    specs
        .iter()
        .map(|spec| {
            let bad = || {
                anyhow::anyhow!(
                    "--limit {spec:?} is not NAME=LIMIT/PERIOD[,burst=N][,scope=key|owner|tenant][,mode=exact|local_first]"
                )
            };
            let mut parts = spec.split(',');
            let (name, rate) = parts
                .next()
                .and_then(|p| p.split_once('='))
                .ok_or_else(bad)?;
            let (limit, period) = rate.split_once('/').ok_or_else(bad)?;
            let mut out = LimitSpec {
                name: name.to_owned(),
                limit: limit.parse().map_err(|_| bad())?,
                period_seconds: u64::try_from(parse_duration(period)?).map_err(|_| bad())?,
                burst: None,
                scope: None,
                mode: None,
            };
            for option in parts {
                match option.split_once('=') {
                    Some(("burst", n)) => out.burst = Some(n.parse().map_err(|_| bad())?),
                    Some(("scope", s)) => out.scope = Some(s.to_owned()),
                    Some(("mode", m)) => out.mode = Some(m.to_owned()),
                    _ => return Err(bad()),
                }
            }
            Ok(out)
        })
        .collect()
}

/// Parses `--credits N [--refill daily:AMOUNT | monthly:DAY:AMOUNT]`.
fn parse_quota(credits: Option<u64>, refill: Option<&str>) -> anyhow::Result<Option<QuotaSpec>> {
    let Some(credits) = credits else {
        return Ok(None);
    };
    let mut quota = QuotaSpec {
        credits,
        ..QuotaSpec::default()
    };
    if let Some(refill) = refill {
        let bad =
            || anyhow::anyhow!("--refill {refill:?} is not daily:AMOUNT or monthly:DAY:AMOUNT");
        match refill.split(':').collect::<Vec<_>>().as_slice() {
            ["daily", amount] => {
                quota.refill_interval = Some("daily".into());
                quota.refill_amount = Some(amount.parse().map_err(|_| bad())?);
            }
            ["monthly", day, amount] => {
                quota.refill_interval = Some("monthly".into());
                quota.refill_day = Some(day.parse().map_err(|_| bad())?);
                quota.refill_amount = Some(amount.parse().map_err(|_| bad())?);
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(quota))
}

/// `keyward usage export`: every page of `GET /v1/usage`, as CSV.
async fn usage_export(args: UsageExportArgs) -> anyhow::Result<ExitCode> {
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

fn connect(args: &ClientArgs) -> anyhow::Result<(Client, Printer)> {
    Ok((Client::new(&args.url)?, Printer::new(args.output)))
}

#[derive(Serialize)]
struct ListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

impl From<&cli::KeysListArgs> for ListQuery {
    fn from(a: &cli::KeysListArgs) -> Self {
        Self {
            owner: a.owner.clone(),
            tenant: a.tenant.clone(),
            status: a.status.clone(),
            limit: a.limit,
            cursor: a.cursor.clone(),
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

async fn keys(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
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
                limits: parse_limits(&a.policy.limits)?,
                quota: parse_quota(a.policy.credits, a.policy.refill.as_deref())?,
                ip_allowlist: a.policy.ips.clone(),
                origins: a.policy.origins.clone(),
            };
            let created: CreatedKey = client.post("/v1/keys", &body).await?;
            out.created(&created)?;
        }
        KeysCommand::List(a) => {
            let (client, out) = connect(&a.client)?;
            let list: KeyList = client.get("/v1/keys", &ListQuery::from(&a)).await?;
            out.key_list(&list)?;
        }
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
                    Some(parse_limits(&a.policy.limits)?).filter(|l| !l.is_empty())
                },
                quota: if a.clear_quota {
                    Some(None)
                } else {
                    parse_quota(a.policy.credits, a.policy.refill.as_deref())?.map(Some)
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
        KeysCommand::Revoke(a) => {
            let (client, out) = connect(&a.client)?;
            let body = RevokeKeyRequest { reason: a.reason };
            let key: KeyView = client
                .post(&key_path("/v1/keys", &a.key_id, "/revoke")?, &body)
                .await?;
            out.key(&key)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn root(cmd: RootCommand) -> anyhow::Result<ExitCode> {
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

fn parse_meta(text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("--meta must be a JSON object, e.g. '{{\"plan\": \"pro\"}}'"),
        Err(e) => bail!("--meta is not valid JSON: {e}"),
    }
}

fn parse_time(text: &str) -> anyhow::Result<Timestamp> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(Timestamp)
        .with_context(|| format!("{text:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z"))
}

/// Parses `3600`, `90s`, `15m`, `12h`, `30d` or `2w` into seconds.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("{text:?} is not a duration such as 90s, 15m, 12h, 30d or 2w"),
    };
    let n: i64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 90s, 15m, 12h, 30d or 2w"))?;
    n.checked_mul(multiplier)
        .with_context(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("30d").unwrap(), 2_592_000);
        assert!(parse_duration("10y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn key_ids_cannot_escape_the_path() {
        assert!(key_path("/v1/keys", "key_abc", "/revoke").is_ok());
        assert!(key_path("/v1/keys", "../audit", "").is_err());
        assert!(key_path("/v1/keys", "a?b", "").is_err());
    }

    #[test]
    fn limit_and_quota_flags_parse() {
        let limits = parse_limits(&[
            "per_second=50/1s,burst=100,scope=owner,mode=local_first".into(),
            "per_day=100000/1d".into(),
        ])
        .unwrap();
        assert_eq!(
            (limits[0].limit, limits[0].period_seconds, limits[0].burst),
            (50, 1, Some(100))
        );
        assert_eq!(limits[0].scope.as_deref(), Some("owner"));
        assert_eq!(limits[0].mode.as_deref(), Some("local_first"));
        assert_eq!(limits[1].period_seconds, 86_400);
        assert!(parse_limits(&["nonsense".into()]).is_err());
        assert!(parse_limits(&["a=1/1s,colour=red".into()]).is_err());
        let q = parse_quota(Some(10), Some("monthly:15:500"))
            .unwrap()
            .unwrap();
        assert_eq!((q.refill_day, q.refill_amount), (Some(15), Some(500)));
        assert!(parse_quota(Some(10), Some("weekly:5")).is_err());
        assert!(parse_quota(None, None).unwrap().is_none());
    }

    #[test]
    fn meta_must_be_an_object() {
        assert!(parse_meta(r#"{"a": 1}"#).is_ok());
        assert!(parse_meta("[1]").is_err());
        assert!(parse_meta("{").is_err());
    }
}
