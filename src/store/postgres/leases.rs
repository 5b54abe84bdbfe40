//! Leases on PostgreSQL: an instance holds an event while it runs it, so no other instance
//! runs it at the same time while the holder lives. Taking an attempt, claiming events whose
//! holder died or that wait for a retry (`FOR UPDATE SKIP LOCKED`), and the wake-ups other
//! instances send on [`CHANNEL`], received on a connection of their own.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, Postgres, event_from_row, query_err};
use crate::store::sql::EVENT_COLUMNS;
use crate::store::{Event, StoreError, now_ms};

/// The first wait before the listener reconnects; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Postgres {
    fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// Counts attempt `attempts` of event `id` and takes its lease, unless another live
    /// instance holds it; committed before it returns.
    pub(in crate::store) async fn begin_attempt(
        &self,
        id: i64,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(query_err)?;
        let statement = client
            .prepare_cached(
                "UPDATE events SET attempts = $2::integer, state = 'pending', \
                 lease_owner = $3::text, lease_until = $4::bigint, updated_at = $5::bigint \
                 WHERE id = $1::bigint AND (lease_owner IS NULL OR lease_owner = $3 \
                   OR lease_until IS NULL OR lease_until < $5)",
            )
            .await
            .map_err(query_err)?;
        let now = now_ms();
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let taken = client
            .execute(
                &statement,
                &[
                    &id,
                    &attempts,
                    &&*self.instance,
                    &self.lease_until(now),
                    &now,
                ],
            )
            .await
            .map_err(query_err)?;
        Ok(taken == 1)
    }

    /// Claims up to `limit` events that are due and that no live instance holds, counting an
    /// attempt for each; committed before it returns. Claimers running at once skip each
    /// other's rows, so no two of them return one event.
    pub(in crate::store) async fn claim_due(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut client = self.pool.get().await.map_err(query_err)?;
        let tx = client.transaction().await.map_err(query_err)?;
        tx.batch_execute(CLAIM_PLANNER_SETTINGS)
            .await
            .map_err(query_err)?;
        let statement = tx.prepare_cached(&CLAIM_DUE).await.map_err(query_err)?;
        let now = now_ms();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                &statement,
                &[&&*self.instance, &self.lease_until(now), &now, &limit],
            )
            .await
            .map_err(query_err)?;
        tx.commit().await.map_err(query_err)?;
        let mut events: Vec<Event> = rows.iter().map(event_from_row).collect();
        events.sort_by_key(|e| e.id);
        Ok(events)
    }
}

/// The planner settings [`CLAIM_DUE`] runs under: index scans only, whatever the table held
/// when the statement was first planned. A bitmap scan visits the row of every event finished
/// since the table was last vacuumed, on every claim; a plain index scan marks their entries
/// dead as it passes them (once no snapshot can still see those rows), so later claims skip
/// them.
pub(super) const CLAIM_PLANNER_SETTINGS: &str =
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off";

/// Takes up to `$4` events, oldest first, that are pending or whose retry is due at `$3`, and
/// that no live instance holds, for instance `$1` until `$2`, counting an attempt for each.
/// Pending events are found through `events_pending` in id order and due retries through
/// `events_retry` in due order, each part limited, so a claim reads neither finished events nor
/// retries that are not due yet. Rows the two parts lock beyond the limit are left as they were
/// and unlocked at commit.
pub(super) static CLAIM_DUE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let free = "(lease_owner IS NULL OR lease_until IS NULL OR lease_until < $3::bigint)";
    format!(
        "WITH pending AS (SELECT id FROM events WHERE state = 'pending' AND {free} \
             ORDER BY id LIMIT $4::bigint FOR UPDATE SKIP LOCKED), \
           retries AS (SELECT id FROM events WHERE state = 'failed' \
             AND next_attempt_at <= $3::bigint AND {free} \
             ORDER BY next_attempt_at, id LIMIT $4::bigint FOR UPDATE SKIP LOCKED), \
           due AS (SELECT id FROM pending UNION ALL SELECT id FROM retries \
             ORDER BY id LIMIT $4::bigint) \
         UPDATE events SET attempts = attempts + 1, lease_owner = $1::text, \
           lease_until = $2::bigint, state = 'pending', updated_at = $3::bigint \
         WHERE id IN (SELECT id FROM due) \
         RETURNING {EVENT_COLUMNS}"
    )
});

/// Listens on [`CHANNEL`] on a connection of its own (a pooled one could be recycled under
/// it) and notifies `wakeups` for each notification. When the connection drops it reconnects
/// with backoff and notifies once, since notifications sent meanwhile are lost. Ends at `stop`.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    location: Arc<str>,
    wakeups: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        let session = tokio::select! {
            () = stop.cancelled() => return,
            session = listen_once(&config, &wakeups, first) => session,
        };
        first = false;
        match session {
            // It listened, then lost the connection: try again at once.
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %e, server = %location, delay = ?backoff, "the store's listener could not connect; trying again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection's life: LISTEN, then forward notifications until it ends. `Ok` once it was
/// listening and the connection ended; `Err` when it never got that far.
async fn listen_once(
    config: &tokio_postgres::Config,
    wakeups: &tokio::sync::Notify,
    first: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the store's listener connection failed");
                    break;
                }
            }
        }
    });
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    if !first {
        // Whatever was sent while nobody listened is lost: look once.
        wakeups.notify_one();
    }
    while rx.recv().await.is_some() {
        wakeups.notify_one();
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
