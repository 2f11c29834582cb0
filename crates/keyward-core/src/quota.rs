//! Usage quotas (credits): a balance each admitted request spends its cost from, optionally
//! refilled to a set amount on a schedule (daily at 00:00 UTC, or monthly on a given day).

use time::{Date, Month, OffsetDateTime, Time};

/// When a quota is refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "interval", rename_all = "snake_case")]
pub enum RefillSchedule {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month on this day (1 to 31; in shorter months, on the last day) at 00:00 UTC.
    Monthly {
        /// Day of the month.
        day: u8,
    },
}

/// A key's (or plan's) quota settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaConfig {
    /// Balance a key starts with.
    pub credits: u64,
    /// Optional refill: back to `amount` at every scheduled instant.
    pub refill: Option<Refill>,
}

/// A refill rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refill {
    /// The balance after a refill.
    pub amount: u64,
    /// When.
    #[serde(flatten)]
    pub schedule: RefillSchedule,
}

fn month_day(year: i32, month: Month, day: u8) -> Option<Date> {
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.min(last)).ok()
}

impl RefillSchedule {
    /// The most recent scheduled refill instant at or before `now`.
    pub fn last_at_or_before(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let today = now.date();
        let date = match *self {
            Self::Daily => Some(today),
            Self::Monthly { day } => {
                let this_month = month_day(today.year(), today.month(), day)?;
                if this_month <= today {
                    Some(this_month)
                } else {
                    let previous = today.month().previous();
                    let year = if previous == Month::December {
                        today.year() - 1
                    } else {
                        today.year()
                    };
                    month_day(year, previous, day)
                }
            }
        };
        date.map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
    }
}

impl RefillSchedule {
    /// The first scheduled refill instant after `now`.
    pub fn next_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let last = self.last_at_or_before(now)?;
        // 32 days after any scheduled instant lies past the next one and before the one after.
        self.last_at_or_before(last + time::Duration::days(32))
            .map(|next| match self {
                Self::Daily => last + time::Duration::days(1),
                Self::Monthly { .. } => next,
            })
    }
}

/// A stored balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Credits left.
    pub remaining: u64,
    /// The scheduled refill instant this balance belongs to (`None` without a refill rule).
    pub period: Option<OffsetDateTime>,
}

/// The balance at `now`: refilled if a scheduled refill passed since `balance.period`.
pub fn current_balance(
    config: &QuotaConfig,
    balance: Option<Balance>,
    now: OffsetDateTime,
) -> Balance {
    let period = config
        .refill
        .and_then(|r| r.schedule.last_at_or_before(now));
    match (balance, config.refill) {
        (None, _) => Balance {
            remaining: config.credits,
            period,
        },
        (Some(b), Some(refill)) if period.is_some() && b.period < period => Balance {
            remaining: refill.amount,
            period,
        },
        (Some(b), _) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn daily_refill_happens_at_midnight_utc() {
        let config = QuotaConfig {
            credits: 5,
            refill: Some(Refill {
                amount: 100,
                schedule: RefillSchedule::Daily,
            }),
        };
        let start = current_balance(&config, None, datetime!(2026-03-10 15:00 UTC));
        assert_eq!(
            start,
            Balance {
                remaining: 5,
                period: Some(datetime!(2026-03-10 00:00 UTC))
            }
        );
        let spent = Balance {
            remaining: 0,
            ..start
        };
        assert_eq!(
            current_balance(&config, Some(spent), datetime!(2026-03-10 23:59:59 UTC)).remaining,
            0
        );
        let next = current_balance(&config, Some(spent), datetime!(2026-03-11 00:00 UTC));
        assert_eq!(
            next,
            Balance {
                remaining: 100,
                period: Some(datetime!(2026-03-11 00:00 UTC))
            }
        );
    }

    #[test]
    fn monthly_refill_clamps_to_short_months() {
        let s = RefillSchedule::Monthly { day: 31 };
        assert_eq!(
            s.last_at_or_before(datetime!(2026-02-28 12:00 UTC)),
            Some(datetime!(2026-02-28 00:00 UTC))
        );
        assert_eq!(
            s.last_at_or_before(datetime!(2026-02-27 12:00 UTC)),
            Some(datetime!(2026-01-31 00:00 UTC))
        );
        let first = RefillSchedule::Monthly { day: 1 };
        assert_eq!(
            first.last_at_or_before(datetime!(2026-01-15 00:00 UTC)),
            Some(datetime!(2026-01-01 00:00 UTC))
        );
        let mid = RefillSchedule::Monthly { day: 15 };
        assert_eq!(
            mid.last_at_or_before(datetime!(2026-01-14 00:00 UTC)),
            Some(datetime!(2025-12-15 00:00 UTC))
        );
    }

    #[test]
    fn next_refill_instants() {
        let now = datetime!(2026-01-31 10:00 UTC);
        assert_eq!(
            RefillSchedule::Daily.next_after(now),
            Some(datetime!(2026-02-01 00:00 UTC))
        );
        assert_eq!(
            RefillSchedule::Monthly { day: 31 }.next_after(now),
            Some(datetime!(2026-02-28 00:00 UTC))
        );
        assert_eq!(
            RefillSchedule::Monthly { day: 1 }.next_after(now),
            Some(datetime!(2026-02-01 00:00 UTC))
        );
        assert_eq!(
            RefillSchedule::Monthly { day: 15 }.next_after(now),
            Some(datetime!(2026-02-15 00:00 UTC))
        );
    }

    #[test]
    fn without_refill_the_balance_only_goes_down() {
        let config = QuotaConfig {
            credits: 10,
            refill: None,
        };
        let b = current_balance(
            &config,
            Some(Balance {
                remaining: 3,
                period: None,
            }),
            datetime!(2030-01-01 00:00 UTC),
        );
        assert_eq!(b.remaining, 3);
    }
}
