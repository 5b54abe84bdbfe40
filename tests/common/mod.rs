//! Test helpers shared by the integration tests: settings in a temporary folder, a server on
//! port 0, and typed requests that talk to it over HTTP as Twilio and users do.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::oneshot;
use whatsapp_host::server::Application;
use whatsapp_host::services::Services;
use whatsapp_host::settings::Settings;
use whatsapp_host::store::Store;
use whatsapp_host::twilio::{self, signature};

/// The app every test uses unless it says otherwise.
pub const APP: &str = "crm";
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_KEY: &str = "test-auth-key-do-not-print";
pub const FROM: &str = "+14155238886";

/// Builds a settings file in a temporary folder, with actions written beside it.
pub struct TestConfig {
    pub dir: TempDir,
    pub api_base: String,
    pub public_url: Option<String>,
    pub callback: Option<String>,
    pub actions: BTreeMap<String, String>,
    /// Extra TOML appended verbatim (more sections, or keys for `[actions]` via `actions_toml`).
    pub extra: String,
    pub actions_toml: String,
    pub app_toml: String,
    /// Extra keys for the `[server]` section.
    pub server_toml: String,
    pub media_check: bool,
}

impl TestConfig {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            api_base: "http://127.0.0.1:9".into(),
            public_url: None,
            callback: None,
            actions: BTreeMap::new(),
            extra: String::new(),
            actions_toml: String::new(),
            app_toml: String::new(),
            server_toml: String::new(),
            media_check: true,
        }
    }

    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api_base = url.into();
        self
    }

    /// Sets the app's callback action and writes its source to `actions/{id}.js`.
    pub fn action(mut self, id: &str, source: &str) -> Self {
        self.callback = Some(id.to_string());
        self.actions.insert(id.to_string(), source.to_string());
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("whatsapp-host.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes the settings file and actions; returns the file's path.
    pub fn write(&self, listen: SocketAddr) -> PathBuf {
        let actions_dir = self.dir.path().join("actions");
        std::fs::create_dir_all(&actions_dir).unwrap();
        for (id, src) in &self.actions {
            std::fs::write(actions_dir.join(format!("{id}.js")), src).unwrap();
        }
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"));
        let callback = self
            .callback
            .as_ref()
            .map(|c| format!("callback = \"{c}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
[server]
listen = "{listen}"
public_url = "{public_url}"
data_dir = "data"
actions_dir = "actions"
shutdown_grace_seconds = 2
{server_toml}

[twilio]
api_base = "{api_base}"
timeout_seconds = 2

[media]
check = {media_check}

[actions]
retry_base_ms = 20
retry_max_ms = 100
workers = 2
{actions_toml}

[apps.{APP}.WHATSAPP]
account_id = "{ACCOUNT_SID}"
auth_key = "{AUTH_KEY}"
from_number = "{FROM}"
{callback}{app_toml}
{extra}
"#,
            api_base = self.api_base,
            media_check = self.media_check,
            actions_toml = self.actions_toml,
            app_toml = self.app_toml,
            server_toml = self.server_toml,
            extra = self.extra,
        );
        let path = self.path();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Loads the written settings as the binary would (no environment overrides).
    pub fn settings(&self, listen: SocketAddr) -> Arc<Settings> {
        let path = self.write(listen);
        Arc::new(Settings::load(&path, &[]).expect("test settings load"))
    }
}

/// Short retry delays so retry tests take milliseconds.
pub fn fast_retry() -> twilio::RetryPolicy {
    twilio::RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
    }
}

/// A server running on port 0 in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener's address, when the settings set `server.admin_listen`.
    pub admin_addr: Option<SocketAddr>,
    pub base_url: String,
    pub services: Services,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts the server for a config, on a free port.
pub async fn spawn_app(config: &TestConfig) -> TestApp {
    // Reserve a port first so public_url (what Twilio signs) can name it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let settings = config.settings(addr);
    let services = Services::start_with(settings, fast_retry()).expect("services start");
    let app = Application::build(services.clone())
        .await
        .expect("server binds");
    let addr = app.local_addr();
    let admin_addr = app.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        admin_addr,
        base_url: format!("http://{addr}"),
        services,
        http: reqwest::Client::new(),
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    pub fn store(&self) -> &Store {
        &self.services.store
    }

    pub fn callback_url(&self, app: &str, company: &str) -> String {
        format!("{}/whatsapp/callback/{app}/{company}", self.base_url)
    }

    /// Posts a callback signed with the test auth key over exactly `url`.
    pub async fn post_signed(&self, url: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let fields = owned(fields);
        let sig = signature::sign(AUTH_KEY, url, &fields);
        self.http
            .post(url)
            .header("X-Twilio-Signature", sig)
            .form(&fields)
            .send()
            .await
            .expect("callback request")
    }

    /// Posts a signed status callback for `sid` with `status` to the documented route.
    pub async fn post_status(&self, company: &str, sid: &str, status: &str) -> reqwest::Response {
        let url = self.callback_url(APP, company);
        let fields = status_fields(sid, status);
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.post_signed(&url, &fields).await
    }

    /// Waits until `check` is true, polling the store; panics with `what` after `timeout`.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server shut down cleanly");
        }
    }
}

/// The fields Twilio posts for a WhatsApp status callback.
pub fn status_fields(sid: &str, status: &str) -> Vec<(String, String)> {
    twilio::simulate::status_callback_fields(sid, ACCOUNT_SID, FROM, "+393331234567", status)
}

pub fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The repository root, for reading `../shared` and committed files.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
