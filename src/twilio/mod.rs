//! Twilio: the only module that knows Twilio's URLs, authentication, wire format, field names
//! and error codes. It creates messages (with the retry rules that never send twice), reads and
//! checks incoming webhooks (`webhook`), and in `simulate` mode stands in for Twilio entirely.

pub(crate) mod address;
pub(crate) mod codes;
/// `pub` so the tests and the bench example sign callbacks as Twilio does.
pub mod signature;
/// `pub` so the tests and benches build the callback fields simulate mode posts.
pub mod simulate;
pub(crate) mod webhook;

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

/// Where sends go: Twilio's API (or a stand-in at another base URL), or the built-in simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiBase {
    Url(Url),
    /// `api_base = "simulate"`: sends are answered locally and the host posts itself callbacks.
    Simulate,
}

/// What the client needs from the `[twilio]` settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) api_base: ApiBase,
    pub(crate) timeout: Duration,
    /// Delay between simulated status callbacks (`simulate` mode only).
    pub(crate) simulate_step: Duration,
}

/// The number of Twilio's WhatsApp sandbox, throttled also when a tenant sends from it.
pub(crate) const SANDBOX_NUMBER: &str = "+14155238886";
/// The sandbox sender accepts one message every 3 s.
pub(crate) const SANDBOX_SPACING: Duration = Duration::from_secs(3);
/// Twilio's limit on a message body, in characters.
pub(crate) const MAX_BODY_CHARS: usize = 1600;

/// Twilio's limit on a Content template's variables, per message.
pub(crate) const MAX_CONTENT_VARIABLES: usize = 100;

/// `AC` + 32 hex digits: the shape of every Twilio account SID.
pub(crate) fn is_account_sid(s: &str) -> bool {
    is_sid("AC", s)
}

/// `HX` + 32 hex digits: the shape of a Content template's SID (`ContentSid`'s pattern in
/// Twilio's API description).
pub(crate) fn is_content_sid(s: &str) -> bool {
    is_sid("HX", s)
}

fn is_sid(prefix: &str, s: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A template's variables as the JSON object text `ContentVariables` takes, keys in the order
/// given. The store keeps the same text.
pub(crate) fn content_variables_json<V: serde::Serialize>(variables: &[(String, V)]) -> String {
    struct InOrder<'a, V>(&'a [(String, V)]);
    impl<V: serde::Serialize> serde::Serialize for InOrder<'_, V> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    serde_json::to_string(&InOrder(variables)).expect("string keys always serialize")
}

/// An account's credentials. The token is only exposed where the `Authorization` header is built.
#[derive(Clone, Copy)]
pub(crate) struct Credentials<'a> {
    pub(crate) account_sid: &'a str,
    pub(crate) auth_token: &'a SecretString,
}

/// A message to create, already validated: numbers are E.164 and the content fits.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub(crate) to: String,
    pub(crate) from: String,
    pub(crate) content: MessageContent,
    /// Where Twilio should post status events; `None` leaves the console's setting in force.
    pub(crate) status_callback: Option<String>,
}

/// What a message carries.
#[derive(Debug, Clone)]
pub(crate) enum MessageContent {
    /// Free-form text, with at most one media URL: WhatsApp delivers it only inside the
    /// 24-hour customer-service window.
    Text {
        body: String,
        media_url: Option<String>,
    },
    /// An approved Content template, which may open a conversation: `ContentSid`, and
    /// `ContentVariables` as JSON object text when there are variables. No `Body`.
    Template {
        content_sid: String,
        variables: Option<String>,
    },
}

impl NewMessage {
    /// The form fields Twilio's Messages API takes. Array fields repeat their key.
    fn form(&self) -> Vec<(&'static str, &str)> {
        let mut form = vec![("To", self.to.as_str()), ("From", self.from.as_str())];
        match &self.content {
            MessageContent::Text { body, media_url } => {
                form.push(("Body", body.as_str()));
                form.extend(media_url.as_deref().map(|m| ("MediaUrl", m)));
            }
            MessageContent::Template {
                content_sid,
                variables,
            } => {
                form.push(("ContentSid", content_sid.as_str()));
                form.extend(variables.as_deref().map(|v| ("ContentVariables", v)));
            }
        }
        form.extend(
            self.status_callback
                .as_deref()
                .map(|c| ("StatusCallback", c)),
        );
        form
    }
}

/// Why a create did not produce a message. Carries no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TwilioError {
    /// Twilio answered with an error resource.
    #[error("twilio refused the message ({http_status}): {message}")]
    Api {
        http_status: u16,
        code: Option<i64>,
        message: String,
        more_info: Option<String>,
    },
    /// Twilio could not be reached at all; nothing was sent.
    #[error("could not connect to twilio at {base}: {detail}")]
    Unreachable { base: String, detail: String },
    /// The request went out but no answer came in time: the message may or may not exist.
    #[error("twilio did not answer within {0:?}; the message may still have been sent")]
    TimedOut(Duration),
    /// The connection broke after the request was sent.
    #[error("the connection to twilio failed mid-request: {0}")]
    Transport(String),
    /// Twilio answered success with a body we could not read.
    #[error("twilio answered {http_status} with an unreadable body: {detail}")]
    BadResponse { http_status: u16, detail: String },
}

impl TwilioError {
    /// The error code reported to scripts: Twilio's own where it gave one.
    pub(crate) fn code(&self) -> Option<i64> {
        match self {
            TwilioError::Api { code, .. } => *code,
            TwilioError::Unreachable { .. } => Some(codes::UNREACHABLE),
            TwilioError::TimedOut(_) => Some(codes::TIMED_OUT),
            TwilioError::Transport(_) => Some(codes::TRANSPORT),
            TwilioError::BadResponse { .. } => Some(codes::BAD_RESPONSE),
        }
    }

    pub(crate) fn http_status(&self) -> Option<u16> {
        match self {
            TwilioError::Api { http_status, .. } | TwilioError::BadResponse { http_status, .. } => {
                Some(*http_status)
            }
            _ => None,
        }
    }

    pub(crate) fn more_info(&self) -> Option<&str> {
        match self {
            TwilioError::Api { more_info, .. } => more_info.as_deref(),
            _ => None,
        }
    }

    /// The message scripts see: Twilio's own text for API errors.
    pub(crate) fn script_message(&self) -> String {
        match self {
            TwilioError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// When to try a create again. Only failures that prove nothing was sent are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The delay ceiling before the first retry; it doubles each retry, with jitter.
    pub base_delay: Duration,
    /// The longest wait between tries, a `Retry-After` from Twilio included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter, unless Twilio said how long to wait.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_delay);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// The Messages API client. One per process: it holds the connection pool.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    api_base: ApiBase,
    timeout: Duration,
    retry: RetryPolicy,
    simulator: Option<simulate::Simulator>,
}

impl Client {
    pub(crate) fn new(settings: &Config, http: reqwest::Client) -> Self {
        let simulator = (settings.api_base == ApiBase::Simulate)
            .then(|| simulate::Simulator::new(http.clone(), settings.simulate_step));
        Self {
            http,
            api_base: settings.api_base.clone(),
            timeout: settings.timeout,
            retry: RetryPolicy::default(),
            simulator,
        }
    }

    /// Replaces the retry policy; tests shorten the delays.
    pub(crate) fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// In simulate mode, waits until the simulated callbacks of every send have been posted.
    pub(crate) async fn settle(&self) {
        if let Some(simulator) = &self.simulator {
            simulator.settle().await;
        }
    }

    /// Creates a message and returns Twilio's message resource exactly as Twilio sent it.
    ///
    /// 429s and connection failures are retried; a timeout or a 5xx is not, because Twilio has
    /// no idempotency key and a second create could deliver the message twice.
    pub(crate) async fn create_message(
        &self,
        creds: Credentials<'_>,
        message: &NewMessage,
    ) -> Result<Value, TwilioError> {
        let base = match &self.api_base {
            ApiBase::Simulate => {
                let simulator = self
                    .simulator
                    .as_ref()
                    .expect("simulate mode has a simulator");
                return Ok(simulator.create_message(creds, message));
            }
            ApiBase::Url(base) => base,
        };
        let url = messages_url(base, creds.account_sid);
        let form = message.form();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .http
                .post(url.clone())
                .basic_auth(creds.account_sid, Some(creds.auth_token.expose_secret()))
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form)
                .timeout(self.timeout)
                .send()
                .await;
            let retry_after = match result {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let after = retry_after(response.headers());
                    if attempt >= self.retry.attempts {
                        return Err(api_error(response).await);
                    }
                    after
                }
                Ok(response) => return read_resource(response).await,
                Err(e) if e.is_connect() && attempt < self.retry.attempts => None,
                Err(e) => return Err(self.transport_error(base, e)),
            };
            let delay = self.retry.delay(attempt - 1, retry_after);
            tracing::debug!(attempt, ?delay, "retrying twilio create");
            tokio::time::sleep(delay).await;
        }
    }

    fn transport_error(&self, base: &Url, e: reqwest::Error) -> TwilioError {
        // reqwest's Display includes the URL, which names the account sid but no secret.
        let detail = source_chain(&e);
        if e.is_connect() {
            TwilioError::Unreachable {
                base: base.to_string(),
                detail,
            }
        } else if e.is_timeout() {
            TwilioError::TimedOut(self.timeout)
        } else {
            TwilioError::Transport(detail)
        }
    }
}

/// `{base}/2010-04-01/Accounts/{sid}/Messages.json`.
fn messages_url(base: &Url, account_sid: &str) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("api_base is an http(s) URL")
        .pop_if_empty()
        .extend(["2010-04-01", "Accounts", account_sid, "Messages.json"]);
    url
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

async fn read_resource(response: reqwest::Response) -> Result<Value, TwilioError> {
    let status = response.status();
    if !status.is_success() {
        return Err(api_error(response).await);
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| TwilioError::BadResponse {
            http_status: status.as_u16(),
            detail: source_chain(&e),
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(resource @ Value::Object(_)) => Ok(resource),
        Ok(_) => Err(TwilioError::BadResponse {
            http_status: status.as_u16(),
            detail: "expected a JSON object".into(),
        }),
        Err(e) => Err(TwilioError::BadResponse {
            http_status: status.as_u16(),
            detail: e.to_string(),
        }),
    }
}

/// Reads Twilio's error resource: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
async fn api_error(response: reqwest::Response) -> TwilioError {
    let http_status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    TwilioError::Api {
        http_status,
        code: body.get("code").and_then(Value::as_i64),
        message: body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("twilio answered HTTP {http_status}")),
        more_info: body
            .get("more_info")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_url_keeps_a_base_path() {
        let base = Url::parse("http://127.0.0.1:4010/").unwrap();
        assert_eq!(
            messages_url(&base, "AC1").as_str(),
            "http://127.0.0.1:4010/2010-04-01/Accounts/AC1/Messages.json"
        );
    }

    /// ARCHITECTURE.md's invariant "only `twilio` names Twilio fields": no program code outside
    /// `src/twilio/` spells a status-callback field or the `whatsapp:` channel prefix. Unit-test
    /// modules (`#[cfg(test)] mod tests`, at the end of a file) may, as `tests/` does.
    #[test]
    fn only_twilio_names_twilio_fields() {
        const TWILIO_NAMES: [&str; 5] = [
            "MessageSid",
            "MessageStatus",
            "ErrorCode",
            // Quoted: `BadAccountSid` and the like name a script's argument, not the field.
            "\"AccountSid\"",
            "\"whatsapp:",
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let twilio = src.join("twilio");
        let mut dirs = vec![src];
        let mut checked = 0;
        let mut offences = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == twilio {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let program = text
                        .find("\n#[cfg(test)]\nmod tests")
                        .map_or(text.as_str(), |end| &text[..end]);
                    for (n, line) in program.lines().enumerate() {
                        if let Some(name) = TWILIO_NAMES.iter().find(|name| line.contains(*name)) {
                            offences.push(format!("{}:{}: {name}", path.display(), n + 1));
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "only {checked} files found under src/");
        assert!(
            offences.is_empty(),
            "Twilio names outside src/twilio/; read them through twilio::webhook or twilio::address:\n{}",
            offences.join("\n")
        );
    }

    #[test]
    fn a_template_is_sent_as_content_sid_and_variables_without_a_body() {
        let variables = vec![
            ("2".to_string(), "3pm".to_string()),
            ("1".to_string(), "Ana \"A\"".to_string()),
        ];
        let message = NewMessage {
            to: "whatsapp:+393331234567".into(),
            from: "whatsapp:+14155238886".into(),
            content: MessageContent::Template {
                content_sid: "HX0123456789abcdef0123456789abcdef".into(),
                variables: Some(content_variables_json(&variables)),
            },
            status_callback: Some("http://h/cb".into()),
        };
        assert_eq!(
            message.form(),
            [
                ("To", "whatsapp:+393331234567"),
                ("From", "whatsapp:+14155238886"),
                ("ContentSid", "HX0123456789abcdef0123456789abcdef"),
                ("ContentVariables", r#"{"2":"3pm","1":"Ana \"A\""}"#),
                ("StatusCallback", "http://h/cb"),
            ]
        );
    }

    #[test]
    fn content_sids_are_hx_and_32_hex_digits() {
        assert!(is_content_sid("HX0123456789abcdefABCDEF0123456789"));
        for bad in [
            "",
            "HX",
            "HX0123456789abcdef0123456789abcde",
            "HX0123456789abcdef0123456789abcdef0",
            "hx0123456789abcdef0123456789abcdef",
            "AC0123456789abcdef0123456789abcdef",
            "HX0123456789abcdef0123456789abcdeg",
            "HXé123456789abcdef0123456789abcde",
        ] {
            assert!(!is_content_sid(bad), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        let d = p.delay(1, None);
        assert!(d >= Duration::from_millis(250) && d <= Duration::from_millis(500));
    }
}
