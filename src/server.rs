//! The HTTP server: routes, the Twilio callback and inbound-message endpoints, `/healthz` and
//! `/metrics`, and graceful shutdown. Callback errors map to HTTP statuses here and nowhere else. Connections
//! and their limits are [`crate::edge`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::dispatch::Work;
use crate::services::Services;
use crate::settings::{ApiBase, CompanyIdError, Settings, check_company_id};
use crate::store::{EventKind, Inserted, NewEvent, now_ms};
use crate::twilio::webhook::{self, StatusCallback};
use crate::{edge, retention, routes, telemetry};

/// The key of the HMAC computed for callbacks refused before their app's key is known.
static DECOY_KEY: LazyLock<SecretString> =
    LazyLock::new(|| SecretString::from("decoy key for refused callbacks"));

/// Largest callback body accepted. Twilio's status callbacks are well under 2 KiB.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;
/// How much of a refused callback's URL its log line shows.
const MAX_LOGGED_URL_CHARS: usize = 256;

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) services: Services,
    /// `scheme://host[:port]` of `public_url`: what Twilio signs, joined with the request path.
    origin: Arc<str>,
}

impl AppState {
    pub(crate) fn settings(&self) -> &Arc<Settings> {
        &self.services.settings
    }
}

/// A bound, ready server. Binding happens in [`Application::build`] so tests can use port 0
/// and read the address before serving.
pub struct Application {
    listener: TcpListener,
    /// `server.admin_listen`'s listener, serving `/healthz` and `/metrics` alone.
    admin: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Recovers undispatched events and binds `server.listen`.
    pub async fn build(services: Services) -> anyhow::Result<Application> {
        let listen = services.settings.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("failed to listen on {listen}: {e}"))?;
        Self::build_on(services, listener).await
    }

    /// Like [`Application::build`], on a listener the caller bound: a test binds port 0, writes
    /// that address into the settings (it is part of what Twilio signs) and serves on the same
    /// socket, so no other process can take the port in between.
    pub async fn build_on(
        services: Services,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        // Install the recorder first: counts recorded before it exists are lost.
        telemetry::prometheus();
        let settings = services.settings.clone();
        let admin = match settings.server.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("failed to listen on {addr} (server.admin_listen): {e}")
            })?),
            None => None,
        };
        let recovered = services.dispatcher.recover().await?;
        if recovered > 0 {
            tracing::info!(
                events = recovered,
                "dispatching events left from the last run"
            );
        }
        warn_about_unsafe_settings(&settings);
        let url = &settings.server.public_url;
        let origin = url[..url::Position::BeforePath].to_string();
        Ok(Application {
            listener,
            admin,
            state: AppState {
                services,
                origin: origin.into(),
            },
        })
    }

    /// The main listener's address; with port 0 in the settings, the port the OS chose.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address, when `server.admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|admin| admin.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then stops accepting, stops the dispatcher (runs in
    /// flight get `shutdown_grace_seconds` to finish; its loop ends and is awaited) and closes
    /// the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            admin,
            state,
        } = self;
        tracing::info!(
            listen = %listener.local_addr()?,
            callback = %state.settings().server.callback_url_pattern(),
            "whatsapp-host is serving"
        );
        let mut endpoints = vec![edge::Endpoint {
            name: "main",
            listener,
            router: router(state.clone()),
        }];
        if let Some(admin) = admin {
            tracing::info!(admin = %admin.local_addr()?, "/healthz and /metrics are served only on server.admin_listen");
            endpoints.push(edge::Endpoint {
                name: "admin",
                listener: admin,
                router: admin_router(state.clone()),
            });
        }
        let pruner = retention::Pruner::start(
            state.services.store.clone(),
            state.settings().store.retention,
        );
        edge::serve(endpoints, &state.settings().server.limits, shutdown).await;
        tracing::info!("shutting down: finishing dispatches in flight");
        pruner.stop().await;
        let grace = state.settings().server.shutdown_grace;
        if !state.services.dispatcher.shutdown(grace).await {
            tracing::warn!(
                ?grace,
                "some dispatches did not finish; they will run on the next start"
            );
        }
        state.services.store.close().await;
        tracing::info!("store closed");
        Ok(())
    }
}

fn warn_about_unsafe_settings(settings: &Settings) {
    if settings.twilio.api_base == ApiBase::Simulate {
        tracing::warn!(
            "SIMULATE MODE: twilio.api_base = \"simulate\"; no message leaves this machine and callbacks are generated locally"
        );
    }
    if settings.media.allow_local {
        tracing::warn!(
            "MEDIA URLS MAY REACH INSIDE THIS NETWORK ([media] allow_local = true): the media check fetches plain http and loopback, private and metadata addresses; use this for local stand-ins only"
        );
    }
    for app in settings.apps.values() {
        if let Some(w) = &app.whatsapp
            && !w.validate_signatures
        {
            tracing::warn!(
                app = %app.id,
                "SIGNATURE CHECKS ARE OFF for this app (validate_signatures = false): anyone can post callbacks; use this for local development only"
            );
        }
    }
}

/// Every route, under the web context taken from `public_url`.
pub(crate) fn router(state: AppState) -> Router {
    let services = &state.services;
    let dashboard = crate::dashboard::routes(
        services.settings.clone(),
        services.store.clone(),
        services.dispatcher.clone(),
    );
    let context = routes::context(&services.settings.server.public_url);
    let health = match services.settings.server.admin_listen {
        None => admin_router(state.clone()),
        Some(_) => Router::new(),
    };
    Router::new()
        .route(&routes::callback_route(context), post(callback))
        .route(&routes::short_callback_route(context), post(callback))
        .route(&routes::inbound_route(context), post(inbound))
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
        .with_state(state)
        .merge(dashboard)
        .merge(health)
}

/// `/healthz` and `/metrics`: part of [`router`], or alone on `server.admin_listen` when set.
pub(crate) fn admin_router(state: AppState) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::METRICS, get(metrics))
        .with_state(state)
}

/// What every refusal that could tell a known app id from an unknown one answers: an unknown
/// app, a missing account, another project's account and a bad signature look alike from
/// outside. The log says which it was.
pub const CALLBACK_REFUSED: &str = "callback refused: the app id, the account sid or the X-Twilio-Signature does not match the settings\n";

/// Why a callback was refused; the one mapping from failures to statuses.
#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error("the company id in the callback URL is not valid: {0}")]
    CompanyId(#[from] CompanyIdError),
    #[error("callback body must be application/x-www-form-urlencoded, as Twilio sends it")]
    MediaType,
    #[error("callback body is over {MAX_CALLBACK_BYTES} bytes; twilio's callbacks are under 2 KiB")]
    TooLarge,
    #[error("callback body is not a valid form: {0}")]
    Malformed(String),
    #[error("unknown app: the settings file has no [apps.<id>] section for it")]
    UnknownApp,
    #[error("the callback names no account sid, so there is no token to check it with")]
    NoAccount,
    #[error(
        "account {0} is neither the app's account_id nor the account of the app's tenant for this company"
    )]
    Account(String),
    #[error("missing or invalid X-Twilio-Signature over {0}")]
    Signature(String),
    #[error("failed to store the event; twilio will retry")]
    Store,
}

impl CallbackError {
    fn reason(&self) -> &'static str {
        match self {
            CallbackError::MediaType => "media_type",
            CallbackError::UnknownApp => "unknown_app",
            CallbackError::TooLarge => "too_large",
            CallbackError::CompanyId(_) | CallbackError::Malformed(_) => "malformed",
            CallbackError::NoAccount | CallbackError::Account(_) => "account",
            CallbackError::Signature(_) => "signature",
            CallbackError::Store => "store",
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        telemetry::callback_rejected(self.reason());
        let status = match self {
            CallbackError::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CallbackError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            CallbackError::CompanyId(_) | CallbackError::Malformed(_) => StatusCode::BAD_REQUEST,
            CallbackError::UnknownApp
            | CallbackError::NoAccount
            | CallbackError::Account(_)
            | CallbackError::Signature(_) => {
                return (StatusCode::FORBIDDEN, CALLBACK_REFUSED).into_response();
            }
            CallbackError::Store => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// A status callback; a post whose status is `received` is an inbound message (see
/// [`StatusCallback::is_inbound`]).
async fn callback(
    state: State<AppState>,
    ids: Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CallbackError> {
    receive(false, state, ids, uri, headers, body).await
}

/// A message a contact sent to the app's number ("a message comes in" in Twilio's console).
async fn inbound(
    state: State<AppState>,
    ids: Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CallbackError> {
    receive(true, state, ids, uri, headers, body).await
}

/// Both routes' one path: the same checks, the same durable commit before the answer, the same
/// dedupe and the same empty TwiML; only the event's kind differs.
async fn receive(
    on_inbound_route: bool,
    State(state): State<AppState>,
    Path((app_id, company_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CallbackError> {
    telemetry::callback_received();
    // The ids come straight from an unsigned request: logged escaped and cut, never raw.
    let span = tracing::info_span!(
        "callback",
        app = %telemetry::untrusted(&app_id),
        company = %telemetry::untrusted(&company_id),
        sid = tracing::field::Empty,
    );
    let result = async move {
        check_company_id(&company_id)?;
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(CallbackError::MediaType);
        }
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => CallbackError::TooLarge,
            _ => CallbackError::Malformed(e.body_text()),
        })?;
        // Read before the app is looked up, so a malformed body gets the same 400 whether or not
        // the app exists.
        let callback =
            StatusCallback::parse(&body).map_err(|e| CallbackError::Malformed(e.to_string()))?;
        // Recorded before the checks, so a refused callback's log names its sid too.
        if let Some(sid) = &callback.sid {
            tracing::Span::current()
                .record("sid", tracing::field::display(telemetry::untrusted(sid)));
        }
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        let url = webhook::signed_url(&state.origin, path);
        let signature = webhook::signature(&headers);
        // An unknown app or a foreign account costs the same HMAC as a real check, so neither
        // the answer nor its timing tells which app ids exist.
        let decoy = |refusal: CallbackError| {
            let _ = webhook::is_signed(&DECOY_KEY, &url, &callback.fields, signature);
            refusal
        };
        let app = state
            .settings()
            .apps
            .get(&app_id)
            .ok_or_else(|| decoy(CallbackError::UnknownApp))?;
        let account = callback
            .account_sid
            .as_deref()
            .ok_or_else(|| decoy(CallbackError::NoAccount))?;
        let auth_key = app.callback_key(&company_id, account).ok_or_else(|| {
            decoy(CallbackError::Account(
                telemetry::untrusted(account).to_string(),
            ))
        })?;
        if app.validates_signatures()
            && !webhook::is_signed(auth_key, &url, &callback.fields, signature)
        {
            let url = telemetry::untrusted(&url).max_chars(MAX_LOGGED_URL_CHARS);
            let url = match signature {
                Some(_) => url.to_string(),
                None => format!("{url} (no signature header)"),
            };
            return Err(CallbackError::Signature(url));
        }
        let kind = if callback.is_inbound(on_inbound_route) {
            EventKind::Inbound
        } else {
            EventKind::Status
        };
        let event = NewEvent {
            app: app_id.clone(),
            company: company_id.clone(),
            kind,
            idempotency_token: webhook::idempotency_token(&headers).map(str::to_string),
            callback,
            received_at: now_ms(),
        };
        // Stored and handed to the dispatcher in a task of its own: if the client goes away
        // mid-request, hyper drops this future, and a stored event must still be dispatched.
        let services = state.services.clone();
        let stored = tokio::spawn(
            async move {
                let work_fields = event.callback.fields.clone();
                let inserted = services.store.insert_event(event).await;
                if let Ok(Inserted::New(id)) = inserted {
                    services.dispatcher.submit(Work {
                        event_id: id,
                        app: app_id,
                        company: company_id,
                        kind,
                        fields: work_fields,
                        attempts: 0,
                        recorded: true,
                    });
                }
                inserted
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the task storing a callback failed");
            CallbackError::Store
        })?;
        match stored {
            Ok(Inserted::New(_)) => telemetry::callback_stored(false),
            Ok(Inserted::Duplicate) => {
                telemetry::callback_stored(true);
                tracing::debug!("repeated callback acknowledged without dispatch");
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to store a callback");
                return Err(CallbackError::Store);
            }
        }
        Ok(([(header::CONTENT_TYPE, "text/xml")], webhook::EMPTY_TWIML).into_response())
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = &result
        && !matches!(e, CallbackError::Store)
    {
        span.in_scope(|| tracing::warn!(reason = e.reason(), "refused a callback: {e}"));
    }
    result
}

async fn healthz(State(state): State<AppState>) -> Response {
    let writable = state.services.store.is_writable().await;
    let engine = &state.services.engine;
    let errors: Vec<String> = engine
        .compile_errors()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let workers = engine.status();
    let healthy = writable && errors.is_empty() && workers.running > 0;
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "store_writable": writable,
        "action_errors": errors,
        "backlog": state.services.dispatcher.backlog(),
        "js_workers": workers,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::prometheus().render(),
    )
        .into_response()
}
