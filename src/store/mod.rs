//! The store: the only module with SQL. It keeps every send and every callback event, answers
//! when a write is durable, so the server can acknowledge Twilio only after the event is safe,
//! and hands events to dispatch. This file holds the API every caller uses and the values it
//! speaks in; the backends behind it are `sqlite` (the embedded default, one file under
//! `server.data_dir`) and `postgres` (shared by several instances). Callers see typed values
//! only, never which backend answers.

#[cfg(test)]
mod backend_tests;
mod conversation;
mod copy;
mod postgres;
mod sql;
mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::twilio::webhook::{self, StatusCallback};

pub use conversation::{Conversation, Entry, MediaItem, NumberWindow, WINDOW_MS, Window};
pub(crate) use copy::copy_to_postgres;

/// Checks that `url` is a PostgreSQL URL the store can connect with; the reason, when it is
/// not, never repeats the URL, which may hold a password.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "has the scheme {:?}, but only PostgreSQL (postgres://) is supported",
            parsed.scheme()
        ));
    }
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|e| format!("is not a PostgreSQL URL ({e})"))
}

/// `url` with its password, if any, replaced by `***`: what logs and errors may show. A
/// password given as a `password=` parameter is hidden too.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" { "***".into() } else { v };
                        (k.into_owned(), v.into_owned())
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "(a store URL that does not parse)".to_string(),
    }
}

/// Milliseconds since the Unix epoch: the store's only time unit.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The time the host judges WhatsApp's 24-hour window by: [`now_ms`], moved by however far
/// [`Clock::advance`] moved it. Production never moves it; tests do, to see a window close
/// without waiting a day. Cloning is cheap; clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The current time, in the store's unit.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every clone) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(by, Ordering::Relaxed);
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store at {path}: run `whatsapp-host serve` first, or check server.data_dir")]
    Missing { path: PathBuf },
    #[error("failed to open the store at {path}: {source}")]
    Open { path: PathBuf, source: BackendError },
    #[error(
        "the store at {path} was written by a newer whatsapp-host (schema version {found}; this build knows up to {known}): run the newer build, or point server.data_dir elsewhere"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "the store at {path} has schema version {found}, which no whatsapp-host writes: restore it from a backup, or point server.data_dir elsewhere"
    )]
    UnknownSchema { path: PathBuf, found: i64 },
    /// Nothing was changed: the upgrade runs in one transaction.
    #[error(
        "failed to upgrade the store at {path} from schema version {from}, so it was left as it was: {source}"
    )]
    Upgrade {
        path: PathBuf,
        from: i64,
        source: BackendError,
    },
    #[error("failed to create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store query failed: {0}")]
    Query(#[source] BackendError),
    /// Nothing in the write's group was applied.
    #[error("store commit failed, so the write was not applied: {source}")]
    CommitFailed { source: BackendError },
    /// The write may be lost, and the store acknowledges no further writes.
    #[error(
        "the store's log could not be synced to disk ({source}); restart whatsapp-host once the disk is healthy"
    )]
    SyncFailed { source: Arc<std::io::Error> },
    #[error("the store is closed")]
    Closed,
    /// `server` never holds the password.
    #[error(
        "failed to connect to the PostgreSQL store at {server} (store.url, or WHATSAPP_HOST_STORE_URL): {source}; check that the server is running and the URL, user and password are right"
    )]
    Connect {
        server: String,
        source: BackendError,
    },
    #[error(
        "the PostgreSQL store at {server} has no tables yet: run `whatsapp-host migrate` or `whatsapp-host serve` first"
    )]
    NotMigrated { server: String },
}

/// What the database itself reported: the `source` of a [`StoreError`]. Opaque, so no caller
/// depends on which backend the store runs on (SQLite today; PostgreSQL must fit behind the same
/// error); it reads as the backend's own message. Built only inside `store`. Cloning is cheap:
/// a failed group commit gives every write in the group the same cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

impl BackendError {
    pub(super) fn new(source: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        BackendError(Arc::new(source))
    }
}

/// What a stored event is, and so which of the app's actions it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A status callback about a message the host sent: runs the app's `callback` action.
    #[default]
    Status,
    /// A message a contact sent to the app's number: runs the app's `inbound` action.
    Inbound,
}

impl EventKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Inbound => "inbound",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "inbound" => EventKind::Inbound,
            _ => EventKind::Status,
        }
    }
}

/// Which way a message went. `pub` so callers can filter messages by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by this host.
    #[default]
    Outbound,
    /// Sent by a contact to an app's number.
    Inbound,
}

impl Direction {
    /// The name stored in the `direction` column and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// The direction named `s` (`inbound` or `outbound`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outbound" => Some(Direction::Outbound),
            "inbound" => Some(Direction::Inbound),
            _ => None,
        }
    }
}

/// A callback as received, before it has an id: the values `twilio::webhook` read from it, kept
/// in columns, and its fields as they came.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) app: String,
    pub(crate) company: String,
    /// A status callback, or an inbound message, which is also kept as a message row.
    pub(crate) kind: EventKind,
    /// What Twilio posted. Its `account_sid`, when there is one, must match a message's for the
    /// event to move it.
    pub(crate) callback: StatusCallback,
    pub(crate) idempotency_token: Option<String>,
    pub(crate) received_at: i64,
}

impl NewEvent {
    /// Same sid, status and error code: the same event delivered twice. An inbound message's
    /// status is `received`, whichever route it came in on.
    pub(super) fn dedup_key(&self) -> Option<String> {
        let c = &self.callback;
        let sid = c.sid.as_deref()?;
        let status = self.status().unwrap_or("");
        let code = c.error_code.as_deref().unwrap_or("");
        Some(format!("{sid}|{status}|{code}"))
    }

    /// The status kept in the event's `message_status`: `received` for an inbound message.
    pub(super) fn status(&self) -> Option<&str> {
        match self.kind {
            EventKind::Inbound => Some(webhook::RECEIVED),
            EventKind::Status => self.callback.status.as_deref(),
        }
    }
}

/// An inbound message's attachments as the `media` column keeps them, on either backend: a JSON
/// array of `{"url", "contentType"}`, or `None` when there are none.
pub(super) fn inbound_media_json(media: &[(String, String)]) -> Option<String> {
    (!media.is_empty()).then(|| {
        let items: Vec<_> = media
            .iter()
            .map(|(url, content_type)| serde_json::json!({"url": url, "contentType": content_type}))
            .collect();
        serde_json::Value::from(items).to_string()
    })
}

/// The result of storing a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    New(i64),
    /// Already stored: acknowledge again, but do not dispatch again.
    Duplicate,
}

/// Where a stored event is in dispatch. `pub` so callers can filter events by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Pending,
    Done,
    Failed,
    Dead,
}

impl EventState {
    /// The name stored in the `state` column and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Done => "done",
            EventState::Failed => "failed",
            EventState::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
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
    /// The row id: the order events were stored in, and the id replay and the dashboard use.
    pub id: i64,
    /// The app whose callback URL received the event.
    pub app: String,
    /// The company id from the callback URL.
    pub company: String,
    /// A status callback or an inbound message.
    pub kind: EventKind,
    pub(crate) received_at: i64,
    /// Twilio's idempotency header, which makes a redelivered callback a duplicate.
    pub idempotency_token: Option<String>,
    /// The message the callback is about.
    pub message_sid: Option<String>,
    /// The status the callback reports.
    pub message_status: Option<String>,
    pub(crate) error_code: Option<String>,
    /// Every form field as posted, in order.
    pub fields: Vec<(String, String)>,
    /// Where the event is in dispatch.
    pub state: EventState,
    /// Action runs so far.
    pub attempts: u32,
    pub(crate) next_attempt_at: Option<i64>,
    /// Why the last run failed, when it did.
    pub last_error: Option<String>,
    /// When the event last changed, in Unix milliseconds.
    pub updated_at: i64,
}

/// One send as the outbound path saw it. Holds no secret.
#[derive(Debug, Clone)]
pub(crate) struct SendRecord {
    pub(crate) sid: Option<String>,
    pub(crate) app: String,
    pub(crate) company: String,
    pub(crate) account_sid: String,
    pub(crate) to: String,
    pub(crate) from: String,
    pub(crate) body: String,
    /// A public URL, or `gs://bucket/object` for signed media (the signature is not stored).
    pub(crate) media: Option<String>,
    /// A template send's `HX…` sid; `None` for free-form text.
    pub(crate) content_sid: Option<String>,
    /// A template send's variables as JSON object text; `None` when it sent none.
    pub(crate) content_variables: Option<String>,
    pub(crate) status: String,
    pub(crate) error_code: Option<i64>,
    pub(crate) error_message: Option<String>,
    pub(crate) at: i64,
}

/// A message as operators see it: a send's outcome, then the status callbacks moved it; or a
/// message a contact sent to the app, as received.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub(crate) id: i64,
    /// Sent by this host, or received from a contact.
    pub direction: Direction,
    /// Twilio's message sid; `None` when the create failed before Twilio gave one.
    pub sid: Option<String>,
    /// The app that sent it.
    pub app: String,
    /// The company it was sent for.
    pub company: String,
    /// The Twilio account it was sent from.
    pub account_sid: Option<String>,
    /// The recipient, as sent.
    pub to: Option<String>,
    /// The sender, as sent.
    pub from: Option<String>,
    /// The text sent.
    pub body: Option<String>,
    /// A public URL, or `gs://bucket/object` for signed media; for an inbound message, a JSON
    /// array of `{"url", "contentType"}`.
    pub media: Option<String>,
    /// An inbound message's sender's WhatsApp profile name.
    pub profile_name: Option<String>,
    /// An inbound message's sender's WhatsApp id.
    pub wa_id: Option<String>,
    /// The latest status: the send's outcome, then each callback's, never going backwards.
    pub status: String,
    /// Twilio's error code, from the send or a callback.
    pub error_code: Option<String>,
    /// The error's message, when there is one.
    pub error_message: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// What a dispatch attempt decided about an event.
#[derive(Debug, Clone)]
pub(crate) enum DispatchResult {
    /// An attempt is about to run: counted before its action starts, so a run that takes its
    /// worker or the whole host down still counts toward `max_attempts`.
    Started,
    Done,
    Failed {
        error: String,
        next_attempt_at: i64,
    },
    Dead {
        error: String,
    },
}

/// Which events [`Store::events`] returns, newest first. `pub` so the tests and tools can query.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    /// Only this app's events.
    pub app: Option<String>,
    /// Only events in this state.
    pub state: Option<EventState>,
    /// Only events about this message.
    pub message_sid: Option<String>,
    /// Only events older than this id: the next page.
    pub before_id: Option<i64>,
    /// At most this many: 0 means 100, and more than 10,000 means 10,000.
    pub limit: usize,
}

/// Which messages [`Store::messages`] returns, newest first. `pub` because that method is.
#[derive(Debug, Default, Clone)]
pub struct MessageFilter {
    pub(crate) app: Option<String>,
    pub(crate) company: Option<String>,
    pub(crate) status: Option<String>,
    /// Only messages sent, or only messages received.
    pub(crate) direction: Option<Direction>,
    /// Matches the sid, or the to/from number.
    pub(crate) search: Option<String>,
    pub(crate) since: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) before_id: Option<i64>,
    pub(crate) limit: usize,
}

/// A dashboard login as stored: the session's CSRF token and when it ends. The cookie's token
/// is not in it; the store keeps only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSession {
    /// Must accompany every POST of the session, whichever instance serves it.
    pub(crate) csrf: String,
    /// Unix milliseconds; the session is over from then on, and [`Store::prune`] removes it.
    pub(crate) expires_at: i64,
}

/// What one [`Store::prune`] batch removed. `pub` because that method is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// `done` and `dead` events.
    pub events: u64,
    /// Messages in a final status.
    pub messages: u64,
    /// Expired dashboard sessions.
    pub sessions: u64,
}

impl Pruned {
    /// Rows removed, all tables together.
    pub fn total(&self) -> u64 {
        self.events + self.messages + self.sessions
    }
}

/// A sandbox sender's turn to send, across every instance sharing the store: while it is held
/// no other instance's turn for the sender starts. [`SandboxTurn::release`] records when
/// Twilio answered, so the next turn, here or elsewhere, waits out the spacing from then;
/// dropping it unreleased records nothing.
pub(crate) struct SandboxTurn {
    /// PostgreSQL's open transaction holding the sender's advisory lock; `None` on the embedded
    /// store, where one process sends and its own per-sender mutex is the whole turn.
    stored: Option<postgres::features::StoredTurn>,
}

impl SandboxTurn {
    /// When the sender's last send, from any instance, was answered, as the store knows it;
    /// `None` when it knows of none (always, on the embedded store).
    pub(crate) fn last_answered_at(&self) -> Option<i64> {
        self.stored.as_ref().and_then(|t| t.last_answered_at())
    }

    /// Ends the turn: the sender's next send may start [`crate::twilio::SANDBOX_SPACING`] after
    /// `answered_at_ms`.
    pub(crate) async fn release(self, answered_at_ms: i64) -> Result<(), StoreError> {
        match self.stored {
            Some(turn) => turn.release(answered_at_ms).await,
            None => Ok(()),
        }
    }
}

/// A status event of app `crm` for `sid`, received at `at`: what most store tests start from,
/// on either backend; they change what they need.
#[cfg(test)]
pub(crate) fn status_event(sid: &str, status: &str, at: i64) -> NewEvent {
    NewEvent {
        app: "crm".into(),
        company: "ACME".into(),
        kind: EventKind::Status,
        callback: StatusCallback {
            sid: Some(sid.into()),
            status: Some(status.into()),
            ..StatusCallback::default()
        },
        idempotency_token: None,
        received_at: at,
    }
}

/// App `app`'s send of `sid` from account `account`, as the outbound path records it: what
/// store tests record sends from; they change what they need.
#[cfg(test)]
pub(crate) fn send_record(app: &str, account: &str, sid: &str) -> SendRecord {
    SendRecord {
        sid: Some(sid.into()),
        app: app.into(),
        company: "ACME".into(),
        account_sid: account.into(),
        to: "+393331234567".into(),
        from: "+14155238886".into(),
        body: format!("from {app}"),
        media: None,
        content_sid: None,
        content_variables: None,
        status: "queued".into(),
        error_code: None,
        error_message: None,
        at: 1,
    }
}

/// Handle to the store for the program. Cloning is cheap; clones share the backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// What [`Outbound`](crate::outbound::Outbound) judges the 24-hour window by.
    clock: Clock,
    /// Callbacks and sends this process asked the store to write: what the pruner paces
    /// itself by (see [`Store::writes`]).
    writes: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// What [`Store::migrate`] did.
#[derive(Debug)]
pub(crate) enum Migrated {
    /// The PostgreSQL store at `server` (password hidden) got these migrations; none when it
    /// was up to date.
    Postgres {
        server: String,
        applied: Vec<String>,
    },
    /// The embedded store at `path` was opened, which brings its schema up to date by itself.
    Embedded { path: PathBuf },
}

impl Store {
    /// Opens (creating if needed) the embedded store in `data_dir` and starts its writer.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::on(Backend::Sqlite(sqlite::Sqlite::open(data_dir)?)))
    }

    fn on(backend: Backend) -> Store {
        Store {
            backend,
            clock: Clock::default(),
            writes: Arc::default(),
        }
    }

    /// Opens the store the settings choose: PostgreSQL when `[store] url` (or
    /// `WHATSAPP_HOST_STORE_URL`) names one, else the embedded store under `server.data_dir`.
    pub async fn connect(settings: &crate::settings::Settings) -> Result<Store, StoreError> {
        use secrecy::ExposeSecret as _;
        match &settings.store.url {
            None => Store::open(&settings.server.data_dir),
            Some(url) => Ok(Store::on(Backend::Postgres(
                postgres::Postgres::connect(url.expose_secret(), &settings.store).await?,
            ))),
        }
    }

    /// Brings the store the settings choose up to date: applies PostgreSQL's pending
    /// migrations under their advisory lock, or opens (and closes) the embedded store, which
    /// upgrades itself on open.
    pub(crate) async fn migrate(
        settings: &crate::settings::Settings,
    ) -> Result<Migrated, StoreError> {
        use secrecy::ExposeSecret as _;
        match &settings.store.url {
            Some(url) => Ok(Migrated::Postgres {
                server: redact(url.expose_secret()),
                applied: postgres::migrate(url.expose_secret()).await?,
            }),
            None => {
                let store = Store::open(&settings.server.data_dir)?;
                let path = PathBuf::from(store.location());
                store.close().await;
                Ok(Migrated::Embedded { path })
            }
        }
    }

    /// Opens the store in `data_dir` for reading only, for commands that run beside a server.
    /// The store must exist already; this never creates it. A store written by a newer build is
    /// refused, as [`Store::open`] refuses it.
    pub(crate) fn open_read_only(data_dir: &Path) -> Result<StoreReader, StoreError> {
        sqlite::Sqlite::open_read_only(data_dir).map(StoreReader::Sqlite)
    }

    /// Where the store is, for messages that point the operator at it. Never holds a password.
    pub(crate) fn location(&self) -> String {
        self.reader().location()
    }

    /// The clock the 24-hour window is judged by; `pub` so tests can move it forward.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// How many callbacks and sends this process has asked the store to write so far. Its
    /// rate tells the pruner whether the store is busy, and so how hard it may work.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn reader(&self) -> StoreReader {
        match &self.backend {
            Backend::Sqlite(s) => StoreReader::Sqlite(s.reader.clone()),
            Backend::Postgres(p) => StoreReader::Postgres(p.reader.clone()),
        }
    }

    /// Stores a callback and returns once it is durable, or found to be a repeat. An inbound
    /// message's row is written in the same transaction as its event. A new event is stored
    /// with its first attempt counted and held by this instance: the caller dispatches it.
    pub(crate) async fn insert_event(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Sqlite(s) => s.insert_event(event).await,
            Backend::Postgres(p) => p.insert_event(event).await,
        }
    }

    /// Queues a send's outcome without waiting. It is committed with the next group and
    /// before any later write, so a callback for the same sid never overtakes it; a message
    /// that an early callback of the same app already created is completed rather than
    /// duplicated.
    pub(crate) fn record_send(&self, record: SendRecord) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let queued = match &self.backend {
            Backend::Sqlite(s) => s.record_send(record),
            Backend::Postgres(p) => p.record_send(record),
        };
        if queued.is_err() {
            tracing::error!("the store is closed; a send was not recorded");
        }
    }

    /// Counts attempt `attempts` of event `id` and holds the event for this instance, committed
    /// before the action runs. `false` when another instance holds the event (it is running
    /// there): the caller must not run it.
    pub(crate) async fn begin_attempt(&self, id: i64, attempts: u32) -> Result<bool, StoreError> {
        match &self.backend {
            // One process owns an embedded store: nobody else can hold its events.
            Backend::Sqlite(s) => {
                s.finish_dispatch(id, attempts, DispatchResult::Started)?;
                s.flush().await.map(|()| true)
            }
            Backend::Postgres(p) => p.begin_attempt(id, attempts).await,
        }
    }

    /// Claims up to `limit` events that are due and held by no live instance (their holder
    /// died, or they wait for a retry), counting an attempt for each, committed before they
    /// are returned. An embedded store has only this process, which dispatches everything it
    /// stores and recovers the rest at start, so it never has any.
    pub(crate) async fn claim_due(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(p) => p.claim_due(limit).await,
        }
    }

    /// Signalled when another instance may have left events to claim (a replay, a released
    /// event); [`Store::claim_due`] is also worth polling without it, since signals can be lost.
    pub(crate) fn wakeups(&self) -> Arc<tokio::sync::Notify> {
        match &self.backend {
            Backend::Sqlite(_) => Arc::new(tokio::sync::Notify::new()),
            Backend::Postgres(p) => p.wakeups(),
        }
    }

    /// Records a dispatch outcome without waiting: losing it in a crash only means the event
    /// is dispatched again, which at-least-once delivery allows. Written only while this
    /// instance still holds the event for that attempt.
    pub(crate) fn finish_dispatch(&self, id: i64, attempts: u32, result: DispatchResult) {
        let _ = match &self.backend {
            Backend::Sqlite(s) => s.finish_dispatch(id, attempts, result),
            Backend::Postgres(p) => p.finish_dispatch(id, attempts, result),
        };
    }

    /// Waits until every write queued so far, including fire-and-forget ones, is committed
    /// and durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.flush().await,
            Backend::Postgres(p) => p.flush().await,
        }
    }

    /// Commits what is queued and stops the writer. Later writes fail.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }

    // The operations below came with several instances sharing a store (issue 10). Each
    // match has the SQLite arm only; the PostgreSQL arm, calling the method of the same name in
    // `postgres/features.rs`, is marked where it goes.

    /// Stores a dashboard login under the SHA-256 (hex) of its cookie token, committed before
    /// it returns: the cookie is good on every instance from then on.
    pub(crate) async fn session_create(
        &self,
        token_hash: &str,
        csrf: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.session_create(token_hash, csrf, expires_at_ms).await,
            Backend::Postgres(p) => p.session_create(token_hash, csrf, expires_at_ms).await,
        }
    }

    /// The login stored under `token_hash`, expired or not: the caller judges the time.
    pub(crate) async fn session_get(
        &self,
        token_hash: &str,
    ) -> Result<Option<StoredSession>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.reader.session_get(token_hash).await,
            Backend::Postgres(p) => p.session_get(token_hash).await,
        }
    }

    /// Ends the login stored under `token_hash` on every instance, committed before it returns.
    pub(crate) async fn session_delete(&self, token_hash: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.session_delete(token_hash).await,
            Backend::Postgres(p) => p.session_delete(token_hash).await,
        }
    }

    /// Waits for sandbox sender `sender`'s turn among the instances sharing the store. The
    /// caller also serialises its own sends per sender, and waits until the spacing since
    /// [`SandboxTurn::last_answered_at`] (and its own last answer) has passed before sending.
    pub(crate) async fn sandbox_turn(&self, sender: &str) -> Result<SandboxTurn, StoreError> {
        match &self.backend {
            // One process sends from an embedded store: its per-sender mutex is enough.
            Backend::Sqlite(_) => Ok(SandboxTurn { stored: None }),
            Backend::Postgres(p) => Ok(SandboxTurn {
                stored: Some(p.sandbox_turn(sender).await?),
            }),
        }
    }

    /// One small batch of retention: up to `batch` `done`/`dead` events and up to `batch`
    /// messages in a final status, last changed before `before_ms`, and every expired dashboard
    /// session. Small, so writes never wait long behind it; call again while it removes rows.
    pub async fn prune(&self, before_ms: i64, batch: usize) -> Result<Pruned, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune(before_ms, batch).await,
            Backend::Postgres(p) => p.prune(before_ms, batch).await,
        }
    }

    /// Whether a write can be committed right now, for `/healthz`: answers within a second.
    pub async fn is_writable(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.flush()).await,
            Ok(Ok(()))
        )
    }

    /// One event by id, for `replay` and the dashboard.
    pub async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
        self.reader().event(id).await
    }

    /// Every event that still has to run and no live instance holds: pending, or failed and
    /// waiting for a retry.
    pub async fn undispatched_events(&self) -> Result<Vec<Event>, StoreError> {
        self.reader().undispatched_events().await
    }

    /// Newest first.
    pub async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, StoreError> {
        self.reader().events(filter).await
    }

    /// Newest first.
    pub async fn messages(&self, filter: MessageFilter) -> Result<Vec<Message>, StoreError> {
        self.reader().messages(filter).await
    }

    /// A message by sid alone, with its events; see [`StoreReader::message`] for which one
    /// when several apps have a row for the sid.
    pub async fn message(&self, sid: &str) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        self.reader().message(sid).await
    }

    /// App `app`'s message `sid` and its events, oldest event first.
    pub async fn app_message(
        &self,
        app: &str,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        self.reader().app_message(app, sid).await
    }

    /// See [`StoreReader::conversation`].
    pub async fn conversation(
        &self,
        app: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        self.reader().conversation(app, contact, now_ms).await
    }

    /// See [`StoreReader::session_window`].
    pub async fn session_window(
        &self,
        app: &str,
        app_number: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Window, StoreError> {
        self.reader()
            .session_window(app, app_number, contact, now_ms)
            .await
    }

    /// Whether WhatsApp's 24-hour window is open at `now_ms`: the one rule is
    /// [`StoreReader::session_window`]'s.
    pub(crate) async fn session_open(
        &self,
        app: &str,
        app_number: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.session_window(app, app_number, contact, now_ms)
            .await
            .map(Window::is_open)
    }
}

/// The read side of the store. [`Store`] reads through one; [`Store::open_read_only`] returns
/// one alone, which has no way to write. Cloning is cheap; clones share the connection.
#[derive(Clone)]
pub(crate) enum StoreReader {
    Sqlite(sqlite::Reader),
    Postgres(postgres::Reader),
}

impl StoreReader {
    /// A reader of the store the settings choose, for commands that run beside a server:
    /// PostgreSQL when `[store] url` names one (failing at once when it cannot be reached),
    /// else the embedded store opened read-only, as [`Store::open_read_only`] opens it.
    pub(crate) async fn connect(
        settings: &crate::settings::Settings,
    ) -> Result<StoreReader, StoreError> {
        use secrecy::ExposeSecret as _;
        match &settings.store.url {
            None => Store::open_read_only(&settings.server.data_dir),
            Some(url) => postgres::read_only(url.expose_secret())
                .await
                .map(StoreReader::Postgres),
        }
    }

    /// A reader of an empty store, for `path` where no store has been created yet: every
    /// listing is empty and every lookup finds nothing, exactly as in a fresh store.
    pub(crate) fn empty(path: PathBuf) -> Result<StoreReader, StoreError> {
        sqlite::Reader::empty(path).map(StoreReader::Sqlite)
    }

    /// Where the store is, for messages that point the operator at it. Never holds a password.
    pub(crate) fn location(&self) -> String {
        match self {
            StoreReader::Sqlite(r) => r.path().display().to_string(),
            StoreReader::Postgres(r) => r.location().to_string(),
        }
    }

    /// One event by id.
    pub(crate) async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.event(id).await,
            StoreReader::Postgres(r) => r.event(id).await,
        }
    }

    /// Every event that still has to run and no live instance holds.
    pub(crate) async fn undispatched_events(&self) -> Result<Vec<Event>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.undispatched_events().await,
            StoreReader::Postgres(r) => r.undispatched_events().await,
        }
    }

    /// Newest first.
    pub(crate) async fn events(&self, filter: EventFilter) -> Result<Vec<Event>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.events(filter).await,
            StoreReader::Postgres(r) => r.events(filter).await,
        }
    }

    /// Newest first.
    pub(crate) async fn messages(&self, filter: MessageFilter) -> Result<Vec<Message>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.messages(filter).await,
            StoreReader::Postgres(r) => r.messages(filter).await,
        }
    }

    /// A message by sid alone, and the events its app recorded for it, oldest event first.
    /// Sids are unique per app, so several apps may have a row for one sid (another app's
    /// callbacks naming it): this returns the one this host sent, else the oldest. Callers that
    /// know the app use [`StoreReader::app_message`].
    pub(crate) async fn message(
        &self,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.message(sid).await,
            StoreReader::Postgres(r) => r.message(sid).await,
        }
    }

    /// App `app`'s message `sid` and the events it recorded for it, oldest event first.
    pub(crate) async fn app_message(
        &self,
        app: &str,
        sid: &str,
    ) -> Result<Option<(Message, Vec<Event>)>, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.app_message(app, sid).await,
            StoreReader::Postgres(r) => r.app_message(app, sid).await,
        }
    }

    /// App `app`'s messages with `contact` (E.164: the sender of inbound messages, the
    /// recipient of outbound ones), oldest first, and each app number's window at `now_ms`.
    pub(crate) async fn conversation(
        &self,
        app: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.conversation(app, contact, now_ms).await,
            StoreReader::Postgres(r) => r.conversation(app, contact, now_ms).await,
        }
    }

    /// The window between app `app`'s number `app_number` and `contact` at `now_ms`: open when
    /// the contact wrote to that number within the 24 hours before.
    pub(crate) async fn session_window(
        &self,
        app: &str,
        app_number: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Window, StoreError> {
        match self {
            StoreReader::Sqlite(r) => r.session_window(app, app_number, contact, now_ms).await,
            StoreReader::Postgres(r) => r.session_window(app, app_number, contact, now_ms).await,
        }
    }
}
