//! The outbound path: one `send` that every form of `utils.sendWhatsappMessage`,
//! `utils.sendWhatsappTemplate` and the `send` command go through. It resolves credentials,
//! checks the number, body and media or the template and its variables, spaces sandbox sends,
//! calls Twilio, records the outcome, and returns the JSON scripts see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::media::{self, MediaError, NoSigner};
use crate::phone;
use crate::settings::{App, Settings, Whatsapp};
use crate::store::{self, SendRecord, Store, now_ms};
use crate::telemetry;
use crate::twilio::{self, Credentials, MessageContent, NewMessage, TwilioError, address, codes};

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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Media {
    None,
    Url(String),
    Object { bucket: String, file: String },
}

/// A free-form message: text, with at most one media file.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub account: Account,
    pub to: String,
    pub body: String,
    pub media: Media,
}

/// A template's variables in the caller's order: each key with its value, or `None` for a
/// null the script passed (refused, as Twilio refuses it, with 21656).
pub type Variables = Vec<(String, Option<String>)>;

/// An approved Content template: the only message WhatsApp delivers outside the 24-hour
/// customer-service window, so the way to open or resume a conversation.
#[derive(Debug, Clone)]
pub struct TemplateRequest {
    pub account: Account,
    pub to: String,
    /// The template's SID: `HX` followed by 32 hex digits.
    pub content_sid: String,
    /// The template's variables; `None` sends none, so the template's own defaults apply.
    pub variables: Option<Variables>,
}

/// One send of either kind: what [`Outbound::send`] takes (both requests convert into it).
#[derive(Debug, Clone)]
pub enum Request {
    Text(SendRequest),
    Template(TemplateRequest),
}

impl From<SendRequest> for Request {
    fn from(req: SendRequest) -> Self {
        Request::Text(req)
    }
}

impl From<TemplateRequest> for Request {
    fn from(req: TemplateRequest) -> Self {
        Request::Template(req)
    }
}

impl Request {
    fn account(&self) -> &Account {
        match self {
            Request::Text(r) => &r.account,
            Request::Template(r) => &r.account,
        }
    }

    fn to(&self) -> &str {
        match self {
            Request::Text(r) => &r.to,
            Request::Template(r) => &r.to,
        }
    }
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
    #[error(transparent)]
    NoSigner(#[from] NoSigner),
}

/// Why [`Outbound::session_open`] could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{name}: {message}")]
    Number { name: &'static str, message: String },
    #[error("could not read the store: {0}")]
    Store(String),
}

impl SessionError {
    /// The script called it wrongly (it throws a `TypeError`), rather than the host failing.
    pub(crate) fn is_usage(&self) -> bool {
        !matches!(self, SessionError::Store(_))
    }
}

/// What a send came to. Serializes to the JSON scripts see: Twilio's resource as sent, or
/// Twilio's error shape with `sid: null`.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Twilio created the message: its resource, exactly as Twilio sent it.
    Accepted(Value),
    /// No message was created, or whether one was is unknown (see the code).
    Failed(Failure),
}

/// Why a send failed, in the shape of Twilio's error resource, whichever step refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Twilio's code, or the host's own 9000x code (`twilio::codes`); `None` only when Twilio
    /// answered an error without one.
    pub code: Option<i64>,
    pub message: String,
    /// Twilio's link to the code's documentation, when Twilio gave one.
    pub more_info: Option<String>,
    /// Twilio's HTTP status, when Twilio answered.
    pub http_status: Option<u16>,
}

impl Failure {
    /// A refusal before Twilio was called, with the code Twilio would have given.
    pub(crate) fn refused(code: i64, message: impl Into<String>) -> Self {
        Failure {
            code: Some(code),
            message: message.into(),
            more_info: None,
            http_status: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "sid": null,
            "status": "failed",
            "error_code": self.code,
            "error_message": self.message,
        });
        if let Some(more) = &self.more_info {
            v["more_info"] = more.as_str().into();
        }
        if let Some(status) = self.http_status {
            v["http_status"] = status.into();
        }
        v
    }
}

impl From<&TwilioError> for Failure {
    fn from(e: &TwilioError) -> Self {
        Failure {
            code: e.code(),
            message: e.script_message(),
            more_info: e.more_info().map(str::to_string),
            http_status: e.http_status(),
        }
    }
}

impl From<&MediaError> for Failure {
    fn from(e: &MediaError) -> Self {
        let code = match e {
            MediaError::TooLarge { .. } => codes::MEDIA_TOO_LARGE,
            MediaError::UnsupportedType { .. } => codes::UNSUPPORTED_MEDIA_TYPE,
            MediaError::Unreadable { .. }
            | MediaError::NotHttps { .. }
            | MediaError::NonPublicAddress { .. }
            | MediaError::Redirected { .. }
            | MediaError::BucketNotAllowed { .. }
            | MediaError::NoSigner(_)
            | MediaError::Signing { .. } => codes::INVALID_MEDIA_URL,
        };
        Failure::refused(code, e.to_string())
    }
}

impl SendOutcome {
    /// The created message's sid.
    pub fn sid(&self) -> Option<&str> {
        match self {
            SendOutcome::Accepted(resource) => resource.get("sid").and_then(Value::as_str),
            SendOutcome::Failed(_) => None,
        }
    }

    /// No message sid came back: the send failed (a `send` command exits 1).
    pub fn is_failed(&self) -> bool {
        self.sid().is_none()
    }

    /// The JSON scripts see.
    pub fn to_json(&self) -> Value {
        match self {
            SendOutcome::Accepted(resource) => resource.clone(),
            SendOutcome::Failed(failure) => failure.to_json(),
        }
    }
}

impl Serialize for SendOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SendOutcome::Accepted(resource) => resource.serialize(serializer),
            SendOutcome::Failed(failure) => failure.to_json().serialize(serializer),
        }
    }
}

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
    /// Inside it the store's turn ([`Store::sandbox_turn`]) does the same across instances.
    sandbox_senders: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Outbound {
    pub(crate) fn new(
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

    /// Waits for work a send left running: in simulate mode, its status callbacks.
    pub async fn settle(&self) {
        self.twilio.settle().await;
    }

    /// Sends one message, free-form or a template. `Err` only for programming errors; failures
    /// of the send itself are an `Ok` outcome with `status: "failed"`, recorded like any other
    /// send.
    pub async fn send(
        &self,
        caller: &Caller,
        req: impl Into<Request>,
    ) -> Result<SendOutcome, UsageError> {
        let span = tracing::info_span!("send", app = %caller.app.id, company = %caller.company, sid = tracing::field::Empty);
        let outcome = self
            .send_inner(caller, req.into())
            .instrument(span.clone())
            .await?;
        if let Some(sid) = outcome.sid() {
            span.record("sid", sid);
        }
        Ok(outcome)
    }

    async fn send_inner(&self, caller: &Caller, req: Request) -> Result<SendOutcome, UsageError> {
        let app_params = caller.app.whatsapp.as_ref();
        let country = app_params.map_or(crate::settings::DEFAULT_COUNTRY_CODE, |w| {
            &w.default_country_code
        });
        let (account_sid, token, from, sandbox, callback) = match req.account() {
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
                if !twilio::is_account_sid(account_sid) {
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
                        let failure = Failure::refused(codes::INVALID_FROM, e.to_string());
                        return Ok(self.fail(caller, &req, account_sid, from, failure));
                    }
                };
                let sandbox = from.as_str() == twilio::SANDBOX_NUMBER;
                // A configured tenant's project gets its company's callback URL, where its
                // callbacks are checked with its token; an unknown project gets none.
                let callback = caller.app.tenant_by_account(account_sid).map(|tenant| {
                    self.settings
                        .server
                        .callback_url(&caller.app.id, &tenant.company)
                });
                (account_sid.as_str(), auth_token, from, sandbox, callback)
            }
        };
        let to = match phone::normalize(req.to(), country) {
            Ok(to) => to,
            Err(e) => {
                let failure = Failure::refused(codes::INVALID_TO, e.to_string());
                return Ok(self.fail(caller, &req, account_sid, &from, failure));
            }
        };
        let content = match &req {
            Request::Text(text) => self.text_content(caller, text).await,
            Request::Template(template) => template_content(template),
        };
        let content = match content {
            Ok(content) => content,
            Err(Refusal::Usage(e)) => return Err(e),
            Err(Refusal::Failed(failure)) => {
                return Ok(self.fail(caller, &req, account_sid, &from, failure));
            }
        };
        let sandbox_turn = if sandbox {
            Some(self.sandbox_turn(&from).await)
        } else {
            None
        };
        let message = NewMessage {
            to: address::with_channel(&to),
            from: address::with_channel(&from),
            content,
            status_callback: callback,
        };
        let creds = Credentials {
            account_sid,
            auth_token: token,
        };
        let started = std::time::Instant::now();
        let created = self.twilio.create_message(creds, &message).await;
        if let Some(turn) = sandbox_turn {
            turn.release().await;
        }
        telemetry::twilio_latency(started.elapsed());
        let outcome = match created {
            Ok(resource) => {
                telemetry::send("sent", None);
                SendOutcome::Accepted(resource)
            }
            Err(e) => {
                tracing::warn!(error = %e, "twilio create failed");
                telemetry::send("failed", e.code());
                SendOutcome::Failed(Failure::from(&e))
            }
        };
        let mut record = self.record(caller, &req, account_sid, &from, &outcome);
        record.to = to.into_string();
        self.store.record_send(record);
        Ok(outcome)
    }

    /// Whether WhatsApp's 24-hour window is open between a number (the app's own when `from` is
    /// `None`) and the contact `to`: the contact sent that number a message, on this app, in the
    /// last 24 hours, as judged by the store's [`Clock`](crate::store::Clock). Outside it, only a
    /// template reaches them (free-form text fails with error 63016).
    pub async fn session_open(
        &self,
        caller: &Caller,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, SessionError> {
        let app_params = caller.app.whatsapp.as_ref();
        let country = app_params.map_or(crate::settings::DEFAULT_COUNTRY_CODE, |w| {
            &w.default_country_code
        });
        let number = |name: &'static str, text: &str| {
            phone::normalize(text, country).map_err(|e| SessionError::Number {
                name,
                message: e.to_string(),
            })
        };
        let from = match from {
            Some(from) => number("fromNr", from)?,
            None => app_params
                .ok_or_else(|| UsageError::NoWhatsapp {
                    app: caller.app.id.clone(),
                })?
                .from_number
                .clone(),
        };
        let to = number("toPhoneNumber", to)?;
        let now = self.store.clock().now_ms();
        self.store
            .session_open(&caller.app.id, from.as_str(), to.as_str(), now)
            .await
            .map_err(|e| SessionError::Store(e.to_string()))
    }

    /// A free-form message's content: the body fits and the media is signed and checked.
    async fn text_content(
        &self,
        caller: &Caller,
        req: &SendRequest,
    ) -> Result<MessageContent, Refusal> {
        let chars = req.body.chars().count();
        if chars > twilio::MAX_BODY_CHARS {
            let failure = Failure::refused(
                codes::BODY_TOO_LONG,
                format!(
                    "the message body is {chars} characters, over Twilio's limit of {}",
                    twilio::MAX_BODY_CHARS
                ),
            );
            return Err(Refusal::Failed(failure));
        }
        let media_url = match &req.media {
            Media::None => None,
            Media::Url(url) => Some(url.clone()),
            Media::Object { bucket, file } => {
                if !self.signer.is_configured() {
                    return Err(Refusal::Usage(UsageError::NoSigner(NoSigner)));
                }
                allowed_bucket(caller, bucket).map_err(|e| Refusal::Failed(Failure::from(&e)))?;
                match self.signer.signed_get_url(bucket, file).await {
                    Ok(url) => Some(url),
                    Err(MediaError::NoSigner(e)) => {
                        return Err(Refusal::Usage(UsageError::NoSigner(e)));
                    }
                    Err(e) => return Err(Refusal::Failed(Failure::from(&e))),
                }
            }
        };
        if let Some(url) = &media_url
            && self.settings.media.check
            && let Err(e) = self.probe.check(url).await
        {
            return Err(Refusal::Failed(Failure::from(&e)));
        }
        Ok(MessageContent::Text {
            body: req.body.clone(),
            media_url,
        })
    }

    fn fail(
        &self,
        caller: &Caller,
        req: &Request,
        account_sid: &str,
        from: &str,
        failure: Failure,
    ) -> SendOutcome {
        tracing::warn!(error = %failure.message, "send refused before twilio");
        telemetry::send("refused", failure.code);
        let outcome = SendOutcome::Failed(failure);
        self.store
            .record_send(self.record(caller, req, account_sid, from, &outcome));
        outcome
    }

    fn record(
        &self,
        caller: &Caller,
        req: &Request,
        account_sid: &str,
        from: &str,
        outcome: &SendOutcome,
    ) -> SendRecord {
        let (status, error_code, error_message) = match outcome {
            SendOutcome::Accepted(resource) => (
                resource["status"].as_str().unwrap_or("failed"),
                resource["error_code"].as_i64(),
                resource["error_message"].as_str(),
            ),
            SendOutcome::Failed(failure) => {
                ("failed", failure.code, Some(failure.message.as_str()))
            }
        };
        let (body, media, content_sid, content_variables) = match req {
            Request::Text(text) => (
                text.body.clone(),
                match &text.media {
                    Media::None => None,
                    Media::Url(url) => Some(media::redact_query(url)),
                    Media::Object { bucket, file } => Some(format!("gs://{bucket}/{file}")),
                },
                None,
                None,
            ),
            // Twilio renders a template's text and answers it as the body; that is what the
            // contact reads.
            Request::Template(template) => (
                match outcome {
                    SendOutcome::Accepted(resource) => {
                        resource["body"].as_str().unwrap_or_default().to_string()
                    }
                    SendOutcome::Failed(_) => String::new(),
                },
                None,
                Some(template.content_sid.clone()),
                template
                    .variables
                    .as_deref()
                    .map(twilio::content_variables_json),
            ),
        };
        SendRecord {
            sid: outcome.sid().map(str::to_string),
            app: caller.app.id.clone(),
            company: caller.company.clone(),
            account_sid: account_sid.to_string(),
            to: req.to().to_string(),
            from: from.to_string(),
            body,
            media,
            content_sid,
            content_variables,
            status: status.to_string(),
            error_code,
            error_message: error_message.map(str::to_string),
            at: now_ms(),
        }
    }

    /// Waits until a sandbox sender is free, here and on every instance sharing the store, and
    /// 3 s have passed since its last create was answered, here or there. The sender stays
    /// taken until the returned turn is released (or dropped).
    async fn sandbox_turn(&self, from: &str) -> SandboxTurn {
        let sender = self
            .sandbox_senders
            .lock()
            .expect("sandbox senders lock")
            .entry(from.to_string())
            .or_default()
            .clone();
        let last = sender.lock_owned().await;
        let stored = match self.store.sandbox_turn(from).await {
            Ok(turn) => Some(turn),
            Err(e) => {
                tracing::warn!(error = %e, sender = %from, "the store could not give this sandbox sender's turn; spacing its sends within this instance only");
                None
            }
        };
        if let Some(last) = *last {
            tokio::time::sleep_until(last + twilio::SANDBOX_SPACING).await;
        }
        if let Some(answered_at) = stored.as_ref().and_then(|t| t.last_answered_at()) {
            let since = now_ms().saturating_sub(answered_at);
            let since = std::time::Duration::from_millis(u64::try_from(since).unwrap_or(0));
            tokio::time::sleep(twilio::SANDBOX_SPACING.saturating_sub(since)).await;
        }
        SandboxTurn {
            local: LocalTurn(last),
            stored,
        }
    }
}

/// Why a message's content cannot be sent: the script's mistake (throws), or a refusal with
/// the code Twilio would give (a failed outcome).
enum Refusal {
    Usage(UsageError),
    Failed(Failure),
}

/// A template's content, checked as Twilio checks it so a refusal costs no request:
/// the sid is `HX` + 32 hex digits (21655); there are at most 100 variables, and none has
/// an empty key or a null or empty value (21656).
fn template_content(req: &TemplateRequest) -> Result<MessageContent, Refusal> {
    let refuse = |code, message: String| Err(Refusal::Failed(Failure::refused(code, message)));
    if !twilio::is_content_sid(&req.content_sid) {
        return refuse(
            codes::INVALID_CONTENT_SID,
            format!(
                "contentSid {:?} is not a Content template sid (\"HX\" followed by 32 hex digits)",
                req.content_sid
            ),
        );
    }
    let Some(variables) = &req.variables else {
        return Ok(MessageContent::Template {
            content_sid: req.content_sid.clone(),
            variables: None,
        });
    };
    if variables.len() > twilio::MAX_CONTENT_VARIABLES {
        return refuse(
            codes::INVALID_CONTENT_VARIABLES,
            format!(
                "{} template variables were given, over Twilio's limit of {}",
                variables.len(),
                twilio::MAX_CONTENT_VARIABLES
            ),
        );
    }
    let mut checked = Vec::with_capacity(variables.len());
    for (key, value) in variables {
        if key.is_empty() {
            return refuse(
                codes::INVALID_CONTENT_VARIABLES,
                "a template variable has an empty name: name each by its placeholder, such as \"1\"".into(),
            );
        }
        match value.as_deref() {
            None => {
                return refuse(
                    codes::INVALID_CONTENT_VARIABLES,
                    format!(
                        "template variable {key:?} is null: give it a value, or leave it out to use the template's default"
                    ),
                );
            }
            Some("") => {
                return refuse(
                    codes::INVALID_CONTENT_VARIABLES,
                    format!(
                        "template variable {key:?} is empty: give it a value, or leave it out to use the template's default"
                    ),
                );
            }
            Some(value) => checked.push((key.clone(), value)),
        }
    }
    Ok(MessageContent::Template {
        content_sid: req.content_sid.clone(),
        variables: Some(twilio::content_variables_json(&checked)),
    })
}

/// The signing key is shared by every app, so an app signs only the buckets its
/// `gcs_buckets` lists, in its own sends and its tenants' alike.
fn allowed_bucket(caller: &Caller, bucket: &str) -> Result<(), MediaError> {
    let listed = caller
        .app
        .whatsapp
        .as_ref()
        .is_some_and(|w| w.gcs_buckets.iter().any(|b| b == bucket));
    if listed {
        Ok(())
    } else {
        Err(MediaError::BucketNotAllowed {
            app: caller.app.id.clone(),
            bucket: bucket.to_string(),
        })
    }
}

/// A sandbox sender's turn to send, in this process and in the store; releasing it once Twilio
/// answered starts the 3 s wait for the next turn, here and on every other instance.
struct SandboxTurn {
    local: LocalTurn,
    /// `None` when the store could not give a turn: spacing then holds within this instance.
    stored: Option<store::SandboxTurn>,
}

impl SandboxTurn {
    async fn release(self) {
        if let Some(stored) = self.stored
            && let Err(e) = stored.release(now_ms()).await
        {
            tracing::warn!(error = %e, "the store did not record a sandbox send's time; other instances may send from this sender sooner than 3 s");
        }
        drop(self.local);
    }
}

/// This process's hold on a sandbox sender; dropping it, also when a send is abandoned midway,
/// records when, so this process's next send waits 3 s from then.
struct LocalTurn(tokio::sync::OwnedMutexGuard<Option<Instant>>);

impl Drop for LocalTurn {
    fn drop(&mut self) {
        *self.0 = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripts parse this JSON; its bytes (keys in serde_json's sorted order) must not change.
    #[test]
    fn a_failure_serializes_exactly_as_before() {
        let refused = SendOutcome::Failed(Failure::refused(codes::INVALID_TO, "bad"));
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"error_code":21211,"error_message":"bad","sid":null,"status":"failed"}"#
        );
        assert_eq!(
            refused.to_json().to_string(),
            serde_json::to_string(&refused).unwrap()
        );
        let api = TwilioError::Api {
            http_status: 400,
            code: None,
            message: "nope".into(),
            more_info: Some("https://www.twilio.com/docs/errors/21211".into()),
        };
        assert_eq!(
            serde_json::to_string(&SendOutcome::Failed(Failure::from(&api))).unwrap(),
            r#"{"error_code":null,"error_message":"nope","http_status":400,"more_info":"https://www.twilio.com/docs/errors/21211","sid":null,"status":"failed"}"#
        );
        assert!(refused.is_failed());
        assert_eq!(refused.sid(), None);
    }

    #[test]
    fn an_accepted_send_is_twilios_resource_as_sent() {
        let resource = json!({"sid": "SM1", "status": "queued", "body": "hi"});
        let accepted = SendOutcome::Accepted(resource.clone());
        assert_eq!(serde_json::to_value(&accepted).unwrap(), resource);
        assert_eq!(accepted.sid(), Some("SM1"));
        assert!(!accepted.is_failed());
    }

    #[test]
    fn a_template_is_checked_as_twilio_checks_it() {
        let template = |sid: &str, variables: Option<Variables>| TemplateRequest {
            account: Account::App,
            to: "+393331234567".into(),
            content_sid: sid.into(),
            variables,
        };
        let sid = "HX0123456789abcdef0123456789abcdef";
        let var = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
        let code = |req: &TemplateRequest| match template_content(req) {
            Err(Refusal::Failed(failure)) => failure.code,
            Err(Refusal::Usage(e)) => panic!("{e}"),
            Ok(_) => None,
        };
        assert_eq!(
            code(&template("HX0123", None)),
            Some(codes::INVALID_CONTENT_SID)
        );
        assert_eq!(code(&template(sid, None)), None);
        let many = |n: usize| (0..n).map(|i| var(&i.to_string(), Some("v"))).collect();
        assert_eq!(code(&template(sid, Some(many(100)))), None);
        assert_eq!(
            code(&template(sid, Some(many(101)))),
            Some(codes::INVALID_CONTENT_VARIABLES)
        );
        for bad in [var("", Some("x")), var("1", None), var("1", Some(""))] {
            assert_eq!(
                code(&template(
                    sid,
                    Some(vec![var("2", Some("ok")), bad.clone()])
                )),
                Some(codes::INVALID_CONTENT_VARIABLES),
                "{bad:?}"
            );
        }
        match template_content(&template(
            sid,
            Some(vec![var("2", Some("b")), var("1", Some("a"))]),
        )) {
            Ok(MessageContent::Template {
                content_sid,
                variables,
            }) => {
                assert_eq!(content_sid, sid);
                assert_eq!(variables.as_deref(), Some(r#"{"2":"b","1":"a"}"#));
            }
            _ => panic!("a valid template is sent"),
        }
    }

    #[test]
    fn media_refusals_carry_the_code_twilio_would_give() {
        let url = "https://example.com/x".to_string();
        let cases = [
            (
                MediaError::TooLarge {
                    url: url.clone(),
                    size: 2,
                    limit: 1,
                },
                codes::MEDIA_TOO_LARGE,
            ),
            (
                MediaError::UnsupportedType {
                    url: url.clone(),
                    content_type: "text/html".into(),
                },
                codes::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                MediaError::Unreadable {
                    url: url.clone(),
                    detail: "404".into(),
                },
                codes::INVALID_MEDIA_URL,
            ),
            (
                MediaError::NotHttps { url: url.clone() },
                codes::INVALID_MEDIA_URL,
            ),
            (
                MediaError::NonPublicAddress {
                    url: url.clone(),
                    address: [10, 0, 0, 1].into(),
                    kind: media::AddressKind::Private,
                },
                codes::INVALID_MEDIA_URL,
            ),
            (
                MediaError::Redirected {
                    url,
                    location: "https://example.org/".into(),
                },
                codes::INVALID_MEDIA_URL,
            ),
            (
                MediaError::BucketNotAllowed {
                    app: "crm".into(),
                    bucket: "tickets".into(),
                },
                codes::INVALID_MEDIA_URL,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Failure::from(&error).code, Some(code), "{error}");
        }
    }
}
