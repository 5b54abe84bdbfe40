//! A local stand-in for Twilio (`api_base = "simulate"`): answers creates with a `queued`
//! message and then posts the host correctly signed `sent`, `delivered` and `read` callbacks,
//! so a fresh clone shows the whole loop without a Twilio account. It also writes the form of a
//! message a contact sends, for `simulate-inbound`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::{Credentials, MessageContent, NewMessage, address, codes, signature, webhook};

/// The statuses a delivered and read WhatsApp message goes through after `queued`.
const PROGRESSION: [&str; 3] = ["sent", "delivered", "read"];

#[derive(Clone)]
pub(crate) struct Simulator {
    http: reqwest::Client,
    step: Duration,
    /// Callback sequences still posting, so a short-lived command can wait for them.
    pending: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Simulator {
    pub(crate) fn new(http: reqwest::Client, step: Duration) -> Self {
        Self {
            http,
            step,
            pending: Arc::default(),
        }
    }

    /// Waits until every scheduled callback has been posted.
    pub(crate) async fn settle(&self) {
        loop {
            let batch: Vec<_> = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
            if batch.is_empty() {
                return;
            }
            for task in batch {
                let _ = task.await;
            }
        }
    }

    /// Answers like Twilio's 201 and schedules the status callbacks Twilio would send.
    pub(crate) fn create_message(&self, creds: Credentials<'_>, message: &NewMessage) -> Value {
        let sid = new_sid("SM");
        let now = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&jiff::Timestamp::now())
            .expect("the present is a four-digit year")
            .replace("GMT", "+0000");
        // A template's text is rendered by Twilio from the approved content, which the
        // simulator does not have: its body is empty, as a template without text would be.
        let (body, num_media) = match &message.content {
            MessageContent::Text { body, media_url } => {
                (body.as_str(), if media_url.is_some() { "1" } else { "0" })
            }
            MessageContent::Template { .. } => ("", "0"),
        };
        let resource = json!({
            "account_sid": creds.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": null,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": message.from,
            "messaging_service_sid": null,
            "num_media": num_media,
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": format!("/2010-04-01/Accounts/{}/Messages/{sid}/Media.json", creds.account_sid)
            },
            "to": message.to,
            "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", creds.account_sid),
        });
        if let Some(callback) = message.status_callback.clone() {
            let fields = |status: &str| {
                status_callback_fields(
                    &sid,
                    creds.account_sid,
                    address::strip_channel(&message.from),
                    address::strip_channel(&message.to),
                    status,
                )
            };
            let posts: Vec<_> = PROGRESSION.iter().map(|s| fields(s)).collect();
            let token = creds.auth_token.expose_secret().to_string();
            let (http, step) = (self.http.clone(), self.step);
            let task = tokio::spawn(async move {
                for params in posts {
                    tokio::time::sleep(step).await;
                    if let Err(e) = post_signed(&http, &callback, &token, &params).await {
                        tracing::warn!(url = %callback, error = %e, "simulated callback was not accepted");
                        return;
                    }
                }
            });
            let mut pending = self.pending.lock().expect("pending lock");
            pending.retain(|t| !t.is_finished());
            pending.push(task);
        }
        resource
    }
}

/// The fields Twilio posts to a status callback for a WhatsApp message; numbers are E.164.
pub fn status_callback_fields(
    sid: &str,
    account_sid: &str,
    from: &str,
    to: &str,
    status: &str,
) -> Vec<(String, String)> {
    let mut fields = vec![
        ("ChannelPrefix", "whatsapp".to_string()),
        ("ApiVersion", "2010-04-01".to_string()),
        ("MessageStatus", status.to_string()),
        ("SmsSid", sid.to_string()),
        ("SmsStatus", status.to_string()),
        ("ChannelInstallSid", "XE".to_string() + &sid[2..]),
        ("To", address::with_channel(to)),
        ("From", address::with_channel(from)),
        ("MessageSid", sid.to_string()),
        ("StructuredMessage", "false".to_string()),
        ("AccountSid", account_sid.to_string()),
    ];
    if matches!(status, "failed" | "undelivered") {
        fields.push(("ErrorCode", codes::OUTSIDE_SESSION_WINDOW.to_string()));
    }
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A message a contact sends to an app's number, as Twilio's incoming-message webhook posts it
/// for WhatsApp: numbers are E.164 (the `whatsapp:` prefix is added), `media` is
/// `(url, content type)` per attachment.
pub fn inbound_message_fields(
    account_sid: &str,
    contact: &str,
    app_number: &str,
    profile_name: &str,
    body: &str,
    media: &[(String, String)],
) -> Vec<(String, String)> {
    let sid = new_sid(if media.is_empty() { "SM" } else { "MM" });
    let message_type = match media
        .first()
        .map(|(_, t)| t.split('/').next().unwrap_or(""))
    {
        None => "text",
        Some(kind @ ("image" | "video" | "audio")) => kind,
        Some(_) => "document",
    };
    let mut fields: Vec<(String, String)> = [
        ("SmsMessageSid", sid.clone()),
        ("NumMedia", media.len().to_string()),
        ("ProfileName", profile_name.to_string()),
        ("MessageType", message_type.to_string()),
        ("SmsSid", sid.clone()),
        ("WaId", contact.trim_start_matches('+').to_string()),
        ("SmsStatus", webhook::RECEIVED.to_string()),
        ("Body", body.to_string()),
        ("To", address::with_channel(app_number)),
        ("NumSegments", "1".to_string()),
        ("ReferralNumMedia", "0".to_string()),
        ("MessageSid", sid),
        ("AccountSid", account_sid.to_string()),
        ("From", address::with_channel(contact)),
        ("ApiVersion", "2010-04-01".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (i, (url, content_type)) in media.iter().enumerate() {
        fields.push((format!("MediaContentType{i}"), content_type.clone()));
        fields.push((format!("MediaUrl{i}"), url.clone()));
    }
    fields
}

/// The content type a media URL's file name suggests, for a simulated attachment.
pub fn guess_content_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "ogg" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Posts form fields to a webhook URL with a valid `X-Twilio-Signature`, as Twilio does.
pub(crate) async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    auth_token: &str,
    params: &[(String, String)],
) -> Result<reqwest::StatusCode, String> {
    let response = http
        .post(url)
        .header(signature::HEADER, signature::sign(auth_token, url, params))
        .header(webhook::IDEMPOTENCY_HEADER, new_sid("ID"))
        .form(params)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        s if s.is_success() => Ok(s),
        s => Err(format!("answered {s}")),
    }
}

/// A random Twilio-style SID: a two-letter prefix and 32 hex digits.
pub(crate) fn new_sid(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}{n:032x}")
}
