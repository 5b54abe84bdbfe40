//! The reads on PostgreSQL: the same queries as the SQLite backend's, on a pooled connection,
//! and the conversation reads.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::{event_from_row, message_from_row, query_err};
use crate::store::conversation::{MAX_MESSAGES, media_items};
use crate::store::sql::{self, EVENT_COLUMNS, MESSAGE_COLUMNS};
use crate::store::{
    Conversation, Entry, Event, EventFilter, Message, MessageFilter, NumberWindow, StoreError,
    Window, now_ms,
};

/// The read side of the PostgreSQL store. Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub(crate) struct Reader {
    pool: Pool,
    location: Arc<str>,
}

impl Reader {
    pub(super) fn new(pool: Pool, location: Arc<str>) -> Reader {
        Reader { pool, location }
    }

    /// The server, password hidden.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(query_err)
    }

    /// Runs `sql` (prepared once per connection) and returns its rows.
    async fn rows(
        &self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(query_err)?;
        client.query(&statement, args).await.map_err(query_err)
    }

    /// One event by id.
    pub(crate) async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
        let rows = self.rows(&sql, &[&id]).await?;
        Ok(rows.first().map(event_from_row))
    }

    /// Every event that still has to run and nobody holds: pending, or failed and waiting for
    /// a retry, with no lease or an expired one.
    pub(crate) async fn undispatched_events(&self) -> Result<Vec<Event>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE state IN ('pending','failed') \
             AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < $1) ORDER BY id"
        );
        let rows = self.rows(&sql, &[&now_ms()]).await?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    /// Newest first.
    pub(crate) async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, StoreError> {
        let listing = sql::events(filter, &sql::POSTGRES);
        let rows = self.rows(&listing.sql, &values(&listing.args)).await?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    /// Newest first.
    pub(crate) async fn messages(&self, filter: MessageFilter) -> Result<Vec<Message>, StoreError> {
        let listing = sql::messages(filter, &sql::POSTGRES);
        let rows = self.rows(&listing.sql, &values(&listing.args)).await?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    /// A message by sid alone, and the events its app recorded for it, oldest event first: the
    /// one this host sent, else the oldest.
    pub(crate) async fn message(
        &self,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sid = $1 \
             ORDER BY body IS NULL, id LIMIT 1"
        );
        let rows = self.rows(&sql, &[&sid]).await?;
        self.with_events(rows.first().map(message_from_row)).await
    }

    /// App `app`'s message `sid` and the events it recorded for it, oldest event first.
    pub(crate) async fn app_message(
        &self,
        app: &str,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE app = $1 AND sid = $2");
        let rows = self.rows(&sql, &[&app, &sid]).await?;
        self.with_events(rows.first().map(message_from_row)).await
    }

    /// `message` with the events its own app recorded for its sid, oldest first.
    async fn with_events(
        &self,
        message: Option<Message>,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let Some(message) = message else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE message_sid = $1 AND app = $2 \
             ORDER BY received_at, id"
        );
        let rows = self.rows(&sql, &[&message.sid, &message.app]).await?;
        let events = rows.iter().map(event_from_row).collect();
        Ok(Some((message, events)))
    }

    /// App `app`'s messages with `contact`, oldest first, and each app number's window at
    /// `now_ms`.
    pub(crate) async fn conversation(
        &self,
        app: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        let sql = format!(
            "SELECT * FROM ( \
             SELECT {MESSAGE_COLUMNS}, content_sid, content_variables \
             FROM messages WHERE app = $1 AND direction = 'inbound' AND from_number = $2 \
             UNION ALL \
             SELECT {MESSAGE_COLUMNS}, content_sid, content_variables \
             FROM messages WHERE app = $1 AND direction = 'outbound' AND to_number = $2 \
             ) AS c ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let limit = MAX_MESSAGES as i64 + 1;
        let rows = self.rows(&sql, &[&app, &contact, &limit]).await?;
        // The conversation's own columns follow `MESSAGE_COLUMNS`'s.
        let fields = MESSAGE_COLUMNS.split(',').count();
        let mut profile_name = None;
        let mut entries: Vec<Entry> = rows
            .iter()
            .map(|r| {
                let message = message_from_row(r);
                // Newest first here: the first name seen is the latest one.
                if profile_name.is_none() {
                    profile_name = message.profile_name.clone().filter(|n| !n.is_empty());
                }
                Entry {
                    media: media_items(message.direction, message.media.as_deref()),
                    message,
                    content_sid: r.get(fields),
                    content_variables: r.get(fields + 1),
                }
            })
            .collect();
        let truncated = entries.len() > MAX_MESSAGES;
        entries.truncate(MAX_MESSAGES);
        entries.reverse();
        let rows = self
            .rows(
                "SELECT to_number, max(created_at) FROM messages \
                 WHERE app = $1 AND direction = 'inbound' AND from_number = $2 \
                 AND created_at <= $3 GROUP BY to_number ORDER BY to_number",
                &[&app, &contact, &now_ms],
            )
            .await?;
        let windows = rows
            .iter()
            .map(|r| NumberWindow {
                app_number: r.get::<_, Option<String>>(0).unwrap_or_default(),
                window: Window::at(r.get(1), now_ms),
            })
            .collect();
        Ok(Conversation {
            app: app.to_string(),
            contact: contact.to_string(),
            profile_name,
            entries,
            truncated,
            windows,
        })
    }

    /// The window between app `app`'s number `app_number` and `contact` at `now_ms`.
    pub(crate) async fn session_window(
        &self,
        app: &str,
        app_number: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Window, StoreError> {
        let rows = self
            .rows(
                "SELECT max(created_at) FROM messages WHERE app = $1 \
                 AND direction = 'inbound' AND from_number = $2 AND to_number = $3 \
                 AND created_at <= $4",
                &[&app, &contact, &app_number, &now_ms],
            )
            .await?;
        let last_inbound = rows.first().and_then(|r| r.get::<_, Option<i64>>(0));
        Ok(Window::at(last_inbound, now_ms))
    }
}

/// A listing's values as the driver takes them.
fn values(args: &[sql::Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            sql::Arg::Text(s) => s as &(dyn ToSql + Sync),
            sql::Arg::Int(n) => n as &(dyn ToSql + Sync),
        })
        .collect()
}
