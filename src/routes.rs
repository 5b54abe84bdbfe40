//! Every path the host serves, written once: the two callback routes, the inbound-message
//! route, the dashboard's base,
//! `/healthz`, `/metrics`, and the callback URL Twilio is given. The server, the dashboard, the
//! settings, the CLI and the tests build paths only through this module. It imports nothing from
//! the crate, so anything may use it.

use url::Url;

/// Liveness and readiness: store writable, actions compiled, dispatch backlog.
pub(crate) const HEALTHZ: &str = "/healthz";
/// Prometheus metrics.
pub(crate) const METRICS: &str = "/metrics";

/// The segment every WhatsApp path starts with, under the web context.
const WHATSAPP: &str = "whatsapp";
/// `/whatsapp/callback/…`: the documented callback route.
const CALLBACK: &str = "callback";
/// `/whatsapp/dashboard/…`: the operator pages.
const DASHBOARD: &str = "dashboard";
/// `{dashboard}/apps/{app}/conversations/{contact}`: one app's conversation with one contact.
const APPS: &str = "apps";
const CONVERSATIONS: &str = "conversations";
/// `/whatsapp/inbound/…`: where Twilio posts the messages contacts send to an app's number.
const INBOUND: &str = "inbound";

/// Segments directly under `/whatsapp/` that the host uses itself. The short callback route
/// `/whatsapp/{app}/{company}` would shadow them, so no app id may be one of these.
pub(crate) const RESERVED_APP_IDS: &[&str] = &[CALLBACK, DASHBOARD, INBOUND];

/// The web context every route lives under: the path of `public_url` without its trailing `/`,
/// so `/platform` for `https://host/platform/`, or `""` for `https://host`.
pub fn context(public_url: &Url) -> &str {
    public_url.path().trim_end_matches('/')
}

/// The documented callback route, as an axum path with `app_id` and `company_id` captures:
/// `{context}/whatsapp/callback/{app_id}/{company_id}`.
pub(crate) fn callback_route(context: &str) -> String {
    format!("{context}/{WHATSAPP}/{CALLBACK}/{{app_id}}/{{company_id}}")
}

/// The short callback route people paste into Twilio's console, with the same captures:
/// `{context}/whatsapp/{app_id}/{company_id}`.
pub(crate) fn short_callback_route(context: &str) -> String {
    format!("{context}/{WHATSAPP}/{{app_id}}/{{company_id}}")
}

/// The inbound-message route ("a message comes in" in Twilio's console), with the same
/// captures: `{context}/whatsapp/inbound/{app_id}/{company_id}`.
pub(crate) fn inbound_route(context: &str) -> String {
    format!("{context}/{WHATSAPP}/{INBOUND}/{{app_id}}/{{company_id}}")
}

/// The dashboard's base path: the prefix of every dashboard route and link, and its cookie's
/// path: `{context}/whatsapp/dashboard`.
pub fn dashboard_base(context: &str) -> String {
    format!("{context}/{WHATSAPP}/{DASHBOARD}")
}

/// The conversation page's route under the dashboard's base, as an axum path with `app` and
/// `contact` captures: `{dashboard_base}/apps/{app}/conversations/{contact}`.
pub(crate) fn conversation_route(dashboard_base: &str) -> String {
    format!("{dashboard_base}/{APPS}/{{app}}/{CONVERSATIONS}/{{contact}}")
}

/// The link to app `app`'s conversation with `contact`, each one path segment.
pub(crate) fn conversation_path(dashboard_base: &str, app: &str, contact: &str) -> String {
    format!(
        "{dashboard_base}/{APPS}/{}/{CONVERSATIONS}/{}",
        path_segment(app),
        path_segment(contact)
    )
}

/// Percent-encodes everything but unreserved characters and `+` (which a path keeps as it is,
/// so a phone number stays readable), so any value is one path segment that cannot climb.
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.bytes().all(|b| b == b'.') {
        // `.` and `..` would be read as the folder itself or its parent.
        out = out.replace('.', "%2E");
    }
    out
}

/// Where an app id sits in the short route, for messages that explain why an id is reserved:
/// `/whatsapp/{app_id}/…`.
pub(crate) fn app_segment(app_id: &str) -> String {
    format!("/{WHATSAPP}/{app_id}/…")
}

/// The URL Twilio should call for an app and company: the documented callback route under
/// `public_url`, each id percent-encoded as one path segment.
pub fn callback_url(public_url: &Url, app_id: &str, company_id: &str) -> String {
    let mut url = public_url.clone();
    url.path_segments_mut()
        .expect("public_url is an http(s) URL, which always has a path")
        .pop_if_empty()
        .extend([WHATSAPP, CALLBACK, app_id, company_id]);
    url.to_string()
}

/// The URL to paste into Twilio's "a message comes in" field for an app and company: the
/// inbound route under `public_url`, each id percent-encoded as one path segment.
pub fn inbound_url(public_url: &Url, app_id: &str, company_id: &str) -> String {
    let mut url = public_url.clone();
    url.path_segments_mut()
        .expect("public_url is an http(s) URL, which always has a path")
        .pop_if_empty()
        .extend([WHATSAPP, INBOUND, app_id, company_id]);
    url.to_string()
}

/// The callback URL with literal `{appId}` and `{companyId}` placeholders, for logs and
/// `whatsapp-host check` (the placeholders are not percent-encoded).
pub(crate) fn callback_url_pattern(public_url: &Url) -> String {
    let base = public_url.as_str().trim_end_matches('/');
    format!("{base}/{WHATSAPP}/{CALLBACK}/{{appId}}/{{companyId}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_urls_share_the_context() {
        let url = Url::parse("https://p.example.com/platform/").unwrap();
        let context = context(&url);
        assert_eq!(context, "/platform");
        assert_eq!(
            callback_route(context),
            "/platform/whatsapp/callback/{app_id}/{company_id}"
        );
        assert_eq!(
            short_callback_route(context),
            "/platform/whatsapp/{app_id}/{company_id}"
        );
        assert_eq!(dashboard_base(context), "/platform/whatsapp/dashboard");
        assert_eq!(
            inbound_route(context),
            "/platform/whatsapp/inbound/{app_id}/{company_id}"
        );
        assert_eq!(
            inbound_url(&url, "crm", "Acme Srl"),
            "https://p.example.com/platform/whatsapp/inbound/crm/Acme%20Srl"
        );
        assert_eq!(
            callback_url(&url, "crm", "ACME"),
            "https://p.example.com/platform/whatsapp/callback/crm/ACME"
        );
        assert_eq!(
            callback_url_pattern(&url),
            "https://p.example.com/platform/whatsapp/callback/{appId}/{companyId}"
        );
    }

    #[test]
    fn a_conversation_path_is_two_segments_that_cannot_escape_the_route() {
        let base = "/p/whatsapp/dashboard";
        assert_eq!(
            conversation_route(base),
            "/p/whatsapp/dashboard/apps/{app}/conversations/{contact}"
        );
        assert_eq!(
            conversation_path(base, "crm", "+393331234567"),
            "/p/whatsapp/dashboard/apps/crm/conversations/+393331234567"
        );
        assert_eq!(path_segment("SM0123abc"), "SM0123abc");
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a b#"), "a%20b%23");
    }

    #[test]
    fn a_bare_origin_has_an_empty_context() {
        let url = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(context(&url), "");
        assert_eq!(dashboard_base(context(&url)), "/whatsapp/dashboard");
        assert_eq!(
            callback_url(&url, "crm", "Acme Srl"),
            "http://127.0.0.1:8080/whatsapp/callback/crm/Acme%20Srl"
        );
    }
}
