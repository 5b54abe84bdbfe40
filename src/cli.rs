//! The command line: parses arguments with clap and runs each command on the same services the
//! server uses, so `run` and `send` exercise exactly the production code path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::js::{self, Program};
use crate::outbound::{Account, Caller, Media, Request, SendRequest, TemplateRequest};
use crate::server::Application;
use crate::services::Services;
use crate::settings::{self, ApiBase, ProcessEnv, Settings};
use crate::store::{
    self, Direction, EventFilter, EventState, MessageFilter, Migrated, Store, StoreError,
    StoreReader,
};
use crate::telemetry::{self, LogFormat};
use crate::twilio::simulate;

/// The company id used when a tenant has none.
pub(crate) const NO_COMPANY: &str = "NODEFINED";

/// The command line: `pub` so `main.rs` can parse it and hand it to [`run`].
#[derive(Parser, Debug)]
#[command(
    name = "whatsapp-host",
    version,
    about = "Runs application JavaScript that sends WhatsApp messages through Twilio and reacts to Twilio's callbacks."
)]
pub struct Cli {
    /// Settings file [default: $WHATSAPP_HOST_SETTINGS, else whatsapp-host.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) settings: Option<PathBuf>,
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve the callback endpoint, the dashboard and /metrics.
    Serve {
        /// Once listening, run this script (for example scripts/welcome.js) with --app.
        #[arg(long, value_name = "SCRIPT", requires = "app")]
        run: Option<PathBuf>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long, default_value = NO_COMPANY, value_parser = company_id)]
        company: String,
    },
    /// Run a script with `utils` bound to an app; prints its logs and result.
    Run {
        script: PathBuf,
        #[arg(long)]
        app: String,
        #[arg(long, default_value = NO_COMPANY, value_parser = company_id)]
        company: String,
    },
    /// Send one message through the same path scripts use; prints the outcome JSON.
    Send {
        #[arg(long)]
        app: String,
        #[arg(long)]
        to: String,
        #[arg(long, required_unless_present = "template")]
        message: Option<String>,
        #[arg(long, conflicts_with_all = ["bucket", "file"])]
        media_url: Option<String>,
        #[arg(long, requires = "file")]
        bucket: Option<String>,
        #[arg(long, requires = "bucket")]
        file: Option<String>,
        /// Send this approved Content template (HX…) instead of a message.
        #[arg(long, value_name = "HX…", conflicts_with_all = ["message", "media_url", "bucket", "file"])]
        template: Option<String>,
        /// A template variable, KEY=VALUE (repeatable); values are sent as strings.
        #[arg(
            long = "var",
            value_name = "KEY=VALUE",
            requires = "template",
            conflicts_with_all = ["message", "media_url", "bucket", "file"],
            value_parser = template_var
        )]
        vars: Vec<(String, String)>,
        #[arg(long, default_value = NO_COMPANY, value_parser = company_id)]
        company: String,
    },
    /// Validate the settings, compile every action and script, and print a summary.
    Check,
    /// List stored callback events, newest first.
    Events {
        #[arg(long)]
        app: Option<String>,
        #[arg(long, value_parser = ["pending", "done", "failed", "dead"])]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Dispatch one stored event again, now, and report the outcome.
    Replay { event_id: i64 },
    /// Bring the store's schema up to date: apply PostgreSQL's pending migrations, or open
    /// the embedded store, which upgrades itself.
    Migrate,
    /// Show messages with their status history.
    Messages {
        #[arg(long)]
        sid: Option<String>,
        /// Only messages received from contacts, or only messages sent.
        #[arg(long, value_parser = ["inbound", "outbound"], conflicts_with = "sid")]
        direction: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Work on the store itself.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// A JavaScript worker process: started by the host itself, never by hand.
    #[command(hide = true)]
    JsWorker {
        /// Apply the worker's sandbox, try to open PATH and a socket, print what happened.
        #[arg(long, value_name = "PATH")]
        probe: Option<PathBuf>,
    },
    /// Post a correctly signed status callback, as Twilio would, for local testing.
    SimulateCallback {
        #[arg(long)]
        app: String,
        #[arg(long, default_value = NO_COMPANY, value_parser = company_id)]
        company: String,
        #[arg(long)]
        sid: String,
        #[arg(long)]
        status: String,
        /// Recipient number reported in the callback.
        #[arg(long, default_value = "+393331234567")]
        recipient: String,
        /// URL to post to [default: the app's callback URL under server.public_url]
        #[arg(long)]
        to: Option<String>,
    },
    /// Post a correctly signed inbound message, as Twilio would when a contact writes to the
    /// app's number, for local testing.
    SimulateInbound {
        #[arg(long)]
        app: String,
        #[arg(long, default_value = NO_COMPANY, value_parser = company_id)]
        company: String,
        /// The contact's number.
        #[arg(long)]
        from: String,
        #[arg(long)]
        body: String,
        /// A public URL of an attachment; repeat for several.
        #[arg(long)]
        media: Vec<String>,
        /// The contact's WhatsApp profile name.
        #[arg(long, default_value = "Simulated contact")]
        profile_name: String,
        /// URL to post to [default: the app's inbound URL under server.public_url]
        #[arg(long)]
        url: Option<String>,
    },
}

/// `whatsapp-host store …`.
#[derive(Subcommand, Debug)]
pub(crate) enum StoreCommand {
    /// Copy every event and message (sends included) from the embedded store under
    /// server.data_dir into PostgreSQL, ids kept; rows already there are left alone, so running
    /// it again copies only what is new.
    Copy {
        /// The PostgreSQL store to copy into [default: [store] url, or $WHATSAPP_HOST_STORE_URL]
        #[arg(long, value_name = "postgres://…", value_parser = secret)]
        to: Option<SecretString>,
    },
}

/// A value that may hold a password: kept out of `Debug` output.
fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text))
}

/// `--company`: the rule callback URLs and tenant entries follow ([`settings::check_company_id`]).
fn company_id(text: &str) -> Result<String, settings::CompanyIdError> {
    settings::check_company_id(text).map(|()| text.to_string())
}

/// `--var KEY=VALUE`: split at the first `=`, so a value may hold more.
fn template_var(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE, for example --var 1=Ana"))
}

/// The binary's whole `main`: a JS worker runs as it is, with no tokio runtime and no
/// settings; every other command runs on a multi-threaded runtime.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::JsWorker { probe } = &cli.command {
        return match probe {
            Some(path) => js::worker::probe(path),
            None => js::worker::main(),
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    telemetry::init_logging(cli.log_format);
    let path = Settings::resolve_path(cli.settings.as_deref(), &ProcessEnv);
    let settings = Arc::new(Settings::load(&path, &ProcessEnv)?);
    match cli.command {
        Command::Serve { run, app, company } => {
            let first = match (run, app) {
                (Some(script), Some(app)) => Some((script, caller(&settings, &app, company)?)),
                _ => None,
            };
            serve(settings, first).await
        }
        Command::Run {
            script,
            app,
            company,
        } => run_script(settings, &script, &app, company).await,
        Command::Send {
            app,
            to,
            message,
            media_url,
            bucket,
            file,
            template,
            vars,
            company,
        } => {
            let request: Request = match template {
                Some(content_sid) => TemplateRequest {
                    account: Account::App,
                    to,
                    content_sid,
                    variables: (!vars.is_empty())
                        .then(|| vars.into_iter().map(|(k, v)| (k, Some(v))).collect()),
                }
                .into(),
                None => {
                    let media = match (media_url, bucket, file) {
                        (Some(url), _, _) => Media::Url(url),
                        (None, Some(bucket), Some(file)) => Media::Object { bucket, file },
                        _ => Media::None,
                    };
                    SendRequest {
                        account: Account::App,
                        to,
                        body: message.unwrap_or_default(),
                        media,
                    }
                    .into()
                }
            };
            send(settings, &app, company, request).await
        }
        Command::Check => check(&settings).await,
        Command::JsWorker { .. } => bail!("js-worker is started by the host itself"),
        Command::Events {
            app,
            state,
            limit,
            json,
        } => {
            let filter = EventFilter {
                app,
                state: state.as_deref().and_then(EventState::parse),
                limit,
                ..Default::default()
            };
            list_events(settings, filter, json).await
        }
        Command::Replay { event_id } => replay(settings, event_id).await,
        Command::Migrate => migrate(&settings).await,
        Command::Store {
            command: StoreCommand::Copy { to },
        } => store_copy(&settings, to).await,
        Command::Messages {
            sid,
            direction,
            limit,
            json,
        } => {
            let direction = direction.as_deref().and_then(Direction::parse);
            list_messages(settings, sid, direction, limit, json).await
        }
        Command::SimulateCallback {
            app,
            company,
            sid,
            status,
            recipient,
            to,
        } => simulate_callback(&settings, &app, &company, &sid, &status, &recipient, to).await,
        Command::SimulateInbound {
            app,
            company,
            from,
            body,
            media,
            profile_name,
            url,
        } => {
            let inbound = SimulatedInbound {
                from,
                body,
                media,
                profile_name,
                url,
            };
            simulate_inbound(&settings, &app, &company, inbound).await
        }
    }
}

async fn serve(settings: Arc<Settings>, first: Option<(PathBuf, Caller)>) -> anyhow::Result<i32> {
    let services = Services::start(settings).await?;
    let app = Application::build(services.clone()).await?;
    if let Some((script, caller)) = first {
        let source = std::fs::read_to_string(&script)
            .with_context(|| format!("failed to read script {}", script.display()))?;
        let name = script.display().to_string();
        tokio::spawn(async move {
            tracing::info!(script = %name, app = %caller.app.id, "running the start-up script");
            match services
                .engine
                .run(
                    caller,
                    Program::Script {
                        name: name.clone(),
                        source,
                    },
                )
                .await
            {
                Ok(value) => {
                    tracing::info!(script = %name, result = %value.map(|v| v.to_string()).unwrap_or_default(), "start-up script finished")
                }
                Err(e) => {
                    tracing::error!(script = %name, error = %e.detail(), "start-up script failed")
                }
            }
        });
    }
    app.run_until(shutdown_signal()).await?;
    Ok(0)
}

/// `store copy`: the embedded store's history into PostgreSQL. Prints counts and the server,
/// never its password.
async fn store_copy(settings: &Settings, to: Option<SecretString>) -> anyhow::Result<i32> {
    let Some(url) = to.or_else(|| settings.store.url.clone()) else {
        bail!(
            "name the PostgreSQL store to copy into: --to postgres://user@host/db, or [store] url in {}",
            settings.source.display()
        );
    };
    let url = url.expose_secret();
    store::check_url(url).map_err(|why| anyhow::anyhow!("--to {why}"))?;
    let report = store::copy_to_postgres(&settings.server.data_dir, url, &settings.store)
        .await
        .context("store copy failed; rows copied so far stay, and running it again resumes")?;
    println!("copied {} into {}", report.from, report.to);
    let mut conflicting = 0;
    for (table, counts) in [("events", report.events), ("messages", report.messages)] {
        println!(
            "{table}: {} copied, {} already there",
            counts.copied, counts.already_there
        );
        if counts.conflicting > 0 {
            eprintln!(
                "error: {} {table} were not copied: PostgreSQL already has other {table} with their ids; copy into an empty database before any instance serves on it",
                counts.conflicting
            );
            conflicting += counts.conflicting;
        }
    }
    Ok(if conflicting > 0 { 1 } else { 0 })
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

fn caller(settings: &Settings, app: &str, company: String) -> anyhow::Result<Caller> {
    let app = settings.apps.get(app).cloned().with_context(|| {
        format!(
            "unknown app {app:?}: add an [apps.{app}.WHATSAPP] section to {}",
            settings.source.display()
        )
    })?;
    Ok(Caller { app, company })
}

async fn run_script(
    settings: Arc<Settings>,
    script: &Path,
    app: &str,
    company: String,
) -> anyhow::Result<i32> {
    let caller = caller(&settings, app, company)?;
    let source = std::fs::read_to_string(script)
        .with_context(|| format!("failed to read script {}", script.display()))?;
    let services = Services::start(settings).await?;
    let program = Program::Script {
        name: script.display().to_string(),
        source,
    };
    let result = services.engine.run(caller, program).await;
    services.outbound.settle().await;
    services.store.close().await;
    match result {
        Ok(value) => {
            if let Some(value) = value {
                println!("{}", render_result(&value));
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: script {} failed: {}", script.display(), e.detail());
            Ok(1)
        }
    }
}

/// Strings print as they are (a send's outcome is already JSON); other values as JSON.
fn render_result(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

async fn send(
    settings: Arc<Settings>,
    app: &str,
    company: String,
    request: Request,
) -> anyhow::Result<i32> {
    let caller = caller(&settings, app, company)?;
    let services = Services::start(settings).await?;
    let result = services.outbound.send(&caller, request).await;
    services.outbound.settle().await;
    services.store.close().await;
    let outcome = result?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(if outcome.is_failed() { 1 } else { 0 })
}

async fn check(settings: &Settings) -> anyhow::Result<i32> {
    let mut problems = 0;
    println!("settings   {}", settings.source.display());
    println!(
        "twilio     {}",
        match &settings.twilio.api_base {
            ApiBase::Simulate => "simulate (no message leaves this machine)".to_string(),
            ApiBase::Url(u) => u.to_string(),
        }
    );
    println!("callbacks  {}", settings.server.callback_url_pattern());
    println!(
        "gcs        {}",
        match &settings.gcs {
            Some(g) => format!(
                "key {} (urls valid {:?})",
                g.service_account_key.display(),
                g.signed_url_ttl
            ),
            None => "not configured: bucket sends will throw".into(),
        }
    );
    if let Err(e) = crate::media::UrlSigner::from_settings(settings.gcs.as_ref()) {
        println!("  error: {e}");
        problems += 1;
    }
    let actions_dir = &settings.server.actions_dir;
    let actions = js::load_actions(actions_dir)
        .with_context(|| format!("failed to read {}", actions_dir.display()))?;
    // The same worker engine the server runs compiles the code, without a way to send.
    let limits = js::Limits::from(&settings.actions);
    let engine = js::Engine::start(actions_dir, 1, limits, None)
        .with_context(|| format!("failed to read {}", actions_dir.display()))?;
    let errors = engine.compile_errors().await;
    println!(
        "actions    {} in {}",
        actions.len(),
        settings.server.actions_dir.display()
    );
    for e in &errors {
        println!("  error: {e}");
        problems += 1;
    }
    let scripts = js::load_sources(&settings.server.scripts_dir)
        .with_context(|| format!("failed to read {}", settings.server.scripts_dir.display()))?;
    println!(
        "scripts    {} in {}",
        scripts.len(),
        settings.server.scripts_dir.display()
    );
    for (name, source) in &scripts {
        if let Err(e) = engine.check_script(name, source).await {
            println!("  error: {e}");
            problems += 1;
        }
    }
    println!("apps       {}", settings.apps.len());
    for app in settings.apps.values() {
        match &app.whatsapp {
            None => println!("  {:<12} no WHATSAPP section", app.id),
            Some(w) => {
                let callback = w.callback.as_deref().unwrap_or("(none)");
                let inbound = w
                    .inbound
                    .as_deref()
                    .map(|i| format!("  inbound {i}"))
                    .unwrap_or_default();
                println!(
                    "  {:<12} account {}  from {}  callback {}{inbound}{}{}",
                    app.id,
                    w.account_id,
                    w.from_number,
                    callback,
                    if w.sandbox { "  sandbox" } else { "" },
                    if w.validate_signatures {
                        ""
                    } else {
                        "  SIGNATURES NOT CHECKED"
                    },
                );
                if let Some(cb) = &w.callback
                    && !actions.contains_key(cb)
                {
                    println!(
                        "  error: app {} names callback action {cb:?} but {} has no {cb}.js",
                        app.id,
                        settings.server.actions_dir.display()
                    );
                    problems += 1;
                }
                if let Some(action) = &w.inbound
                    && !actions.contains_key(action)
                {
                    println!(
                        "  error: app {} names inbound action {action:?} but {} has no {action}.js",
                        app.id,
                        settings.server.actions_dir.display()
                    );
                    problems += 1;
                }
            }
        }
        for tenant in app.tenants.values() {
            println!(
                "  {:<12} tenant {}  account {}  callbacks {}",
                "",
                tenant.company,
                tenant.account_id,
                settings.server.callback_url(&app.id, &tenant.company)
            );
        }
    }
    if problems == 0 {
        println!("ok");
        Ok(0)
    } else {
        println!("{problems} problem(s)");
        Ok(1)
    }
}

/// The store for `events` and `messages`, opened read-only. Before a server has received
/// anything there is no store file (or no tables in the PostgreSQL database): that reads as an
/// empty store, as it did when these commands created one, with a hint on stderr; nothing is
/// written.
async fn read_store(settings: &Settings) -> anyhow::Result<StoreReader> {
    match StoreReader::connect(settings).await {
        Err(StoreError::Missing { path }) => {
            eprintln!(
                "no store at {} yet: nothing has been received",
                path.display()
            );
            Ok(StoreReader::empty(path)?)
        }
        // A PostgreSQL database no instance has set up yet reads the same way.
        Err(StoreError::NotMigrated { server }) => {
            eprintln!("no store at {server} yet: nothing has been received");
            Ok(StoreReader::empty(server.into())?)
        }
        opened => Ok(opened?),
    }
}

async fn list_events(
    settings: Arc<Settings>,
    filter: EventFilter,
    json: bool,
) -> anyhow::Result<i32> {
    let store = read_store(&settings).await?;
    let events = store.events(filter).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(0);
    }
    println!(
        "{:>8}  {:<8} {:<10} {:<12} {:<36} {:<11} {:>3}  error",
        "id", "state", "app", "company", "sid", "status", "try"
    );
    for e in events {
        println!(
            "{:>8}  {:<8} {:<10} {:<12} {:<36} {:<11} {:>3}  {}",
            e.id,
            e.state.as_str(),
            e.app,
            e.company,
            e.message_sid.as_deref().unwrap_or("-"),
            e.message_status.as_deref().unwrap_or("-"),
            e.attempts,
            e.last_error
                .as_deref()
                .and_then(|l| l.lines().next())
                .unwrap_or(""),
        );
    }
    Ok(0)
}

async fn list_messages(
    settings: Arc<Settings>,
    sid: Option<String>,
    direction: Option<Direction>,
    limit: usize,
    json: bool,
) -> anyhow::Result<i32> {
    let store = read_store(&settings).await?;
    let result = match sid {
        Some(sid) => {
            let Some((message, events)) = store.message(&sid).await? else {
                bail!("no message with sid {sid} in {}", store.location());
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"message": message, "events": events})
                    )?
                );
            } else {
                println!(
                    "{}  {}  app {}  company {}",
                    message.sid.as_deref().unwrap_or("-"),
                    message.status,
                    message.app,
                    message.company
                );
                println!(
                    "  to {}  from {}",
                    message.to.as_deref().unwrap_or("-"),
                    message.from.as_deref().unwrap_or("-")
                );
                if let Some(code) = &message.error_code {
                    println!(
                        "  error {code}: {}",
                        message.error_message.as_deref().unwrap_or("")
                    );
                }
                let what = match message.direction {
                    Direction::Outbound => "sent",
                    Direction::Inbound => "received",
                };
                println!(
                    "  {}  {what} ({})",
                    fmt_ms(message.created_at),
                    message.body.as_deref().unwrap_or("")
                );
                for e in events {
                    println!(
                        "  {}  {}  event {} {}",
                        fmt_ms(e.received_at),
                        e.message_status.as_deref().unwrap_or("-"),
                        e.id,
                        e.state.as_str()
                    );
                }
            }
            0
        }
        None => {
            let messages = store
                .messages(MessageFilter {
                    direction,
                    limit,
                    ..Default::default()
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&messages)?);
            } else {
                for m in messages {
                    // An inbound message's other party is its sender.
                    let contact = match m.direction {
                        Direction::Outbound => m.to.as_deref(),
                        Direction::Inbound => m.from.as_deref(),
                    };
                    println!(
                        "{}  {:<36} {:<11} {:<10} {:<16} {}",
                        fmt_ms(m.created_at),
                        m.sid.as_deref().unwrap_or("(not sent)"),
                        m.status,
                        m.app,
                        contact.unwrap_or("-"),
                        m.error_code
                            .as_deref()
                            .map(|c| format!("error {c}"))
                            .unwrap_or_default()
                    );
                }
            }
            0
        }
    };
    Ok(result)
}

/// A store time as an HTTP date in UTC (`Sun, 06 Nov 1994 08:49:37 GMT`); times before the
/// epoch show as the epoch, and one past what the format can hold as its milliseconds.
fn fmt_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms.max(0))
        .and_then(|t| jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&t))
        .unwrap_or_else(|_| ms.to_string())
}

/// `migrate`: prints the migrations applied, or that the store was up to date.
async fn migrate(settings: &Settings) -> anyhow::Result<i32> {
    match Store::migrate(settings).await? {
        Migrated::Postgres { server, applied } if applied.is_empty() => {
            println!("the PostgreSQL store at {server} is up to date");
        }
        Migrated::Postgres { server, applied } => {
            println!("applied to the PostgreSQL store at {server}:");
            for migration in applied {
                println!("  {migration}");
            }
        }
        Migrated::Embedded { path } => println!(
            "no [store] url: the embedded store at {} migrates itself when it is opened, and is up to date",
            path.display()
        ),
    }
    Ok(0)
}

async fn replay(settings: Arc<Settings>, event_id: i64) -> anyhow::Result<i32> {
    let services = Services::start(settings.clone()).await?;
    let Some(event) = services.store.event(event_id).await? else {
        services.store.close().await;
        bail!("no event {event_id} in {}", services.store.location());
    };
    let result = services.dispatcher.replay_once(event).await;
    services
        .dispatcher
        .shutdown(settings.server.shutdown_grace)
        .await;
    services.store.close().await;
    match result {
        Ok(()) => {
            println!("event {event_id}: done");
            Ok(0)
        }
        Err(e) => {
            println!("event {event_id}: failed: {}", e.detail());
            Ok(1)
        }
    }
}

async fn simulate_callback(
    settings: &Settings,
    app: &str,
    company: &str,
    sid: &str,
    status: &str,
    recipient: &str,
    to: Option<String>,
) -> anyhow::Result<i32> {
    let caller = caller(settings, app, company.to_string())?;
    let Some(w) = caller.app.whatsapp.as_ref() else {
        bail!("app {app:?} has no WHATSAPP parameters to sign with");
    };
    let url = to.unwrap_or_else(|| settings.server.callback_url(app, company));
    let recipient = crate::phone::normalize(recipient, &w.default_country_code)?;
    let fields =
        simulate::status_callback_fields(sid, &w.account_id, &w.from_number, &recipient, status);
    let http = reqwest::Client::new();
    match simulate::post_signed(&http, &url, w.auth_key.expose_secret(), &fields).await {
        Ok(s) => {
            println!("posted {status} for {sid} to {url}: {s}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: posting the callback to {url} failed: {e}");
            Ok(1)
        }
    }
}

/// What `simulate-inbound` posts, beside the app and company.
struct SimulatedInbound {
    from: String,
    body: String,
    media: Vec<String>,
    profile_name: String,
    url: Option<String>,
}

async fn simulate_inbound(
    settings: &Settings,
    app: &str,
    company: &str,
    inbound: SimulatedInbound,
) -> anyhow::Result<i32> {
    let caller = caller(settings, app, company.to_string())?;
    let Some(w) = caller.app.whatsapp.as_ref() else {
        bail!("app {app:?} has no WHATSAPP parameters to sign with");
    };
    let url = inbound
        .url
        .unwrap_or_else(|| settings.server.inbound_url(app, company));
    let contact = crate::phone::normalize(&inbound.from, &w.default_country_code)
        .with_context(|| "--from is not a phone number")?;
    let media: Vec<(String, String)> = inbound
        .media
        .into_iter()
        .map(|url| {
            let content_type = simulate::guess_content_type(&url).to_string();
            (url, content_type)
        })
        .collect();
    let fields = simulate::inbound_message_fields(
        &w.account_id,
        contact.as_str(),
        w.from_number.as_str(),
        &inbound.profile_name,
        &inbound.body,
        &media,
    );
    let sid = crate::twilio::webhook::message_sid(&fields).unwrap_or_default();
    let http = reqwest::Client::new();
    match simulate::post_signed(&http, &url, w.auth_key.expose_secret(), &fields).await {
        Ok(s) => {
            println!("posted inbound message {sid} from {contact} to {url}: {s}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: posting the inbound message to {url} failed: {e}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_times_print_as_http_dates_in_utc() {
        assert_eq!(fmt_ms(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(fmt_ms(784_111_777_999), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fmt_ms(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(fmt_ms(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn store_copy_takes_the_url_and_never_shows_its_password() {
        let cli = Cli::try_parse_from([
            "whatsapp-host",
            "store",
            "copy",
            "--to",
            "postgres://app:hunter2secret@db:5432/wh",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2secret"), "{cli:?}");
        let Command::Store {
            command: StoreCommand::Copy { to: Some(to) },
        } = cli.command
        else {
            panic!("not a store copy: {cli:?}");
        };
        assert_eq!(
            to.expose_secret(),
            "postgres://app:hunter2secret@db:5432/wh"
        );
        assert!(Cli::try_parse_from(["whatsapp-host", "store", "copy"]).is_ok());
    }
}
