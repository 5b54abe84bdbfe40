//! The settings file: the one place that reads TOML and environment variables, checks every value
//! at load time, and hands the rest of the program typed, validated settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::routes;
use crate::twilio;
pub(crate) use crate::twilio::ApiBase;

/// Where settings are read from when neither `--settings` nor the environment names a file.
pub(crate) const DEFAULT_PATH: &str = "whatsapp-host.toml";
/// Environment variable that names the settings file.
pub(crate) const PATH_ENV: &str = "WHATSAPP_HOST_SETTINGS";
/// Environment variable that holds the dashboard password, so it can stay out of the file.
/// Overrides `[store] url`, which may carry a password that has no place in the file.
pub(crate) const STORE_URL_ENV: &str = "WHATSAPP_HOST_STORE_URL";
pub(crate) const DASHBOARD_PASSWORD_ENV: &str = "WHATSAPP_HOST_DASHBOARD_PASSWORD";
/// The shortest dashboard password accepted, in characters. Simulate mode accepts shorter ones
/// (the committed demo settings use `demo`), and the server warns at start.
pub(crate) const MIN_DASHBOARD_PASSWORD_CHARS: usize = 12;
/// Default country code for numbers written without an international prefix.
pub(crate) const DEFAULT_COUNTRY_CODE: &str = "39";

/// Everything the host needs to run, validated. Cheap to share: handed around as `Arc<Settings>`.
#[derive(Debug)]
pub struct Settings {
    /// The file these settings came from, so later errors can point at it.
    pub(crate) source: PathBuf,
    /// `[server]`: where the host listens and the URL Twilio calls.
    pub server: Server,
    pub(crate) twilio: twilio::Config,
    pub(crate) media: Media,
    /// `[gcs]`: signing `gs://` media URLs; `None` when the section is absent.
    pub gcs: Option<Gcs>,
    pub(crate) actions: Actions,
    pub(crate) dashboard: Dashboard,
    /// `[store]`: which store, and how long it keeps what is done.
    pub(crate) store: StoreSettings,
    /// Applications by id. A `BTreeMap` so listings and `check` output are stable.
    pub apps: BTreeMap<String, Arc<App>>,
}

#[derive(Debug, Clone)]
/// The `[server]` section, checked.
pub struct Server {
    pub(crate) listen: SocketAddr,
    /// The URL Twilio calls. Its origin is what Twilio signs; its path is the web context.
    pub public_url: Url,
    pub(crate) data_dir: PathBuf,
    pub(crate) actions_dir: PathBuf,
    pub(crate) scripts_dir: PathBuf,
    /// How long shutdown waits for in-flight dispatches before closing the store.
    pub(crate) shutdown_grace: Duration,
    /// A second listener for `/healthz` and `/metrics`, so they need not be public. When set,
    /// the main listener no longer answers them.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// What every listener allows one connection.
    pub(crate) limits: ConnectionLimits,
}

/// The edge's limits per connection, so slow or large clients can't hold the host's memory or
/// its connections: each is a bound on what one client may pin, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    /// A request's head must arrive within this, counted from the connection's start or from the
    /// end of the previous response, so it also bounds a kept-alive connection waiting for its
    /// next request.
    pub(crate) header_timeout: Duration,
    /// A request's whole body must arrive within this after its head; a total, not a gap between
    /// reads, so trickling one byte at a time does not extend it.
    pub(crate) body_timeout: Duration,
    /// A connection is closed when no request is being handled and no byte has moved either way
    /// for this long: covers clients that stop reading a response.
    pub(crate) idle_timeout: Duration,
    /// The largest request head, and the size of each connection's read buffer.
    pub(crate) max_header_bytes: usize,
    /// Open connections per listener; one more is closed as soon as it is accepted.
    pub(crate) max_connections: usize,
}

impl Server {
    /// The callback URL with `{appId}` and `{companyId}` placeholders, for logs and `check`.
    pub(crate) fn callback_url_pattern(&self) -> String {
        routes::callback_url_pattern(&self.public_url)
    }

    /// The URL Twilio should call for an app and company: the documented callback route.
    pub(crate) fn callback_url(&self, app_id: &str, company_id: &str) -> String {
        routes::callback_url(&self.public_url, app_id, company_id)
    }

    /// The URL for Twilio's "a message comes in" field for an app and company.
    pub(crate) fn inbound_url(&self, app_id: &str, company_id: &str) -> String {
        routes::inbound_url(&self.public_url, app_id, company_id)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Media {
    /// Probe media URLs for size and type before sending.
    pub(crate) check: bool,
    pub(crate) max_bytes: u64,
    /// Lets the probe fetch over plain http and from loopback, private, link-local and
    /// metadata addresses. Off by default: an action's URL must not reach inside the network.
    /// For local stand-ins and tests; the server warns at start when it is on.
    pub allow_local: bool,
}

/// `[gcs]`: how `gs://` media URLs are signed. `pub` because `media::UrlSigner` is built from it.
#[derive(Debug, Clone)]
pub struct Gcs {
    /// Path of the service-account JSON key; read at start, never logged.
    pub(crate) service_account_key: PathBuf,
    pub(crate) signed_url_ttl: Duration,
    pub(crate) endpoint: Option<String>,
}

/// Below this, a JS worker process cannot map its own code and stack.
const MIN_WORKER_MEMORY_MB: u64 = 64;

#[derive(Debug, Clone)]
pub(crate) struct Actions {
    /// Wall-clock budget for one action run.
    pub(crate) budget: Duration,
    /// Wall-clock budget for a whole script run from the command line.
    pub(crate) script_budget: Duration,
    pub(crate) max_attempts: u32,
    /// First retry delay; doubles each attempt up to `retry_max`.
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) workers: usize,
    /// Memory one worker process may map, in MiB: past it, the run is stopped and its worker
    /// replaced.
    pub(crate) memory_limit_mb: u64,
    pub(crate) loop_iteration_limit: u64,
    pub(crate) recursion_limit: usize,
}

/// `[store]`, checked.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "the PostgreSQL store and retention read the rest")]
pub(crate) struct StoreSettings {
    /// A PostgreSQL URL, shared by every instance; `None` keeps the embedded SQLite file under
    /// `server.data_dir`. Secret: it may hold a password.
    pub(crate) url: Option<SecretString>,
    /// `done` and `dead` events, and messages in a final status, older than this are pruned;
    /// `None` keeps them forever (`retention_days = 0`).
    pub(crate) retention: Option<Duration>,
    /// How long an instance holds an event it claimed before another may claim it: longer
    /// than an action's budget plus its wait in this instance's queue.
    pub(crate) lease: Duration,
    /// How often an instance looks for events nobody holds, besides being woken.
    pub(crate) poll: Duration,
    /// Connections one instance opens to PostgreSQL at most.
    pub(crate) max_connections: usize,
}

/// The settings key a store URL comes from, for errors that must not show the URL itself.
pub(crate) const STORE_URL_KEY: &str = "store.url";

#[derive(Debug, Clone, Default)]
pub(crate) struct Dashboard {
    /// `None` disables the dashboard.
    pub(crate) password: Option<SecretString>,
    /// Proxies whose `X-Forwarded-For` is believed when they are the TCP peer; without them
    /// every login is attributed to the peer address.
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
}

/// One application, its WHATSAPP parameters and its tenants' own Twilio projects.
#[derive(Debug)]
pub struct App {
    pub(crate) id: String,
    /// `None` when the app has no `[apps.<id>.WHATSAPP]` section: sends with its parameters throw.
    pub(crate) whatsapp: Option<Whatsapp>,
    /// `[apps.<id>.tenants.<companyId>]`: companies that send from their own Twilio project, by
    /// company id. Twilio signs such a project's callbacks with that project's token.
    pub(crate) tenants: BTreeMap<String, Tenant>,
}

impl App {
    /// The token that signs a callback for `company` from Twilio project `account_sid`: the
    /// company's tenant's when the account is that tenant's, the app's own when it is the app's.
    /// `None` when the account is neither, so the callback is refused: one app's owner can't
    /// pass off another project's callbacks as this app's.
    pub(crate) fn callback_key(&self, company: &str, account_sid: &str) -> Option<&SecretString> {
        if let Some(tenant) = self.tenants.get(company)
            && tenant.account_id == account_sid
        {
            return Some(&tenant.auth_key);
        }
        self.whatsapp
            .as_ref()
            .filter(|w| w.account_id == account_sid)
            .map(|w| &w.auth_key)
    }

    /// The configured tenant whose Twilio project is `account_sid`, so a tenant send can ask
    /// Twilio for that tenant's callback URL. Account ids are unique among an app's tenants.
    pub(crate) fn tenant_by_account(&self, account_sid: &str) -> Option<&Tenant> {
        self.tenants.values().find(|t| t.account_id == account_sid)
    }

    /// Whether this app's callbacks must carry a valid signature. Only an app's
    /// `validate_signatures = false` turns the check off, for all of its callbacks.
    pub(crate) fn validates_signatures(&self) -> bool {
        self.whatsapp.as_ref().is_none_or(|w| w.validate_signatures)
    }
}

/// A tenant's own Twilio project: `[apps.<app>.tenants.<companyId>]`. Its sends (the forms that
/// pass accountId, secretKey and fromNr) get the callback URL for its company, and the callbacks
/// posted there are checked with its token.
#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    /// The company id: the table's key, and the last segment of the tenant's callback URL.
    pub(crate) company: String,
    pub(crate) account_id: String,
    pub(crate) auth_key: SecretString,
}

#[derive(Debug, Clone)]
pub(crate) struct Whatsapp {
    pub(crate) account_id: String,
    pub(crate) auth_key: SecretString,
    /// E.164, with the leading `+`.
    pub(crate) from_number: crate::phone::E164,
    /// Action id run for each callback; `None` stores events without running anything.
    pub(crate) callback: Option<String>,
    /// Action id run for each message a contact sends to the app's number; `None` stores
    /// inbound messages without running anything.
    pub(crate) inbound: Option<String>,
    pub(crate) sandbox: bool,
    pub(crate) default_country_code: String,
    pub(crate) validate_signatures: bool,
    /// The Cloud Storage buckets this app may sign URLs for. The signing key is shared by every
    /// app, so without this list one app could sign another's objects; empty refuses all.
    pub gcs_buckets: Vec<String>,
}

impl Whatsapp {
    /// The parameters a script may read with `utils.getParameter`: all but the auth key.
    pub(crate) fn public_parameter(&self, name: &str) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match name {
            "account_id" => Value::from(self.account_id.clone()),
            "from_number" => Value::from(self.from_number.as_str()),
            "callback" => self.callback.clone().map_or(Value::Null, Value::from),
            "inbound" => self.inbound.clone().map_or(Value::Null, Value::from),
            "sandbox" => Value::from(self.sandbox),
            "default_country_code" => Value::from(self.default_country_code.clone()),
            "validate_signatures" => Value::from(self.validate_signatures),
            _ => return None,
        })
    }
}

/// Why settings could not be loaded. Every variant names the file; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "settings file {path} not found: copy settings.example.toml to {path} or pass --settings PATH"
    )]
    Missing { path: PathBuf },
    #[error("failed to read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape. Built from the position, the key and a
    /// message with any value taken out, never from the offending line: that line may hold a
    /// secret (an unquoted `auth_key = 9876543210123` is an integer where a string belongs).
    #[error("settings file {path} is not valid: {}{message}", parse_location(*position, key.as_deref()))]
    Parse {
        path: PathBuf,
        /// 1-based line and column where the problem starts, when toml knows it.
        position: Option<(usize, usize)>,
        /// The key path, such as `apps.crm.WHATSAPP.auth_key`, when known.
        key: Option<String>,
        message: String,
    },
    #[error("settings file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A source of environment variables, so tests can load settings without touching the process.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// The environment variable that overrides an app's auth key: `WHATSAPP_<APP>_AUTH_KEY`.
pub(crate) fn auth_key_env(app_id: &str) -> String {
    format!("WHATSAPP_{}_AUTH_KEY", env_segment(app_id))
}

/// The environment variable that overrides a tenant's auth key:
/// `WHATSAPP_<APP>_<COMPANY>_AUTH_KEY`, each id normalised as in [`auth_key_env`].
pub(crate) fn tenant_auth_key_env(app_id: &str, company_id: &str) -> String {
    format!(
        "WHATSAPP_{}_{}_AUTH_KEY",
        env_segment(app_id),
        env_segment(company_id)
    )
}

/// An id as part of a variable name: ASCII letters and digits upper-cased, the rest as `_`.
fn env_segment(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Settings {
    /// Picks the settings path: the flag, then `WHATSAPP_HOST_SETTINGS`, then `whatsapp-host.toml`.
    pub(crate) fn resolve_path(flag: Option<&Path>, env: &dyn Env) -> PathBuf {
        flag.map(Path::to_path_buf)
            .or_else(|| env.var(PATH_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads and validates a settings file. Relative paths inside it are relative to its folder.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SettingsError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                SettingsError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Validates settings given as TOML text; `path` is used for messages and relative paths.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Env) -> Result<Settings, SettingsError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        Loader {
            path,
            base: &base,
            env,
        }
        .build(raw)
    }
}

/// "line 3, column 12, key apps.crm.WHATSAPP.auth_key: ", or what of it is known.
fn parse_location(position: Option<(usize, usize)>, key: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some((line, column)) = position {
        parts.push(format!("line {line}, column {column}"));
    }
    if let Some(key) = key {
        parts.push(format!("key {key}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        parts.join(", ") + ": "
    }
}

/// A [`SettingsError::Parse`] from toml's error, without its rendering: toml's `Display` quotes
/// the offending line, and serde's message quotes the offending value.
fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> SettingsError {
    let position = error.span().map(|span| line_and_column(text, span.start));
    let key = keys_of(error).or_else(|| error.span().and_then(|span| key_before(text, span.start)));
    SettingsError::Parse {
        path: path.to_path_buf(),
        position,
        key,
        message: without_values(error.message()),
    }
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The dotted key path toml collected while deserializing. toml prints it, as "in `a.b`", only
/// when it has no input to quote, so the error is shown that way and the path read back.
fn keys_of(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let rest = shown.strip_prefix(error.message())?.trim();
    let keys = rest.strip_prefix("in `")?.strip_suffix('`')?;
    (!keys.is_empty()).then(|| keys.to_string())
}

/// For a syntax error in a value, the key written before `=` on the same line, under the
/// `[table]` it is in. Only key-shaped text is taken, so no value can slip through.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text.get(line_start..offset)?.split_once('=')?;
    let key = key.trim();
    if !is_key_shaped(key) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.strip_suffix(']')?;
        let inner = inner.trim_start_matches('[').trim_end_matches(']').trim();
        is_key_shaped(inner).then_some(inner)
    });
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// Bare or dotted TOML keys: letters, digits, `_`, `-` and `.`.
fn is_key_shaped(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// serde names the value it did not expect ("invalid type: integer `9876543210123`, expected a
/// string"); keep only its kind ("integer"), since the value may be a secret.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (found, expected) = match rest.split_once(", expected ") {
                Some((found, expected)) => (found, Some(expected)),
                None => (rest, None),
            };
            let kind = found.split(['`', '"']).next().unwrap_or("").trim();
            let mut out = prefix.trim_end().to_string();
            if !kind.is_empty() {
                out = format!("{out} {kind}");
            }
            if let Some(expected) = expected {
                out = format!("{out}, expected {expected}");
            }
            return out;
        }
    }
    message.to_string()
}

struct Loader<'a> {
    path: &'a Path,
    base: &'a Path,
    env: &'a dyn Env,
}

impl Loader<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn relative(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn build(&self, raw: raw::File) -> Result<Settings, SettingsError> {
        let server = self.server(raw.server)?;
        let twilio = self.twilio(raw.twilio)?;
        let media = Media {
            check: raw.media.check,
            max_bytes: raw.media.max_bytes,
            allow_local: raw.media.allow_local,
        };
        let gcs = self.gcs(raw.gcs)?;
        let actions = self.actions(raw.actions)?;
        let dashboard = self.dashboard(raw.dashboard, &twilio.api_base)?;
        let store = self.store(raw.store)?;
        let mut apps = BTreeMap::new();
        for id in raw.apps.keys() {
            self.check_app_id(id)?;
        }
        // Which setting each auth key variable belongs to, so a tenant's can't shadow another's.
        let mut key_vars: BTreeMap<String, String> = BTreeMap::new();
        for id in raw.apps.keys() {
            let var = auth_key_env(id);
            if let Some(other) = key_vars.insert(var.clone(), format!("apps.{id}")) {
                return Err(self.invalid(
                    format!("apps.{id}"),
                    format!(
                        "its auth key variable {var} is also {other}'s: rename one of the two apps"
                    ),
                ));
            }
        }
        for (id, app) in raw.apps {
            let whatsapp = app.whatsapp.map(|w| self.whatsapp(&id, w)).transpose()?;
            let tenants = self.tenants(&id, whatsapp.as_ref(), app.tenants, &mut key_vars)?;
            apps.insert(
                id.clone(),
                Arc::new(App {
                    id,
                    whatsapp,
                    tenants,
                }),
            );
        }
        Ok(Settings {
            source: self.path.to_path_buf(),
            server,
            twilio,
            media,
            gcs,
            actions,
            dashboard,
            store,
            apps,
        })
    }

    /// App ids appear in callback URLs and environment variable names.
    fn check_app_id(&self, id: &str) -> Result<(), SettingsError> {
        if !is_valid_id(id) {
            return Err(self.invalid(
                format!("apps.{id}"),
                "an app id may use only letters, digits, '_' and '-'",
            ));
        }
        if routes::RESERVED_APP_IDS.contains(&id) {
            return Err(self.invalid(
                format!("apps.{id}"),
                format!(
                    "{id:?} is reserved: {} is one of the host's own paths; choose another app id",
                    routes::app_segment(id)
                ),
            ));
        }
        Ok(())
    }

    fn server(&self, raw: raw::Server) -> Result<Server, SettingsError> {
        let listen = raw.listen.parse().map_err(|_| {
            self.invalid(
                "server.listen",
                format!(
                    "{:?} is not an address; write it as \"127.0.0.1:8080\"",
                    raw.listen
                ),
            )
        })?;
        let public_url = Url::parse(&raw.public_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .filter(|u| u.query().is_none() && u.fragment().is_none())
            .filter(|u| u.username().is_empty() && u.password().is_none())
            .ok_or_else(|| {
                // A URL with credentials is not echoed: its password would be in the message.
                let shown = if raw.public_url.contains('@') {
                    "the value".to_string()
                } else {
                    format!("{:?}", raw.public_url)
                };
                self.invalid(
                    "server.public_url",
                    format!(
                        "{shown} is not an http(s) URL without credentials, query or fragment; write it as \"https://platform.example.com/platform\""
                    ),
                )
            })?;
        let admin_listen = raw
            .admin_listen
            .as_deref()
            .map(|a| self.admin_listen(a, listen))
            .transpose()?;
        let limits = self.connection_limits(&raw)?;
        Ok(Server {
            listen,
            public_url,
            data_dir: self.relative(raw.data_dir),
            actions_dir: self.relative(raw.actions_dir),
            scripts_dir: self.relative(raw.scripts_dir),
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
            admin_listen,
            limits,
        })
    }

    fn admin_listen(&self, text: &str, listen: SocketAddr) -> Result<SocketAddr, SettingsError> {
        let key = "server.admin_listen";
        let addr: SocketAddr = text.parse().map_err(|_| {
            self.invalid(
                key,
                format!("{text:?} is not an address; write it as \"127.0.0.1:9090\""),
            )
        })?;
        if addr == listen && addr.port() != 0 {
            return Err(self.invalid(
                key,
                "must differ from server.listen: it is a second listener",
            ));
        }
        Ok(addr)
    }

    fn connection_limits(&self, raw: &raw::Server) -> Result<ConnectionLimits, SettingsError> {
        let millis = |key: &str, ms: u64| {
            if (1..=86_400_000).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(self.invalid(
                    format!("server.{key}"),
                    "must be between 1 and 86400000 (a day)",
                ))
            }
        };
        // hyper refuses a read buffer under 8 KiB; over 1 MiB a few clients pin a lot of memory.
        if !(8192..=1_048_576).contains(&raw.max_header_bytes) {
            return Err(self.invalid(
                "server.max_header_bytes",
                "must be between 8192 and 1048576 (1 MiB); 16384 fits any real client",
            ));
        }
        if !(1..=1_000_000).contains(&raw.max_connections) {
            return Err(self.invalid("server.max_connections", "must be between 1 and 1000000"));
        }
        Ok(ConnectionLimits {
            header_timeout: millis("header_timeout_ms", raw.header_timeout_ms)?,
            body_timeout: millis("body_timeout_ms", raw.body_timeout_ms)?,
            idle_timeout: millis("idle_timeout_ms", raw.idle_timeout_ms)?,
            max_header_bytes: raw.max_header_bytes,
            max_connections: raw.max_connections,
        })
    }

    fn twilio(&self, raw: raw::Twilio) -> Result<twilio::Config, SettingsError> {
        let api_base = if raw.api_base == "simulate" {
            ApiBase::Simulate
        } else {
            let url = Url::parse(&raw.api_base)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| {
                    self.invalid(
                        "twilio.api_base",
                        format!(
                            "{:?} is neither an http(s) URL nor \"simulate\"; the real API is \"https://api.twilio.com\"",
                            raw.api_base
                        ),
                    )
                })?;
            ApiBase::Url(url)
        };
        let timeout = Some(raw.timeout_seconds)
            .filter(|&s| s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| {
                self.invalid(
                    "twilio.timeout_seconds",
                    format!(
                        "{} is not a positive number of seconds; write it as 15",
                        raw.timeout_seconds
                    ),
                )
            })?;
        Ok(twilio::Config {
            api_base,
            timeout,
            simulate_step: Duration::from_millis(raw.simulate_step_ms),
        })
    }

    fn gcs(&self, raw: raw::Gcs) -> Result<Option<Gcs>, SettingsError> {
        let key = raw.service_account_key.or_else(|| {
            self.env
                .var("GOOGLE_APPLICATION_CREDENTIALS")
                .map(PathBuf::from)
        });
        let Some(key) = key else { return Ok(None) };
        if raw.signed_url_ttl_seconds == 0 || raw.signed_url_ttl_seconds > 604_800 {
            return Err(self.invalid(
                "gcs.signed_url_ttl_seconds",
                "must be between 1 and 604800 (7 days), the V4 signing limit",
            ));
        }
        Ok(Some(Gcs {
            service_account_key: self.relative(key),
            signed_url_ttl: Duration::from_secs(raw.signed_url_ttl_seconds),
            endpoint: raw.endpoint,
        }))
    }

    fn actions(&self, raw: raw::Actions) -> Result<Actions, SettingsError> {
        if raw.budget_ms == 0 {
            return Err(self.invalid("actions.budget_ms", "must be at least 1"));
        }
        if raw.max_attempts == 0 {
            return Err(self.invalid("actions.max_attempts", "must be at least 1"));
        }
        if raw.memory_limit_mb < MIN_WORKER_MEMORY_MB {
            return Err(self.invalid(
                "actions.memory_limit_mb",
                format!("must be at least {MIN_WORKER_MEMORY_MB}: a worker process needs that much to start"),
            ));
        }
        let workers = match raw.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(Actions {
            budget: Duration::from_millis(raw.budget_ms),
            script_budget: Duration::from_millis(raw.script_budget_ms.max(raw.budget_ms)),
            max_attempts: raw.max_attempts,
            retry_base: Duration::from_millis(raw.retry_base_ms),
            retry_max: Duration::from_millis(raw.retry_max_ms.max(raw.retry_base_ms)),
            workers,
            memory_limit_mb: raw.memory_limit_mb,
            loop_iteration_limit: raw.loop_iteration_limit,
            recursion_limit: raw.recursion_limit,
        })
    }

    fn store(&self, raw: raw::Store) -> Result<StoreSettings, SettingsError> {
        let (url, source) = match self.env.var(STORE_URL_ENV).filter(|u| !u.is_empty()) {
            Some(url) => (Some(url), STORE_URL_ENV),
            None => (raw.url.filter(|u| !u.is_empty()), STORE_URL_KEY),
        };
        if let Some(url) = &url {
            crate::store::check_url(url).map_err(|why| {
                self.invalid(
                    STORE_URL_KEY,
                    format!(
                        "{source} {why}; write it as postgres://user:password@host:5432/database, or leave it out for the embedded store under server.data_dir"
                    ),
                )
            })?;
        }
        if raw.lease_seconds == 0 {
            return Err(self.invalid("store.lease_seconds", "must be at least 1"));
        }
        if raw.poll_ms == 0 {
            return Err(self.invalid("store.poll_ms", "must be at least 1"));
        }
        if raw.max_connections < 2 {
            return Err(self.invalid(
                "store.max_connections",
                "must be at least 2: one listens for wake-ups, the rest read and write",
            ));
        }
        Ok(StoreSettings {
            url: url.map(SecretString::from),
            retention: (raw.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(raw.retention_days) * 86_400)),
            lease: Duration::from_secs(raw.lease_seconds),
            poll: Duration::from_millis(raw.poll_ms),
            max_connections: raw.max_connections,
        })
    }

    fn dashboard(
        &self,
        raw: raw::Dashboard,
        api_base: &ApiBase,
    ) -> Result<Dashboard, SettingsError> {
        let from_file = raw.password.is_some();
        let password = raw
            .password
            .or_else(|| self.env.var(DASHBOARD_PASSWORD_ENV))
            .filter(|p| !p.is_empty());
        if let Some(p) = &password
            && p.chars().count() < MIN_DASHBOARD_PASSWORD_CHARS
            && *api_base != ApiBase::Simulate
        {
            let source = if from_file {
                "the password in the file"
            } else {
                DASHBOARD_PASSWORD_ENV
            };
            return Err(self.invalid(
                "dashboard.password",
                format!(
                    "{source} is shorter than {MIN_DASHBOARD_PASSWORD_CHARS} characters: choose a longer one, in [dashboard] password or {DASHBOARD_PASSWORD_ENV}; only simulate mode (twilio.api_base = \"simulate\") accepts a short one"
                ),
            ));
        }
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|entry| {
                let text = entry.trim();
                text.parse::<ipnet::IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        self.invalid(
                            "dashboard.trusted_proxies",
                            format!(
                                "{entry:?} is neither an IP address nor a CIDR range; write it as \"10.0.0.1\" or \"10.0.0.0/8\""
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Dashboard {
            password: password.map(SecretString::from),
            trusted_proxies,
        })
    }

    fn whatsapp(&self, app: &str, raw: raw::Whatsapp) -> Result<Whatsapp, SettingsError> {
        let key = |k: &str| format!("apps.{app}.WHATSAPP.{k}");
        let account_id = raw.account_id.trim().to_string();
        if !twilio::is_account_sid(&account_id) {
            return Err(self.invalid(
                key("account_id"),
                "must be \"AC\" followed by 32 hexadecimal characters, as shown in the Twilio console",
            ));
        }
        let auth_key = self
            .env
            .var(&auth_key_env(app))
            .or(raw.auth_key)
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                self.invalid(
                    key("auth_key"),
                    format!("is missing: set it in the file or in {}", auth_key_env(app)),
                )
            })?;
        let default_country_code = raw
            .default_country_code
            .unwrap_or_else(|| DEFAULT_COUNTRY_CODE.to_string());
        if default_country_code.is_empty()
            || default_country_code.len() > 3
            || !default_country_code.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(self.invalid(
                key("default_country_code"),
                "must be 1 to 3 digits without '+', for example \"39\"",
            ));
        }
        let from_number = crate::phone::normalize(&raw.from_number, &default_country_code)
            .map_err(|e| self.invalid(key("from_number"), e.to_string()))?;
        for (name, action) in [("callback", &raw.callback), ("inbound", &raw.inbound)] {
            if let Some(action) = action
                && !is_valid_id(action)
            {
                return Err(self.invalid(
                    key(name),
                    format!(
                        "{action:?} is not an action id: use letters, digits, '_' and '-' only"
                    ),
                ));
            }
        }
        if let Some(bad) = raw.gcs_buckets.iter().find(|b| !is_bucket_name(b)) {
            return Err(self.invalid(
                key("gcs_buckets"),
                format!(
                    "{bad:?} is not a Cloud Storage bucket name: 3 to 222 lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
        Ok(Whatsapp {
            account_id,
            auth_key: SecretString::from(auth_key.trim().to_string()),
            from_number,
            callback: raw.callback.filter(|c| !c.is_empty()),
            inbound: raw.inbound.filter(|c| !c.is_empty()),
            sandbox: raw.sandbox,
            default_country_code,
            validate_signatures: raw.validate_signatures,
            gcs_buckets: raw.gcs_buckets,
        })
    }

    fn tenants(
        &self,
        app: &str,
        whatsapp: Option<&Whatsapp>,
        raw: BTreeMap<String, raw::Tenant>,
        key_vars: &mut BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Tenant>, SettingsError> {
        let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
        for (company, raw) in raw {
            let key = |k: &str| format!("apps.{app}.tenants.{company}{k}");
            check_company_id(&company).map_err(|e| {
                // The id is the table's key: name it escaped, as it may hold anything.
                self.invalid(
                    format!("apps.{app}.tenants.{}", company.escape_debug()),
                    e.to_string(),
                )
            })?;
            let account_id = raw.account_id.trim().to_string();
            if !twilio::is_account_sid(&account_id) {
                return Err(self.invalid(
                    key(".account_id"),
                    "must be \"AC\" followed by 32 hexadecimal characters: the tenant's own Twilio account, as shown in its console",
                ));
            }
            if whatsapp.is_some_and(|w| w.account_id == account_id) {
                return Err(self.invalid(
                    key(".account_id"),
                    format!("is apps.{app}.WHATSAPP's own account; a tenant entry is for another Twilio project, so remove it"),
                ));
            }
            if let Some(other) = tenants.values().find(|t| t.account_id == account_id) {
                return Err(self.invalid(
                    key(".account_id"),
                    format!(
                        "is also apps.{app}.tenants.{}'s account, so a send from it could not tell which company's callback URL to give Twilio; keep one entry per Twilio project",
                        other.company
                    ),
                ));
            }
            let var = tenant_auth_key_env(app, &company);
            if let Some(owner) = key_vars.insert(var.clone(), key("")) {
                return Err(self.invalid(
                    key(""),
                    format!("its auth key variable {var} is also {owner}'s; rename the company or the app so they differ in letters or digits"),
                ));
            }
            let auth_key = self
                .env
                .var(&var)
                .or(raw.auth_key)
                .filter(|k| !k.trim().is_empty())
                .ok_or_else(|| {
                    self.invalid(
                        key(".auth_key"),
                        format!(
                            "is missing: set the tenant's Twilio auth token in the file or in {var}"
                        ),
                    )
                })?;
            tenants.insert(
                company.clone(),
                Tenant {
                    company,
                    account_id,
                    auth_key: SecretString::from(auth_key.trim().to_string()),
                },
            );
        }
        Ok(tenants)
    }
}

/// The longest company id accepted, in characters.
pub(crate) const MAX_COMPANY_ID_CHARS: usize = 64;

/// Why a company id is refused. Company ids come from callback URLs, `--company` and tenant
/// entries, and end up in paths, logs and callback URLs; messages never repeat the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CompanyIdError {
    #[error("a company id must not be empty; NODEFINED is the convention for none")]
    Empty,
    #[error("a company id must not be \".\" or \"..\"")]
    Dots,
    #[error("a company id may have at most {MAX_COMPANY_ID_CHARS} characters")]
    TooLong,
    #[error("a company id must not contain '/' or control characters")]
    Character,
}

/// The company id rule, for callback URLs, `--company` and tenant entries alike: not empty, not
/// `.` or `..`, at most [`MAX_COMPANY_ID_CHARS`] characters, without `/` or control characters.
pub(crate) fn check_company_id(id: &str) -> Result<(), CompanyIdError> {
    if id.is_empty() {
        return Err(CompanyIdError::Empty);
    }
    if id == "." || id == ".." {
        return Err(CompanyIdError::Dots);
    }
    if id.chars().nth(MAX_COMPANY_ID_CHARS).is_some() {
        return Err(CompanyIdError::TooLong);
    }
    if id.chars().any(|c| c == '/' || c.is_control()) {
        return Err(CompanyIdError::Character);
    }
    Ok(())
}

/// The id rule shared by apps and actions. Action ids name files in `actions/` and app ids appear
/// in callback URLs and environment variable names, so both are restricted to safe characters.
pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Cloud Storage's naming rules: 3–63 characters, or up to 222 with dots and at most 63 between
/// them; lowercase letters, digits, `-`, `_` and `.`; a letter or digit at each end.
pub fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let limit = if name.contains('.') { 222 } else { 63 };
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=limit).contains(&bytes.len())
        && edge(bytes[0])
        && edge(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|&b| edge(b) || matches!(b, b'-' | b'_' | b'.'))
        && name
            .split('.')
            .all(|part| !part.is_empty() && part.len() <= 63)
}

/// The file's shape, exactly as written. Unknown keys are errors, so typos don't pass silently.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct File {
        #[serde(default)]
        pub(crate) server: Server,
        #[serde(default)]
        pub(crate) twilio: Twilio,
        #[serde(default)]
        pub(crate) media: Media,
        #[serde(default)]
        pub(crate) gcs: Gcs,
        #[serde(default)]
        pub(crate) actions: Actions,
        #[serde(default)]
        pub(crate) dashboard: Dashboard,
        #[serde(default)]
        pub(crate) store: Store,
        #[serde(default)]
        pub(crate) apps: BTreeMap<String, App>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Server {
        pub(crate) listen: String,
        pub(crate) public_url: String,
        pub(crate) data_dir: PathBuf,
        pub(crate) actions_dir: PathBuf,
        pub(crate) scripts_dir: PathBuf,
        pub(crate) shutdown_grace_seconds: u64,
        pub(crate) admin_listen: Option<String>,
        pub(crate) header_timeout_ms: u64,
        pub(crate) body_timeout_ms: u64,
        pub(crate) idle_timeout_ms: u64,
        pub(crate) max_header_bytes: usize,
        pub(crate) max_connections: usize,
    }

    impl Default for Server {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:8080".into(),
                public_url: "http://127.0.0.1:8080".into(),
                data_dir: "data".into(),
                actions_dir: "actions".into(),
                scripts_dir: "scripts".into(),
                shutdown_grace_seconds: 10,
                admin_listen: None,
                header_timeout_ms: 10_000,
                body_timeout_ms: 10_000,
                idle_timeout_ms: 30_000,
                max_header_bytes: 16_384,
                max_connections: 1024,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Store {
        pub(crate) url: Option<String>,
        pub(crate) retention_days: u32,
        pub(crate) lease_seconds: u64,
        pub(crate) poll_ms: u64,
        pub(crate) max_connections: usize,
    }

    impl Default for Store {
        fn default() -> Self {
            Self {
                url: None,
                retention_days: 90,
                lease_seconds: 60,
                poll_ms: 1000,
                max_connections: 16,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Twilio {
        pub(crate) api_base: String,
        pub(crate) timeout_seconds: f64,
        pub(crate) simulate_step_ms: u64,
    }

    impl Default for Twilio {
        fn default() -> Self {
            Self {
                api_base: "https://api.twilio.com".into(),
                timeout_seconds: 15.0,
                simulate_step_ms: 700,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Media {
        pub(crate) check: bool,
        pub(crate) max_bytes: u64,
        pub allow_local: bool,
    }

    impl Default for Media {
        fn default() -> Self {
            Self {
                check: true,
                max_bytes: 16 * 1024 * 1024,
                allow_local: false,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Gcs {
        pub(crate) service_account_key: Option<PathBuf>,
        pub(crate) signed_url_ttl_seconds: u64,
        pub(crate) endpoint: Option<String>,
    }

    impl Default for Gcs {
        fn default() -> Self {
            Self {
                service_account_key: None,
                signed_url_ttl_seconds: 3600,
                endpoint: None,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Actions {
        pub(crate) budget_ms: u64,
        pub(crate) script_budget_ms: u64,
        pub(crate) max_attempts: u32,
        pub(crate) retry_base_ms: u64,
        pub(crate) retry_max_ms: u64,
        pub(crate) workers: usize,
        pub(crate) memory_limit_mb: u64,
        pub(crate) loop_iteration_limit: u64,
        pub(crate) recursion_limit: usize,
    }

    impl Default for Actions {
        fn default() -> Self {
            Self {
                budget_ms: 5_000,
                script_budget_ms: 300_000,
                max_attempts: 5,
                retry_base_ms: 1_000,
                retry_max_ms: 60_000,
                workers: 0,
                memory_limit_mb: 256,
                loop_iteration_limit: 10_000_000,
                recursion_limit: 400,
            }
        }
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Dashboard {
        pub(crate) password: Option<String>,
        #[serde(default)]
        pub(crate) trusted_proxies: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct App {
        #[serde(rename = "WHATSAPP")]
        pub(crate) whatsapp: Option<Whatsapp>,
        #[serde(default)]
        pub(crate) tenants: BTreeMap<String, Tenant>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Tenant {
        pub(crate) account_id: String,
        pub(crate) auth_key: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Whatsapp {
        pub(crate) account_id: String,
        pub(crate) auth_key: Option<String>,
        pub(crate) from_number: String,
        pub(crate) callback: Option<String>,
        pub(crate) inbound: Option<String>,
        #[serde(default)]
        pub(crate) sandbox: bool,
        pub(crate) default_country_code: Option<String>,
        #[serde(default = "yes")]
        pub(crate) validate_signatures: bool,
        #[serde(default)]
        pub gcs_buckets: Vec<String>,
    }

    fn yes() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [apps.crm.WHATSAPP]
        account_id = "AC0123456789abcdef0123456789abcdef"
        auth_key = "file-secret"
        from_number = "+14155238886"
        callback = "onWhatsappStatus"
    "#;

    fn load(text: &str, env: &dyn Env) -> Result<Settings, SettingsError> {
        Settings::from_toml(text, Path::new("conf/host.toml"), env)
    }

    #[test]
    fn defaults_fill_everything_but_apps() {
        let s = load(GOOD, &[]).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.server.data_dir, PathBuf::from("conf/data"));
        assert_eq!(s.twilio.timeout, Duration::from_secs(15));
        let w = s.apps["crm"].whatsapp.as_ref().unwrap();
        assert_eq!(w.default_country_code, "39");
        assert!(w.validate_signatures);
        assert!(s.gcs.is_none());
    }

    #[test]
    fn environment_overrides_the_auth_key() {
        use secrecy::ExposeSecret;
        let s = load(GOOD, &[("WHATSAPP_CRM_AUTH_KEY", "env-secret")]).unwrap();
        let w = s.apps["crm"].whatsapp.as_ref().unwrap();
        assert_eq!(w.auth_key.expose_secret(), "env-secret");
    }

    #[test]
    fn a_short_dashboard_password_is_refused_without_printing_it() {
        let short = format!("{GOOD}\n[dashboard]\npassword = \"elevenchars\"\n");
        let err = load(&short, &[]).unwrap_err().to_string();
        assert!(err.contains("dashboard.password"), "{err}");
        assert!(err.contains("shorter than 12 characters"), "{err}");
        assert!(!err.contains("elevenchars"), "{err}");

        let from_env = [(DASHBOARD_PASSWORD_ENV, "short-pass")];
        let err = load(GOOD, &from_env).unwrap_err().to_string();
        assert!(err.contains(DASHBOARD_PASSWORD_ENV), "{err}");
        assert!(!err.contains("short-pass"), "{err}");

        let twelve = format!("{GOOD}\n[dashboard]\npassword = \"twelve chars\"\n");
        assert!(load(&twelve, &[]).unwrap().dashboard.password.is_some());
    }

    #[test]
    fn the_committed_demo_settings_keep_their_short_password_in_simulate_mode_only() {
        let demo = include_str!("../whatsapp-host.toml");
        let s = load(demo, &[]).unwrap();
        assert_eq!(s.twilio.api_base, ApiBase::Simulate);
        assert!(s.dashboard.password.is_some());
        let live = demo.replace(
            "api_base = \"simulate\"",
            "api_base = \"https://api.twilio.com\"",
        );
        let err = load(&live, &[]).unwrap_err().to_string();
        assert!(err.contains("dashboard.password"), "{err}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_cidr_ranges() {
        let with = |list: &str| format!("{GOOD}\n[dashboard]\ntrusted_proxies = {list}\n");
        let s = load(
            &with(r#"["127.0.0.1", "10.1.2.3/8", "fd00::/8", "::1"]"#),
            &[],
        )
        .unwrap();
        let nets: Vec<String> = s
            .dashboard
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "::1/128"]);
        let err = load(&with(r#"["10.0.0.0/33"]"#), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("dashboard.trusted_proxies"), "{err}");
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(
            load(GOOD, &[])
                .unwrap()
                .dashboard
                .trusted_proxies
                .is_empty()
        );
    }

    #[test]
    fn an_inbound_action_is_checked_like_the_callback() {
        let with =
            |value: &str| GOOD.replace("callback =", &format!("inbound = \"{value}\"\ncallback ="));
        let settings = load(&with("onWhatsappMessage"), &[]).unwrap();
        let w = settings.apps["crm"].whatsapp.as_ref().unwrap();
        assert_eq!(w.inbound.as_deref(), Some("onWhatsappMessage"));
        assert_eq!(
            w.public_parameter("inbound"),
            Some(serde_json::Value::from("onWhatsappMessage"))
        );
        let err = load(&with("../x"), &[]).unwrap_err().to_string();
        assert!(err.contains("apps.crm.WHATSAPP.inbound"), "{err}");
        assert!(err.contains("is not an action id"), "{err}");
        let none = load(GOOD, &[]).unwrap();
        assert_eq!(none.apps["crm"].whatsapp.as_ref().unwrap().inbound, None);
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = load(&GOOD.replace("callback", "callbak"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("conf/host.toml"), "{err}");
        assert!(err.contains("callbak"), "{err}");
    }

    #[test]
    fn malformed_account_id_names_app_and_key_without_the_secret() {
        let err = load(&GOOD.replace("AC0123", "XX0123"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.crm.WHATSAPP.account_id"), "{err}");
        assert!(!err.contains("file-secret"), "{err}");
    }

    #[test]
    fn malformed_from_number_is_rejected() {
        let err = load(&GOOD.replace("+14155238886", "+1 abc"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.crm.WHATSAPP.from_number"), "{err}");
    }

    #[test]
    fn app_ids_that_clash_with_host_paths_are_refused() {
        let err = load(&GOOD.replace("apps.crm", "apps.dashboard"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.dashboard"), "{err}");
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn a_timeout_that_is_not_positive_names_the_key() {
        for bad in ["-5", "0", "nan", "inf"] {
            let err = load(&format!("[twilio]\ntimeout_seconds = {bad}\n{GOOD}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("twilio.timeout_seconds"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_unquoted_number_auth_key_is_located_without_echoing_it() {
        let text = GOOD.replace("\"file-secret\"", "9876543210123");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("conf/host.toml"), "{err}");
        assert!(err.contains("line 4, column 20"), "{err}");
        assert!(err.contains("key apps.crm.WHATSAPP.auth_key"), "{err}");
        assert!(
            err.contains("invalid type: integer, expected a string"),
            "{err}"
        );
        assert!(!err.contains("9876543210123"), "{err}");
        assert!(
            !err.contains("auth_key = "),
            "the line is not quoted: {err}"
        );
    }

    #[test]
    fn an_invalid_string_is_located_without_echoing_it() {
        for (bad, what) in [
            ("unquoted-secret-42", "must be quoted"),
            ("\"open-secret-42", "invalid basic string"),
            ("\"bad\\qescape-secret-42\"", "missing escaped value"),
        ] {
            let text = GOOD.replace("\"file-secret\"", bad);
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains("line 4, column"), "{bad}: {err}");
            assert!(
                err.contains("key apps.crm.WHATSAPP.auth_key"),
                "{bad}: {err}"
            );
            assert!(err.contains(what), "{bad}: {err}");
            assert!(!err.contains("secret-42"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_password_of_the_wrong_type_is_not_echoed() {
        let err = load(
            &format!("{GOOD}\n[dashboard]\npassword = 123456789012345\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key dashboard.password"), "{err}");
        assert!(!err.contains("123456789012345"), "{err}");
    }

    #[test]
    fn gcs_buckets_are_checked_against_cloud_storages_naming_rules() {
        let with =
            |list: &str| GOOD.replace("callback =", &format!("gcs_buckets = {list}\ncallback ="));
        let s = load(
            &with(r#"["tickets-eu", "acme.invoices.example.com", "a_b"]"#),
            &[],
        )
        .unwrap();
        let w = s.apps["crm"].whatsapp.as_ref().unwrap();
        assert_eq!(
            w.gcs_buckets,
            ["tickets-eu", "acme.invoices.example.com", "a_b"]
        );
        assert!(
            load(GOOD, &[]).unwrap().apps["crm"]
                .whatsapp
                .as_ref()
                .unwrap()
                .gcs_buckets
                .is_empty()
        );
        for bad in [
            "Tickets",
            "ab",
            "-tickets",
            "tickets-",
            "a..b",
            "gs://tickets",
            "tick ets",
        ] {
            let err = load(&with(&format!("[{bad:?}]")), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("apps.crm.WHATSAPP.gcs_buckets"),
                "{bad}: {err}"
            );
            assert!(err.contains("bucket name"), "{bad}: {err}");
        }
        assert!(is_bucket_name(&"a".repeat(63)));
        assert!(!is_bucket_name(&"a".repeat(64)));
        assert!(is_bucket_name(&format!(
            "{}.{}",
            "a".repeat(63),
            "b".repeat(63)
        )));
    }

    #[test]
    fn media_allow_local_is_off_by_default() {
        assert!(!load(GOOD, &[]).unwrap().media.allow_local);
        let on = load(&format!("[media]\nallow_local = true\n{GOOD}"), &[]).unwrap();
        assert!(on.media.allow_local);
    }

    #[test]
    fn missing_file_says_how_to_create_one() {
        let err = Settings::load(Path::new("/nonexistent/x.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
        assert!(err.contains("settings.example.toml"), "{err}");
    }

    const TENANT: &str = r#"
        [apps.crm.tenants.ACME]
        account_id = "ACfedcba9876543210fedcba9876543210"
        auth_key = "tenant-file-secret"
    "#;

    #[test]
    fn a_tenant_project_signs_its_companys_callbacks_and_the_app_its_own() {
        use secrecy::ExposeSecret;
        let s = load(&format!("{GOOD}{TENANT}"), &[]).unwrap();
        let app = &s.apps["crm"];
        let tenant = &app.tenants["ACME"];
        assert_eq!(tenant.company, "ACME");
        let key = |company, account| {
            app.callback_key(company, account)
                .map(|k| k.expose_secret())
        };
        let (tenant_account, app_account) = (
            tenant.account_id.as_str(),
            "AC0123456789abcdef0123456789abcdef",
        );
        assert_eq!(key("ACME", tenant_account), Some("tenant-file-secret"));
        assert_eq!(key("ACME", app_account), Some("file-secret"));
        assert_eq!(key("OTHER", app_account), Some("file-secret"));
        assert_eq!(
            key("OTHER", tenant_account),
            None,
            "only at its own company's URL"
        );
        assert_eq!(key("ACME", "AC00000000000000000000000000000000"), None);
        assert_eq!(
            app.tenant_by_account(tenant_account)
                .map(|t| t.company.as_str()),
            Some("ACME")
        );
        assert!(app.tenant_by_account(app_account).is_none());

        let debug = format!("{s:?}");
        assert!(
            !debug.contains("tenant-file-secret") && !debug.contains("file-secret"),
            "{debug}"
        );
    }

    #[test]
    fn the_environment_overrides_a_tenants_auth_key() {
        use secrecy::ExposeSecret;
        assert_eq!(
            tenant_auth_key_env("crm", "Acme Srl"),
            "WHATSAPP_CRM_ACME_SRL_AUTH_KEY"
        );
        let s = load(
            &format!("{GOOD}{TENANT}"),
            &[("WHATSAPP_CRM_ACME_AUTH_KEY", "tenant-env-secret")],
        )
        .unwrap();
        let tenant = &s.apps["crm"].tenants["ACME"];
        assert_eq!(tenant.auth_key.expose_secret(), "tenant-env-secret");

        let keyless = TENANT.replace("auth_key = \"tenant-file-secret\"", "");
        let err = load(&format!("{GOOD}{keyless}"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps.crm.tenants.ACME.auth_key"), "{err}");
        assert!(err.contains("WHATSAPP_CRM_ACME_AUTH_KEY"), "{err}");
    }

    #[test]
    fn tenant_entries_are_checked_at_load_without_printing_a_secret() {
        let cases = [
            (
                TENANT.replace("ACfedcba", "XXfedcba"),
                "apps.crm.tenants.ACME.account_id",
            ),
            (
                TENANT.replace(
                    "ACfedcba9876543210fedcba9876543210",
                    "AC0123456789abcdef0123456789abcdef",
                ),
                "own account",
            ),
            (
                format!(
                    "{TENANT}{}",
                    TENANT.replace("tenants.ACME", "tenants.OTHER")
                ),
                "is also apps.crm.tenants.ACME's account",
            ),
            (
                TENANT.replace("tenants.ACME", "tenants.\"..\""),
                "must not be \".\" or \"..\"",
            ),
            (TENANT.replace("tenants.ACME", "tenants.\"a/b\""), "'/'"),
            (
                TENANT.replace("tenants.ACME", "tenants.\"a\\nb\""),
                "apps.crm.tenants.a\\nb",
            ),
            (
                TENANT.replace("tenants.ACME", &format!("tenants.{}", "x".repeat(65))),
                "at most 64",
            ),
            (TENANT.replace("account_id", "acount_id"), "acount_id"),
            // An app whose auth key variable is the tenant's.
            (
                format!("{TENANT}[apps.crm_acme]\n"),
                "WHATSAPP_CRM_ACME_AUTH_KEY is also apps.crm_acme's",
            ),
        ];
        for (tenant, expected) in cases {
            let err = load(&format!("{GOOD}{tenant}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_example_tenant_section_loads_once_uncommented() {
        let example = include_str!("../settings.example.toml");
        let start = example
            .find("# [apps.crm.tenants.ACME]")
            .expect("the example has one");
        let tenant: String = example[start..]
            .lines()
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let text = format!("{}{tenant}", &example[..start]);
        let s = load(&text, &[]).unwrap();
        assert_eq!(s.apps["crm"].tenants["ACME"].company, "ACME");
    }

    #[test]
    fn company_ids_follow_one_rule() {
        for good in [
            "ACME",
            "NODEFINED",
            "Acme Srl",
            "a.b",
            "...",
            "€uro",
            &"x".repeat(64),
        ] {
            assert_eq!(check_company_id(good), Ok(()), "{good:?}");
        }
        let bad = [
            ("", CompanyIdError::Empty),
            (".", CompanyIdError::Dots),
            ("..", CompanyIdError::Dots),
            (&"x".repeat(65), CompanyIdError::TooLong),
            ("a/b", CompanyIdError::Character),
            ("a\nb", CompanyIdError::Character),
            ("a\u{1b}[31m", CompanyIdError::Character),
            ("a\u{7f}", CompanyIdError::Character),
        ];
        for (id, error) in bad {
            assert_eq!(check_company_id(id), Err(error), "{id:?}");
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_are_checked_with_their_key() {
        let s = load(GOOD, &[]).unwrap();
        assert_eq!(s.server.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(s.server.limits.max_header_bytes, 16_384);
        assert_eq!(s.server.admin_listen, None);
        for (line, key) in [
            ("max_header_bytes = 4096", "server.max_header_bytes"),
            ("max_header_bytes = 2000000", "server.max_header_bytes"),
            ("max_connections = 0", "server.max_connections"),
            ("header_timeout_ms = 0", "server.header_timeout_ms"),
            ("body_timeout_ms = 0", "server.body_timeout_ms"),
            ("idle_timeout_ms = 0", "server.idle_timeout_ms"),
            ("admin_listen = \"localhost\"", "server.admin_listen"),
            ("admin_listen = \"127.0.0.1:8080\"", "server.admin_listen"),
        ] {
            let err = load(&format!("[server]\n{line}\n{GOOD}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        let s = load(
            &format!("[server]\nadmin_listen = \"127.0.0.1:9090\"\n{GOOD}"),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.server.admin_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
    }

    #[test]
    fn a_public_url_with_credentials_is_refused_without_echoing_them() {
        let e = load(
            &format!("[server]\npublic_url = \"https://ops:hunter2@p.example.com/\"\n{GOOD}"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("server.public_url") && e.contains("credentials"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn two_apps_whose_auth_key_variables_collide_are_refused() {
        let text =
            GOOD.replace("apps.crm.", "apps.crm-eu.") + &GOOD.replace("apps.crm.", "apps.crm_eu.");
        let e = load(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("WHATSAPP_CRM_EU_AUTH_KEY"), "{e}");
        assert!(!e.contains("file-secret"), "{e}");
    }

    #[test]
    fn callback_url_joins_the_context() {
        let s = load(
            &format!("[server]\npublic_url = \"https://p.example.com/platform/\"\n{GOOD}"),
            &[],
        )
        .unwrap();
        assert_eq!(routes::context(&s.server.public_url), "/platform");
        assert_eq!(
            s.server.callback_url("crm", "ACME"),
            "https://p.example.com/platform/whatsapp/callback/crm/ACME"
        );
    }
}
