//! The HTTP server: routes, the Twilio callback endpoint, `/healthz` and `/metrics`, and
//! graceful shutdown. Callback errors map to HTTP statuses here and nowhere else. Connections
//! and their limits are [`crate::edge`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::dispatch::{Dispatcher, Work};
use crate::services::Services;
use crate::settings::{ApiBase, Settings};
use crate::store::{Inserted, NewEvent, now_ms};
use crate::{edge, telemetry, twilio};

/// Largest callback body accepted. Twilio's status callbacks are well under 2 KiB.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub dispatcher: Dispatcher,
    /// `scheme://host[:port]` of `public_url`: what Twilio signs, joined with the request path.
    origin: Arc<str>,
}

impl AppState {
    pub fn settings(&self) -> &Arc<Settings> {
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
    dispatcher_task: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Starts every service, recovers undispatched events and binds `server.listen`.
    pub async fn build(services: Services) -> anyhow::Result<Application> {
        // Install the recorder first: counts recorded before it exists are lost.
        telemetry::prometheus();
        let settings = services.settings.clone();
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", settings.server.listen))?;
        let admin = match settings.server.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("failed to listen on {addr} (server.admin_listen): {e}")
            })?),
            None => None,
        };
        let (dispatcher, dispatcher_task) = Dispatcher::start(
            settings.clone(),
            services.store.clone(),
            services.engine.clone(),
        );
        let recovered = dispatcher.recover().await?;
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
                dispatcher,
                origin: origin.into(),
            },
            dispatcher_task,
        })
    }

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

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, lets dispatches in flight
    /// finish (bounded by `shutdown_grace_seconds`) and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            admin,
            state,
            dispatcher_task,
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
        edge::serve(endpoints, &state.settings().server.limits, shutdown).await;
        tracing::info!("shutting down: finishing dispatches in flight");
        let grace = state.settings().server.shutdown_grace;
        if !state.dispatcher.drain(grace).await {
            tracing::warn!(
                ?grace,
                "some dispatches did not finish; they will run on the next start"
            );
        }
        dispatcher_task.abort();
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
pub fn router(state: AppState) -> Router {
    let context = state.settings().server.context();
    Router::new()
        .route(
            &format!("{context}/whatsapp/callback/{{app_id}}/{{company_id}}"),
            post(callback),
        )
        .route(
            &format!("{context}/whatsapp/{{app_id}}/{{company_id}}"),
            post(callback),
        )
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
        .with_state(state.clone())
        .merge(crate::dashboard::routes(&state))
        .merge(match state.settings().server.admin_listen {
            None => admin_router(state.clone()),
            Some(_) => Router::new(),
        })
}

/// `/healthz` and `/metrics`: part of [`router`], or alone on `server.admin_listen` when set.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Why a callback was refused; the one mapping from failures to statuses.
#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error("callback body must be application/x-www-form-urlencoded, as Twilio sends it")]
    MediaType,
    #[error("unknown app {0:?}: it has no [apps.{0}] section in the settings file")]
    UnknownApp(String),
    #[error("app {0:?} has no WHATSAPP parameters to check the signature with")]
    NoWhatsapp(String),
    #[error("callback body is over {MAX_CALLBACK_BYTES} bytes; twilio's callbacks are under 2 KiB")]
    TooLarge,
    #[error("callback body is not a valid form: {0}")]
    Malformed(String),
    #[error("missing or invalid X-Twilio-Signature")]
    Signature,
    #[error("failed to store the event; twilio will retry")]
    Store,
}

impl CallbackError {
    fn reason(&self) -> &'static str {
        match self {
            CallbackError::MediaType => "media_type",
            CallbackError::UnknownApp(_) | CallbackError::NoWhatsapp(_) => "unknown_app",
            CallbackError::TooLarge => "too_large",
            CallbackError::Malformed(_) => "malformed",
            CallbackError::Signature => "signature",
            CallbackError::Store => "store",
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let status = match self {
            CallbackError::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CallbackError::UnknownApp(_) | CallbackError::NoWhatsapp(_) => StatusCode::NOT_FOUND,
            CallbackError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            CallbackError::Malformed(_) => StatusCode::BAD_REQUEST,
            CallbackError::Signature => StatusCode::FORBIDDEN,
            CallbackError::Store => StatusCode::SERVICE_UNAVAILABLE,
        };
        telemetry::callback_rejected(self.reason());
        (status, format!("{self}\n")).into_response()
    }
}

/// The empty TwiML answer: valid for status callbacks and for incoming-message webhooks.
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

async fn callback(
    State(state): State<AppState>,
    Path((app_id, company_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CallbackError> {
    telemetry::callback_received();
    let span = tracing::info_span!("callback", app = %app_id, company = %company_id, sid = tracing::field::Empty);
    async move {
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(CallbackError::MediaType);
        }
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => CallbackError::TooLarge,
            _ => CallbackError::Malformed(e.body_text()),
        })?;
        let app = state
            .settings()
            .apps
            .get(&app_id)
            .ok_or_else(|| CallbackError::UnknownApp(app_id.clone()))?;
        let whatsapp = app
            .whatsapp
            .as_ref()
            .ok_or_else(|| CallbackError::NoWhatsapp(app_id.clone()))?;
        let fields = parse_form(&body).map_err(CallbackError::Malformed)?;
        // Recorded before the signature check, so a rejected callback's log names its sid too.
        if let Some((_, sid)) = fields.iter().rev().find(|(k, _)| k == "MessageSid") {
            tracing::Span::current().record("sid", sid.as_str());
        }
        if whatsapp.validate_signatures {
            let url = format!(
                "{}{}",
                state.origin,
                uri.path_and_query().map_or("", |p| p.as_str())
            );
            let signature = headers
                .get(twilio::signature::HEADER)
                .and_then(|v| v.to_str().ok());
            let valid = signature.is_some_and(|sig| {
                twilio::signature::is_valid(whatsapp.auth_key.expose_secret(), &url, &fields, sig)
            });
            if !valid {
                tracing::warn!(url = %url, has_signature = signature.is_some(), "rejected a callback with a missing or invalid signature");
                return Err(CallbackError::Signature);
            }
        }
        let event = NewEvent {
            app: app_id.clone(),
            company: company_id.clone(),
            idempotency_token: headers
                .get("i-twilio-idempotency-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            fields,
            received_at: now_ms(),
        };
        let work_fields = event.fields.clone();
        match state.services.store.insert_event(event).await {
            Ok(Inserted::New(id)) => {
                telemetry::callback_stored(false);
                state.dispatcher.submit(Work {
                    event_id: id,
                    app: app_id,
                    company: company_id,
                    fields: work_fields,
                    attempts: 0,
                });
            }
            Ok(Inserted::Duplicate) => {
                telemetry::callback_stored(true);
                tracing::debug!("repeated callback acknowledged without dispatch");
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to store a callback");
                return Err(CallbackError::Store);
            }
        }
        Ok(([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response())
    }
    .instrument(span)
    .await
}

/// Decodes `application/x-www-form-urlencoded` strictly: invalid percent escapes or UTF-8 are
/// errors, not replacement characters, so what is stored is exactly what Twilio signed.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "it is not UTF-8".to_string())?;
    let decode = |s: &str| -> Result<String, String> {
        let plus = s.replace('+', " ");
        let bytes = plus.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape near {:?}", truncate(s, 40)))?;
                out.push(hex);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out)
            .map_err(|_| format!("{:?} decodes to invalid UTF-8", truncate(s, 40)))
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let writable = state.services.store.is_writable().await;
    let errors: Vec<String> = state
        .services
        .engine
        .compile_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    let healthy = writable && errors.is_empty();
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "store_writable": writable,
        "action_errors": errors,
        "backlog": state.dispatcher.backlog(),
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

#[cfg(test)]
mod tests {
    use super::parse_form;

    #[test]
    fn form_decoding_is_strict() {
        assert_eq!(
            parse_form(b"A=1&B=a+b%21&C=").unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "a b!".into()),
                ("C".into(), "".into())
            ]
        );
        assert!(parse_form(b"A=%zz").is_err());
        assert!(parse_form(b"A=%ff").is_err());
        assert!(parse_form(&[0x41, 0x3d, 0xff]).is_err());
    }
}
