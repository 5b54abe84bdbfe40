//! `whatsapp-host store copy`: moves the embedded store's history (events, and messages, which
//! are also the record of every send) into PostgreSQL, page by page, ids kept. Idempotent: a row
//! already there is left alone, so running it again copies only what is new.

use std::path::Path;

use super::postgres::Postgres;
use super::postgres::features::Imported;
use super::sqlite::Sqlite;
use super::{StoreError, redact};
use crate::settings::StoreSettings;

/// Rows read from the embedded store and written to PostgreSQL at once.
const PAGE: usize = 1000;

/// Every column `store copy` moves of an event; a lease is never copied.
pub(super) const COPIED_EVENT_COLUMNS: &str = "id, app, company, received_at, idempotency_token, \
     dedup_key, message_sid, message_status, error_code, fields, state, attempts, \
     next_attempt_at, last_error, updated_at, kind";

/// Every column of a message.
pub(super) const COPIED_MESSAGE_COLUMNS: &str = "id, sid, app, company, account_sid, to_number, \
     from_number, body, media, status, status_rank, error_code, error_message, created_at, \
     updated_at, direction, profile_name, wa_id, content_sid, content_variables";

/// An event row as stored, every column of [`COPIED_EVENT_COLUMNS`].
#[derive(Debug, Clone)]
pub(super) struct EventRow {
    pub(super) id: i64,
    pub(super) app: String,
    pub(super) company: String,
    pub(super) received_at: i64,
    pub(super) idempotency_token: Option<String>,
    pub(super) dedup_key: Option<String>,
    pub(super) message_sid: Option<String>,
    pub(super) message_status: Option<String>,
    pub(super) error_code: Option<String>,
    pub(super) fields: String,
    pub(super) state: String,
    pub(super) attempts: i32,
    pub(super) next_attempt_at: Option<i64>,
    pub(super) last_error: Option<String>,
    pub(super) updated_at: i64,
    pub(super) kind: String,
}

impl EventRow {
    pub(super) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            id: r.get(0)?,
            app: r.get(1)?,
            company: r.get(2)?,
            received_at: r.get(3)?,
            idempotency_token: r.get(4)?,
            dedup_key: r.get(5)?,
            message_sid: r.get(6)?,
            message_status: r.get(7)?,
            error_code: r.get(8)?,
            fields: r.get(9)?,
            state: r.get(10)?,
            attempts: r.get(11)?,
            next_attempt_at: r.get(12)?,
            last_error: r.get(13)?,
            updated_at: r.get(14)?,
            kind: r.get(15)?,
        })
    }
}

/// A message row as stored, every column of [`COPIED_MESSAGE_COLUMNS`].
#[derive(Debug, Clone)]
pub(super) struct MessageRow {
    pub(super) id: i64,
    pub(super) sid: Option<String>,
    pub(super) app: String,
    pub(super) company: String,
    pub(super) account_sid: Option<String>,
    pub(super) to_number: Option<String>,
    pub(super) from_number: Option<String>,
    pub(super) body: Option<String>,
    pub(super) media: Option<String>,
    pub(super) status: String,
    pub(super) status_rank: i32,
    pub(super) error_code: Option<String>,
    pub(super) error_message: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) direction: String,
    pub(super) profile_name: Option<String>,
    pub(super) wa_id: Option<String>,
    pub(super) content_sid: Option<String>,
    pub(super) content_variables: Option<String>,
}

impl MessageRow {
    pub(super) fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
        Ok(MessageRow {
            id: r.get(0)?,
            sid: r.get(1)?,
            app: r.get(2)?,
            company: r.get(3)?,
            account_sid: r.get(4)?,
            to_number: r.get(5)?,
            from_number: r.get(6)?,
            body: r.get(7)?,
            media: r.get(8)?,
            status: r.get(9)?,
            status_rank: r.get(10)?,
            error_code: r.get(11)?,
            error_message: r.get(12)?,
            created_at: r.get(13)?,
            updated_at: r.get(14)?,
            direction: r.get(15)?,
            profile_name: r.get(16)?,
            wa_id: r.get(17)?,
            content_sid: r.get(18)?,
            content_variables: r.get(19)?,
        })
    }
}

/// How many rows of one table a copy wrote, how many it found there already, and how many it
/// could not copy because PostgreSQL gave their ids to other rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Copied {
    pub(crate) copied: u64,
    pub(crate) already_there: u64,
    /// Rows whose id a different row has on PostgreSQL (instances wrote there before the copy):
    /// not copied.
    pub(crate) conflicting: u64,
}

impl Copied {
    fn add(&mut self, rows: usize, page: Imported) {
        self.copied += page.new;
        self.conflicting += page.conflicting;
        self.already_there += (rows as u64)
            .saturating_sub(page.new)
            .saturating_sub(page.conflicting);
    }
}

/// What [`copy_to_postgres`] did.
#[derive(Debug, Clone, Default)]
pub(crate) struct CopyReport {
    pub(crate) events: Copied,
    pub(crate) messages: Copied,
    /// The server copied to, password hidden.
    pub(crate) to: String,
    /// The embedded store copied from.
    pub(crate) from: String,
}

/// Copies every event and message of the embedded store in `data_dir` into the PostgreSQL
/// store at `url` (migrating it first), keeping ids; rows already there are left as they are,
/// and the id sequences are moved past the copied ids. Reads the embedded store read-only, so
/// a server may still be running on it (rows it writes meanwhile are copied by the next run).
pub(crate) async fn copy_to_postgres(
    data_dir: &Path,
    url: &str,
    settings: &StoreSettings,
) -> Result<CopyReport, StoreError> {
    let reader = Sqlite::open_read_only(data_dir)?;
    let pg = Postgres::connect(url, settings).await?;
    let mut report = CopyReport {
        to: redact(url),
        from: reader.path().display().to_string(),
        ..CopyReport::default()
    };
    let mut after = 0;
    loop {
        let rows = reader.export_events(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let page = pg.import_events(&rows).await?;
        report.events.add(rows.len(), page);
    }
    let mut after = 0;
    loop {
        let rows = reader.export_messages(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let page = pg.import_messages(&rows).await?;
        report.messages.add(rows.len(), page);
    }
    pg.advance_sequences().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::features::tests::{client, fresh, fresh_database, settings};
    use crate::store::{DispatchResult, Inserted, SendRecord, Store, send_record, status_event};

    /// Every row of `events` and `messages`, all columns, in id order, as JSON text.
    async fn dump(url: &str) -> Vec<String> {
        let client = client(url).await;
        let mut rows = Vec::new();
        for table in ["events", "messages"] {
            for row in client
                .query(
                    &format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY id"),
                    &[],
                )
                .await
                .unwrap()
            {
                rows.push(format!("{table} {}", row.get::<_, String>(0)));
            }
        }
        rows
    }

    fn send(sid: Option<&str>, status: &str) -> SendRecord {
        SendRecord {
            sid: sid.map(str::to_string),
            body: "hi".into(),
            content_sid: Some("HX0".into()),
            content_variables: Some(r#"{"1":"Ana"}"#.into()),
            status: status.into(),
            at: 5,
            ..send_record("crm", "AC1", "")
        }
    }

    #[tokio::test]
    async fn store_copy_run_twice_gives_the_same_postgres_contents_with_ids_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.record_send(send(Some("SM1"), "queued"));
        store.record_send(send(None, "failed"));
        let mut ids = Vec::new();
        for (i, status) in ["sent", "delivered", "read"].iter().enumerate() {
            let Inserted::New(id) = store
                .insert_event(status_event("SM1", status, 10 + i as i64))
                .await
                .unwrap()
            else {
                panic!("stored once");
            };
            ids.push(id);
        }
        store.finish_dispatch(ids[0], 1, DispatchResult::Done);
        store.finish_dispatch(
            ids[1],
            1,
            DispatchResult::Failed {
                error: "boom".into(),
                next_attempt_at: 99,
            },
        );
        store.flush().await.unwrap();

        let url = fresh_database().await;
        let first = copy_to_postgres(dir.path(), &url, &settings())
            .await
            .unwrap();
        assert_eq!(
            (first.events, first.messages),
            (
                Copied {
                    copied: 3,
                    already_there: 0,
                    conflicting: 0
                },
                Copied {
                    copied: 2,
                    already_there: 0,
                    conflicting: 0
                }
            )
        );
        let after_first = dump(&url).await;
        assert_eq!(after_first.len(), 5);
        // Ids, dedupe keys and dispatch state came along.
        assert!(
            after_first[1].contains(&format!(r#""id":{}"#, ids[1])),
            "{after_first:?}"
        );
        assert!(
            after_first[1].contains(r#""dedup_key":"SM1|delivered|""#),
            "{after_first:?}"
        );
        assert!(
            after_first[1].contains(r#""state":"failed""#),
            "{after_first:?}"
        );
        assert!(
            after_first[3].contains(r#""content_sid":"HX0""#),
            "{after_first:?}"
        );

        // Another event after the first copy: the second copy brings only it.
        store
            .insert_event(status_event("SM2", "sent", 20))
            .await
            .unwrap();
        store.close().await;
        let second = copy_to_postgres(dir.path(), &url, &settings())
            .await
            .unwrap();
        assert_eq!((second.events.copied, second.events.already_there), (1, 3));
        assert_eq!(
            (second.messages.copied, second.messages.already_there),
            (1, 2),
            "SM2's message row is new, the others were there"
        );
        let after_second = dump(&url).await;
        let third = copy_to_postgres(dir.path(), &url, &settings())
            .await
            .unwrap();
        assert_eq!((third.events.copied, third.messages.copied), (0, 0));
        assert_eq!(
            dump(&url).await,
            after_second,
            "a repeated copy changes nothing"
        );

        // New rows on PostgreSQL get ids past the copied ones.
        let client = client(&url).await;
        let max: i64 = client
            .query_one("SELECT max(id) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        let next: i64 = client
            .query_one(
                "INSERT INTO events (app, company, received_at, fields, updated_at) \
                 VALUES ('crm', 'ACME', 1, '[]', 1) RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(next > max, "{next} after {max}");
    }

    #[tokio::test]
    async fn store_copy_names_the_server_without_its_password() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap().close().await;
        let url = "postgres://user:hunter2secret@127.0.0.1:1/db";
        let e = copy_to_postgres(dir.path(), url, &settings())
            .await
            .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("hunter2secret"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
    }

    #[tokio::test]
    async fn store_copy_counts_rows_whose_id_postgres_gave_to_another_row_as_conflicting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, sid) in ["SM1", "SM2"].iter().enumerate() {
            store
                .insert_event(status_event(sid, "sent", 10 + i as i64))
                .await
                .unwrap();
        }
        store.close().await;
        let (_migrated, url) = fresh().await;
        let client = client(&url).await;
        // An instance on PostgreSQL stored an event of its own before the copy: it has id 1.
        client
            .execute(
                "INSERT INTO events (app, company, received_at, fields, updated_at) \
                 VALUES ('ops', 'ACME', 99, '[]', 99)",
                &[],
            )
            .await
            .unwrap();
        let report = copy_to_postgres(dir.path(), &url, &settings())
            .await
            .unwrap();
        assert_eq!(
            report.events,
            Copied {
                copied: 1,
                already_there: 0,
                conflicting: 1
            }
        );
    }
}
