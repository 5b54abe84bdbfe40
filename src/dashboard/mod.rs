//! The operator dashboard at `{context}/whatsapp/dashboard`: messages with their timelines,
//! each app's conversation with a contact and its 24-hour window, callback events with what
//! their action did, and replay of failed events. Server-rendered
//! HTML with its small CSS and JS embedded in the binary; behind the operator password.
//!
//! Access is a login form and a session cookie (HttpOnly, SameSite=Strict, scoped to the
//! dashboard's path); every POST also carries the session's CSRF token. Without a password in
//! the settings every dashboard route answers 404 and says how to turn it on.

mod auth;
mod pages;
mod utc;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, Extension, Form, FromRequestParts, Path, Query, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use ipnet::IpNet;
use maud::Markup;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::dispatch::Dispatcher;
use crate::routes;
use crate::settings::{DASHBOARD_PASSWORD_ENV, MIN_DASHBOARD_PASSWORD_CHARS, Settings};
use crate::store::{
    Direction, EventFilter, EventState, Message, MessageFilter, NumberWindow, Store, StoreError,
    Window,
};
use crate::twilio::address;

use auth::{Auth, Lockout, Login, Session};
use pages::{EventQuery, MessageQuery, Page, View};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
/// Rows per list page; an "older" link follows when a page is full.
const PAGE_SIZE: usize = 50;
/// Login and replay forms are a few hundred bytes.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the dashboard answers on every route while no password is configured.
pub(crate) const DISABLED: &str = "the dashboard is disabled: set `password` under [dashboard] in the settings file, or the WHATSAPP_HOST_DASHBOARD_PASSWORD environment variable, then restart whatsapp-host\n";

/// The dashboard's routes, ready to merge into the server's router. Logs whether it is on.
/// Takes only what the pages need: the settings, the store they read and the dispatcher that
/// replays.
pub(crate) fn routes(settings: Arc<Settings>, store: Store, dispatcher: Dispatcher) -> Router {
    let base = routes::dashboard_base(routes::context(&settings.server.public_url));
    let Some(password) = &settings.dashboard.password else {
        tracing::info!(
            "dashboard disabled: no [dashboard] password in {} and no {DASHBOARD_PASSWORD_ENV}",
            settings.source.display()
        );
        return disabled(&base);
    };
    if password.expose_secret().chars().count() < MIN_DASHBOARD_PASSWORD_CHARS {
        // Settings accept a short password only in simulate mode (the committed demo settings).
        tracing::warn!(
            "DASHBOARD PASSWORD IS SHORT (under {MIN_DASHBOARD_PASSWORD_CHARS} characters), accepted only because twilio.api_base = \"simulate\"; anyone who can reach this port can guess it"
        );
    }
    let origin = &settings.server.public_url[..url::Position::BeforePath];
    tracing::info!(url = %format!("{origin}{base}"), "dashboard enabled");
    let dash = Dash {
        auth: Arc::new(Auth::new(password, store.clone())),
        base: base.as_str().into(),
        secure_cookie: settings.server.public_url.scheme() == "https",
        redact: settings
            .apps
            .values()
            .flat_map(|app| {
                let tenants = app.tenants.values().map(|t| t.auth_key.clone());
                app.whatsapp
                    .iter()
                    .map(|w| w.auth_key.clone())
                    .chain(tenants)
            })
            .collect(),
        trusted_proxies: settings.dashboard.trusted_proxies.clone().into(),
        settings,
        store,
        dispatcher,
    };
    Router::new()
        .route(&base, get(messages_page))
        .route(&format!("{base}/messages/{{key}}"), get(message_page))
        .route(&routes::conversation_route(&base), get(conversation_page))
        .route(&format!("{base}/events"), get(events_page))
        .route(&format!("{base}/events/{{id}}"), get(event_page))
        .route(&format!("{base}/events/{{id}}/replay"), post(replay))
        .route(&format!("{base}/auth/login"), get(login_form).post(login))
        .route(&format!("{base}/auth/logout"), post(logout))
        .route(&format!("{base}/static/{{file}}"), get(asset))
        .layer(axum::middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(dash)
}

fn disabled(base: &str) -> Router {
    async fn answer() -> Response {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            DISABLED,
        )
            .into_response()
    }
    Router::new()
        .route(base, any(answer))
        .route(&format!("{base}/{{*rest}}"), any(answer))
}

/// Shared by the dashboard's handlers.
#[derive(Clone)]
struct Dash {
    /// For the app list in the filters.
    settings: Arc<Settings>,
    /// Every page reads from it.
    store: Store,
    /// Replays failed and dead events.
    dispatcher: Dispatcher,
    auth: Arc<Auth>,
    /// `{context}/whatsapp/dashboard`: the prefix of every link, and the cookie's path.
    base: Arc<str>,
    /// Mark the cookie `Secure` when the public URL is https.
    secure_cookie: bool,
    /// Every app's auth key, scrubbed from each page before it is sent. No page renders one;
    /// this keeps it so even if an action's error message or a callback field carried one.
    redact: Arc<[SecretString]>,
    /// `[dashboard] trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    trusted_proxies: Arc<[IpNet]>,
}

/// A request from a logged-in operator. Extracting it is the access check: without a live
/// session, GETs get the login page with 401 and everything else a plain 401.
struct Operator {
    token: String,
    session: Session,
}

impl FromRequestParts<Dash> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, d: &Dash) -> Result<Self, Self::Rejection> {
        if let Some(token) = auth::cookie(&parts.headers, auth::COOKIE) {
            match d.auth.session(token).await {
                Ok(Some(session)) => {
                    return Ok(Operator {
                        token: token.to_string(),
                        session,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(d.store_failed(e)),
            }
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            let next = parts
                .uri
                .path_and_query()
                .map_or_else(|| d.base.to_string(), |p| p.to_string());
            Err(d.login_page(StatusCode::UNAUTHORIZED, &next, None))
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                "log in to the dashboard first: the session is missing or has expired\n",
            )
                .into_response())
        }
    }
}

impl Dash {
    fn view<'a>(&'a self, op: &'a Operator) -> View<'a> {
        View {
            base: &self.base,
            csrf: &op.session.csrf,
            apps: self.settings.apps.keys().map(String::as_str).collect(),
            asset_version: asset_version(),
        }
    }

    /// Sends HTML after scrubbing auth keys from it.
    fn html(&self, status: StatusCode, markup: Markup) -> Response {
        let mut body = markup.into_string();
        for key in self.redact.iter() {
            let key = key.expose_secret();
            if key.len() >= 8 && body.contains(key) {
                body = body.replace(key, "[redacted]");
            }
        }
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }

    /// A full page, or 304 when the browser's live poll already has this live region.
    fn page(&self, op: &Operator, headers: &HeaderMap, page: Page) -> Response {
        let etag = format!("\"{}\"", short_hash(page.live.0.as_bytes()));
        let seen = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
        if seen {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        let mut response = self.html(StatusCode::OK, pages::layout(&self.view(op), page, &etag));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        response
    }

    fn login_page(&self, status: StatusCode, next: &str, error: Option<&str>) -> Response {
        let next = self.safe_next(next);
        self.html(
            status,
            pages::login(&self.base, asset_version(), &next, error),
        )
    }

    fn problem(&self, status: StatusCode, title: &str, message: &str) -> Response {
        self.html(
            status,
            pages::problem(&self.base, asset_version(), title, message),
        )
    }

    fn store_failed(&self, e: StoreError) -> Response {
        tracing::error!(error = %e, "dashboard failed to read the store");
        self.problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The store could not be read",
            &format!("{e}; check the server log and /healthz"),
        )
    }

    fn safe_next(&self, next: &str) -> String {
        safe_next(&self.base, next)
    }
}

/// Where to go after logging in: only somewhere inside the dashboard at `base`, so the login
/// form cannot be used to redirect an operator to another site; anything else goes home.
/// `.` and `..` segments (also percent-encoded, which browsers resolve the same way) are
/// refused, so a path that starts inside cannot climb out of it.
fn safe_next(base: &str, next: &str) -> String {
    let inside = next
        .strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
    let plain =
        next.bytes().all(|b| b.is_ascii_graphic()) && !next.contains("//") && !next.contains('\\');
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let dot_segment = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    if inside && plain && !dot_segment && !next.contains("/auth/") {
        next.to_string()
    } else {
        base.to_string()
    }
}

fn nonempty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

async fn messages_page(
    State(d): State<Dash>,
    op: Operator,
    headers: HeaderMap,
    Query(query): Query<MessageQuery>,
) -> Response {
    // A minute-precision "to" includes that whole minute.
    let until = utc::parse_input(&query.until).map(|ms| {
        if query.until.trim().len() == 16 {
            ms + 60_000
        } else {
            ms
        }
    });
    let filter = MessageFilter {
        app: nonempty(&query.app),
        company: nonempty(&query.company),
        status: nonempty(&query.status),
        search: nonempty(&query.q),
        since: utc::parse_input(&query.since),
        until,
        direction: Direction::parse(query.direction.trim()),
        before_id: query.before.trim().parse().ok(),
        limit: PAGE_SIZE,
    };
    match d.store.messages(filter).await {
        Ok(rows) => {
            let older = (rows.len() == PAGE_SIZE)
                .then(|| rows.last().map(|m| m.id))
                .flatten();
            let page = pages::messages(&d.view(&op), &query, &rows, older);
            d.page(&op, &headers, page)
        }
        Err(e) => d.store_failed(e),
    }
}

async fn message_page(
    State(d): State<Dash>,
    op: Operator,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    match find_message(&d, &key).await {
        Ok(Some((message, events))) => {
            let page = pages::message(&d.view(&op), &message, &events);
            d.page(&op, &headers, page)
        }
        Ok(None) => d.problem(
            StatusCode::NOT_FOUND,
            "No such message",
            &format!(
                "no message {key:?} in the store: it was not sent through this host and no callback for it has arrived; search the messages list by phone number"
            ),
        ),
        Err(e) => d.store_failed(e),
    }
}

/// App `app`'s conversation with `contact`, and the window on each of the app's numbers.
async fn conversation_page(
    State(d): State<Dash>,
    op: Operator,
    headers: HeaderMap,
    Path((app, contact)): Path<(String, String)>,
) -> Response {
    let contact = contact_number(&contact);
    let conversation = match d
        .store
        .conversation(&app, &contact, crate::store::now_ms())
        .await
    {
        Ok(c) => c,
        Err(e) => return d.store_failed(e),
    };
    let app_number = d
        .settings
        .apps
        .get(&app)
        .and_then(|a| a.whatsapp.as_ref())
        .map(|w| w.from_number.as_str().to_string());
    if conversation.entries.is_empty() && app_number.is_none() {
        return d.problem(
            StatusCode::NOT_FOUND,
            "No such conversation",
            &format!(
                "app {app:?} has no messages with {contact:?} and is not in the settings; check the app id, and write the contact as an E.164 number such as +393331234567"
            ),
        );
    }
    // The app's own number first, closed when the contact never wrote to it; then the other
    // numbers (a tenant's own) the contact wrote to.
    let mut windows = conversation.windows.clone();
    if let Some(number) = app_number {
        let own = match windows.iter().position(|w| w.app_number == number) {
            Some(i) => windows.remove(i),
            None => NumberWindow {
                app_number: number,
                window: Window::Closed { last_inbound: None },
            },
        };
        windows.insert(0, own);
    }
    let page = pages::conversation(&d.view(&op), &conversation, &windows);
    d.page(&op, &headers, page)
}

/// A contact as typed in a link or by hand: `+39…`, `39…` or a WhatsApp address, read as the
/// E.164 number the store keeps (digits after one `+`).
fn contact_number(text: &str) -> String {
    let number = address::strip_channel(text.trim());
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let plain = number
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'));
    if plain && !digits.is_empty() {
        format!("+{digits}")
    } else {
        number.to_string()
    }
}

/// A message by sid, or by row id for a failed send that has no sid.
async fn find_message(
    d: &Dash,
    key: &str,
) -> Result<Option<(Message, Vec<crate::store::Event>)>, StoreError> {
    let store = &d.store;
    let Ok(id) = key.parse::<i64>() else {
        return store.message(key).await;
    };
    let filter = MessageFilter {
        before_id: Some(id.saturating_add(1)),
        limit: 1,
        ..MessageFilter::default()
    };
    let Some(message) = store
        .messages(filter)
        .await?
        .into_iter()
        .find(|m| m.id == id)
    else {
        return Ok(None);
    };
    match &message.sid {
        Some(sid) => store.app_message(&message.app, sid).await,
        None => Ok(Some((message, Vec::new()))),
    }
}

async fn events_page(
    State(d): State<Dash>,
    op: Operator,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> Response {
    let filter = EventFilter {
        app: nonempty(&query.app),
        state: EventState::parse(query.state.trim()),
        message_sid: nonempty(&query.sid),
        before_id: query.before.trim().parse().ok(),
        limit: PAGE_SIZE,
    };
    match d.store.events(filter).await {
        Ok(rows) => {
            let older = (rows.len() == PAGE_SIZE)
                .then(|| rows.last().map(|e| e.id))
                .flatten();
            let page = pages::events(&d.view(&op), &query, &rows, older);
            d.page(&op, &headers, page)
        }
        Err(e) => d.store_failed(e),
    }
}

#[derive(serde::Deserialize)]
struct EventPageQuery {
    #[serde(default)]
    replayed: Option<String>,
}

async fn event_page(
    State(d): State<Dash>,
    op: Operator,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<EventPageQuery>,
) -> Response {
    match d.store.event(id).await {
        Ok(Some(event)) => {
            let page = pages::event(&d.view(&op), &event, query.replayed.is_some());
            d.page(&op, &headers, page)
        }
        Ok(None) => d.problem(
            StatusCode::NOT_FOUND,
            "No such event",
            &format!("no event #{id} in the store; the events list shows every stored callback"),
        ),
        Err(e) => d.store_failed(e),
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Runs a failed or dead event's action again, with a fresh set of attempts.
async fn replay(
    State(d): State<Dash>,
    op: Operator,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !auth::csrf_matches(&op.session, &form.csrf) {
        return d.problem(
            StatusCode::FORBIDDEN,
            "Replay refused",
            "the form's CSRF token is missing or not this session's: reload the page and press Replay again",
        );
    }
    match d.store.event(id).await {
        Ok(Some(event)) if matches!(event.state, EventState::Failed | EventState::Dead) => {
            tracing::info!(event = id, app = %event.app, company = %event.company, state = event.state.as_str(), "replaying an event from the dashboard");
            d.dispatcher.replay(event);
            Redirect::to(&format!("{}/events/{id}?replayed=1", d.base)).into_response()
        }
        Ok(Some(event)) => d.problem(
            StatusCode::CONFLICT,
            "Nothing to replay",
            &format!(
                "event #{id} is {}; only failed or dead events can be replayed",
                event.state.as_str()
            ),
        ),
        Ok(None) => d.problem(
            StatusCode::NOT_FOUND,
            "No such event",
            &format!("no event #{id} in the store"),
        ),
        Err(e) => d.store_failed(e),
    }
}

#[derive(serde::Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

async fn login_form(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let logged_in = match auth::cookie(&headers, auth::COOKIE) {
        Some(token) => matches!(d.auth.session(token).await, Ok(Some(_))),
        None => false,
    };
    if logged_in {
        return Redirect::to(&d.safe_next(&query.next)).into_response();
    }
    d.login_page(StatusCode::OK, &query.next, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(d): State<Dash>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Without the peer address (a router served without connect info) all clients share one
    // record, which still bounds guessing.
    let peer = connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.0.ip());
    let ip = auth::client_ip(peer, &headers, &d.trusted_proxies);
    match d.auth.log_in(ip, &form.password) {
        Login::LockedOut(lockout) => {
            let seconds = lockout.wait().as_secs().max(1);
            let whose = match lockout {
                Lockout::Client(_) => {
                    tracing::warn!(%ip, "dashboard login refused: too many wrong passwords");
                    "from your address"
                }
                Lockout::Everyone(_) => {
                    tracing::warn!(%ip, "dashboard login refused: too many wrong passwords from all addresses together");
                    "from many addresses"
                }
            };
            let mut response = d.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                &form.next,
                Some(&format!(
                    "Too many wrong passwords {whose}. Try again in {seconds} seconds."
                )),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        Login::Wrong => {
            tracing::warn!(%ip, "dashboard login with a wrong password");
            d.login_page(
                StatusCode::UNAUTHORIZED,
                &form.next,
                Some("Wrong password."),
            )
        }
        Login::Accepted => {
            let token = match d.auth.start_session().await {
                Ok((token, _)) => token,
                Err(e) => return d.store_failed(e),
            };
            tracing::info!(%ip, "operator logged in to the dashboard");
            let cookie = auth::session_cookie(&token, &d.base, d.secure_cookie);
            let mut response = Redirect::to(&d.safe_next(&form.next)).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
    }
}

async fn logout(State(d): State<Dash>, op: Operator, Form(form): Form<CsrfForm>) -> Response {
    if !auth::csrf_matches(&op.session, &form.csrf) {
        return d.problem(
            StatusCode::FORBIDDEN,
            "Logout refused",
            "the form's CSRF token is missing or not this session's: reload the page and try again",
        );
    }
    if let Err(e) = d.auth.end_session(&op.token).await {
        return d.store_failed(e);
    }
    let mut response = Redirect::to(&format!("{}/auth/login", d.base)).into_response();
    if let Ok(value) = HeaderValue::from_str(&auth::cleared_cookie(&d.base, d.secure_cookie)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The embedded stylesheet and script. Public: they hold no data.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such dashboard asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // Links carry the content's hash, so a changed file has a new URL.
            (header::CACHE_CONTROL, "public, max-age=604800, immutable"),
        ],
        body,
    )
        .into_response()
}

/// Headers on every dashboard response: no caching of data, no framing (the Replay button
/// cannot be clickjacked), and only this origin's own script and style.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn asset_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| short_hash(format!("{CSS}{JS}").as_bytes()))
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_read_as_the_e164_number_the_store_keeps() {
        for typed in ["+393331234567", "393331234567", " +39 333 123-4567 "] {
            assert_eq!(contact_number(typed), "+393331234567", "{typed:?}");
        }
        assert_eq!(
            contact_number(&crate::twilio::address::with_channel("+393331234567")),
            "+393331234567"
        );
        assert_eq!(contact_number("someone"), "someone");
    }

    #[test]
    fn next_stays_inside_the_dashboard_and_refuses_dot_segments() {
        let base = "/p/whatsapp/dashboard";
        for kept in [
            "/p/whatsapp/dashboard",
            "/p/whatsapp/dashboard/events?state=dead",
            "/p/whatsapp/dashboard?q=a..b",
            "/p/whatsapp/dashboard/messages/SM1",
            "/p/whatsapp/dashboard/messages/..SM",
        ] {
            assert_eq!(safe_next(base, kept), kept);
        }
        for refused in [
            "/p/whatsapp/dashboard/..",
            "/p/whatsapp/dashboard/../../metrics",
            "/p/whatsapp/dashboard/./events",
            "/p/whatsapp/dashboard/events/.",
            "/p/whatsapp/dashboard/%2e%2e/healthz",
            "/p/whatsapp/dashboard/.%2E/healthz",
            "/p/whatsapp/dashboard/%2E?x=1",
            "/p/whatsapp/dashboardx",
            "/p/whatsapp/dashboard/auth/login",
            "/p/whatsapp/dashboard//evil.example",
            "/p/whatsapp/dashboard/\\evil.example",
            "/elsewhere",
            "https://evil.example/p/whatsapp/dashboard",
            "",
        ] {
            assert_eq!(safe_next(base, refused), base, "{refused:?}");
        }
    }
}
