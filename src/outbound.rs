//! The outbound path: one `send` that every form of `utils.sendWhatsappMessage` and the `send`
//! command go through. It resolves credentials, checks the number, body and media, spaces
//! sandbox sends, calls Twilio, records the outcome, and returns the JSON scripts see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::media::{self, MediaError};
use crate::settings::{App, Settings, Whatsapp};
use crate::store::{SendRecord, Store, now_ms};
use crate::twilio::{self, Credentials, NewMessage, TwilioError};
use crate::{phone, telemetry};

/// Twilio's limit on a message body, in characters.
pub const MAX_BODY_CHARS: usize = 1600;
/// Twilio's sandbox sender accepts one message every 3 s.
pub const SANDBOX_SPACING: Duration = Duration::from_secs(3);
/// The Twilio WhatsApp sandbox number, throttled also when a tenant sends from it.
pub const SANDBOX_NUMBER: &str = "+14155238886";

/// Whose Twilio account sends.
#[derive(Debug, Clone)]
pub enum Account {
    /// The current app's WHATSAPP parameters.
    App,
    /// A tenant's own credentials, passed by the script.
    Tenant {
        account_sid: String,
        auth_token: SecretString,
        from: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    None,
    Url(String),
    Object { bucket: String, file: String },
}

#[derive(Debug, Clone)]
pub struct SendRequest {
    pub account: Account,
    pub to: String,
    pub body: String,
    pub media: Media,
}

/// The app and company a script or action runs for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: Arc<App>,
    pub company: String,
}

/// Programming errors: the script called the API wrongly. These throw in JS; everything else
/// is a failed outcome the script can inspect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UsageError {
    #[error(
        "app {app:?} has no WHATSAPP parameters: add an [apps.{app}.WHATSAPP] section to the settings file, or pass accountId, secretKey and fromNr"
    )]
    NoWhatsapp { app: String },
    #[error("{0} is missing or empty")]
    Missing(&'static str),
    #[error("accountId {0:?} is not a Twilio account sid (\"AC\" followed by 32 hex digits)")]
    BadAccountSid(String),
    #[error("{0}")]
    NoSigner(String),
}

/// The JSON value a send returns: Twilio's resource, or a failed outcome with `sid: null`.
#[derive(Debug, Clone)]
pub struct Outcome(pub Value);

impl Outcome {
    pub fn sid(&self) -> Option<&str> {
        self.0.get("sid").and_then(Value::as_str)
    }

    pub fn is_failed(&self) -> bool {
        self.sid().is_none()
    }

    fn failed(
        code: Option<i64>,
        message: String,
        more_info: Option<&str>,
        http_status: Option<u16>,
    ) -> Self {
        let mut v = json!({
            "sid": null,
            "status": "failed",
            "error_code": code,
            "error_message": message,
        });
        if let Some(more) = more_info {
            v["more_info"] = more.into();
        }
        if let Some(status) = http_status {
            v["http_status"] = status.into();
        }
        Outcome(v)
    }

    fn from_twilio_error(e: &TwilioError) -> Self {
        Self::failed(e.code(), e.script_message(), e.more_info(), e.http_status())
    }

    fn from_media_error(e: &MediaError) -> Self {
        Self::failed(Some(e.code()), e.to_string(), None, None)
    }
}

/// Twilio's code for an invalid `To`.
const INVALID_TO: i64 = 21211;
/// Twilio's code for an invalid `From`.
const INVALID_FROM: i64 = 21212;
/// Twilio's code for a body over 1600 characters.
const BODY_TOO_LONG: i64 = 21617;

/// Everything a send needs, built once per process and shared by every script and action.
pub struct Outbound {
    settings: Arc<Settings>,
    twilio: twilio::Client,
    probe: media::Probe,
    signer: media::UrlSigner,
    store: Store,
    /// Per sandbox sender, when its last create finished. The map's std mutex is held only to
    /// look a sender up; the tokio mutex is held across a create, so one sender's sends go one
    /// at a time and each starts 3 s after the previous one was answered: spacing measured from
    /// the start of a request would let network delays bring two closer than 3 s at Twilio.
    sandbox_senders: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Outbound {
    pub fn new(
        settings: Arc<Settings>,
        twilio: twilio::Client,
        probe: media::Probe,
        signer: media::UrlSigner,
        store: Store,
    ) -> Self {
        Self {
            settings,
            twilio,
            probe,
            signer,
            store,
            sandbox_senders: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Waits for work a send left running: in simulate mode, its status callbacks.
    pub async fn settle(&self) {
        self.twilio.settle().await;
    }

    /// Sends one message. `Err` only for programming errors; failures of the send itself are an
    /// `Ok` outcome with `status: "failed"`, recorded like any other send.
    pub async fn send(&self, caller: &Caller, req: SendRequest) -> Result<Outcome, UsageError> {
        let span = tracing::info_span!("send", app = %caller.app.id, company = %caller.company, sid = tracing::field::Empty);
        let outcome = self
            .send_inner(caller, req)
            .instrument(span.clone())
            .await?;
        if let Some(sid) = outcome.sid() {
            span.record("sid", sid);
        }
        Ok(outcome)
    }

    async fn send_inner(&self, caller: &Caller, req: SendRequest) -> Result<Outcome, UsageError> {
        let app_params = caller.app.whatsapp.as_ref();
        let country = app_params.map_or(crate::settings::DEFAULT_COUNTRY_CODE, |w| {
            &w.default_country_code
        });
        let (account_sid, token, from, sandbox, callback) = match &req.account {
            Account::App => {
                let w: &Whatsapp = app_params.ok_or_else(|| UsageError::NoWhatsapp {
                    app: caller.app.id.clone(),
                })?;
                let callback = self
                    .settings
                    .server
                    .callback_url(&caller.app.id, &caller.company);
                (
                    w.account_id.as_str(),
                    &w.auth_key,
                    w.from_number.clone(),
                    w.sandbox,
                    Some(callback),
                )
            }
            Account::Tenant {
                account_sid,
                auth_token,
                from,
            } => {
                if !crate::settings::is_account_sid(account_sid) {
                    return Err(UsageError::BadAccountSid(account_sid.clone()));
                }
                if auth_token.expose_secret().is_empty() {
                    return Err(UsageError::Missing("secretKey"));
                }
                if from.trim().is_empty() {
                    return Err(UsageError::Missing("fromNr"));
                }
                let from = match phone::normalize(from, country) {
                    Ok(from) => from,
                    Err(e) => {
                        return Ok(self.fail(caller, &req, account_sid, from, {
                            Outcome::failed(Some(INVALID_FROM), e.to_string(), None, None)
                        }));
                    }
                };
                let sandbox = from == SANDBOX_NUMBER;
                (account_sid.as_str(), auth_token, from, sandbox, None)
            }
        };
        let to = match phone::normalize(&req.to, country) {
            Ok(to) => to,
            Err(e) => {
                let outcome = Outcome::failed(Some(INVALID_TO), e.to_string(), None, None);
                return Ok(self.fail(caller, &req, account_sid, &from, outcome));
            }
        };
        let chars = req.body.chars().count();
        if chars > MAX_BODY_CHARS {
            let outcome = Outcome::failed(
                Some(BODY_TOO_LONG),
                format!(
                    "the message body is {chars} characters, over Twilio's limit of {MAX_BODY_CHARS}"
                ),
                None,
                None,
            );
            return Ok(self.fail(caller, &req, account_sid, &from, outcome));
        }
        let media_url = match &req.media {
            Media::None => None,
            Media::Url(url) => Some(url.clone()),
            Media::Object { bucket, file } => {
                match self.signer.signed_get_url(bucket, file).await {
                    Ok(url) => Some(url),
                    Err(e @ MediaError::NoSigner) => {
                        return Err(UsageError::NoSigner(e.to_string()));
                    }
                    Err(e) => {
                        let outcome = Outcome::from_media_error(&e);
                        return Ok(self.fail(caller, &req, account_sid, &from, outcome));
                    }
                }
            }
        };
        if let Some(url) = &media_url
            && self.settings.media.check
            && let Err(e) = self.probe.check(url).await
        {
            let outcome = Outcome::from_media_error(&e);
            return Ok(self.fail(caller, &req, account_sid, &from, outcome));
        }
        let sandbox_turn = if sandbox {
            Some(self.sandbox_turn(&from).await)
        } else {
            None
        };
        let message = NewMessage {
            to: format!("whatsapp:{to}"),
            from: format!("whatsapp:{from}"),
            body: req.body.clone(),
            media_url,
            status_callback: callback,
        };
        let creds = Credentials {
            account_sid,
            auth_token: token,
        };
        let started = std::time::Instant::now();
        let created = self.twilio.create_message(creds, &message).await;
        drop(sandbox_turn);
        telemetry::twilio_latency(started.elapsed());
        let outcome = match created {
            Ok(resource) => {
                telemetry::send("sent", None);
                Outcome(resource)
            }
            Err(e) => {
                tracing::warn!(error = %e, "twilio create failed");
                telemetry::send("failed", e.code());
                Outcome::from_twilio_error(&e)
            }
        };
        let mut record = self.record(caller, &req, account_sid, &from, &outcome);
        record.to = to;
        self.store.record_send(record);
        Ok(outcome)
    }

    fn fail(
        &self,
        caller: &Caller,
        req: &SendRequest,
        account_sid: &str,
        from: &str,
        outcome: Outcome,
    ) -> Outcome {
        tracing::warn!(error = %outcome.0["error_message"], "send refused before twilio");
        telemetry::send("refused", outcome.0["error_code"].as_i64());
        self.store
            .record_send(self.record(caller, req, account_sid, from, &outcome));
        outcome
    }

    fn record(
        &self,
        caller: &Caller,
        req: &SendRequest,
        account_sid: &str,
        from: &str,
        outcome: &Outcome,
    ) -> SendRecord {
        let v = &outcome.0;
        SendRecord {
            sid: outcome.sid().map(str::to_string),
            app: caller.app.id.clone(),
            company: caller.company.clone(),
            account_sid: account_sid.to_string(),
            to: req.to.clone(),
            from: from.to_string(),
            body: req.body.clone(),
            media: match &req.media {
                Media::None => None,
                Media::Url(url) => Some(media::redact_query(url)),
                Media::Object { bucket, file } => Some(format!("gs://{bucket}/{file}")),
            },
            status: v["status"].as_str().unwrap_or("failed").to_string(),
            error_code: v["error_code"].as_i64(),
            error_message: v["error_message"].as_str().map(str::to_string),
            at: now_ms(),
        }
    }

    /// Waits until a sandbox sender is free and 3 s have passed since its last create was
    /// answered. The sender stays taken until the returned turn is dropped.
    async fn sandbox_turn(&self, from: &str) -> SandboxTurn {
        let sender = self
            .sandbox_senders
            .lock()
            .expect("sandbox senders lock")
            .entry(from.to_string())
            .or_default()
            .clone();
        let last = sender.lock_owned().await;
        if let Some(last) = *last {
            tokio::time::sleep_until(last + SANDBOX_SPACING).await;
        }
        SandboxTurn(last)
    }
}

/// A sandbox sender's turn to send; dropping it, once Twilio answered, starts the 3 s wait.
struct SandboxTurn(tokio::sync::OwnedMutexGuard<Option<Instant>>);

impl Drop for SandboxTurn {
    fn drop(&mut self) {
        *self.0 = Some(Instant::now());
    }
}
