//! The conversation reads on SQLite: one contact's messages with an app, both directions, and
//! the 24-hour window's last inbound message.

use rusqlite::{OptionalExtension, params};

use super::{Reader, message_from_row};
use crate::store::conversation::{MAX_MESSAGES, media_items};
use crate::store::sql::MESSAGE_COLUMNS;
use crate::store::{Conversation, Entry, NumberWindow, StoreError, Window};

impl Reader {
    /// App `app`'s messages with `contact` (E.164: the sender of inbound messages, the
    /// recipient of outbound ones), oldest first, and each app number's window at `now_ms`.
    pub(crate) async fn conversation(
        &self,
        app: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        let (app, contact) = (app.to_string(), contact.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT * FROM ( \
                 SELECT {MESSAGE_COLUMNS}, content_sid, content_variables \
                 FROM messages WHERE app = ?1 AND direction = 'inbound' AND from_number = ?2 \
                 UNION ALL \
                 SELECT {MESSAGE_COLUMNS}, content_sid, content_variables \
                 FROM messages WHERE app = ?1 AND direction = 'outbound' AND to_number = ?2 \
                 ) ORDER BY created_at DESC, id DESC LIMIT ?3"
            ))?;
            // The conversation's own columns follow `MESSAGE_COLUMNS`'s.
            let fields = MESSAGE_COLUMNS.split(',').count();
            let mut profile_name = None;
            let mut entries = stmt
                .query_map(params![app, contact, MAX_MESSAGES as i64 + 1], |r| {
                    let message = message_from_row(r)?;
                    Ok(Entry {
                        media: media_items(message.direction, message.media.as_deref()),
                        message,
                        content_sid: r.get(fields)?,
                        content_variables: r.get(fields + 1)?,
                    })
                })?
                .map(|row| {
                    row.inspect(|entry| {
                        // Newest first here: the first name seen is the latest one.
                        if profile_name.is_none() {
                            profile_name =
                                entry.message.profile_name.clone().filter(|n| !n.is_empty());
                        }
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let truncated = entries.len() > MAX_MESSAGES;
            entries.truncate(MAX_MESSAGES);
            entries.reverse();
            let mut stmt = c.prepare_cached(
                "SELECT to_number, max(created_at) FROM messages \
                 WHERE app = ?1 AND direction = 'inbound' AND from_number = ?2 \
                 AND created_at <= ?3 GROUP BY to_number ORDER BY to_number",
            )?;
            let windows = stmt
                .query_map(params![app, contact, now_ms], |r| {
                    Ok(NumberWindow {
                        app_number: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        window: Window::at(r.get(1)?, now_ms),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Conversation {
                app,
                contact,
                profile_name,
                entries,
                truncated,
                windows,
            })
        })
        .await
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
        let (app, app_number, contact) =
            (app.to_string(), app_number.to_string(), contact.to_string());
        let last_inbound = self
            .read(move |c| {
                c.query_row(
                    "SELECT max(created_at) FROM messages WHERE app = ?1 \
                     AND direction = 'inbound' AND from_number = ?2 AND to_number = ?3 \
                     AND created_at <= ?4",
                    params![app, contact, app_number, now_ms],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map(Option::flatten)
            })
            .await?;
        Ok(Window::at(last_inbound, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Direction;
    use crate::store::conversation::media_items;

    const HOUR: i64 = 60 * 60 * 1000;

    #[test]
    fn the_window_is_open_for_24_hours_after_the_last_inbound_message() {
        assert_eq!(Window::at(None, 5), Window::Closed { last_inbound: None });
        let at = 1_000 * HOUR;
        assert_eq!(
            Window::at(Some(at), at),
            Window::Open {
                until: at + 24 * HOUR
            }
        );
        assert!(Window::at(Some(at), at + 24 * HOUR).is_open());
        assert_eq!(
            Window::at(Some(at), at + 24 * HOUR + 1),
            Window::Closed {
                last_inbound: Some(at)
            }
        );
    }

    #[test]
    fn directions_round_trip_and_unknown_ones_are_refused() {
        for d in [Direction::Inbound, Direction::Outbound] {
            assert_eq!(Direction::parse(d.as_str()), Some(d));
        }
        assert_eq!(Direction::parse("sideways"), None);
    }

    #[test]
    fn inbound_media_is_read_from_its_json_and_outbound_media_is_the_url_sent() {
        let json = r#"[{"url":"https://a/1","contentType":"image/png"},{"url":"https://a/2"}]"#;
        let items = media_items(Direction::Inbound, Some(json));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].content_type.as_deref(), Some("image/png"));
        assert_eq!(items[1].url, "https://a/2");
        let sent = media_items(Direction::Outbound, Some("gs://b/o.jpg"));
        assert_eq!(sent[0].url, "gs://b/o.jpg");
        assert!(media_items(Direction::Inbound, None).is_empty());
        assert!(media_items(Direction::Inbound, Some("[]")).is_empty());
    }
}
