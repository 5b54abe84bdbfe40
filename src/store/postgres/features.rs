//! What several instances share on PostgreSQL besides events: dashboard logins, each sandbox
//! sender's next allowed send (a row per sender, updated under a transaction-scoped advisory
//! lock), retention in small batches, and the import side of `store copy`.

use deadpool_postgres::Object;

use super::Postgres;
use crate::store::copy::{EventRow, MessageRow};
use crate::store::{BackendError, Pruned, StoreError, StoredSession};

/// The sandbox's spacing in the store's unit: `next_allowed_at` is an answer time plus this.
fn spacing_ms() -> i64 {
    i64::try_from(crate::twilio::SANDBOX_SPACING.as_millis()).unwrap_or(i64::MAX)
}

fn query_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Query(BackendError::new(e))
}

impl Postgres {
    /// Stores a dashboard login; a repeated hash (never, with random tokens) is overwritten.
    pub(in crate::store) async fn session_create(
        &self,
        token_hash: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let conn = self.pool.get().await.map_err(query_err)?;
        conn.execute(
            "INSERT INTO dashboard_sessions (token_hash, csrf, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_hash) DO UPDATE SET csrf = excluded.csrf, \
             expires_at = excluded.expires_at",
            &[&token_hash, &csrf, &expires_at],
        )
        .await
        .map_err(query_err)?;
        Ok(())
    }

    /// The login stored under `token_hash`, expired or not.
    pub(in crate::store) async fn session_get(
        &self,
        token_hash: &str,
    ) -> Result<Option<StoredSession>, StoreError> {
        let conn = self.pool.get().await.map_err(query_err)?;
        let row = conn
            .query_opt(
                "SELECT csrf, expires_at FROM dashboard_sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await
            .map_err(query_err)?;
        Ok(row.map(|r| StoredSession {
            csrf: r.get(0),
            expires_at: r.get(1),
        }))
    }

    /// Ends a login on every instance.
    pub(in crate::store) async fn session_delete(
        &self,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let conn = self.pool.get().await.map_err(query_err)?;
        conn.execute(
            "DELETE FROM dashboard_sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await
        .map_err(query_err)?;
        Ok(())
    }

    /// Takes sandbox sender `sender`'s turn: a transaction on a pooled connection of its own
    /// that holds `pg_advisory_xact_lock(hashtext('sandbox:' || sender))`, so another
    /// instance's turn for the sender waits here until this one is released or dropped. Reads
    /// the sender's `next_allowed_at` under the lock.
    pub(in crate::store) async fn sandbox_turn(
        &self,
        sender: &str,
    ) -> Result<StoredTurn, StoreError> {
        let conn = self.pool.get().await.map_err(query_err)?;
        let mut turn = StoredTurn {
            conn: Some(conn),
            sender: sender.to_string(),
            next_allowed_at: None,
        };
        let conn = turn.conn.as_ref().expect("just set");
        conn.batch_execute("BEGIN").await.map_err(query_err)?;
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('sandbox:' || $1))",
            &[&sender],
        )
        .await
        .map_err(query_err)?;
        let row = conn
            .query_opt(
                "SELECT next_allowed_at FROM sandbox_senders WHERE sender = $1",
                &[&sender],
            )
            .await
            .map_err(query_err)?;
        turn.next_allowed_at = row.map(|r| r.get(0));
        Ok(turn)
    }

    /// One retention batch, as small statements that each commit alone: up to `batch`
    /// finished events and up to `batch` final messages last changed before `before_ms`, and
    /// every expired session. Rows another instance's batch holds are skipped, not waited for.
    pub(in crate::store) async fn prune(
        &self,
        before_ms: i64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let conn = self.pool.get().await.map_err(query_err)?;
        let events = conn
            .execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events \
                 WHERE state IN ('done', 'dead') AND updated_at < $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&before_ms, &batch],
            )
            .await
            .map_err(query_err)?;
        let messages = conn
            .execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                 WHERE status_rank >= 5 AND updated_at < $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&before_ms, &batch],
            )
            .await
            .map_err(query_err)?;
        let sessions = conn
            .execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
                &[&crate::store::now_ms()],
            )
            .await
            .map_err(query_err)?;
        Ok(Pruned {
            events,
            messages,
            sessions,
        })
    }

    /// Inserts copied events with their ids, in one statement; rows already there (same id,
    /// idempotency token or dedupe key) are left as they are. Returns how many were new, and how
    /// many were not copied because a different event (another app, or another time) has their
    /// id.
    pub(in crate::store) async fn import_events(
        &self,
        rows: &[EventRow],
    ) -> Result<Imported, StoreError> {
        let col = |f: fn(&EventRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let received: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let next: Vec<Option<i64>> = rows.iter().map(|r| r.next_attempt_at).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
        let app = col(|r| Some(r.app.clone()));
        let company = col(|r| Some(r.company.clone()));
        let token = col(|r| r.idempotency_token.clone());
        let dedup = col(|r| r.dedup_key.clone());
        let sid = col(|r| r.message_sid.clone());
        let status = col(|r| r.message_status.clone());
        let code = col(|r| r.error_code.clone());
        let fields = col(|r| Some(r.fields.clone()));
        let state = col(|r| Some(r.state.clone()));
        let error = col(|r| r.last_error.clone());
        let kind = col(|r| Some(r.kind.clone()));
        let conn = self.pool.get().await.map_err(query_err)?;
        let new = conn
            .execute(
                "INSERT INTO events (id, app, company, received_at, idempotency_token, dedup_key, \
             message_sid, message_status, error_code, fields, state, attempts, next_attempt_at, \
             last_error, updated_at, kind) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::int4[], $13::int8[], $14::text[], $15::int8[], $16::text[]) \
             ON CONFLICT DO NOTHING",
                &[
                    &ids, &app, &company, &received, &token, &dedup, &sid, &status, &code, &fields,
                    &state, &attempts, &next, &error, &updated, &kind,
                ],
            )
            .await
            .map_err(query_err)?;
        let conflicting: i64 = conn
            .query_one(
                "SELECT count(*) FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS c(id, app, at) \
                 JOIN events e ON e.id = c.id WHERE e.app <> c.app OR e.received_at <> c.at",
                &[&ids, &app, &received],
            )
            .await
            .map_err(query_err)?
            .get(0);
        Ok(Imported {
            new,
            conflicting: conflicting as u64,
        })
    }

    /// Inserts copied messages with their ids, in one statement; rows already there (same id,
    /// or the same app and sid) are left as they are. Returns how many were new, and how many
    /// were not copied because a different message has their id.
    pub(in crate::store) async fn import_messages(
        &self,
        rows: &[MessageRow],
    ) -> Result<Imported, StoreError> {
        let col = |f: fn(&MessageRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let rank: Vec<i32> = rows.iter().map(|r| r.status_rank).collect();
        let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
        let sid = col(|r| r.sid.clone());
        let app = col(|r| Some(r.app.clone()));
        let company = col(|r| Some(r.company.clone()));
        let account = col(|r| r.account_sid.clone());
        let to = col(|r| r.to_number.clone());
        let from = col(|r| r.from_number.clone());
        let body = col(|r| r.body.clone());
        let media = col(|r| r.media.clone());
        let status = col(|r| Some(r.status.clone()));
        let code = col(|r| r.error_code.clone());
        let message = col(|r| r.error_message.clone());
        let direction = col(|r| Some(r.direction.clone()));
        let profile = col(|r| r.profile_name.clone());
        let wa_id = col(|r| r.wa_id.clone());
        let content_sid = col(|r| r.content_sid.clone());
        let variables = col(|r| r.content_variables.clone());
        let conn = self.pool.get().await.map_err(query_err)?;
        let new = conn
            .execute(
                "INSERT INTO messages (id, sid, app, company, account_sid, to_number, from_number, \
             body, media, status, status_rank, error_code, error_message, created_at, updated_at, \
             direction, profile_name, wa_id, content_sid, content_variables) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[], \
             $12::text[], $13::text[], $14::int8[], $15::int8[], $16::text[], $17::text[], \
             $18::text[], $19::text[], $20::text[]) \
             ON CONFLICT DO NOTHING",
                &[
                    &ids,
                    &sid,
                    &app,
                    &company,
                    &account,
                    &to,
                    &from,
                    &body,
                    &media,
                    &status,
                    &rank,
                    &code,
                    &message,
                    &created,
                    &updated,
                    &direction,
                    &profile,
                    &wa_id,
                    &content_sid,
                    &variables,
                ],
            )
            .await
            .map_err(query_err)?;
        let conflicting: i64 = conn
            .query_one(
                "SELECT count(*) FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) \
                 AS c(id, app, sid, at) JOIN messages m ON m.id = c.id \
                 WHERE m.app <> c.app OR m.sid IS DISTINCT FROM c.sid OR m.created_at <> c.at",
                &[&ids, &app, &sid, &created],
            )
            .await
            .map_err(query_err)?
            .get(0);
        Ok(Imported {
            new,
            conflicting: conflicting as u64,
        })
    }

    /// Moves the id sequences of `events` and `messages` past every id in their tables (copied
    /// ones included) and never backwards, so new rows never collide with copied ones.
    pub(in crate::store) async fn advance_sequences(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await.map_err(query_err)?;
        for table in ["events", "messages"] {
            conn.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST( \
                     (SELECT coalesce(max(id), 0) FROM {table}), \
                     coalesce(pg_sequence_last_value(pg_get_serial_sequence('{table}', 'id')::regclass), 0), \
                     1))"
                ),
                &[],
            )
            .await
            .map_err(query_err)?;
        }
        Ok(())
    }
}

/// What importing one page of copied rows did.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct Imported {
    /// Rows written.
    pub(in crate::store) new: u64,
    /// Rows not written because a different row has their id: written on PostgreSQL before the
    /// copy, so their history could not keep its ids.
    pub(in crate::store) conflicting: u64,
}

/// A sandbox sender's turn on PostgreSQL: the open transaction holding the sender's advisory
/// lock, on a connection taken from the pool for as long as the turn lasts.
pub(in crate::store) struct StoredTurn {
    /// `None` once released. A turn dropped unreleased takes its connection out of the pool and
    /// closes it: the server rolls the transaction back and frees the lock, and no connection
    /// goes back to the pool inside a transaction.
    conn: Option<Object>,
    sender: String,
    next_allowed_at: Option<i64>,
}

impl StoredTurn {
    /// When the sender's last send, on any instance, was answered.
    pub(in crate::store) fn last_answered_at(&self) -> Option<i64> {
        self.next_allowed_at.map(|next| next - spacing_ms())
    }

    /// Records the sender's next allowed send as `answered_at + 3 s` (never moving it back) and
    /// commits, which frees the lock.
    pub(in crate::store) async fn release(mut self, answered_at: i64) -> Result<(), StoreError> {
        let conn = self.conn.take().expect("a turn is released once");
        let next = answered_at.saturating_add(spacing_ms());
        let done = async {
            conn.execute(
                "INSERT INTO sandbox_senders (sender, next_allowed_at) VALUES ($1, $2) \
                 ON CONFLICT (sender) DO UPDATE SET next_allowed_at = \
                 GREATEST(sandbox_senders.next_allowed_at, excluded.next_allowed_at)",
                &[&self.sender, &next],
            )
            .await?;
            conn.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = done {
            drop(Object::take(conn));
            return Err(query_err(e));
        }
        Ok(())
    }
}

impl Drop for StoredTurn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}

#[cfg(test)]
pub(in crate::store) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::StoreSettings;

    /// The server every test of the PostgreSQL backend makes its database on. Fails, never
    /// skips, without one.
    pub(in crate::store) fn server_url() -> String {
        std::env::var("WHATSAPP_HOST_TEST_PG_URL").unwrap_or_else(|_| {
            panic!(
                "WHATSAPP_HOST_TEST_PG_URL is not set: the PostgreSQL store's tests need a \
                 server. Run scripts/test.sh, which starts a throwaway one, or set it to a \
                 postgres:// URL whose user may CREATE DATABASE"
            )
        })
    }

    /// A client of `url`, its connection driven in the background.
    pub(in crate::store) async fn client(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A fresh, empty database (no tables yet) on the test server; returns its URL.
    pub(in crate::store) async fn fresh_database() -> String {
        let base = server_url();
        let name = format!("wh_{:016x}", rand::random::<u64>());
        client(&base)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE on WHATSAPP_HOST_TEST_PG_URL");
        let mut url = url::Url::parse(&base).expect("WHATSAPP_HOST_TEST_PG_URL is a URL");
        url.set_path(&name);
        url.to_string()
    }

    pub(in crate::store) fn settings() -> StoreSettings {
        StoreSettings {
            url: None,
            retention: None,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(1000),
            max_connections: 4,
        }
    }

    /// A backend on a fresh database, and the URL of that database.
    pub(in crate::store) async fn fresh() -> (Postgres, String) {
        let url = fresh_database().await;
        let pg = Postgres::connect(&url, &settings()).await.unwrap();
        (pg, url)
    }

    #[tokio::test]
    async fn a_session_stored_by_one_instance_is_read_by_another_until_deleted() {
        let (a, url) = fresh().await;
        let b = Postgres::connect(&url, &settings()).await.unwrap();
        a.session_create("hash1", "csrf1", 1_000).await.unwrap();
        assert_eq!(
            b.session_get("hash1").await.unwrap(),
            Some(StoredSession {
                csrf: "csrf1".into(),
                expires_at: 1_000
            })
        );
        assert_eq!(b.session_get("hash2").await.unwrap(), None);
        b.session_delete("hash1").await.unwrap();
        assert_eq!(a.session_get("hash1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn two_instances_take_a_senders_turn_one_after_the_other_and_the_second_sees_the_first() {
        let (a, url) = fresh().await;
        let b = Postgres::connect(&url, &settings()).await.unwrap();
        let sender = "+14155238886";
        let first = a.sandbox_turn(sender).await.unwrap();
        assert_eq!(first.last_answered_at(), None);
        // B's turn waits for A's.
        let second = tokio::spawn(async move {
            let turn = b.sandbox_turn(sender).await.unwrap();
            (turn.last_answered_at(), b, turn)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second turn did not wait");
        first.release(5_000).await.unwrap();
        let (seen, b, turn) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second turn starts once the first is released")
            .unwrap();
        assert_eq!(seen, Some(5_000));
        // An earlier answer never moves the next allowed time back.
        turn.release(4_000).await.unwrap();
        let third = a.sandbox_turn(sender).await.unwrap();
        assert_eq!(third.last_answered_at(), Some(5_000));
        // Dropped unreleased: nothing recorded, and the lock is freed.
        drop(third);
        let fourth = tokio::time::timeout(Duration::from_secs(5), b.sandbox_turn(sender))
            .await
            .expect("a dropped turn frees the sender")
            .unwrap();
        assert_eq!(fourth.last_answered_at(), Some(5_000));
        // Another sender is not held up by this one's turn.
        let other = tokio::time::timeout(Duration::from_secs(5), a.sandbox_turn("+15005550006"))
            .await
            .expect("senders are independent")
            .unwrap();
        assert_eq!(other.last_answered_at(), None);
    }

    #[tokio::test]
    async fn prune_removes_exactly_the_old_final_rows_in_small_batches() {
        let (pg, _url) = fresh().await;
        let conn = pg.pool.get().await.unwrap();
        let (old, new) = (1_000_i64, 9_000_i64);
        // (sid, state, updated_at): only old done and dead events go.
        for (sid, state, at) in [
            ("SM1", "done", old),
            ("SM2", "dead", old),
            ("SM3", "done", old),
            ("SM4", "pending", old),
            ("SM5", "failed", old),
            ("SM6", "done", new),
        ] {
            conn.execute(
                "INSERT INTO events (app, company, received_at, message_sid, fields, state, \
                 updated_at) VALUES ('crm', 'ACME', $2, $1, '[]', $3, $2)",
                &[&sid, &at, &state],
            )
            .await
            .unwrap();
        }
        // (sid, status, rank, updated_at): only old messages in a final status go.
        for (sid, status, rank, at) in [
            ("SM10", "delivered", 5_i32, old),
            ("SM11", "failed", 10, old),
            ("SM12", "received", 10, old),
            ("SM13", "sent", 4, old),
            ("SM14", "read", 6, new),
        ] {
            conn.execute(
                "INSERT INTO messages (sid, app, company, status, status_rank, created_at, \
                 updated_at) VALUES ($1, 'crm', 'ACME', $2, $3, $4, $4)",
                &[&sid, &status, &rank, &at],
            )
            .await
            .unwrap();
        }
        pg.session_create("expired", "c", 1).await.unwrap();
        pg.session_create("live", "c", i64::MAX).await.unwrap();

        let first = pg.prune(5_000, 2).await.unwrap();
        assert_eq!(
            first,
            Pruned {
                events: 2,
                messages: 2,
                sessions: 1
            }
        );
        let second = pg.prune(5_000, 2).await.unwrap();
        assert_eq!((second.events, second.messages, second.sessions), (1, 1, 0));
        let third = pg.prune(5_000, 2).await.unwrap();
        assert_eq!(third.total(), 0);

        let left = |table: &'static str, column: &'static str| {
            let conn = &conn;
            async move {
                conn.query(
                    &format!("SELECT {column} FROM {table} ORDER BY {column}"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(left("events", "message_sid").await, ["SM4", "SM5", "SM6"]);
        assert_eq!(left("messages", "sid").await, ["SM13", "SM14"]);
        assert_eq!(left("dashboard_sessions", "token_hash").await, ["live"]);
    }
}
