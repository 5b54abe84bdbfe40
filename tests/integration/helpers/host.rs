//! The outbound services without an HTTP server, wired to a Twilio stand-in, a media server
//! and a Cloud Storage key, for tests that run scripts and sends straight through the engine.

use std::net::SocketAddr;

use serde_json::Value;
use whatsapp_host::js::{Program, RunError};
use whatsapp_host::outbound::Caller;
use whatsapp_host::services::Services;
use whatsapp_host::twilio::RetryPolicy;
use wiremock::{MockServer, Request};

use crate::helpers::stand_ins::{
    MEDIA_SIZE, MEDIA_TYPE, ServiceAccount, TwilioStandIn, media_server,
};
use crate::helpers::{TestConfig, fast_retry};

/// The company every send is made for.
pub const COMPANY: &str = "ACME";
/// The buckets the usual host's app may sign URLs for (`gcs_buckets`): the ones tests send from.
pub const BUCKETS: &[&str] = &["tickets-eu", "receipts", "tickets"];
/// Sends run without an HTTP server; the listen address only shapes the callback URL.
const LISTEN: &str = "127.0.0.1:0";

/// How a test wants its host set up; `Setup::default()` is the usual one.
pub struct Setup {
    /// The media server; `None` starts one serving an accepted JPEG.
    pub media: Option<MockServer>,
    /// Whether `[gcs]` names a service-account key (signed URLs point at the media server).
    pub gcs: bool,
    pub media_check: bool,
    /// `[media] allow_local`: on by default, since the media server is a local http stand-in.
    pub media_allow_local: bool,
    /// The app's `gcs_buckets`; [`BUCKETS`] by default.
    pub gcs_buckets: Vec<String>,
    pub app_toml: String,
    pub extra: String,
    pub retry: RetryPolicy,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            media: None,
            gcs: true,
            media_check: true,
            media_allow_local: true,
            gcs_buckets: BUCKETS.iter().map(|b| b.to_string()).collect(),
            app_toml: String::new(),
            extra: String::new(),
            retry: fast_retry(),
        }
    }
}

/// The outbound services wired to the stand-ins, plus what the test needs to inspect them.
pub struct Host {
    pub services: Services,
    pub media: MockServer,
    pub key: ServiceAccount,
    /// Owns the temporary folder holding the settings, key and store.
    pub config: TestConfig,
}

impl Host {
    /// Starts the services on settings that send through `api_base`, set up as `setup` says.
    pub async fn start(api_base: &str, setup: Setup) -> Host {
        let media = match setup.media {
            Some(media) => media,
            None => media_server(MEDIA_TYPE, MEDIA_SIZE).await,
        };
        let mut config = TestConfig::new().api_base(api_base);
        let key = ServiceAccount::create(config.dir.path());
        config.media_check = setup.media_check;
        config.media_allow_local = setup.media_allow_local;
        config.gcs_buckets = setup.gcs_buckets;
        config.app_toml = setup.app_toml;
        config.extra = setup.extra;
        if setup.gcs {
            config.extra += &key.gcs_toml(600, Some(&media.uri()));
        }
        let listen: SocketAddr = LISTEN.parse().unwrap();
        let services = Services::start_with(config.settings(listen), setup.retry)
            .await
            .expect("services start on the test settings");
        Host {
            services,
            media,
            key,
            config,
        }
    }

    /// The usual host, sending through `twilio`.
    pub async fn with_twilio(twilio: &TwilioStandIn) -> Host {
        Host::start(&twilio.uri(), Setup::default()).await
    }

    /// Who a script runs as: `app`, for the company every send is made for.
    pub fn caller(&self, app: &str) -> Caller {
        Caller {
            app: self.services.settings.apps[app].clone(),
            company: COMPANY.to_string(),
        }
    }

    /// Runs `source` as a script of `app` and returns its result.
    pub async fn run(&self, app: &str, source: &str) -> Result<Option<Value>, RunError> {
        self.services
            .engine
            .run(
                self.caller(app),
                Program::Script {
                    name: "test.js".into(),
                    source: source.into(),
                },
            )
            .await
    }

    /// Runs `call` as the `crm` app; checks it returned a string and parses it as JSON.
    pub async fn send(&self, call: &str) -> Value {
        self.send_as("crm", call).await
    }

    /// Runs `call` as `app`; checks it returned a string and parses it as JSON.
    pub async fn send_as(&self, app: &str, call: &str) -> Value {
        let source = format!(
            "const outcome = {call};\n\
             if (typeof outcome !== 'string') throw new Error('returned a ' + typeof outcome);\n\
             outcome"
        );
        match self.run(app, &source).await {
            Ok(Some(Value::String(text))) => {
                serde_json::from_str(&text).expect("the outcome is a JSON string")
            }
            other => panic!("{call} did not return a string: {other:?}"),
        }
    }

    /// Runs `call` as `app` and returns the class name and message of what it threw.
    pub async fn throws(&self, app: &str, call: &str) -> (String, String) {
        let source = format!(
            "let thrown = null;\n\
             try {{ {call}; }} catch (e) {{ thrown = JSON.stringify({{ name: e.name, message: e.message }}); }}\n\
             thrown"
        );
        match self.run(app, &source).await {
            Ok(Some(Value::String(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["message"].as_str().unwrap().to_string(),
                )
            }
            other => panic!("{call} did not throw: {other:?}"),
        }
    }

    /// A URL on the media server.
    pub fn media_url(&self, path: &str) -> String {
        format!("{}{path}", self.media.uri())
    }

    /// Every probe the media server received.
    pub async fn probes(&self) -> Vec<Request> {
        self.media.received_requests().await.unwrap()
    }
}
