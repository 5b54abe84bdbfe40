//! Stand-ins the tests share: Twilios that accept or refuse creates, one that records each
//! request and when it arrived, a media server that answers range probes, and a Cloud Storage
//! service-account key made at run time. Everything listens on 127.0.0.1; nothing reaches the
//! internet.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use wiremock::matchers::{any, header, method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{ACCOUNT_SID, FROM};

/// A tenant's own Twilio account, passed by scripts in the 5–7 argument forms.
pub const TENANT_SID: &str = "ACfedcba9876543210fedcba9876543210";
pub const TENANT_SECRET: &str = "tenant-secret-do-not-print";
/// A UK mobile: valid, and not the sandbox number, so tenant sends are not throttled.
pub const TENANT_FROM: &str = "+447911123456";
/// The service account the generated key belongs to.
pub const CLIENT_EMAIL: &str = "media-signer@whatsapp-host-test.iam.gserviceaccount.com";
/// What the media stand-in reports for an accepted file: a small JPEG.
pub const MEDIA_TYPE: &str = "image/jpeg";
pub const MEDIA_SIZE: u64 = 48_213;

/// The sid [`mock_twilio`] gives every message it accepts; no test posts callbacks for it.
pub const SENT_SID: &str = "SMffffffffffffffffffffffffffffffff";

/// What Twilio answers to a successful create.
pub fn created(sid: &str, to: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "sid": sid,
        "account_sid": ACCOUNT_SID,
        "status": "queued",
        "to": format!("whatsapp:{to}"),
        "from": format!("whatsapp:{FROM}"),
        "body": "",
        "error_code": null,
        "error_message": null,
    }))
}

/// Makes the Twilio stand-in answer every create with `template`.
pub async fn twilio_answers(server: &MockServer, template: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path_regex(
            r"^/2010-04-01/Accounts/AC[0-9a-f]{32}/Messages\.json$",
        ))
        .respond_with(template)
        .mount(server)
        .await;
}

/// A Twilio stand-in that answers every create with `template`.
pub async fn twilio_answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    twilio_answers(&server, template).await;
    server
}

/// A Twilio stand-in that accepts every message create, always as [`SENT_SID`].
pub async fn mock_twilio() -> MockServer {
    twilio_answering(created(SENT_SID, "+393331234567")).await
}

/// How the Twilio stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 201 with a message resource built from the request, as Twilio answers a create.
    Created,
    /// An error resource in Twilio's shape, with an optional `Retry-After` header.
    Error {
        status: u16,
        code: i64,
        message: &'static str,
        retry_after: Option<&'static str>,
    },
    /// A 201 that only starts after `delay`: a Twilio that hangs.
    Hang(Duration),
}

impl Reply {
    /// Twilio's 429: "Too Many Requests", code 20429.
    pub fn rate_limited(retry_after: &'static str) -> Self {
        Reply::Error {
            status: 429,
            code: 20429,
            message: "Too Many Requests",
            retry_after: Some(retry_after),
        }
    }
}

/// What the stand-in saw and answered, in arrival order.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub status: u16,
    /// The JSON body it answered with.
    pub body: Value,
}

struct Script {
    replies: Mutex<VecDeque<Reply>>,
    then: Reply,
    log: Arc<Mutex<Vec<Arrival>>>,
}

impl Respond for Script {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let reply = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.then.clone());
        let mut log = self.log.lock().unwrap();
        let n = log.len() + 1;
        let (status, body, template) = match reply {
            Reply::Created => {
                let body = message_resource(request, n);
                (
                    201,
                    body.clone(),
                    ResponseTemplate::new(201).set_body_json(body),
                )
            }
            Reply::Hang(delay) => {
                let body = message_resource(request, n);
                let template = ResponseTemplate::new(201)
                    .set_body_json(body.clone())
                    .set_delay(delay);
                (201, body, template)
            }
            Reply::Error {
                status,
                code,
                message,
                retry_after,
            } => {
                let body = json!({
                    "code": code,
                    "message": message,
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                    "status": status,
                });
                let mut template = ResponseTemplate::new(status).set_body_json(body.clone());
                if let Some(after) = retry_after {
                    template = template.insert_header("Retry-After", after);
                }
                (status, body, template)
            }
        };
        log.push(Arrival {
            at: Instant::now(),
            status,
            body,
        });
        template
    }
}

/// A Message resource as Twilio returns it for a create, echoing the request's fields.
fn message_resource(request: &Request, n: usize) -> Value {
    let form = form(request);
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let account = request
        .url
        .path_segments()
        .and_then(|mut s| s.nth(2))
        .unwrap_or_default()
        .to_string();
    let sid = format!("SM{n:032x}");
    let media = form.iter().filter(|(k, _)| k == "MediaUrl").count();
    json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": field("Body"),
        "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
        "date_sent": null,
        "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": field("From"),
        "messaging_service_sid": null,
        "num_media": media.to_string(),
        "num_segments": "1",
        "price": null,
        "price_unit": null,
        "sid": sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json")
        },
        "to": field("To"),
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
    })
}

/// A Twilio Messages API stand-in that answers scripted replies, then `Created`.
pub struct TwilioStandIn {
    pub server: MockServer,
    log: Arc<Mutex<Vec<Arrival>>>,
}

impl TwilioStandIn {
    /// Answers every request with 201 and a message resource.
    pub async fn start() -> Self {
        Self::scripted(Vec::new(), Reply::Created).await
    }

    /// Answers with `first` in order, then with `then` for every later request.
    pub async fn scripted(first: Vec<Reply>, then: Reply) -> Self {
        let server = MockServer::start().await;
        let log = Arc::new(Mutex::new(Vec::new()));
        Mock::given(any())
            .respond_with(Script {
                replies: Mutex::new(first.into()),
                then,
                log: log.clone(),
            })
            .mount(&server)
            .await;
        Self { server, log }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Every request received, in order.
    pub async fn requests(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .expect("request recording is on")
    }

    /// When each request arrived and what it was answered.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.log.lock().unwrap().clone()
    }
}

/// The request's form fields in order, with repeated keys kept.
pub fn form(request: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect()
}

/// Every value sent under `key`.
pub fn values(form: &[(String, String)], key: &str) -> Vec<String> {
    form.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The user and password of the request's Basic `Authorization` header.
pub fn basic_auth(request: &Request) -> (String, String) {
    let value = request
        .headers
        .get("authorization")
        .expect("an Authorization header")
        .to_str()
        .unwrap();
    let encoded = value
        .strip_prefix("Basic ")
        .unwrap_or_else(|| panic!("Authorization is not Basic: {value}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("Basic credentials are base64");
    let decoded = String::from_utf8(decoded).unwrap();
    let (user, password) = decoded.split_once(':').expect("user:password");
    (user.to_string(), password.to_string())
}

/// A media server answering `Range: bytes=0-0` with 206, `Content-Range: bytes 0-0/{total}`
/// and `content_type`, for any path. Other requests get wiremock's 404.
pub async fn media_server(content_type: &str, total: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("range", "bytes=0-0"))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header("Content-Range", format!("bytes 0-0/{total}").as_str())
                .set_body_raw(vec![0xff], content_type),
        )
        .mount(&server)
        .await;
    server
}

/// One RSA key per test binary: generating it is the slow part of signing tests.
fn private_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("generate an RSA key")
    })
}

/// A service-account key written to disk, and the public half to verify its signatures.
pub struct ServiceAccount {
    pub path: PathBuf,
    pub public_key: RsaPublicKey,
    /// The PEM text, so tests can check it never leaks.
    pub private_pem: String,
}

impl ServiceAccount {
    /// Writes `gcs-signer.json` in `dir`, shaped like a key downloaded from Google Cloud.
    pub fn create(dir: &Path) -> Self {
        let key = private_key();
        let private_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let json = json!({
            "type": "service_account",
            "project_id": "whatsapp-host-test",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": private_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "http://127.0.0.1:9/auth",
            "token_uri": "http://127.0.0.1:9/token",
        });
        let path = dir.join("gcs-signer.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        Self {
            path,
            public_key: RsaPublicKey::from(key),
            private_pem,
        }
    }

    /// A `[gcs]` section naming this key, optionally pointing URLs at a local stand-in.
    pub fn gcs_toml(&self, ttl_seconds: u64, endpoint: Option<&str>) -> String {
        let endpoint = endpoint
            .map(|e| format!("endpoint = \"{e}\"\n"))
            .unwrap_or_default();
        format!(
            "\n[gcs]\nservice_account_key = \"{}\"\nsigned_url_ttl_seconds = {ttl_seconds}\n{endpoint}",
            self.path.display()
        )
    }
}
