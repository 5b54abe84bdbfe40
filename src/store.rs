//! The embedded store: the only module with SQL. It keeps every send and every callback event in
//! one SQLite file, commits writes in groups on one writer thread, and answers when a write is
//! durable, so the server can acknowledge Twilio only after the event is safe.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::twilio::webhook::status_rank;

/// Milliseconds since the Unix epoch: the store's only time unit.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("failed to create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the store is closed")]
    Closed,
}

/// A status callback as received, before it has an id. The message values are read by
/// `twilio::webhook`; the store keeps them in columns and `fields` as they came.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub app: String,
    pub company: String,
    pub message_sid: Option<String>,
    pub message_status: Option<String>,
    pub error_code: Option<String>,
    /// The recipient's number, without a channel prefix.
    pub to: Option<String>,
    /// The sender's number, without a channel prefix.
    pub from: Option<String>,
    pub fields: Vec<(String, String)>,
    pub idempotency_token: Option<String>,
    pub received_at: i64,
}

impl NewEvent {
    /// Same sid, status and error code: the same event delivered twice.
    fn dedup_key(&self) -> Option<String> {
        let sid = self.message_sid.as_deref()?;
        let status = self.message_status.as_deref().unwrap_or("");
        let code = self.error_code.as_deref().unwrap_or("");
        Some(format!("{sid}|{status}|{code}"))
    }
}

/// The result of storing a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New(i64),
    /// Already stored: acknowledge again, but do not dispatch again.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Pending,
    Done,
    Failed,
    Dead,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Done => "done",
            EventState::Failed => "failed",
            EventState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => EventState::Pending,
            "done" => EventState::Done,
            "failed" => EventState::Failed,
            "dead" => EventState::Dead,
            _ => return None,
        })
    }
}

/// A stored callback event with its dispatch state.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub app: String,
    pub company: String,
    pub received_at: i64,
    pub idempotency_token: Option<String>,
    pub message_sid: Option<String>,
    pub message_status: Option<String>,
    pub error_code: Option<String>,
    pub fields: Vec<(String, String)>,
    pub state: EventState,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

/// One send as the outbound path saw it. Holds no secret.
#[derive(Debug, Clone)]
pub struct SendRecord {
    pub sid: Option<String>,
    pub app: String,
    pub company: String,
    pub account_sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    /// A public URL, or `gs://bucket/object` for signed media (the signature is not stored).
    pub media: Option<String>,
    pub status: String,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    pub at: i64,
}

/// A message as operators see it: the send outcome, then the status callbacks moved it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub sid: Option<String>,
    pub app: String,
    pub company: String,
    pub account_sid: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub body: Option<String>,
    pub media: Option<String>,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a dispatch attempt decided about an event.
#[derive(Debug, Clone)]
pub enum DispatchResult {
    Done,
    Failed { error: String, next_attempt_at: i64 },
    Dead { error: String },
}

#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub app: Option<String>,
    pub state: Option<EventState>,
    pub message_sid: Option<String>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Default, Clone)]
pub struct MessageFilter {
    pub app: Option<String>,
    pub company: Option<String>,
    pub status: Option<String>,
    /// Matches the sid, or the to/from number.
    pub search: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

impl Op {
    /// Whether a caller waits for this op's answer.
    fn is_awaited(&self) -> bool {
        match self {
            Op::InsertEvent(..) | Op::Barrier(_) | Op::Close(_) => true,
            Op::Finish { reply, .. } => reply.is_some(),
            Op::RecordSend(_) => false,
        }
    }
}

enum Op {
    InsertEvent(NewEvent, oneshot::Sender<Result<Inserted, String>>),
    RecordSend(SendRecord),
    Finish {
        id: i64,
        attempts: u32,
        result: DispatchResult,
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Answers once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Handle to the store. Cloning is cheap; all clones share one writer thread.
#[derive(Clone)]
pub struct Store {
    writer: mpsc::Sender<Op>,
    /// A std mutex: readers run in `spawn_blocking` and never hold it across an await.
    reader: Arc<Mutex<Connection>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    path: PathBuf,
}

/// Most writes a group commit takes at once; bounds the latency of the last one in a group.
const MAX_GROUP: usize = 2048;
/// A group keeps gathering while writes arrive less than this far apart...
const GATHER_GAP: Duration = Duration::from_micros(200);
/// ...but no longer than this after its first write. Under load, requests arrive every few
/// tens of µs: waiting turns many small commits into a few large ones, each paying the fixed
/// cost of a commit (the table and index pages every commit rewrites, and the fsync) once.
/// A lone write waits at most `GATHER_GAP`.
const GATHER_MAX: Duration = Duration::from_millis(1);
/// How long a group of writes nobody waits for (sends and dispatch outcomes) may gather: a
/// script sending one message after another then commits and syncs a few times a second
/// rather than once per message.
const UNAWAITED_GATHER: Duration = Duration::from_millis(20);
/// How often the checkpoint thread copies newly committed pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// Log length, in pages, at which the writer checkpoints by itself: only when the checkpoint
/// thread has fallen far behind, so the log stays bounded (about 128 MiB).
const WRITER_CHECKPOINT_PAGES: i64 = 32_768;

impl Store {
    /// Opens (creating if needed) `store.sqlite3` in `data_dir` and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("store.sqlite3");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let writer_conn = Connection::open(&path).map_err(open_err)?;
        configure(&writer_conn).map_err(open_err)?;
        writer_conn.execute_batch(SCHEMA).map_err(open_err)?;
        // Commits leave the log unsynced; the writer's sync thread syncs it before anyone is
        // answered (see `writer_loop`). NORMAL still syncs the log and the database around
        // every checkpoint, so a checkpointed log is never overwritten before it is safe.
        writer_conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // Checkpoints run on their own thread (see `checkpoint_loop`); the writer checkpoints
        // only if the log has grown this long anyway.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(open_err)?;
        let reader = Connection::open(&path).map_err(open_err)?;
        configure(&reader).map_err(open_err)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let path = path.clone();
                move || writer_loop(writer_conn, rx, path)
            })
            .expect("spawning the store writer thread");
        Ok(Store {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            thread: Arc::new(Mutex::new(Some(thread))),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a callback and returns once it is durable (fsynced), or found to be a repeat.
    pub async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::InsertEvent(event, tx))?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(write_error)
    }

    /// Queues a send's outcome without waiting. The writer commits it with the next group and
    /// before any later write, so a callback for the same sid never overtakes it; a sid that an
    /// early callback already created is completed rather than duplicated.
    pub fn record_send(&self, record: SendRecord) {
        if self.send(Op::RecordSend(record)).is_err() {
            tracing::error!("the store is closed; a send was not recorded");
        }
    }

    /// Records a dispatch outcome without waiting: losing it in a crash only means the event
    /// is dispatched again on restart, which at-least-once delivery allows.
    pub fn finish_dispatch(&self, id: i64, attempts: u32, result: DispatchResult) {
        let _ = self.send(Op::Finish {
            id,
            attempts,
            result,
            reply: None,
        });
    }

    /// Records a dispatch outcome and waits until it is committed.
    pub async fn finish_dispatch_durably(
        &self,
        id: i64,
        attempts: u32,
        result: DispatchResult,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Finish {
            id,
            attempts,
            result,
            reply: Some(tx),
        })?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(write_error)
    }

    /// Waits until every write queued so far, including fire-and-forget ones, is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Barrier(tx))?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Commits what is queued, checkpoints the WAL and stops the writer. Later writes fail.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().expect("store thread lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.writer.send(op).map_err(|_| StoreError::Closed)
    }

    /// Runs a read on the blocking pool so the async runtime never waits on SQLite.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().expect("store reader lock");
            f(&conn).map_err(StoreError::from)
        })
        .await
        .expect("store read panicked")
    }

    /// Whether a write can be committed right now, for `/healthz`: the writer takes the write
    /// lock for an empty transaction and answers within a second.
    pub async fn is_writable(&self) -> bool {
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(1), self.flush()).await,
            Ok(Ok(()))
        )
    }

    pub async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
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
    pub async fn undispatched_events(&self) -> Result<Vec<Event>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE state IN ('pending','failed') ORDER BY id"
            ))?;
            stmt.query_map([], event_from_row)?.collect()
        })
        .await
    }

    /// Newest first.
    pub async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, StoreError> {
        self.read(move |c| {
            let mut w = Where::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1=1"));
            if let Some(app) = filter.app {
                w.and(" AND app = ?", app);
            }
            if let Some(state) = filter.state {
                w.and(" AND state = ?", state.as_str().to_string());
            }
            if let Some(sid) = filter.message_sid {
                w.and(" AND message_sid = ?", sid);
            }
            if let Some(before) = filter.before_id {
                w.and(" AND id < ?", before);
            }
            let (sql, args) = w.finish(filter.limit);
            let mut stmt = c.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), event_from_row)?
                .collect()
        })
        .await
    }

    /// Newest first.
    pub async fn messages(&self, filter: MessageFilter) -> Result<Vec<Message>, StoreError> {
        self.read(move |c| {
            let mut w = Where::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE 1=1"));
            if let Some(app) = filter.app {
                w.and(" AND app = ?", app);
            }
            if let Some(company) = filter.company {
                w.and(" AND company = ?", company);
            }
            if let Some(status) = filter.status {
                w.and(" AND status = ?", status);
            }
            if let Some(search) = filter.search {
                // A sid is matched whole; a phone number by its digits anywhere in to or from.
                let search = search.trim();
                let digits: String = search.chars().filter(char::is_ascii_digit).collect();
                let needle = if search.starts_with("SM") || digits.is_empty() {
                    search.to_string()
                } else {
                    digits
                };
                w.and(
                    " AND (sid = ? OR instr(to_number, ?) > 0 OR instr(from_number, ?) > 0)",
                    needle,
                );
            }
            if let Some(since) = filter.since {
                w.and(" AND created_at >= ?", since);
            }
            if let Some(until) = filter.until {
                w.and(" AND created_at < ?", until);
            }
            if let Some(before) = filter.before_id {
                w.and(" AND id < ?", before);
            }
            let (sql, args) = w.finish(filter.limit);
            let mut stmt = c.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), message_from_row)?
                .collect()
        })
        .await
    }

    /// A message and the events recorded for it, oldest event first.
    pub async fn message(&self, sid: &str) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        let sid = sid.to_string();
        self.read(move |c| {
            let Some(message) = c
                .query_row(
                    &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sid = ?1"),
                    [&sid],
                    message_from_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE message_sid = ?1 ORDER BY received_at, id"
            ))?;
            let events = stmt
                .query_map([&sid], event_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(Some((message, events)))
        })
        .await
    }

    /// Counts of events by dispatch state.
    pub async fn event_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT state, count(*) FROM events GROUP BY state")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }
}

/// Builds a filtered, newest-first listing query with numbered parameters.
struct Where {
    sql: String,
    args: Vec<rusqlite::types::Value>,
}

impl Where {
    fn new(select: String) -> Self {
        Self {
            sql: select,
            args: Vec::new(),
        }
    }

    /// Appends a clause; every `?` in it refers to `value`.
    fn and(&mut self, clause: &str, value: impl Into<rusqlite::types::Value>) {
        self.args.push(value.into());
        self.sql
            .push_str(&clause.replace('?', &format!("?{}", self.args.len())));
    }

    fn finish(mut self, limit: usize) -> (String, Vec<rusqlite::types::Value>) {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) };
        self.sql
            .push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        (self.sql, self.args)
    }
}

fn write_error(message: String) -> StoreError {
    StoreError::Sql(rusqlite::Error::ToSqlConversionFailure(message.into()))
}

/// WAL with `synchronous = FULL`. The writer connection then lowers it to NORMAL and syncs
/// the log itself before answering (see `writer_loop`): an acknowledged event still survives
/// `kill -9` and a power cut, and one sync covers every group committed before it.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -8_000)?;
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    company TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    idempotency_token TEXT,
    dedup_key TEXT,
    message_sid TEXT,
    message_status TEXT,
    error_code TEXT,
    fields TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_token ON events(idempotency_token) WHERE idempotency_token IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events(dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_open ON events(state) WHERE state IN ('pending','failed');
CREATE INDEX IF NOT EXISTS events_sid ON events(message_sid);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    sid TEXT UNIQUE,
    app TEXT NOT NULL,
    company TEXT NOT NULL,
    account_sid TEXT,
    to_number TEXT,
    from_number TEXT,
    body TEXT,
    media TEXT,
    status TEXT NOT NULL,
    status_rank INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_app ON messages(app, created_at);
";

const EVENT_COLUMNS: &str = "id, app, company, received_at, idempotency_token, message_sid, \
     message_status, error_code, fields, state, attempts, next_attempt_at, last_error, updated_at";

const MESSAGE_COLUMNS: &str = "id, sid, app, company, account_sid, to_number, from_number, body, \
     media, status, error_code, error_message, created_at, updated_at";

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let fields: String = r.get(8)?;
    let state: String = r.get(9)?;
    Ok(Event {
        id: r.get(0)?,
        app: r.get(1)?,
        company: r.get(2)?,
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
    Ok(Message {
        id: r.get(0)?,
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

/// The writer thread: take one op, then what arrives right behind it (see [`GATHER_MAX`]),
/// apply them in one transaction and commit. The commit writes the log without syncing it; the
/// group's answers go to the [`sync_loop`] thread, which answers only after the log is synced.
/// So the next group is applied while the previous one is being synced, and one sync covers
/// every group committed before it started.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, path: PathBuf) {
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let commits = Arc::new(AtomicU64::new(0));
    let (stop_checkpoints, stop_rx) = mpsc::channel::<()>();
    let checkpointer = {
        let commits = commits.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(&path, &commits, stop_rx))
            .expect("spawning the store checkpoint thread")
    };
    let (synced_tx, synced_rx) = mpsc::channel::<Vec<Reply>>();
    let failed = Arc::new(AtomicBool::new(false));
    let syncer = {
        let failed = failed.clone();
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || sync_loop(&wal, synced_rx, &failed))
            .expect("spawning the store sync thread")
    };
    let mut batch = Vec::with_capacity(MAX_GROUP);
    let mut closing = None;
    while let Ok(first) = rx.recv() {
        // Until an op someone waits for arrives, the group may gather for much longer.
        let mut awaited = first.is_awaited();
        let mut until = Instant::now()
            + if awaited {
                GATHER_MAX
            } else {
                UNAWAITED_GATHER
            };
        batch.push(first);
        while batch.len() < MAX_GROUP {
            let left = until.saturating_duration_since(Instant::now());
            let wait = if awaited { GATHER_GAP.min(left) } else { left };
            match rx.recv_timeout(wait) {
                Ok(op) => {
                    if !awaited && op.is_awaited() {
                        awaited = true;
                        until = until.min(Instant::now() + GATHER_MAX);
                    }
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let committed = if failed.load(Ordering::Acquire) {
            // After a failed sync nothing more is acknowledged: what the log holds is unknown.
            for op in batch.drain(..) {
                match op {
                    Op::Close(reply) => closing = Some(reply),
                    op => replies.extend(Reply::unapplied(op)),
                }
            }
            Err(SYNC_FAILED.to_string())
        } else {
            (|| -> rusqlite::Result<()> {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                for op in batch.drain(..) {
                    match op {
                        Op::InsertEvent(ev, reply) => {
                            replies.push(Reply::Event(reply, insert_event(&tx, &ev)))
                        }
                        Op::RecordSend(rec) => {
                            if let Err(e) = record_send(&tx, &rec) {
                                tracing::error!(error = %e, "failed to record a send");
                            }
                        }
                        Op::Finish {
                            id,
                            attempts,
                            result,
                            reply,
                        } => replies.push(Reply::Finish(reply, finish(&tx, id, attempts, &result))),
                        Op::Barrier(reply) => replies.push(Reply::Barrier(reply)),
                        Op::Close(reply) => closing = Some(reply),
                    }
                }
                tx.commit()
            })()
            .map_err(|e| {
                tracing::error!(error = %e, "store commit failed; the writes in this group were not acknowledged");
                e.to_string()
            })
        };
        match committed {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                // Nobody waits on a group of sends and dispatch outcomes: the next sync, or
                // checkpoint, makes it durable.
                if !replies.is_empty() {
                    let _ = synced_tx.send(replies);
                }
            }
            Err(e) => {
                for reply in replies {
                    reply.send(Some(&e));
                }
            }
        }
        if closing.is_some() {
            break;
        }
    }
    // Every answer is out, and the checkpoint thread stopped, before the log is checkpointed
    // and the connection closed.
    drop(synced_tx);
    let _ = syncer.join();
    drop(stop_checkpoints);
    let _ = checkpointer.join();
    if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(error = %e, "store checkpoint at close failed");
    }
    drop(conn);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

/// The checkpoint thread: while commits keep coming, copies them from the log into the
/// database every [`CHECKPOINT_EVERY`], on a connection of its own, so the writer never
/// stops for a checkpoint's copying and two syncs. The connection is `synchronous = FULL`:
/// the log is synced before copying and the database after, so once everything is copied
/// the writer may start the log over. Ends when the writer drops `stop`.
fn checkpoint_loop(path: &Path, commits: &AtomicU64, stop: mpsc::Receiver<()>) {
    let conn = match Connection::open(path).and_then(|c| configure(&c).map(|()| c)) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "the store's checkpoint thread could not open the store; the writer checkpoints alone");
            return;
        }
    };
    let mut seen = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let now = commits.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store checkpoint failed; the next one will retry");
        }
    }
}

const SYNC_FAILED: &str =
    "the store's log could not be synced to disk; restart whatsapp-host once the disk is healthy";

/// The sync thread: takes every committed group waiting, syncs the log once, then answers
/// them all. A failed sync is final: its groups and every later write are answered with an
/// error, as the kernel may have dropped the unsynced pages.
fn sync_loop(wal: &Path, rx: mpsc::Receiver<Vec<Reply>>, failed: &AtomicBool) {
    let mut directory_synced = false;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let error = match sync_log(wal, &mut directory_synced) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(log = %wal.display(), error = %e, "failed to sync the store's log; no further writes will be acknowledged");
                failed.store(true, Ordering::Release);
                Some(SYNC_FAILED)
            }
        };
        for reply in groups.into_iter().flatten() {
            reply.send(error);
        }
    }
}

/// `fdatasync` of the write-ahead log, through a fresh descriptor so it is always the file
/// SQLite writes now. The first time, the directory too, so the log's entry is durable.
fn sync_log(wal: &Path, directory_synced: &mut bool) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(log) => log.sync_data()?,
        // No log yet: nothing was written, so there is nothing to sync.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if !*directory_synced {
        if let Some(dir) = wal.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *directory_synced = true;
    }
    Ok(())
}

enum Reply {
    Event(
        oneshot::Sender<Result<Inserted, String>>,
        rusqlite::Result<Inserted>,
    ),
    Finish(
        Option<oneshot::Sender<Result<(), String>>>,
        rusqlite::Result<()>,
    ),
    Barrier(oneshot::Sender<()>),
}

impl Reply {
    /// The answer owed for an op that was never applied; `None` for fire-and-forget ops.
    fn unapplied(op: Op) -> Option<Reply> {
        let not_applied = || rusqlite::Error::InvalidQuery;
        match op {
            Op::InsertEvent(_, reply) => Some(Reply::Event(reply, Err(not_applied()))),
            Op::Finish { reply, .. } => Some(Reply::Finish(reply, Err(not_applied()))),
            Op::Barrier(reply) => Some(Reply::Barrier(reply)),
            Op::RecordSend(_) | Op::Close(_) => None,
        }
    }

    fn send(self, commit_error: Option<&str>) {
        fn answer<T>(r: rusqlite::Result<T>, commit_error: Option<&str>) -> Result<T, String> {
            match commit_error {
                Some(e) => Err(e.to_string()),
                None => r.map_err(|e| e.to_string()),
            }
        }
        match self {
            Reply::Event(tx, r) => {
                let _ = tx.send(answer(r, commit_error));
            }
            Reply::Finish(tx, r) => {
                if let Some(tx) = tx {
                    let _ = tx.send(answer(r, commit_error));
                }
            }
            Reply::Barrier(tx) => {
                // Dropped unanswered when the commit failed: the waiter sees an error.
                if commit_error.is_none() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

fn insert_event(tx: &rusqlite::Transaction<'_>, ev: &NewEvent) -> rusqlite::Result<Inserted> {
    let sid = ev.message_sid.as_deref();
    let status = ev.message_status.as_deref();
    let error_code = ev.error_code.as_deref();
    let fields = serde_json::to_string(&ev.fields).expect("string pairs serialize");
    let inserted = tx
        .prepare_cached(
            "INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, \
             message_sid, message_status, error_code, fields, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?3) ON CONFLICT DO NOTHING",
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
            fields
        ])?;
    if inserted == 0 {
        return Ok(Inserted::Duplicate);
    }
    let id = tx.last_insert_rowid();
    if let (Some(sid), Some(status)) = (sid, status) {
        tx.prepare_cached(
            "INSERT INTO messages (sid, app, company, status, status_rank, error_code, \
             to_number, from_number, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
             ON CONFLICT(sid) DO UPDATE SET status = excluded.status, \
             status_rank = excluded.status_rank, updated_at = excluded.updated_at, \
             error_code = coalesce(excluded.error_code, messages.error_code) \
             WHERE excluded.status_rank > messages.status_rank \
             AND messages.status_rank < 10",
        )?
        .execute(params![
            sid,
            ev.app,
            ev.company,
            status,
            status_rank(status),
            error_code,
            ev.to,
            ev.from,
            ev.received_at
        ])?;
    }
    Ok(Inserted::New(id))
}

fn record_send(tx: &rusqlite::Transaction<'_>, r: &SendRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages (sid, app, company, account_sid, to_number, from_number, body, \
         media, status, status_rank, error_code, error_message, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13) \
         ON CONFLICT(sid) DO UPDATE SET app = excluded.app, company = excluded.company, \
         account_sid = excluded.account_sid, to_number = excluded.to_number, \
         from_number = excluded.from_number, body = excluded.body, media = excluded.media, \
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
        r.at
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status_event(sid: &str, status: &str, at: i64) -> NewEvent {
        NewEvent {
            app: "crm".into(),
            company: "ACME".into(),
            message_sid: Some(sid.into()),
            message_status: Some(status.into()),
            error_code: None,
            to: None,
            from: None,
            fields: Vec::new(),
            idempotency_token: None,
            received_at: at,
        }
    }

    #[tokio::test]
    async fn status_only_moves_forward_and_failed_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, s) in ["read", "sent", "delivered"].iter().enumerate() {
            store
                .insert_event(status_event("SM1", s, i as i64))
                .await
                .unwrap();
        }
        let (m, events) = store.message("SM1").await.unwrap().unwrap();
        assert_eq!(m.status, "read");
        assert_eq!(events.len(), 3);
        store
            .insert_event(status_event("SM2", "failed", 1))
            .await
            .unwrap();
        store
            .insert_event(status_event("SM2", "delivered", 2))
            .await
            .unwrap();
        assert_eq!(
            store.message("SM2").await.unwrap().unwrap().0.status,
            "failed"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn repeats_by_token_or_by_sid_status_and_code_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .insert_event(status_event("SM1", "sent", 1))
            .await
            .unwrap();
        assert!(matches!(first, Inserted::New(_)));
        let again = store
            .insert_event(status_event("SM1", "sent", 2))
            .await
            .unwrap();
        assert_eq!(again, Inserted::Duplicate);
        let mut with_token = status_event("SM1", "delivered", 3);
        with_token.idempotency_token = Some("tok".into());
        assert!(matches!(
            store.insert_event(with_token.clone()).await.unwrap(),
            Inserted::New(_)
        ));
        with_token.message_status = Some("read".into());
        assert_eq!(
            store.insert_event(with_token).await.unwrap(),
            Inserted::Duplicate
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_send_recorded_after_its_callback_keeps_the_further_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_event(status_event("SM9", "delivered", 5))
            .await
            .unwrap();
        store.record_send(SendRecord {
            sid: Some("SM9".into()),
            app: "crm".into(),
            company: "ACME".into(),
            account_sid: "AC1".into(),
            to: "+393331234567".into(),
            from: "+14155238886".into(),
            body: "hi".into(),
            media: None,
            status: "queued".into(),
            error_code: None,
            error_message: None,
            at: 4,
        });
        store.flush().await.unwrap();
        let (m, _) = store.message("SM9").await.unwrap().unwrap();
        assert_eq!(m.status, "delivered");
        assert_eq!(m.body.as_deref(), Some("hi"));
        assert_eq!(m.created_at, 4);
        store.close().await;
    }
}
