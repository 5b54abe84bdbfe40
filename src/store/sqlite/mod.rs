//! The embedded SQLite backend: one file under `server.data_dir`, one writer thread that commits
//! writes in groups and syncs them before anyone is answered, and one read connection. This file
//! holds the backend's handle and its queries; `schema` the tables and their upgrades; `writer`
//! the threads that commit and sync writes; `conversation` the conversation reads.

mod conversation;
pub(super) mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::sql::{self, EVENT_COLUMNS, MESSAGE_COLUMNS};
use super::{
    BackendError, Direction, DispatchResult, Event, EventFilter, EventKind, EventState, Inserted,
    Message, MessageFilter, NewEvent, Pruned, SendRecord, StoreError, StoredSession, now_ms,
};
use crate::twilio::webhook::{self, status_rank};

/// The store file's name inside `server.data_dir`.
const FILE_NAME: &str = "store.sqlite3";

/// The backend's handle: writes go to the writer thread, reads to a connection of their own.
/// Cloning is cheap; all clones share one writer thread.
#[derive(Clone)]
pub(super) struct Sqlite {
    writer: writer::Writer,
    pub(super) reader: Reader,
}

impl Sqlite {
    /// Opens (creating if needed) `store.sqlite3` in `data_dir` and starts the writer thread.
    pub(super) fn open(data_dir: &Path) -> Result<Sqlite, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.clone(),
            source: BackendError::new(source),
        };
        let writer = writer::Writer::start(&path)?;
        let reader = Connection::open(&path).map_err(open_err)?;
        configure(&reader).map_err(open_err)?;
        Ok(Sqlite {
            writer,
            reader: Reader::new(reader, path),
        })
    }

    /// Opens the store in `data_dir` for reading only, for commands that run beside a server:
    /// no writer, sync or checkpoint thread starts, and closing never checkpoints the log.
    /// The store must exist already; this never creates it. A store written by a newer build is
    /// refused, as [`Sqlite::open`] refuses it.
    pub(super) fn open_read_only(data_dir: &Path) -> Result<Reader, StoreError> {
        let path = data_dir.join(FILE_NAME);
        if !path.try_exists().unwrap_or(true) {
            return Err(StoreError::Missing { path });
        }
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.clone(),
            source: BackendError::new(source),
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        schema::known_version(&conn, &path)?;
        Ok(Reader::new(conn, path))
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        self.writer.insert_event(event).await
    }

    pub(super) fn record_send(&self, record: SendRecord) -> Result<(), StoreError> {
        self.writer.record_send(record)
    }

    pub(super) fn finish_dispatch(
        &self,
        id: i64,
        attempts: u32,
        result: DispatchResult,
    ) -> Result<(), StoreError> {
        self.writer.finish_dispatch(id, attempts, result)
    }

    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.writer.flush().await
    }

    pub(super) async fn close(&self) {
        self.writer.close().await;
    }

    /// Stores a dashboard login, committed before it returns.
    pub(super) async fn session_create(
        &self,
        token_hash: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.writer.session(writer::SessionChange::Create {
            token_hash: token_hash.to_string(),
            csrf: csrf.to_string(),
            expires_at,
        })?;
        self.writer.flush().await
    }

    /// Ends a dashboard login, committed before it returns.
    pub(super) async fn session_delete(&self, token_hash: &str) -> Result<(), StoreError> {
        self.writer.session(writer::SessionChange::Delete {
            token_hash: token_hash.to_string(),
        })?;
        self.writer.flush().await
    }

    /// One batch of retention; see [`prune`].
    pub(super) async fn prune(&self, before_ms: i64, batch: usize) -> Result<Pruned, StoreError> {
        self.writer.prune(before_ms, batch, now_ms()).await
    }
}

/// The read side of the store. [`Store`] reads through one; [`Store::open_read_only`] returns
/// one alone, which has no way to write. Cloning is cheap; clones share the connection.
#[derive(Clone)]
pub(crate) struct Reader {
    /// A std mutex: reads run in `spawn_blocking` and never hold it across an await.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Reader {
    fn new(conn: Connection, path: PathBuf) -> Reader {
        Reader {
            conn: Arc::new(Mutex::new(conn)),
            path,
        }
    }

    /// A reader of an empty store, for `path` where no store has been created yet: every
    /// listing is empty and every lookup finds nothing, exactly as in a fresh store. The empty
    /// store is held in memory; nothing is written to `path` or beside it.
    pub(crate) fn empty(path: PathBuf) -> Result<Reader, StoreError> {
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.clone(),
            source: BackendError::new(source),
        };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        schema::set_up(&mut conn, &path)?;
        Ok(Reader::new(conn, path))
    }

    /// The store file, for messages that point the operator at it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read on the blocking pool so the async runtime never waits on SQLite.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("store reader lock");
            f(&conn).map_err(|e| StoreError::Query(BackendError::new(e)))
        })
        .await
        .expect("store read panicked")
    }

    /// One event by id.
    pub(crate) async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
                [id],
                event_from_row,
            )
            .optional()
        })
        .await
    }

    /// Every event that still has to run: pending, or failed and waiting for a retry.
    pub(crate) async fn undispatched_events(&self) -> Result<Vec<Event>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE state IN ('pending','failed') ORDER BY id"
            ))?;
            stmt.query_map([], event_from_row)?.collect()
        })
        .await
    }

    /// The dashboard session stored under `token_hash`, expired or not.
    pub(crate) async fn session_get(
        &self,
        token_hash: &str,
    ) -> Result<Option<StoredSession>, StoreError> {
        let token_hash = token_hash.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT csrf, expires_at FROM dashboard_sessions WHERE token_hash = ?1",
            )?
            .query_row([token_hash], |r| {
                Ok(StoredSession {
                    csrf: r.get(0)?,
                    expires_at: r.get(1)?,
                })
            })
            .optional()
        })
        .await
    }

    /// Up to `limit` events with an id above `after_id`, every column, oldest first: what
    /// `store copy` moves.
    pub(in crate::store) async fn export_events(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<super::copy::EventRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                super::copy::COPIED_EVENT_COLUMNS
            ))?;
            stmt.query_map(
                params![after_id, limit as i64],
                super::copy::EventRow::from_sqlite,
            )?
            .collect()
        })
        .await
    }

    /// Up to `limit` messages with an id above `after_id`, every column, oldest first.
    pub(in crate::store) async fn export_messages(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<super::copy::MessageRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
                super::copy::COPIED_MESSAGE_COLUMNS
            ))?;
            stmt.query_map(
                params![after_id, limit as i64],
                super::copy::MessageRow::from_sqlite,
            )?
            .collect()
        })
        .await
    }

    /// Newest first.
    pub(crate) async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, StoreError> {
        let listing = sql::events(filter, &sql::SQLITE);
        self.read(move |c| {
            let mut stmt = c.prepare(&listing.sql)?;
            stmt.query_map(rusqlite::params_from_iter(listing.args), event_from_row)?
                .collect()
        })
        .await
    }

    /// Newest first.
    pub(crate) async fn messages(&self, filter: MessageFilter) -> Result<Vec<Message>, StoreError> {
        let listing = sql::messages(filter, &sql::SQLITE);
        self.read(move |c| {
            let mut stmt = c.prepare(&listing.sql)?;
            stmt.query_map(rusqlite::params_from_iter(listing.args), message_from_row)?
                .collect()
        })
        .await
    }

    /// A message by sid alone, and the events its app recorded for it, oldest event first.
    /// Sids are unique per app, so several apps may have a row for one sid (another app's
    /// callbacks naming it): this returns the one this host sent, else the oldest. Callers that
    /// know the app use [`Reader::app_message`].
    pub(crate) async fn message(
        &self,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let sid = sid.to_string();
        self.read(move |c| {
            let message = c
                .query_row(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sid = ?1 \
                         ORDER BY body IS NULL, id LIMIT 1"
                    ),
                    [&sid],
                    message_from_row,
                )
                .optional()?;
            with_events(c, message)
        })
        .await
    }

    /// App `app`'s message `sid` and the events it recorded for it, oldest event first.
    pub(crate) async fn app_message(
        &self,
        app: &str,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let (app, sid) = (app.to_string(), sid.to_string());
        self.read(move |c| {
            let message = c
                .query_row(
                    &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE app = ?1 AND sid = ?2"),
                    [&app, &sid],
                    message_from_row,
                )
                .optional()?;
            with_events(c, message)
        })
        .await
    }
}

/// `message` with the events its own app recorded for its sid, oldest first: another app's
/// callbacks naming the same sid are not this message's history.
fn with_events(
    c: &Connection,
    message: Option<Message>,
) -> rusqlite::Result<Option<(Message, Vec<Event>)>> {
    let Some(message) = message else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE message_sid = ?1 AND app = ?2 \
         ORDER BY received_at, id"
    ))?;
    let events = stmt
        .query_map(params![message.sid, message.app], event_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(Some((message, events)))
}

impl rusqlite::ToSql for sql::Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            sql::Arg::Text(s) => s.to_sql(),
            sql::Arg::Int(n) => n.to_sql(),
        }
    }
}

/// How long a connection waits for another's lock before it reports the store busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL with `synchronous = FULL`. The writer connection then lowers it to NORMAL and syncs
/// the log itself before answering (see `writer::writer_loop`): an acknowledged event still
/// survives `kill -9` and a power cut, and one sync covers every group committed before it.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -8_000)?;
    Ok(())
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let fields: String = r.get(8)?;
    let state: String = r.get(9)?;
    let kind: String = r.get(14)?;
    Ok(Event {
        id: r.get(0)?,
        app: r.get(1)?,
        company: r.get(2)?,
        kind: EventKind::parse(&kind),
        received_at: r.get(3)?,
        idempotency_token: r.get(4)?,
        message_sid: r.get(5)?,
        message_status: r.get(6)?,
        error_code: r.get(7)?,
        fields: serde_json::from_str(&fields).unwrap_or_default(),
        state: EventState::parse(&state).unwrap_or(EventState::Pending),
        attempts: r.get(10)?,
        next_attempt_at: r.get(11)?,
        last_error: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let direction: String = r.get(14)?;
    Ok(Message {
        id: r.get(0)?,
        direction: Direction::parse(&direction).unwrap_or_default(),
        profile_name: r.get(15)?,
        wa_id: r.get(16)?,
        sid: r.get(1)?,
        app: r.get(2)?,
        company: r.get(3)?,
        account_sid: r.get(4)?,
        to: r.get(5)?,
        from: r.get(6)?,
        body: r.get(7)?,
        media: r.get(8)?,
        status: r.get(9)?,
        error_code: r.get(10)?,
        error_message: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

fn insert_event(tx: &rusqlite::Transaction<'_>, ev: &NewEvent) -> rusqlite::Result<Inserted> {
    let c = &ev.callback;
    let sid = c.sid.as_deref();
    let status = ev.status();
    let error_code = c.error_code.as_deref();
    let fields = serde_json::to_string(&c.fields).expect("string pairs serialize");
    let inserted = tx
        .prepare_cached(
            // Stored with its first attempt counted: the dispatcher starts it right after.
            "INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, \
             message_sid, message_status, error_code, fields, attempts, updated_at, kind) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?3, ?10) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            ev.app,
            ev.company,
            ev.received_at,
            ev.idempotency_token,
            ev.dedup_key(),
            sid,
            status,
            error_code,
            fields,
            ev.kind.as_str()
        ])?;
    if inserted == 0 {
        return Ok(Inserted::Duplicate);
    }
    let id = tx.last_insert_rowid();
    if ev.kind == EventKind::Inbound {
        insert_inbound(tx, ev)?;
        return Ok(Inserted::New(id));
    }
    // Only a message of the event's own app is moved (the conflict target is (app, sid)), and
    // only when the accounts agree: a message or an event that names no account matches any.
    if let (Some(sid), Some(status)) = (sid, status) {
        tx.prepare_cached(
            "INSERT INTO messages (sid, app, company, status, status_rank, error_code, \
             to_number, from_number, created_at, updated_at, account_sid) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10) \
             ON CONFLICT(app, sid) DO UPDATE SET status = excluded.status, \
             status_rank = excluded.status_rank, updated_at = excluded.updated_at, \
             error_code = coalesce(excluded.error_code, messages.error_code), \
             account_sid = coalesce(messages.account_sid, excluded.account_sid) \
             WHERE excluded.status_rank > messages.status_rank \
             AND messages.status_rank < 10 \
             AND (excluded.account_sid IS NULL OR messages.account_sid IS NULL \
                  OR excluded.account_sid = messages.account_sid)",
        )?
        .execute(params![
            sid,
            ev.app,
            ev.company,
            status,
            status_rank(status),
            error_code,
            c.to,
            c.from,
            ev.received_at,
            c.account_sid,
        ])?;
    }
    Ok(Inserted::New(id))
}

/// The message row of an inbound event: received, final, never moved by a status callback. A
/// row the app already has for the sid is left as it is.
fn insert_inbound(tx: &rusqlite::Transaction<'_>, ev: &NewEvent) -> rusqlite::Result<()> {
    let c = &ev.callback;
    let inbound = c.inbound();
    let media = super::inbound_media_json(&inbound.media);
    tx.prepare_cached(
        "INSERT INTO messages (sid, app, company, account_sid, to_number, from_number, body, \
         media, status, status_rank, created_at, updated_at, direction, profile_name, wa_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 'inbound', ?12, ?13) \
         ON CONFLICT(app, sid) DO NOTHING",
    )?
    .execute(params![
        c.sid,
        ev.app,
        ev.company,
        c.account_sid,
        c.to,
        c.from,
        inbound.body,
        media,
        webhook::RECEIVED,
        status_rank(webhook::RECEIVED),
        ev.received_at,
        inbound.profile_name,
        inbound.wa_id,
    ])?;
    Ok(())
}

/// Inserts the message row for (app, sid); a row an early callback of the same app created is
/// completed. A send without a sid (refused by Twilio) always gets a row of its own.
fn record_send(tx: &rusqlite::Transaction<'_>, r: &SendRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages (sid, app, company, account_sid, to_number, from_number, body, \
         media, status, status_rank, error_code, error_message, created_at, updated_at, \
         content_sid, content_variables) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15) \
         ON CONFLICT(app, sid) DO UPDATE SET company = excluded.company, \
         account_sid = excluded.account_sid, to_number = excluded.to_number, \
         from_number = excluded.from_number, body = excluded.body, media = excluded.media, \
         content_sid = excluded.content_sid, content_variables = excluded.content_variables, \
         created_at = min(messages.created_at, excluded.created_at), \
         error_message = coalesce(messages.error_message, excluded.error_message), \
         status = CASE WHEN excluded.status_rank > messages.status_rank \
                       THEN excluded.status ELSE messages.status END, \
         status_rank = max(excluded.status_rank, messages.status_rank)",
    )?
    .execute(params![
        r.sid,
        r.app,
        r.company,
        r.account_sid,
        r.to,
        r.from,
        r.body,
        r.media,
        r.status,
        status_rank(&r.status),
        r.error_code.map(|c| c.to_string()),
        r.error_message,
        r.at,
        r.content_sid,
        r.content_variables
    ])?;
    Ok(())
}

fn finish(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    attempts: u32,
    result: &DispatchResult,
) -> rusqlite::Result<()> {
    let (state, error, next) = match result {
        DispatchResult::Started => ("pending", None, None),
        DispatchResult::Done => ("done", None, None),
        DispatchResult::Failed {
            error,
            next_attempt_at,
        } => ("failed", Some(error.as_str()), Some(*next_attempt_at)),
        DispatchResult::Dead { error } => ("dead", Some(error.as_str()), None),
    };
    tx.prepare_cached(
        "UPDATE events SET state = ?2, attempts = ?3, last_error = coalesce(?4, last_error), \
         next_attempt_at = ?5, updated_at = ?6 WHERE id = ?1",
    )?
    .execute(params![id, state, attempts, error, next, now_ms()])?;
    Ok(())
}

/// Applies a dashboard login or logout.
fn change_session(
    tx: &rusqlite::Transaction<'_>,
    change: &writer::SessionChange,
) -> rusqlite::Result<()> {
    match change {
        writer::SessionChange::Create {
            token_hash,
            csrf,
            expires_at,
        } => tx
            .prepare_cached(
                "INSERT INTO dashboard_sessions (token_hash, csrf, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(token_hash) DO UPDATE SET csrf = excluded.csrf, \
                 expires_at = excluded.expires_at",
            )?
            .execute(params![token_hash, csrf, expires_at])?,
        writer::SessionChange::Delete { token_hash } => tx
            .prepare_cached("DELETE FROM dashboard_sessions WHERE token_hash = ?1")?
            .execute([token_hash])?,
    };
    Ok(())
}

/// One batch of retention: up to `batch` `done`/`dead` events and up to `batch` messages in a
/// final status (status rank 5 and up: delivered, read, failed, undelivered, canceled, received)
/// last changed before `before_ms`, and every session expired at `now_ms`. The partial indexes
/// `events_finished` and `messages_final` find them without a scan.
fn prune(
    tx: &rusqlite::Transaction<'_>,
    before_ms: i64,
    batch: usize,
    now_ms: i64,
) -> rusqlite::Result<Pruned> {
    let batch = i64::try_from(batch).unwrap_or(i64::MAX);
    let events = tx
        .prepare_cached(
            "DELETE FROM events WHERE id IN (SELECT id FROM events \
             WHERE state IN ('done','dead') AND updated_at < ?1 LIMIT ?2)",
        )?
        .execute(params![before_ms, batch])?;
    let messages = tx
        .prepare_cached(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
             WHERE status_rank >= 5 AND updated_at < ?1 LIMIT ?2)",
        )?
        .execute(params![before_ms, batch])?;
    let sessions = tx
        .prepare_cached("DELETE FROM dashboard_sessions WHERE expires_at <= ?1")?
        .execute([now_ms])?;
    Ok(Pruned {
        events: events as u64,
        messages: messages as u64,
        sessions: sessions as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreReader, status_event};

    /// How many threads of this process are named `name` (Linux keeps the first 15 bytes).
    #[cfg(target_os = "linux")]
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn read_only_open_starts_no_threads_and_reads_beside_a_running_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_event(status_event("SM1", "sent", 1))
            .await
            .unwrap();
        // Other tests in this binary may start or stop stores meanwhile, so a count that moved
        // is tried again; a reader that started threads would move it every time.
        let threads = || (threads_named("store-writer"), threads_named("store-sync"));
        let mut tries = 0;
        let reader = loop {
            let before = threads();
            let reader = Store::open_read_only(dir.path()).unwrap();
            if threads() == before {
                break reader;
            }
            tries += 1;
            assert!(
                tries < 20,
                "opening the store read-only started store threads"
            );
        };
        let events = reader.events(EventFilter::default()).await.unwrap();
        assert_eq!(events.len(), 1);
        // A write committed after the reader opened is seen by its next read.
        store
            .insert_event(status_event("SM1", "delivered", 2))
            .await
            .unwrap();
        let (message, events) = reader.message("SM1").await.unwrap().unwrap();
        assert_eq!((message.status.as_str(), events.len()), ("delivered", 2));
        drop(reader);
        // The writer carries on as before.
        store
            .insert_event(status_event("SM1", "read", 3))
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn read_only_open_reads_a_store_no_server_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_event(status_event("SM1", "sent", 1))
            .await
            .unwrap();
        store.close().await;
        let reader = Store::open_read_only(dir.path()).unwrap();
        let events = reader.events(EventFilter::default()).await.unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn read_only_open_refuses_a_store_written_by_a_newer_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
        drop(conn);
        let Err(e) = Store::open_read_only(dir.path()) else {
            panic!("a store of a newer schema opened");
        };
        assert!(
            matches!(e, StoreError::NewerSchema { found, known, .. }
                if found == schema::VERSION + 1 && known == schema::VERSION),
            "{e}"
        );
        assert!(e.to_string().contains("newer whatsapp-host"), "{e}");
        // The current version still opens.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::VERSION)
            .unwrap();
        drop(conn);
        Store::open_read_only(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn an_empty_reader_finds_nothing_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(FILE_NAME);
        let reader = StoreReader::empty(path.clone()).unwrap();
        assert_eq!(reader.location(), path.display().to_string());
        assert!(
            reader
                .events(EventFilter::default())
                .await
                .unwrap()
                .is_empty()
        );
        let messages = reader.messages(MessageFilter::default()).await.unwrap();
        assert!(messages.is_empty());
        assert!(reader.message("SM1").await.unwrap().is_none());
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_the_backends_own_words() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![b'x'; 4096]).unwrap();
        let Err(e) = Store::open(dir.path()) else {
            panic!("a file of garbage opened as a store");
        };
        assert!(matches!(e, StoreError::Open { .. }), "{e}");
        let cause = std::error::Error::source(&e).expect("the backend's error is the source");
        assert!(cause.to_string().contains("not a database"), "{cause}");
        assert!(
            e.to_string().ends_with(&format!(
                "{}: {cause}",
                dir.path().join(FILE_NAME).display()
            )),
            "{e}"
        );
    }

    #[test]
    fn read_only_open_of_a_missing_store_says_how_to_create_one_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let Err(e) = Store::open_read_only(&data_dir) else {
            panic!("a missing store opened");
        };
        assert!(matches!(e, StoreError::Missing { .. }), "{e}");
        let message = e.to_string();
        assert!(message.contains("store.sqlite3"), "{message}");
        assert!(message.contains("whatsapp-host serve"), "{message}");
        assert!(!data_dir.exists());
    }
}
