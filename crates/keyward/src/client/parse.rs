//! The client commands' flag values that are more than strings: durations (`--ttl`,
//! `--grace`), RFC 3339 times, `--meta` JSON, `--limit` specs and `--credits`/`--refill`
//! quotas, each turned into its `keyward-wire` form with a one-line error naming the flag.

use anyhow::{Context, bail};
use keyward_wire::{LimitSpec, QuotaSpec, Timestamp};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses `NAME=LIMIT/PERIOD[,burst=N][,scope=S][,mode=M]`.
pub fn parse_limits(specs: &[String]) -> anyhow::Result<Vec<LimitSpec>> {
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
pub fn parse_quota(
    credits: Option<u64>,
    refill: Option<&str>,
) -> anyhow::Result<Option<QuotaSpec>> {
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

/// Parses `--meta`: a JSON object.
pub fn parse_meta(text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("--meta must be a JSON object, e.g. '{{\"plan\": \"pro\"}}'"),
        Err(e) => bail!("--meta is not valid JSON: {e}"),
    }
}

/// Parses an RFC 3339 time such as `2027-01-01T00:00:00Z`.
pub fn parse_time(text: &str) -> anyhow::Result<Timestamp> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(Timestamp)
        .with_context(|| format!("{text:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z"))
}

/// Parses `3600`, `90s`, `15m`, `12h`, `30d` or `2w` into seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<i64> {
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
