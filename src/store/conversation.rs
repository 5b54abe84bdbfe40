//! Conversations: every message one app exchanged with one contact, in both directions and in
//! order, and the state of WhatsApp's 24-hour customer-service window, read from the contact's
//! last inbound message. The values and the window's rule; each backend runs the queries. The
//! clock is a parameter, so tests set the time.

use serde::Serialize;

use super::{Direction, Message};

/// How long the window stays open after the contact's last message: 24 hours, in milliseconds.
pub const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// At most this many messages, the newest, make up a conversation page.
pub(super) const MAX_MESSAGES: usize = 500;

/// Whether the app may send free-form text to the contact right now. Outside the window only
/// an approved template is delivered; free-form text fails with Twilio's 63016.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Window {
    /// The contact wrote within the last 24 hours: open until `until` (Unix milliseconds).
    Open { until: i64 },
    /// The contact never wrote to the number, or wrote more than 24 hours ago.
    Closed {
        /// When the contact last wrote to the number, if ever.
        last_inbound: Option<i64>,
    },
}

impl Window {
    /// The window at `now_ms` after the contact's last message to the number at `last_inbound`:
    /// open while `now_ms` is at most 24 hours after it.
    pub fn at(last_inbound: Option<i64>, now_ms: i64) -> Window {
        match last_inbound {
            Some(at) if now_ms <= at.saturating_add(WINDOW_MS) => Window::Open {
                until: at.saturating_add(WINDOW_MS),
            },
            _ => Window::Closed { last_inbound },
        }
    }

    /// True while free-form messages may be sent.
    pub fn is_open(self) -> bool {
        matches!(self, Window::Open { .. })
    }
}

/// A message in a conversation: the message as the lists show it, and what only a
/// conversation shows.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub message: Message,
    /// The Content template's sid (`HX…`) of a template send.
    pub content_sid: Option<String>,
    /// The template's variables, as the JSON object text that was sent.
    pub content_variables: Option<String>,
    /// The media of the message: an inbound message's attachments, or what a send attached.
    pub media: Vec<MediaItem>,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaItem {
    pub url: String,
    /// Known for inbound media (Twilio posts it); `None` for what this host sent.
    pub content_type: Option<String>,
}

/// One business number's window with the contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumberWindow {
    /// The app's number (E.164) the contact wrote to.
    pub app_number: String,
    pub window: Window,
}

/// Everything one app exchanged with one contact, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct Conversation {
    pub app: String,
    /// The contact's number, E.164.
    pub contact: String,
    /// The name the contact's WhatsApp profile gave in their latest message.
    pub profile_name: Option<String>,
    /// Oldest first; at most the newest 500 messages.
    pub entries: Vec<Entry>,
    /// True when older messages exist than the first entry.
    pub truncated: bool,
    /// Each app number the contact wrote to, with its window at the time asked for, by number.
    pub windows: Vec<NumberWindow>,
}

/// The attachments of a stored `media` value: inbound rows keep a JSON array of
/// `{"url","contentType"}`, outbound rows the one URL sent.
pub(super) fn media_items(direction: Direction, media: Option<&str>) -> Vec<MediaItem> {
    #[derive(serde::Deserialize)]
    struct Stored {
        url: String,
        #[serde(rename = "contentType")]
        content_type: Option<String>,
    }
    let Some(media) = media.map(str::trim).filter(|m| !m.is_empty()) else {
        return Vec::new();
    };
    if direction == Direction::Inbound
        && let Ok(items) = serde_json::from_str::<Vec<Stored>>(media)
    {
        return items
            .into_iter()
            .map(|s| MediaItem {
                url: s.url,
                content_type: s.content_type,
            })
            .collect();
    }
    vec![MediaItem {
        url: media.to_string(),
        content_type: None,
    }]
}
