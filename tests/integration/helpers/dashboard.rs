//! Helpers for the dashboard tests: a config with the operator password, a logged-in HTTP
//! client, and sends through the real path.

use std::sync::Arc;

use whatsapp_host::outbound::{Account, Caller, Media, SendOutcome, SendRequest};
use whatsapp_host::routes;

use crate::helpers::{APP, TestApp, TestConfig};

pub const PASSWORD: &str = "operator-password-for-tests";
pub const COMPANY: &str = "ACME";
pub const TO: &str = "+393331234567";

impl TestConfig {
    /// Turns the dashboard on, with the operator password `PASSWORD`.
    pub fn with_dashboard(mut self) -> Self {
        self.extra
            .push_str(&format!("\n[dashboard]\npassword = \"{PASSWORD}\"\n"));
        self
    }
}

impl TestApp {
    /// The dashboard's base URL on this server, under the web context of its `public_url`.
    pub fn dashboard_url(&self) -> String {
        let context = routes::context(&self.services.settings.server.public_url);
        format!("{}{}", self.base_url, routes::dashboard_base(context))
    }

    /// Logs in with the operator password; returns the `Cookie` header value for the session.
    pub async fn login(&self) -> String {
        let response = http()
            .post(format!("{}/auth/login", self.dashboard_url()))
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

    /// Sends one message through the real outbound path, as a script would.
    pub async fn send(&self, to: &str, body: &str) -> SendOutcome {
        let caller = Caller {
            app: Arc::clone(&self.services.settings.apps[APP]),
            company: COMPANY.to_string(),
        };
        let request = SendRequest {
            account: Account::App,
            to: to.to_string(),
            body: body.to_string(),
            media: Media::None,
        };
        self.services
            .outbound
            .send(&caller, request)
            .await
            .expect("a well-formed send")
    }
}

/// A client that does not follow redirects, so tests see the 303s and cookies themselves.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
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

/// POSTs a dashboard form holding only the CSRF token `csrf`, with a session cookie, as the
/// page's buttons do.
pub async fn post_with_csrf(url: &str, cookie: &str, csrf: &str) -> reqwest::Response {
    http()
        .post(url)
        .header("cookie", cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap()
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
