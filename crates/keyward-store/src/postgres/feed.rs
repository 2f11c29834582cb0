//! The change feed of the PostgreSQL store: what a write queues with `pg_notify` inside its
//! transaction, and [`PgChangeFeed`], which listens for it on a connection of its own.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::sql::{backend, from_millis, to_millis};
use crate::{Change, ChangeFeed, KeyWrite, StoreError};

/// Queues `change` for delivery to every node's feed when the caller's transaction commits.
pub(super) async fn notify(
    conn: &mut PgConnection,
    channel: &str,
    change: &Change,
) -> Result<(), StoreError> {
    let payload = match change {
        // `@<ms>` carries the write time for the propagation-lag metric; key_ids never hold
        // an `@`, and readers that predate it would take the whole rest as the key_id, which
        // only costs them an eviction that matches nothing plus the staleness backstop.
        Change::Key {
            key_id,
            written_at: Some(at),
        } => format!("key:{key_id}@{}", to_millis(*at)),
        Change::Key {
            key_id,
            written_at: None,
        } => format!("key:{key_id}"),
        Change::Plan { plan_id } => format!("plan:{plan_id}"),
        Change::Credits { key_id } => format!("credits:{key_id}"),
        // Never sent: a resync is what a subscriber concludes from a gap.
        Change::Resync => return Ok(()),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The change a key write makes, stamped with the write's audit time.
pub(super) fn key_change(write: &KeyWrite) -> Change {
    Change::Key {
        key_id: write.record.key_id.clone(),
        written_at: Some(write.audit.time),
    }
}

/// Reads a notification payload; `None` for one this version does not know.
pub(super) fn parse_payload(payload: &str) -> Option<Change> {
    let (kind, id) = payload.split_once(':')?;
    let id = id.to_owned();
    match kind {
        "key" => Some(match id.split_once('@') {
            Some((key_id, ms)) => Change::Key {
                key_id: key_id.to_owned(),
                written_at: ms.parse().ok().and_then(|ms| from_millis(ms).ok()),
            },
            None => Change::Key {
                key_id: id,
                written_at: None,
            },
        }),
        "plan" => Some(Change::Plan { plan_id: id }),
        "credits" => Some(Change::Credits { key_id: id }),
        _ => None,
    }
}

/// A [`ChangeFeed`] on PostgreSQL `LISTEN`, over a connection of its own.
///
/// Notifications are not queued for a disconnected listener, so a gap is reported instead:
/// when the connection is lost, [`next`](ChangeFeed::next) returns an error for as long as
/// the server cannot be reached, and once it listens again the first item is
/// [`Change::Resync`] (nothing committed in between can be known). sqlx's own reconnection is
/// off (`eager_reconnect(false)`): `try_recv` returning `Ok(None)` means the connection is
/// gone, and this feed drops the listener and builds a new one, so no reconnection (after a
/// cancelled call, or under a query) can happen without a resync. A connection that falls silent
/// is checked with a query after `feed_idle_check`, so a half-open connection becomes an
/// error rather than a feed that never speaks again.
pub struct PgChangeFeed {
    pub(super) connect: PgConnectOptions,
    pub(super) channel: String,
    pub(super) timeout: Duration,
    pub(super) idle_check: Duration,
    pub(super) listener: Option<PgListener>,
    /// A gap was seen: the next successful item is `Resync`.
    pub(super) resync_due: bool,
}

impl PgChangeFeed {
    pub(super) async fn subscribe(
        connect: PgConnectOptions,
        channel: String,
        timeout: Duration,
        idle_check: Duration,
    ) -> Result<Self, StoreError> {
        let mut feed = Self {
            connect,
            channel,
            timeout,
            idle_check,
            listener: None,
            resync_due: false,
        };
        feed.listener = Some(feed.listen().await?);
        Ok(feed)
    }

    /// Opens a connection that listens on the channel.
    async fn listen(&self) -> Result<PgListener, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(self.timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.connect.clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        // Only this feed uses the pool; a close of it is not a reason to stop waiting.
        listener.ignore_pool_close_event(true);
        // sqlx would otherwise reconnect inside `try_recv` before reporting the loss, and a
        // cancelled `try_recv` (the idle check's timeout) or a query on the listener would
        // then reconnect silently, hiding the gap. This feed reconnects itself instead.
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await.map_err(backend)?;
        Ok(listener)
    }

    /// Forgets the connection after an error; the next call reconnects and starts with a
    /// resync.
    fn broken(&mut self, e: StoreError) -> StoreError {
        self.listener = None;
        self.resync_due = true;
        e
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        if self.listener.is_none() {
            let listener = match self.listen().await {
                Ok(listener) => listener,
                Err(e) => return Err(self.broken(e)),
            };
            self.listener = Some(listener);
        }
        if self.resync_due {
            self.resync_due = false;
            return Ok(Change::Resync);
        }
        loop {
            let Some(listener) = self.listener.as_mut() else {
                // Unreachable: set above. Report it as a gap rather than panic.
                self.resync_due = true;
                return Err(StoreError::Backend("change feed lost its listener".into()));
            };
            match tokio::time::timeout(self.idle_check, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match parse_payload(notification.payload()) {
                    Some(change) => return Ok(change),
                    None => {
                        tracing::warn!(
                            payload = notification.payload(),
                            "unknown change notification; resyncing"
                        );
                        return Ok(Change::Resync);
                    }
                },
                // The connection was lost (and, with eager reconnect off, not replaced):
                // report the gap; the next call listens on a new connection and resyncs.
                Ok(Ok(None)) => {
                    return Err(self.broken(StoreError::Backend(
                        "the change feed's connection was lost".into(),
                    )));
                }
                Ok(Err(e)) => return Err(self.broken(backend(e))),
                Err(_silent) => {
                    // Nothing for a while: make sure the connection is still there. try_recv
                    // is cancel-safe (sqlx reads whole messages only).
                    let alive = tokio::time::timeout(
                        self.timeout,
                        sqlx::query("SELECT 1").execute(&mut *listener),
                    )
                    .await;
                    match alive {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(self.broken(backend(e))),
                        Err(_) => {
                            return Err(self.broken(StoreError::Backend(
                                "the change feed's connection did not answer".into(),
                            )));
                        }
                    }
                }
            }
        }
    }
}
