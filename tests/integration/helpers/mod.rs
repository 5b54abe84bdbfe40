//! Test helpers shared by the integration tests: settings in a temporary folder, a server on
//! port 0, and typed requests that talk to it over HTTP as Twilio and users do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use whatsapp_host::server::Application;
use whatsapp_host::services::Services;
use whatsapp_host::settings::Settings;
use whatsapp_host::store::{Event, EventFilter, EventState, Store};
use whatsapp_host::twilio::{self, signature};
use wiremock::MockServer;

pub mod dashboard;
pub mod host;
pub mod pg;
pub mod rows;
pub mod stand_ins;

/// How long a test waits for the server to reach a state; long enough for a slow CI machine,
/// and every wait ends as soon as its condition holds.
pub const WAIT: Duration = Duration::from_secs(10);

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
    /// `[media] allow_local`: lets the media check fetch the local http stand-ins.
    pub media_allow_local: bool,
    /// The app's `gcs_buckets`, the buckets it may sign URLs for.
    pub gcs_buckets: Vec<String>,
    /// `[actions]` keys and their TOML values; [`TestConfig::new`] sets short retries and two
    /// workers, and [`TestConfig::actions_setting`] adds or replaces one.
    pub actions_settings: BTreeMap<String, String>,
    /// More apps on the test account, as (app id, callback action id).
    pub more_apps: Vec<(String, String)>,
    /// `[store] url`: a PostgreSQL database, or `None` for the embedded store under
    /// `data_dir`. [`TestConfig::new`] sets a fresh database when `WHATSAPP_HOST_TEST_STORE`
    /// is `postgres` ([`pg::matrix_on_postgres`]).
    pub store_url: Option<String>,
    /// More `[store]` keys and their TOML values, e.g. `lease_seconds`.
    pub store_settings: BTreeMap<String, String>,
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
            media_allow_local: false,
            gcs_buckets: Vec::new(),
            actions_settings: [
                ("retry_base_ms", "20"),
                ("retry_max_ms", "100"),
                ("workers", "2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            more_apps: Vec::new(),
            store_url: pg::matrix_on_postgres().then(pg::fresh_database_blocking),
            store_settings: BTreeMap::new(),
        }
    }

    /// Puts the store on a fresh PostgreSQL database, whatever `WHATSAPP_HOST_TEST_STORE` says.
    pub fn postgres(mut self) -> Self {
        self.store_url = Some(pg::fresh_database_blocking());
        self
    }

    /// Keeps the store embedded (SQLite under `data_dir`) whatever `WHATSAPP_HOST_TEST_STORE`
    /// says, for tests about its files; name such tests `…_sqlite_only` so the PostgreSQL run
    /// of scripts/test.sh skips them.
    pub fn sqlite(mut self) -> Self {
        self.store_url = None;
        self
    }

    /// Sets `[store] key = value`; `value` is written as TOML. The embedded store ignores the
    /// keys that only PostgreSQL uses (`lease_seconds`, `poll_ms`).
    pub fn store_setting(mut self, key: &str, value: impl ToString) -> Self {
        self.store_settings
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Opens the store these settings name (written already, by starting a server on them),
    /// as the server does: the embedded store under `data_dir`, or the PostgreSQL database.
    /// Works beside a running server on both backends.
    pub async fn open_store(&self) -> Store {
        let settings = Settings::load(&self.path(), &[])
            .expect("the settings are written: start a server on them before opening the store");
        Store::connect(&settings)
            .await
            .unwrap_or_else(|e| panic!("the test store opens: {e}"))
    }

    /// Sets `[actions] key = value`, replacing the default if there is one; `value` is written
    /// as TOML, so numbers go in as they are.
    pub fn actions_setting(mut self, key: &str, value: impl ToString) -> Self {
        self.actions_settings
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Adds app `id`, on the test account and key, whose callback runs `source` as its action
    /// `action` (written to `actions/{action}.js` beside the main app's).
    pub fn app(mut self, id: &str, action: &str, source: &str) -> Self {
        self.actions.insert(action.to_string(), source.to_string());
        self.more_apps.push((id.to_string(), action.to_string()));
        self
    }

    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api_base = url.into();
        self
    }

    /// Settings whose app runs `source` for each status callback, as its action `onStatus`.
    pub fn on_status(source: &str) -> Self {
        Self::new().action("onStatus", source)
    }

    /// Settings in simulate mode, written: sends are answered locally, nothing leaves the
    /// machine. For running the binary, which reads the file itself.
    pub fn simulated() -> Self {
        let config =
            Self::on_status("utils.info('status ' + vo.MessageStatus);").api_base("simulate");
        config.write("127.0.0.1:9".parse().unwrap());
        config
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
        let actions_settings: String = self
            .actions_settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        let more_apps: String = self
            .more_apps
            .iter()
            .map(|(id, action)| {
                format!(
                    "[apps.{id}.WHATSAPP]\naccount_id = \"{ACCOUNT_SID}\"\nauth_key = \"{AUTH_KEY}\"\n\
                     from_number = \"{FROM}\"\ncallback = \"{action}\"\n"
                )
            })
            .collect();
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
allow_local = {media_allow_local}

[actions]
{actions_settings}{actions_toml}

[apps.{APP}.WHATSAPP]
account_id = "{ACCOUNT_SID}"
auth_key = "{AUTH_KEY}"
from_number = "{FROM}"
gcs_buckets = {gcs_buckets:?}
{callback}{app_toml}
{more_apps}
{extra}
"#,
            api_base = self.api_base,
            media_check = self.media_check,
            media_allow_local = self.media_allow_local,
            gcs_buckets = self.gcs_buckets,
            actions_toml = self.actions_toml,
            app_toml = self.app_toml,
            server_toml = self.server_toml,
            extra = self.extra,
        );
        let text = text + &self.store_toml();
        let path = self.path();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The `[store]` section, or nothing when every key keeps its default.
    fn store_toml(&self) -> String {
        if self.store_url.is_none() && self.store_settings.is_empty() {
            return String::new();
        }
        let mut toml = String::from("\n[store]\n");
        if let Some(url) = &self.store_url {
            toml += &format!("url = \"{url}\"\n");
        }
        for (key, value) in &self.store_settings {
            toml += &format!("{key} = {value}\n");
        }
        toml
    }

    /// Loads the written settings as the binary would (no environment overrides).
    pub fn settings(&self, listen: SocketAddr) -> Arc<Settings> {
        let path = self.write(listen);
        Arc::new(Settings::load(&path, &[]).expect("test settings load"))
    }

    /// The `whatsapp-host` binary on these settings, run in their folder, with no environment
    /// variable that could point it at other settings or override them.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_whatsapp-host"));
        command
            .arg("--settings")
            .arg(self.path())
            .current_dir(self.dir.path())
            .env_remove("WHATSAPP_HOST_SETTINGS")
            .env_remove("WHATSAPP_HOST_STORE_URL")
            .env_remove("WHATSAPP_CRM_AUTH_KEY");
        command
    }

    /// Runs the binary with `args` as a user would and waits for it to exit.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("the binary runs")
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

/// A free port on 127.0.0.1, found by binding port 0 and letting go of it.
pub fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// Where Twilio posts status callbacks for `app` and `company` on the server at `base_url`.
pub fn callback_url(base_url: &str, app: &str, company: &str) -> String {
    let base = url::Url::parse(base_url).expect("base_url is a URL");
    whatsapp_host::routes::callback_url(&base, app, company)
}

/// A callback request to `url`, signed with the test auth key over exactly `url`.
pub fn signed_callback(
    http: &reqwest::Client,
    url: &str,
    fields: &[(String, String)],
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("X-Twilio-Signature", signature::sign(AUTH_KEY, url, fields))
        .form(fields)
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
    // Bind first so public_url (what Twilio signs) can name the port, and keep the socket, so
    // nothing else on the machine can take the port before the server serves on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port on 127.0.0.1");
    let settings = config.settings(listener.local_addr().unwrap());
    let services = Services::start_with(settings, fast_retry())
        .await
        .expect("services start");
    let app = Application::build_on(services.clone(), listener)
        .await
        .expect("server starts");
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

/// Starts a server whose app runs `source` for each status callback and sends through a Twilio
/// stand-in that accepts every create ([`stand_ins::mock_twilio`]); returns both.
pub async fn spawn_app_with_twilio(source: &str) -> (TestApp, MockServer) {
    let twilio = stand_ins::mock_twilio().await;
    let app = spawn_app(&TestConfig::on_status(source).api_base(twilio.uri())).await;
    (app, twilio)
}

impl TestApp {
    pub fn store(&self) -> &Store {
        &self.services.store
    }

    pub fn callback_url(&self, app: &str, company: &str) -> String {
        callback_url(&self.base_url, app, company)
    }

    /// GETs `path` on the server.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Posts `fields` as a form with whatever signature and idempotency token the test chooses.
    pub async fn post_form(
        &self,
        url: &str,
        fields: &[(String, String)],
        signature: Option<&str>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.post(url).form(fields);
        if let Some(sig) = signature {
            request = request.header("X-Twilio-Signature", sig);
        }
        if let Some(token) = token {
            request = request.header("I-Twilio-Idempotency-Token", token);
        }
        request.send().await.expect("callback request")
    }

    /// Posts a callback signed with the test auth key over exactly `url`.
    pub async fn post_signed<K: AsRef<str>, V: AsRef<str>>(
        &self,
        url: &str,
        fields: &[(K, V)],
    ) -> reqwest::Response {
        signed_callback(&self.http, url, &owned(fields))
            .send()
            .await
            .expect("callback request")
    }

    /// Posts `fields` to `url`, signed as Twilio would sign `signed_url`.
    pub async fn post_signed_as(
        &self,
        url: &str,
        signed_url: &str,
        fields: &[(String, String)],
    ) -> reqwest::Response {
        let sig = signature::sign(AUTH_KEY, signed_url, fields);
        self.post_form(url, fields, Some(&sig), None).await
    }

    /// Posts a raw body with a content type and a signature over it as an empty form.
    pub async fn post_raw(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.http
            .post(url)
            .header("Content-Type", content_type)
            .header("X-Twilio-Signature", signature::sign(AUTH_KEY, url, &[]))
            .body(body)
            .send()
            .await
            .expect("raw request")
    }

    /// Posts a signed status callback for `sid` with `status` to the documented route.
    pub async fn post_status(&self, company: &str, sid: &str, status: &str) -> reqwest::Response {
        let url = self.callback_url(APP, company);
        self.post_signed(&url, &status_fields(sid, status)).await
    }

    /// `/healthz`: its status code and JSON body.
    pub async fn healthz(&self) -> (u16, Value) {
        let response = self.get("/healthz").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("healthz answers JSON"))
    }

    /// Every stored event, newest first.
    pub async fn all_events(&self) -> Vec<Event> {
        self.store()
            .events(EventFilter::default())
            .await
            .expect("events query")
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

    /// Waits until exactly `n` events are stored and every one of them is in `state`.
    pub async fn wait_for_events(&self, n: usize, state: EventState) {
        self.wait_for(
            &format!("{n} event(s) in state {}", state.as_str()),
            WAIT,
            || async move {
                let events = self.all_events().await;
                events.len() == n && events.iter().all(|e| e.state == state)
            },
        )
        .await;
    }

    /// Waits until the dispatcher has nothing accepted and unfinished, so counts are final.
    pub async fn wait_for_idle(&self) {
        self.wait_for("the dispatch backlog to empty", WAIT, || async {
            self.healthz().await.1["backlog"] == 0
        })
        .await;
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

/// Form fields as owned pairs, whatever string type the test wrote them in.
pub fn owned<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
        .collect()
}

/// The repository root, for reading `../shared` and committed files.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Set in the process [`alone_in_a_process`] starts, to the name of the test it runs.
const ALONE: &str = "INTEGRATION_TEST_ALONE";

/// For a test that reads process-wide state (the metrics recorder), which the other tests in
/// this binary move while they run: reruns `test` (its path, e.g. `metrics::name`) alone in a
/// fresh process of this binary and fails if it fails there. Returns true only in that process,
/// where the test's body runs; elsewhere the test returns once the rerun has passed.
pub fn alone_in_a_process(test: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|name| name == test) {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .expect("the test binary reruns");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} alone in its own process:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// A `whatsapp-host serve` child process, killed when dropped.
pub struct ServedBinary {
    pub child: tokio::process::Child,
    pub base_url: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServedBinary {
    /// The server's process id; panics if it has already been waited for.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server has not been waited for")
    }
}

/// The last 20 lines of a log file, for failure messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl TestConfig {
    /// Writes the settings for a fresh port, starts the real binary on them with `RUST_LOG`
    /// set to `rust_log` and its output appended to `log`, and waits up to `wait` for
    /// `/healthz`, as an operator's supervisor would.
    pub async fn serve_binary(&self, log: &Path, rust_log: &str, wait: Duration) -> ServedBinary {
        // The port is free when picked but the binary binds it later: another process may take
        // it in between, so a start that could not listen is tried again on another port.
        for _ in 0..3 {
            if let Some(served) = self
                .try_serve_binary(free_addr(), log, rust_log, wait)
                .await
            {
                return served;
            }
        }
        panic!(
            "the server could not listen on three free ports:\n{}",
            log_tail(log)
        );
    }

    /// [`TestConfig::serve_binary`] on a given address, e.g. to restart a killed server where
    /// its clients expect it; tries for `wait` while the address is still taken.
    pub async fn serve_binary_at(
        &self,
        addr: SocketAddr,
        log: &Path,
        rust_log: &str,
        wait: Duration,
    ) -> ServedBinary {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(served) = self.try_serve_binary(addr, log, rust_log, wait).await {
                return served;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the server could not listen on {addr}:\n{}", log_tail(log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_serve_binary(
        &self,
        addr: SocketAddr,
        log: &Path,
        rust_log: &str,
        wait: Duration,
    ) -> Option<ServedBinary> {
        self.write(addr);
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = tokio::process::Command::from(self.command())
            .arg("serve")
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("the whatsapp-host binary starts");
        let base_url = format!("http://{addr}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if log_tail(log).contains(&format!("failed to listen on {addr}")) {
                    return None;
                }
                panic!("the server exited with {status}:\n{}", log_tail(log));
            }
            let health = http.get(format!("{base_url}/healthz")).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Some(ServedBinary {
                    child,
                    base_url,
                    addr,
                });
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the server never became healthy:\n{}", log_tail(log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
