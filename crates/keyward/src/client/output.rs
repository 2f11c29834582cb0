//! How client commands print: readable text by default, the API's JSON with `--output json`.

use std::io::Write;

use keyward_wire::{
    AuditList, AuditVerifyReport, CreatedKey, Credits, KeyList, KeyView, PlanList, PlanView,
    RotatedKey, Timestamp, VerifyKeyResponse,
};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::cli::client::Output;

/// Prints a command's result in the format `--output` chose.
pub struct Printer {
    format: Output,
}

fn time(t: &Option<Timestamp>) -> String {
    t.and_then(|t| t.0.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

impl Printer {
    pub fn new(format: Output) -> Self {
        Self { format }
    }

    fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<bool> {
        if self.format == Output::Json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, value)?;
            writeln!(out)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn record_lines(k: &KeyView) -> String {
        let mut s = String::new();
        let mut line = |label: &str, value: &str| s.push_str(&format!("{label:<16}{value}\n"));
        line("key_id", &k.key_id);
        line("owner", &k.owner);
        line("name", opt(&k.name));
        line("tenant", opt(&k.tenant));
        line("environment", &k.environment);
        line(
            "status",
            &format!("{}{}", k.status, if k.enabled { "" } else { " (disabled)" }),
        );
        line("permissions", &k.permissions.join(", "));
        if !k.routes.is_empty() {
            line("routes", &k.routes.join(", "));
        }
        if !k.tags.is_empty() {
            line("tags", &k.tags.join(", "));
        }
        line("expires_at", &time(&k.expires_at));
        line("created_at", &time(&Some(k.created_at)));
        line("last_used_at", &time(&k.last_used_at));
        if k.revoked_at.is_some() {
            line("revoked_at", &time(&k.revoked_at));
            line("revoked_reason", opt(&k.revoked_reason));
        }
        for secret in &k.secrets {
            let until = secret
                .expires_at
                .map(|t| format!(" until {}", time(&Some(t))))
                .unwrap_or_default();
            line(
                "secret",
                &format!("{}… {}{until}", secret.start, secret.state),
            );
        }
        s
    }

    pub fn key(&self, k: &KeyView) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(k)? {
            write!(out, "{}", Self::record_lines(k))?;
        }
        Ok(())
    }

    pub fn created(&self, c: &CreatedKey) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(c)? {
            writeln!(out, "{:<16}{}", "key", c.key)?;
            write!(out, "{}", Self::record_lines(&c.record))?;
            eprintln!("This key will not be shown again: store it now.");
        }
        Ok(())
    }

    pub fn rotated(&self, r: &RotatedKey) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(r)? {
            writeln!(out, "{:<16}{}", "key", r.key)?;
            write!(out, "{}", Self::record_lines(&r.record))?;
            if let Some(p) = &r.previous_secret {
                writeln!(
                    out,
                    "{:<16}{}… works until {}",
                    "previous",
                    p.start,
                    time(&Some(p.expires_at))
                )?;
            }
            for e in &r.ended_secrets {
                writeln!(
                    out,
                    "{:<16}{}… ended now (at most two secrets are live)",
                    "ended", e.start
                )?;
            }
            eprintln!("This key will not be shown again: store it now.");
        }
        Ok(())
    }

    pub fn key_list(&self, list: &KeyList) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(list)? {
            for k in &list.keys {
                writeln!(
                    out,
                    "{}  {:<8} {:<20} {}",
                    k.key_id,
                    k.status,
                    k.owner,
                    k.permissions.join(",")
                )?;
            }
            if let Some(c) = &list.next_cursor {
                writeln!(out, "next page: --cursor {c}")?;
            }
        }
        Ok(())
    }

    pub fn verification(&self, v: &VerifyKeyResponse) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(v)? {
            writeln!(out, "{}", v.code)?;
            if let Some(id) = &v.key_id {
                writeln!(out, "{:<16}{id}", "key_id")?;
                writeln!(out, "{:<16}{}", "owner", opt(&v.owner))?;
            }
            if let Some(r) = &v.rotation {
                writeln!(
                    out,
                    "{:<16}deprecated: this secret stops working at {}",
                    "rotation",
                    time(&Some(r.expires_at))
                )?;
            }
        }
        Ok(())
    }

    pub fn audit_list(&self, list: &AuditList) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(list)? {
            for e in &list.events {
                writeln!(
                    out,
                    "{:>6}  {}  {:<12} actor={} target={} {}",
                    e.seq,
                    time(&Some(e.time)),
                    e.action,
                    opt(&e.actor),
                    opt(&e.target),
                    e.summary
                )?;
            }
            if let Some(c) = &list.next_cursor {
                writeln!(out, "next page: --cursor {c}")?;
            }
        }
        Ok(())
    }

    pub fn credits(&self, c: &Credits) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(c)? {
            writeln!(out, "{:<16}{}", "key_id", c.key_id)?;
            writeln!(out, "{:<16}{}", "credits", c.remaining)?;
        }
        Ok(())
    }

    pub fn plan(&self, p: &PlanView) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(p)? {
            writeln!(out, "{:<16}{}", "plan", p.plan_id)?;
            writeln!(out, "{:<16}{}", "permissions", p.permissions.join(", "))?;
            for l in &p.limits {
                writeln!(
                    out,
                    "{:<16}{} = {} per {}s (burst {})",
                    "limit",
                    l.name,
                    l.limit,
                    l.period_seconds,
                    l.burst.unwrap_or(l.limit)
                )?;
            }
            if let Some(q) = &p.quota {
                writeln!(out, "{:<16}{} credits", "quota", q.credits)?;
            }
            writeln!(out, "{:<16}{}", "version", p.version)?;
        }
        Ok(())
    }

    pub fn plan_list(&self, list: &PlanList) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(list)? {
            for p in &list.plans {
                writeln!(
                    out,
                    "{:<20} v{} limits={} permissions={}",
                    p.plan_id,
                    p.version,
                    p.limits.len(),
                    p.permissions.join(",")
                )?;
            }
        }
        Ok(())
    }

    pub fn audit_report(&self, r: &AuditVerifyReport) -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if !self.json(r)? {
            match &r.first_broken {
                None => writeln!(out, "OK: {} events, hash chain intact", r.checked),
                Some(b) => writeln!(
                    out,
                    "BROKEN at event {}: {} ({} events verified before it)",
                    b.seq, b.reason, r.checked
                ),
            }?;
        }
        Ok(())
    }
}
