//! Helpers for the dashboard tests: a config with the operator password, a logged-in HTTP
//! client, a Twilio stand-in that accepts or refuses creates, and sends through the real path.

use std::sync::Arc;

use serde_json::json;
use whatsapp_host::outbound::{Account, Caller, Media, Outcome, SendRequest};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{ACCOUNT_SID, APP, FROM, TestApp, TestConfig};

pub const PASSWORD: &str = "operator-password-for-tests";
pub const COMPANY: &str = "ACME";
pub const TO: &str = "+393331234567";

/// Turns the dashboard on for a test config.
pub fn with_dashboard(mut config: TestConfig) -> TestConfig {
    config
        .extra
        .push_str(&format!("\n[dashboard]\npassword = \"{PASSWORD}\"\n"));
    config
}

pub fn dashboard_url(app: &TestApp) -> String {
    format!("{}/whatsapp/dashboard", app.base_url)
}

/// A client that does not follow redirects, so tests see the 303s and cookies themselves.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with the operator password; returns the `Cookie` header value for the session.
pub async fn login(app: &TestApp) -> String {
    let response = http()
        .post(format!("{}/auth/login", dashboard_url(app)))
        .form(&[("password", PASSWORD), ("next", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "login with the right password");
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("login sets a cookie")
        .to_str()
        .unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

/// GETs a dashboard page with a session cookie; returns status and body.
pub async fn get_page(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The CSRF token a page embeds in its forms.
pub fn csrf_in(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("page has a csrf field") + marker.len();
    page[start..]
        .split('"')
        .next()
        .expect("csrf value")
        .to_string()
}

/// What Twilio answers to a successful create.
pub fn created(sid: &str, to: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "sid": sid,
        "account_sid": ACCOUNT_SID,
        "status": "queued",
        "to": format!("whatsapp:{to}"),
        "from": format!("whatsapp:{FROM}"),
        "body": "",
        "error_code": null,
        "error_message": null,
    }))
}

/// Makes the Twilio stand-in answer every create with `template`.
pub async fn twilio_answers(server: &MockServer, template: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path_regex(
            r"^/2010-04-01/Accounts/AC[0-9a-f]{32}/Messages\.json$",
        ))
        .respond_with(template)
        .mount(server)
        .await;
}

/// Sends one message through the real outbound path, as a script would.
pub async fn send(app: &TestApp, to: &str, body: &str) -> Outcome {
    let caller = Caller {
        app: Arc::clone(&app.services.settings.apps[APP]),
        company: COMPANY.to_string(),
    };
    let request = SendRequest {
        account: Account::App,
        to: to.to_string(),
        body: body.to_string(),
        media: Media::None,
    };
    app.services
        .outbound
        .send(&caller, request)
        .await
        .expect("a well-formed send")
}
