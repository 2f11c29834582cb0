//! Usage for billing: how many verifications each key had, by outcome, and the credits they
//! spent, counted per hour (UTC) and summed per day on reading.
//!
//! Verifications are counted in memory on the verify path and written to the store in
//! batches off it (see `keyward-engine`); the store adds each batch to its hourly rows, so
//! several nodes counting the same key add up. A day is 24 whole UTC hours.

use time::{Duration, OffsetDateTime, Time};

use crate::audit::unix_millis;
use crate::verify::VerifyCode;

/// The size of a usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One hour (UTC).
    Hour,
    /// One day (UTC).
    Day,
}

impl Granularity {
    /// The stable name (`hour`, `day`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    /// The bucket length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `t` (in UTC), or `None` if that is not a representable
    /// time. Buckets are Unix-epoch aligned; for times before 1970 they would not match the
    /// stores' integer division, which is why [`in_range`] starts at the epoch.
    pub fn floor(self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        // A UTC time from 1970 on (every clock reading on the verify path) keeps its date: the
        // epoch-aligned hours and days are the UTC ones, so only the time of day is cut.
        if t.offset().is_utc() && t.year() >= 1970 {
            let hour = match self {
                Self::Hour => t.hour(),
                Self::Day => 0,
            };
            return Some(t.replace_time(Time::MIDNIGHT.replace_hour(hour).ok()?));
        }
        self.floor_by_millis(t)
    }

    /// [`floor`](Self::floor) by integer division of Unix milliseconds, as the stores bucket.
    fn floor_by_millis(self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let ms = floor_millis(unix_millis(t), self.millis());
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    }

    /// `t` if it starts a bucket, else the start of the next bucket (`None` past the last
    /// representable time).
    pub fn ceil(self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let floor = self.floor(t)?;
        if floor == t {
            Some(floor)
        } else {
            floor.checked_add(Duration::milliseconds(self.millis()))
        }
    }

    /// The range a report covers when the caller gives no `from`: one day of hours, or 30 days.
    pub fn default_span(self) -> Duration {
        match self {
            Self::Hour => Duration::days(1),
            Self::Day => Duration::days(30),
        }
    }

    /// The longest range one report may cover: 93 days of hours, or 3660 days.
    pub fn max_span(self) -> Duration {
        match self {
            Self::Hour => Duration::days(93),
            Self::Day => Duration::days(3660),
        }
    }
}

/// The earliest time a usage report may name (the Unix epoch: buckets are epoch-aligned).
pub const EARLIEST: OffsetDateTime = time::macros::datetime!(1970-01-01 00:00 UTC);
/// The first time past the range a usage report may name.
pub const LATEST: OffsetDateTime = time::macros::datetime!(9000-01-01 00:00 UTC);

/// Whether `t` is within the times a usage report may name, `[EARLIEST, LATEST)`.
pub fn in_range(t: OffsetDateTime) -> bool {
    (EARLIEST..LATEST).contains(&t)
}

/// Verifications of one key with one outcome in one bucket, and the credits they spent.
///
/// On the way into the store `start` is an hour; read back per day, it is the day's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    /// Start of the bucket (UTC).
    pub start: OffsetDateTime,
    /// The key.
    pub key_id: String,
    /// The key's owner when it was used.
    pub owner: String,
    /// The key's tenant when it was used.
    pub tenant: Option<String>,
    /// The outcome.
    pub code: VerifyCode,
    /// How many verifications had this outcome.
    pub verifications: u64,
    /// Credits those verifications took from the key's quota (0 for keys without one).
    pub credits: u64,
}

/// A position in a usage report: rows are ordered by (start, key_id, code), and a page ends
/// after this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    /// The last row's bucket start.
    pub start: OffsetDateTime,
    /// The last row's key.
    pub key_id: String,
    /// The last row's outcome.
    pub code: VerifyCode,
}

impl UsageCursor {
    /// The cursor after `row`.
    pub fn after(row: &UsageCount) -> Self {
        Self {
            start: row.start,
            key_id: row.key_id.clone(),
            code: row.code,
        }
    }

    /// The opaque text form given to clients: `MILLIS.CODE.KEY_ID`.
    pub fn encode(&self) -> String {
        format!(
            "{}.{}.{}",
            unix_millis(self.start),
            self.code.as_str(),
            self.key_id
        )
    }

    /// Parses [`encode`](Self::encode)'s form; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '.');
        let millis: i64 = parts.next()?.parse().ok()?;
        let code = VerifyCode::parse(parts.next()?)?;
        let key_id = parts.next()?;
        if key_id.is_empty() {
            return None;
        }
        let start =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
        Some(Self {
            start,
            key_id: key_id.to_owned(),
            code,
        })
    }
}

fn floor_millis(ms: i64, size: i64) -> i64 {
    ms.div_euclid(size) * size
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    /// The shortcut for UTC times gives the buckets the stores compute, across day, month,
    /// year and leap-day boundaries, at every granularity.
    #[test]
    fn floor_matches_the_stores_integer_division() {
        let start = datetime!(1970-01-01 00:00 UTC).unix_timestamp();
        let end = datetime!(2100-01-01 00:00 UTC).unix_timestamp();
        let step = 7_919 * 60 + 17; // a prime number of seconds, to land all over the clock
        let mut t = start;
        while t < end {
            for nanos in [0, 1, 999_999_999] {
                let at =
                    OffsetDateTime::from_unix_timestamp(t).unwrap() + Duration::nanoseconds(nanos);
                for g in [Granularity::Hour, Granularity::Day] {
                    assert_eq!(g.floor(at), g.floor_by_millis(at), "{g:?} {at}");
                }
            }
            t += step;
        }
    }

    #[test]
    fn buckets_are_whole_utc_hours_and_days() {
        let (hour, day) = (Granularity::Hour, Granularity::Day);
        let t = datetime!(2026-11-28 23:19:44.5 UTC);
        assert_eq!(hour.floor(t), Some(datetime!(2026-11-28 23:00 UTC)));
        assert_eq!(hour.ceil(t), Some(datetime!(2026-11-29 00:00 UTC)));
        assert_eq!(day.floor(t), Some(datetime!(2026-11-28 00:00 UTC)));
        assert_eq!(day.ceil(t), Some(datetime!(2026-11-29 00:00 UTC)));
        let whole = datetime!(2026-11-28 00:00 UTC);
        assert_eq!(day.ceil(whole), Some(whole));
        assert_eq!(hour.floor(whole), Some(whole));
        // An offset time is bucketed by its UTC instant, and the bucket is given in UTC.
        let offset = datetime!(2026-11-28 01:30 +02:00);
        let floored = day.floor(offset).unwrap();
        assert_eq!(floored, datetime!(2026-11-27 00:00 UTC));
        assert!(floored.offset().is_utc());
        // Times whose bucket is not representable give None, never a made-up time.
        assert_eq!(hour.ceil(datetime!(9999-12-31 23:30 UTC)), None);
        assert_eq!(day.floor(datetime!(9999-12-31 23:30 -01:00)), None);
        assert!(in_range(EARLIEST) && !in_range(LATEST));
        assert!(!in_range(datetime!(1969-12-31 23:59:59 UTC)));
    }

    #[test]
    fn granularity_names_round_trip() {
        for g in [Granularity::Hour, Granularity::Day] {
            assert_eq!(Granularity::parse(g.as_str()), Some(g));
        }
        assert_eq!(Granularity::parse("week"), None);
        assert_eq!(Granularity::parse("Hour"), None);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = UsageCursor {
            start: datetime!(2026-11-28 10:00 UTC),
            key_id: "key_abc.def".into(),
            code: VerifyCode::RateLimited,
        };
        let text = cursor.encode();
        assert_eq!(text, "1795860000000.RATE_LIMITED.key_abc.def");
        assert_eq!(UsageCursor::parse(&text), Some(cursor));
        for bad in [
            "",
            "x.VALID.key_1",
            "1.NOPE.key_1",
            "1.VALID.",
            "1.VALID",
            "99999999999999999.VALID.k",
        ] {
            assert_eq!(UsageCursor::parse(bad), None, "{bad:?}");
        }
    }
}
