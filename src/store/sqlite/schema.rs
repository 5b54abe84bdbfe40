//! The store's schema and its upgrades: the tables a fresh store is created with, the version
//! kept in `PRAGMA user_version`, and the numbered steps that bring an older store up to it.
//! There is no migrations framework; each upgrade is one SQL script, run in the same
//! transaction as the version bump, so a store is either wholly upgraded or untouched.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{BackendError, StoreError};

/// The schema this build writes, kept in the file as `PRAGMA user_version`. Version 0 is the
/// unversioned store of earlier builds.
pub(super) const VERSION: i64 = 3;

/// A fresh store at [`VERSION`]. Everything is `IF NOT EXISTS`, so running it over a store
/// that is already at [`VERSION`] changes nothing.
///
/// Apps never share rows: idempotency tokens, dedupe keys and message sids are unique within
/// an app, so one app's callbacks cannot mark another's events as repeats or move its messages.
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
    updated_at INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'status'
);
CREATE UNIQUE INDEX IF NOT EXISTS events_app_token ON events(app, idempotency_token) WHERE idempotency_token IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS events_app_dedup ON events(app, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_open ON events(state) WHERE state IN ('pending','failed');
CREATE INDEX IF NOT EXISTS events_sid ON events(message_sid);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    sid TEXT,
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
    updated_at INTEGER NOT NULL,
    direction TEXT NOT NULL DEFAULT 'outbound',
    profile_name TEXT,
    wa_id TEXT,
    content_sid TEXT,
    content_variables TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_app_sid ON messages(app, sid);
CREATE INDEX IF NOT EXISTS messages_app ON messages(app, created_at);
CREATE INDEX IF NOT EXISTS messages_contact ON messages(app, from_number, created_at) WHERE direction = 'inbound';
CREATE INDEX IF NOT EXISTS events_finished ON events(updated_at) WHERE state IN ('done','dead');
CREATE INDEX IF NOT EXISTS messages_final ON messages(updated_at) WHERE status_rank >= 5;
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
";

/// `UPGRADES[n]` takes a store from version `n` to `n + 1`. Each is frozen once released: a
/// later change to [`SCHEMA`] gets a new entry here, never an edit of an old one. The steps are
/// numbered so another backend (PostgreSQL) can mirror them one for one; where SQLite needs a
/// workaround, the comment gives the plain statement the other backend runs instead.
const UPGRADES: [&str; 3] = [
    // 0 → 1: apps can't touch each other's rows.
    "
-- 1. Idempotency tokens are unique per app, not globally.
DROP INDEX IF EXISTS events_token;
CREATE UNIQUE INDEX events_app_token ON events(app, idempotency_token) WHERE idempotency_token IS NOT NULL;
-- 2. Dedupe keys (sid, status, error code) are unique per app, not globally.
DROP INDEX IF EXISTS events_dedup;
CREATE UNIQUE INDEX events_app_dedup ON events(app, dedup_key) WHERE dedup_key IS NOT NULL;
-- 3. Messages are unique per (app, sid) rather than per sid. Version 0 declared `sid TEXT
--    UNIQUE` inline, which SQLite cannot drop, so the table is rebuilt: create the new table,
--    copy every row (ids kept, so links to a message by id still work), drop the old table
--    (and its indexes with it), rename. PostgreSQL instead runs
--    `ALTER TABLE messages DROP CONSTRAINT messages_sid_key;`.
CREATE TABLE messages_v1 (
    id INTEGER PRIMARY KEY,
    sid TEXT,
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
INSERT INTO messages_v1 (id, sid, app, company, account_sid, to_number, from_number, body,
    media, status, status_rank, error_code, error_message, created_at, updated_at)
SELECT id, sid, app, company, account_sid, to_number, from_number, body,
    media, status, status_rank, error_code, error_message, created_at, updated_at
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v1 RENAME TO messages;
-- 4. The unique key messages are upserted on, and the listing index step 3 dropped.
CREATE UNIQUE INDEX messages_app_sid ON messages(app, sid);
CREATE INDEX messages_app ON messages(app, created_at);
",
    "
-- Two-way conversations.
-- 1. An event is a status callback ('status') or a message a contact sent ('inbound'): which
--    of the app's actions it runs.
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'status';
-- 2. Messages go both ways: 'outbound' (sent by this host) or 'inbound' (sent to the app's
--    number), with WhatsApp's profile name and id of an inbound message's sender.
ALTER TABLE messages ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE messages ADD COLUMN profile_name TEXT;
ALTER TABLE messages ADD COLUMN wa_id TEXT;
-- 3. A template send's Content sid and its variables (a JSON object).
ALTER TABLE messages ADD COLUMN content_sid TEXT;
ALTER TABLE messages ADD COLUMN content_variables TEXT;
-- 4. A contact's messages to an app: the 24-hour window and the conversation page. Partial, so
--    the rows this host sends (nearly all of them) pay nothing for it.
CREATE INDEX messages_contact ON messages(app, from_number, created_at) WHERE direction = 'inbound';
",
    "
-- Retention and dashboard sessions in the store.
-- 1. What the pruner looks for: finished events and messages in a final status, by age.
--    Partial, so the rows still moving pay nothing for them.
CREATE INDEX events_finished ON events(updated_at) WHERE state IN ('done','dead');
CREATE INDEX messages_final ON messages(updated_at) WHERE status_rank >= 5;
-- 2. Dashboard logins, the token kept as its SHA-256 (hex), so the table alone cannot be used
--    to log in; each with its CSRF token and when it expires.
CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
",
];

/// Brings the store on `conn` to [`VERSION`] in one transaction: creates a fresh store, or runs
/// every upgrade from the file's version on, then records the new version. A store written by
/// a newer build is refused rather than guessed at.
pub(super) fn set_up(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: BackendError::new(source),
    };
    // Immediate: a second process opening the same store waits here, then sees the new version.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let found = known_version(&tx, path)?;
    // A new file is at version 0 too, but has no tables: it gets the current schema directly.
    let has_tables: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
            [],
            |r| r.get(0),
        )
        .map_err(open_err)?;
    if has_tables {
        for (from, upgrade) in UPGRADES.iter().enumerate().skip(found as usize) {
            tx.execute_batch(upgrade)
                .map_err(|source| StoreError::Upgrade {
                    path: path.to_path_buf(),
                    from: from as i64,
                    source: BackendError::new(source),
                })?;
            tracing::info!(store = %path.display(), from, to = from + 1, "upgraded the store's schema");
        }
    }
    tx.execute_batch(SCHEMA).map_err(open_err)?;
    tx.pragma_update(None, "user_version", VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// The schema version of the store on `conn`, refusing a store written by a newer build: its
/// tables may mean something this build would misread.
pub(super) fn known_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: BackendError::new(source),
        })?;
    if found < 0 {
        return Err(StoreError::UnknownSchema {
            path: path.to_path_buf(),
            found,
        });
    }
    if found > VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: VERSION,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status_event;
    use crate::store::{EventFilter, MessageFilter, NewEvent, Store};

    #[test]
    fn a_negative_schema_version_is_refused_not_read_as_a_huge_one() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", -1).unwrap();
        let error = known_version(&conn, Path::new("store.sqlite3")).unwrap_err();
        assert!(
            matches!(error, StoreError::UnknownSchema { found: -1, .. }),
            "{error}"
        );
    }

    /// The schema of the unversioned store (version 0), verbatim from commit d987f9b.
    const SCHEMA_V0: &str = "
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

    /// A version-0 store file in `dir` with two events and three messages, written as the
    /// previous build wrote them.
    fn old_store(dir: &Path) {
        let conn = Connection::open(dir.join("store.sqlite3")).unwrap();
        conn.execute_batch(SCHEMA_V0).unwrap();
        conn.execute_batch(
            r#"
INSERT INTO events (app, company, received_at, idempotency_token, dedup_key, message_sid,
    message_status, fields, state, attempts, updated_at)
VALUES ('crm', 'ACME', 10, 'tok-1', 'SM1|delivered|', 'SM1', 'delivered',
    '[["MessageSid","SM1"],["MessageStatus","delivered"]]', 'done', 1, 11),
       ('crm', 'ACME', 12, NULL, 'SM1|read|', 'SM1', 'read',
    '[["MessageSid","SM1"],["MessageStatus","read"]]', 'pending', 0, 12);
INSERT INTO messages (id, sid, app, company, account_sid, to_number, from_number, body,
    status, status_rank, created_at, updated_at)
VALUES (7, 'SM1', 'crm', 'ACME', 'AC1', '+393331234567', '+14155238886', 'hi', 'read', 6, 5, 12),
       (8, 'SM2', 'crm', 'ACME', 'AC1', '+393331234567', '+14155238886', 'yo', 'queued', 2, 6, 6),
       (9, NULL, 'crm', 'ACME', 'AC1', '+393330000000', '+14155238886', 'no', 'failed', 10, 7, 7);
"#,
        )
        .unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0, "the old build never set a version");
    }

    #[tokio::test]
    async fn a_store_from_the_previous_version_is_upgraded_on_open_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        old_store(dir.path());

        let store = Store::open(dir.path()).unwrap();
        let events = store.events(EventFilter::default()).await.unwrap();
        let kept: Vec<_> = events
            .iter()
            .map(|e| (e.id, e.message_status.as_deref(), e.state.as_str()))
            .collect();
        assert_eq!(
            kept,
            [(2, Some("read"), "pending"), (1, Some("delivered"), "done")]
        );
        assert_eq!(events[1].idempotency_token.as_deref(), Some("tok-1"));
        let messages = store.messages(MessageFilter::default()).await.unwrap();
        let kept: Vec<_> = messages
            .iter()
            .map(|m| (m.id, m.sid.as_deref(), m.status.as_str(), m.body.as_deref()))
            .collect();
        assert_eq!(
            kept,
            [
                (9, None, "failed", Some("no")),
                (8, Some("SM2"), "queued", Some("yo")),
                (7, Some("SM1"), "read", Some("hi")),
            ]
        );

        // The upgraded store keeps repeats out within an app, and lets apps apart.
        let repeat = status_event("SM1", "read", 20);
        assert_eq!(
            store.insert_event(repeat).await.unwrap(),
            crate::store::Inserted::Duplicate
        );
        let other = NewEvent {
            app: "ops".into(),
            ..status_event("SM2", "failed", 20)
        };
        assert!(matches!(
            store.insert_event(other).await.unwrap(),
            crate::store::Inserted::New(_)
        ));
        let (sm2, _) = store.app_message("crm", "SM2").await.unwrap().unwrap();
        assert_eq!((sm2.id, sm2.status.as_str()), (8, "queued"));
        store.close().await;

        let conn = Connection::open(dir.path().join("store.sqlite3")).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(VERSION, 3);
        let (kind, direction): (String, String) = conn
            .query_row(
                "SELECT e.kind, m.direction FROM events e, messages m WHERE m.id = 7 LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((kind.as_str(), direction.as_str()), ("status", "outbound"));
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh_path = fresh_dir.path().join("store.sqlite3");
        let mut fresh = Connection::open(&fresh_path).unwrap();
        set_up(&mut fresh, &fresh_path).unwrap();
        for table in ["events", "messages", "dashboard_sessions"] {
            assert_eq!(
                columns(&conn, table),
                columns(&fresh, table),
                "an upgraded {table} table has a fresh one's columns"
            );
        }
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .unwrap();
        let indexes: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "events_app_dedup",
                "events_app_token",
                "events_finished",
                "events_open",
                "events_sid",
                "messages_app",
                "messages_app_sid",
                "messages_contact",
                "messages_final",
                "sqlite_autoindex_dashboard_sessions_1"
            ],
            "the global unique indexes and the inline UNIQUE(sid) are gone"
        );
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    /// A table's columns as (name, type, not null, default), sorted by name.
    fn columns(conn: &Connection, table: &str) -> Vec<(String, String, bool, Option<String>)> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        let mut columns: Vec<_> = stmt
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        columns.sort();
        columns
    }

    #[test]
    fn a_fresh_store_is_created_at_the_current_version_and_reopening_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        let mut conn = Connection::open(&path).unwrap();
        set_up(&mut conn, &path).unwrap();
        let dump = |c: &Connection| -> Vec<(String, Option<String>)> {
            let mut stmt = c
                .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let first = dump(&conn);
        set_up(&mut conn, &path).unwrap();
        assert_eq!(dump(&conn), first);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
    }

    #[test]
    fn a_store_from_a_newer_version_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let e = set_up(&mut conn, &path).unwrap_err();
        assert!(matches!(e, StoreError::NewerSchema { .. }), "{e}");
        assert!(e.to_string().contains("newer whatsapp-host"), "{e}");
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
