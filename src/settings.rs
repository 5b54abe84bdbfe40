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

/// Where settings are read from when neither `--settings` nor the environment names a file.
pub const DEFAULT_PATH: &str = "whatsapp-host.toml";
/// Environment variable that names the settings file.
pub const PATH_ENV: &str = "WHATSAPP_HOST_SETTINGS";
/// Environment variable that holds the dashboard password, so it can stay out of the file.
pub const DASHBOARD_PASSWORD_ENV: &str = "WHATSAPP_HOST_DASHBOARD_PASSWORD";
/// The shortest dashboard password accepted, in characters. Simulate mode accepts shorter ones
/// (the committed demo settings use `demo`), and the server warns at start.
pub const MIN_DASHBOARD_PASSWORD_CHARS: usize = 12;
/// Default country code for numbers written without an international prefix.
pub const DEFAULT_COUNTRY_CODE: &str = "39";

/// Everything the host needs to run, validated. Cheap to share: handed around as `Arc<Settings>`.
#[derive(Debug)]
pub struct Settings {
    /// The file these settings came from, so later errors can point at it.
    pub source: PathBuf,
    pub server: Server,
    pub twilio: Twilio,
    pub media: Media,
    pub gcs: Option<Gcs>,
    pub actions: Actions,
    pub dashboard: Dashboard,
    /// Applications by id. A `BTreeMap` so listings and `check` output are stable.
    pub apps: BTreeMap<String, Arc<App>>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// The URL Twilio calls. Its origin is what Twilio signs; its path is the web context.
    pub public_url: Url,
    pub data_dir: PathBuf,
    pub actions_dir: PathBuf,
    pub scripts_dir: PathBuf,
    /// How long shutdown waits for in-flight dispatches before closing the store.
    pub shutdown_grace: Duration,
}

impl Server {
    /// The path prefix every route lives under: `/platform` for `https://host/platform`, or `""`.
    pub fn context(&self) -> String {
        routes::context(&self.public_url).to_string()
    }

    /// The callback URL with `{appId}` and `{companyId}` placeholders, for logs and `check`.
    pub fn callback_url_pattern(&self) -> String {
        routes::callback_url_pattern(&self.public_url)
    }

    /// The URL Twilio should call for an app and company: the documented callback route.
    pub fn callback_url(&self, app_id: &str, company_id: &str) -> String {
        routes::callback_url(&self.public_url, app_id, company_id)
    }
}

/// Where sends go: Twilio's API (or a stand-in at another base URL), or the built-in simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiBase {
    Url(Url),
    /// `api_base = "simulate"`: sends are answered locally and the host posts itself callbacks.
    Simulate,
}

#[derive(Debug, Clone)]
pub struct Twilio {
    pub api_base: ApiBase,
    pub timeout: Duration,
    /// Delay between simulated status callbacks (`simulate` mode only).
    pub simulate_step: Duration,
}

#[derive(Debug, Clone)]
pub struct Media {
    /// Probe media URLs for size and type before sending.
    pub check: bool,
    pub max_bytes: u64,
    /// Lets the probe fetch over plain http and from loopback, private, link-local and
    /// metadata addresses. Off by default: an action's URL must not reach inside the network.
    /// For local stand-ins and tests; the server warns at start when it is on.
    pub allow_local: bool,
}

#[derive(Debug, Clone)]
pub struct Gcs {
    /// Path of the service-account JSON key; read at start, never logged.
    pub service_account_key: PathBuf,
    pub signed_url_ttl: Duration,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Actions {
    /// Wall-clock budget for one action run.
    pub budget: Duration,
    /// Wall-clock budget for a whole script run from the command line.
    pub script_budget: Duration,
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub workers: usize,
    pub loop_iteration_limit: u64,
    pub recursion_limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Dashboard {
    /// `None` disables the dashboard.
    pub password: Option<SecretString>,
    /// Proxies whose `X-Forwarded-For` is believed when they are the TCP peer; without them
    /// every login is attributed to the peer address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// One application and its WHATSAPP parameters.
#[derive(Debug)]
pub struct App {
    pub id: String,
    /// `None` when the app has no `[apps.<id>.WHATSAPP]` section: sends with its parameters throw.
    pub whatsapp: Option<Whatsapp>,
}

#[derive(Debug, Clone)]
pub struct Whatsapp {
    pub account_id: String,
    pub auth_key: SecretString,
    /// E.164, with the leading `+`.
    pub from_number: crate::phone::E164,
    /// Action id run for each callback; `None` stores events without running anything.
    pub callback: Option<String>,
    pub sandbox: bool,
    pub default_country_code: String,
    pub validate_signatures: bool,
    /// The Cloud Storage buckets this app may sign URLs for. The signing key is shared by every
    /// app, so without this list one app could sign another's objects; empty refuses all.
    pub gcs_buckets: Vec<String>,
}

impl Whatsapp {
    /// The parameters a script may read with `utils.getParameter`: all but the auth key.
    pub fn public_parameter(&self, name: &str) -> Option<serde_json::Value> {
        use serde_json::Value;
        Some(match name {
            "account_id" => Value::from(self.account_id.clone()),
            "from_number" => Value::from(self.from_number.as_str()),
            "callback" => self.callback.clone().map_or(Value::Null, Value::from),
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
pub struct ProcessEnv;

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
pub fn auth_key_env(app_id: &str) -> String {
    let app: String = app_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("WHATSAPP_{app}_AUTH_KEY")
}

impl Settings {
    /// Picks the settings path: the flag, then `WHATSAPP_HOST_SETTINGS`, then `whatsapp-host.toml`.
    pub fn resolve_path(flag: Option<&Path>, env: &dyn Env) -> PathBuf {
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
        let mut apps = BTreeMap::new();
        for (id, app) in raw.apps {
            self.check_app_id(&id)?;
            let whatsapp = app.whatsapp.map(|w| self.whatsapp(&id, w)).transpose()?;
            apps.insert(id.clone(), Arc::new(App { id, whatsapp }));
        }
        Ok(Settings {
            source: self.path.to_path_buf(),
            server,
            twilio,
            media,
            gcs,
            actions,
            dashboard,
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
            .ok_or_else(|| {
                self.invalid(
                    "server.public_url",
                    format!(
                        "{:?} is not an http(s) URL without query; write it as \"https://platform.example.com/platform\"",
                        raw.public_url
                    ),
                )
            })?;
        Ok(Server {
            listen,
            public_url,
            data_dir: self.relative(raw.data_dir),
            actions_dir: self.relative(raw.actions_dir),
            scripts_dir: self.relative(raw.scripts_dir),
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
        })
    }

    fn twilio(&self, raw: raw::Twilio) -> Result<Twilio, SettingsError> {
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
        Ok(Twilio {
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
            loop_iteration_limit: raw.loop_iteration_limit,
            recursion_limit: raw.recursion_limit,
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
        if !is_account_sid(&account_id) {
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
        if let Some(cb) = &raw.callback
            && !is_valid_id(cb)
        {
            return Err(self.invalid(
                key("callback"),
                format!("{cb:?} is not an action id: use letters, digits, '_' and '-' only"),
            ));
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
            sandbox: raw.sandbox,
            default_country_code,
            validate_signatures: raw.validate_signatures,
            gcs_buckets: raw.gcs_buckets,
        })
    }
}

/// The id rule shared by apps and actions. Action ids name files in `actions/` and app ids appear
/// in callback URLs and environment variable names, so both are restricted to safe characters.
pub fn is_valid_id(id: &str) -> bool {
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

/// `AC` + 32 hex digits: the shape of every Twilio account SID.
pub fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The file's shape, exactly as written. Unknown keys are errors, so typos don't pass silently.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub server: Server,
        #[serde(default)]
        pub twilio: Twilio,
        #[serde(default)]
        pub media: Media,
        #[serde(default)]
        pub gcs: Gcs,
        #[serde(default)]
        pub actions: Actions,
        #[serde(default)]
        pub dashboard: Dashboard,
        #[serde(default)]
        pub apps: BTreeMap<String, App>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Server {
        pub listen: String,
        pub public_url: String,
        pub data_dir: PathBuf,
        pub actions_dir: PathBuf,
        pub scripts_dir: PathBuf,
        pub shutdown_grace_seconds: u64,
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
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Twilio {
        pub api_base: String,
        pub timeout_seconds: f64,
        pub simulate_step_ms: u64,
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
    pub struct Media {
        pub check: bool,
        pub max_bytes: u64,
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
    pub struct Gcs {
        pub service_account_key: Option<PathBuf>,
        pub signed_url_ttl_seconds: u64,
        pub endpoint: Option<String>,
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
    pub struct Actions {
        pub budget_ms: u64,
        pub script_budget_ms: u64,
        pub max_attempts: u32,
        pub retry_base_ms: u64,
        pub retry_max_ms: u64,
        pub workers: usize,
        pub loop_iteration_limit: u64,
        pub recursion_limit: usize,
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
                loop_iteration_limit: 10_000_000,
                recursion_limit: 400,
            }
        }
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Dashboard {
        pub password: Option<String>,
        #[serde(default)]
        pub trusted_proxies: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct App {
        #[serde(rename = "WHATSAPP")]
        pub whatsapp: Option<Whatsapp>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Whatsapp {
        pub account_id: String,
        pub auth_key: Option<String>,
        pub from_number: String,
        pub callback: Option<String>,
        #[serde(default)]
        pub sandbox: bool,
        pub default_country_code: Option<String>,
        #[serde(default = "yes")]
        pub validate_signatures: bool,
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

    #[test]
    fn callback_url_joins_the_context() {
        let s = load(
            &format!("[server]\npublic_url = \"https://p.example.com/platform/\"\n{GOOD}"),
            &[],
        )
        .unwrap();
        assert_eq!(s.server.context(), "/platform");
        assert_eq!(
            s.server.callback_url("crm", "ACME"),
            "https://p.example.com/platform/whatsapp/callback/crm/ACME"
        );
    }
}
