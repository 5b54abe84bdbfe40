//! The dashboard in a real headless Chromium, driven over WebDriver: a message's timeline
//! arriving live, a conversation after one inbound message and one reply, the Replay button
//! re-running a dead event, and the login wall.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh and CI install them). Set
//! `UPDATE_DOCS_SCREENSHOT=1` to also refresh `docs/dashboard-timeline.png` and
//! `docs/conversation.png`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use whatsapp_host::store::EventState;
use wiremock::ResponseTemplate;

use crate::conversation::{INBOUND_SID, insert_inbound};
use crate::helpers::dashboard::*;
use crate::helpers::stand_ins::{created, twilio_answering, twilio_answers};
use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show what a test waits for (it polls every 2 s).
const PATIENCE: Duration = Duration::from_secs(20);

/// A chromedriver child process and a Chromium session behind it. Dropping it kills both.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does)"
            );
        }
        let port = free_addr().port();
        // A process group of its own, shared by the Chromium it starts, so that dropping the
        // browser ends Chromium too, even when a failing test never closed the session.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            client: None,
            driver,
            _profile: profile,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            "--lang=en-US".into(),
            "--window-size=1100,1000".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session through chromedriver");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session is open")
    }

    async fn goto(&self, url: &str) {
        self.client().goto(url).await.expect("navigation");
        self.assert_no_auth_key().await;
    }

    /// Every page the browser shows must not contain an auth key.
    async fn assert_no_auth_key(&self) {
        let source = self.client().source().await.unwrap();
        assert!(
            !source.contains(AUTH_KEY),
            "the auth key appears on {}",
            self.client().current_url().await.unwrap()
        );
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self.client().find_all(Locator::Css(css)).await.unwrap() {
            // The live update may swap the element out between finding and reading it.
            if let Ok(text) = element.text().await {
                texts.push(text);
            }
        }
        texts
    }

    /// What `script` returns when the page runs it, as a number.
    async fn number(&self, script: &str) -> f64 {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap()
            .as_f64()
            .unwrap()
    }

    /// Waits until `check` passes on what the page shows; the page updates by itself.
    async fn wait_until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check().await {
            if tokio::time::Instant::now() > deadline {
                let source = self.client().source().await.unwrap_or_default();
                panic!("the page did not show {what} within {PATIENCE:?}; it shows:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Types the operator password into the login form shown for `url` and submits it.
    async fn log_in(&self, password: &str) {
        let field = self
            .client()
            .find(Locator::Css("input#password"))
            .await
            .expect("the login form");
        field.send_keys(password).await.unwrap();
        self.client()
            .find(Locator::Css("main.card button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.client().screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "screenshot is a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; it holds only what this browser started.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go: the target folder, and `docs/` when asked to refresh it.
fn screenshot_paths(name: &str) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)];
    if std::env::var_os("UPDATE_DOCS_SCREENSHOT").is_some() {
        paths.push(repo_root().join("docs").join(name));
    }
    paths
}

#[tokio::test]
async fn message_page_shows_the_send_then_sent_delivered_and_read_as_they_arrive() {
    let sid = "SM5f2c9a41d7e04b6f8a3c1e2d9b7a6c50";
    let twilio = twilio_answering(created(sid, TO)).await;
    let config = TestConfig::on_status("utils.info('status ' + vo.MessageStatus);")
        .api_base(twilio.uri())
        .with_dashboard();
    let app = spawn_app(&config).await;
    let outcome = app
        .send(
            "+39 333 123 4567",
            "Your order #1042 has shipped. Track it at https://example.com/t/1042",
        )
        .await;
    assert_eq!(outcome.sid(), Some(sid));
    app.store().flush().await.unwrap();

    let browser = Browser::start().await;
    let b = &browser;
    let page = format!("{}/messages/{sid}", app.dashboard_url());
    browser.goto(&page).await;
    browser.log_in(PASSWORD).await;
    browser
        .wait_until("the message page after logging in", || async move {
            b.texts("h1 code.sid").await == [sid]
        })
        .await;
    assert_eq!(browser.texts("ol.timeline li.status").await.len(), 0);
    assert!(
        browser
            .text("ol.timeline li.send")
            .await
            .contains("Twilio accepted the message")
    );

    // Twilio's three status callbacks arrive while the page is open.
    for status in ["sent", "delivered", "read"] {
        let response = app.post_status(COMPANY, sid, status).await;
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser
        .wait_until(
            "three status events, each with its action done",
            || async move {
                let steps = b.texts("ol.timeline li.status").await;
                steps.len() == 3 && steps.iter().all(|s| s.contains("done"))
            },
        )
        .await;

    let steps = browser.texts("ol.timeline li").await;
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert!(
        steps[0].contains("Sent: Twilio accepted the message"),
        "{steps:?}"
    );
    for (step, status) in steps[1..].iter().zip(["sent", "delivered", "read"]) {
        assert!(step.contains(status), "{status} is not in {step:?}");
        assert!(step.contains("event #"), "{step:?}");
    }
    let verdict = browser.text("#verdict").await;
    assert!(
        verdict.starts_with("Delivered and read by the recipient at "),
        "{verdict}"
    );
    let facts = browser.text("dl.facts").await;
    assert!(
        facts.contains("+393331234567") && facts.contains("Your order #1042"),
        "{facts}"
    );
    browser.assert_no_auth_key().await;
    for path in screenshot_paths("dashboard-timeline.png") {
        browser.screenshot(&path).await;
    }
    browser.goto(&app.dashboard_url()).await;
    assert!(browser.text("#messages").await.contains(sid));
    browser
        .screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-messages.png"))
        .await;

    // The same page on a phone-sized screen: still one column, nothing cut off.
    browser.client().set_window_size(390, 844).await.unwrap();
    browser.goto(&page).await;
    let width = browser
        .number("return document.documentElement.scrollWidth;")
        .await;
    let viewport = browser.number("return window.innerWidth;").await;
    assert!(
        width <= viewport,
        "the page is {width}px wide on a {viewport}px screen"
    );
    browser
        .screenshot(
            &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-timeline-phone.png"),
        )
        .await;

    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn replay_button_reruns_a_dead_event_and_the_page_shows_it_done() {
    let twilio = twilio_answering(ResponseTemplate::new(500).set_body_json(json!({
        "code": 20500, "message": "Internal Server Error", "status": 500
    })))
    .await;
    // The action sends a follow-up and throws when that send fails, so its fate depends on
    // the Twilio stand-in, which the test can change between the first run and the replay.
    let action = "
        var out = JSON.parse(utils.sendWhatsappMessage('+393331234567', 'Thanks! Your message was ' + vo.MessageStatus));
        if (out.sid === null) {
            throw new Error('follow-up send failed with ' + out.error_code + ': ' + out.error_message);
        }
    ";
    let mut config = TestConfig::on_status(action)
        .api_base(twilio.uri())
        .with_dashboard();
    config.actions_toml = "max_attempts = 1".into();
    let app = spawn_app(&config).await;
    let sid = "SM0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a";
    assert_eq!(
        app.post_status(COMPANY, sid, "delivered").await.status(),
        200
    );
    app.wait_for_events(1, EventState::Dead).await;
    let event_id = app.all_events().await[0].id;

    let browser = Browser::start().await;
    let b = &browser;
    browser
        .goto(&format!("{}/events", app.dashboard_url()))
        .await;
    browser.log_in(PASSWORD).await;
    let row = &format!("tr[data-event=\"{event_id}\"]");
    browser
        .wait_until("the dead event in the events list", || async move {
            let text = b.texts(row).await.join(" ");
            text.contains("dead") && text.contains("follow-up send failed with 20500")
        })
        .await;
    browser
        .screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-events.png"))
        .await;

    // Twilio recovers; the operator replays the event from the list.
    twilio.reset().await;
    twilio_answers(&twilio, created("SM9f8e7d6c5b4a39281706f5e4d3c2b1a0", TO)).await;
    browser
        .client()
        .find(Locator::Css(&format!("button[data-replay=\"{event_id}\"]")))
        .await
        .expect("a Replay button for the dead event")
        .click()
        .await
        .unwrap();
    browser
        .wait_until(
            "the event page saying the replay succeeded",
            || async move {
                b.texts("#event-state").await.join(" ").contains("done")
                    && b.texts("#replay-notice")
                        .await
                        .join(" ")
                        .contains("succeeded")
            },
        )
        .await;
    assert!(
        browser
            .client()
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with(&format!("/events/{event_id}"))
    );
    browser.assert_no_auth_key().await;
    let event = app.store().event(event_id).await.unwrap().unwrap();
    assert_eq!(event.state, EventState::Done);
    assert_eq!(event.attempts, 1, "a replay starts a fresh set of attempts");

    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn without_the_password_the_browser_gets_the_login_page_and_no_data() {
    let config = TestConfig::new().with_dashboard();
    let app = spawn_app(&config).await;
    let sid = "SMa1b2c3d4e5f60718293a4b5c6d7e8f90";
    assert_eq!(
        app.post_status(COMPANY, sid, "delivered").await.status(),
        200
    );
    app.store().flush().await.unwrap();

    let browser = Browser::start().await;
    let b = &browser;
    let page = format!("{}/messages/{sid}", app.dashboard_url());
    for url in [
        page.clone(),
        app.dashboard_url(),
        format!("{}/events", app.dashboard_url()),
    ] {
        browser.goto(&url).await;
        let source = browser.client().source().await.unwrap();
        assert!(
            source.contains("id=\"password\""),
            "{url} shows no login form"
        );
        // The login form keeps the address asked for (to return there), and nothing else.
        let shown = browser.text("body").await;
        assert!(
            !shown.contains(sid),
            "{url} shows data before login: {shown}"
        );
        assert!(
            !source.contains("+393331234567") && !source.contains("delivered"),
            "{url} shows data before login"
        );
    }

    browser.goto(&page).await;
    browser.log_in("not the password").await;
    browser
        .wait_until("the wrong-password message", || async move {
            b.texts("#login-error").await.join(" ") == "Wrong password."
        })
        .await;
    assert!(!browser.text("body").await.contains(sid));

    browser.log_in(PASSWORD).await;
    browser
        .wait_until(
            "the page that was asked for, after logging in",
            || async move { b.texts("h1 code.sid").await == [sid] },
        )
        .await;
    browser.assert_no_auth_key().await;

    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn conversation_page_shows_one_inbound_message_and_the_reply_with_its_statuses() {
    let reply = "SM7c3e1b9d2f4a48e6b0c5d8a1f2e3b4c5";
    let twilio = twilio_answering(created(reply, TO)).await;
    let config = TestConfig::on_status("utils.info('status ' + vo.MessageStatus);")
        .api_base(twilio.uri())
        .with_dashboard();
    let app = spawn_app(&config).await;
    // The contact writes first (stored directly, dated three minutes back; see
    // `conversation::insert_inbound`), and the app replies through the real send path.
    let inbound_at = whatsapp_host::store::now_ms() - 3 * 60 * 1000;
    insert_inbound(&config, INBOUND_SID, TO, "hi", inbound_at).await;
    let outcome = app
        .send(
            TO,
            "Hi Ana! Thanks for writing. Reply ORDER for your order status, or tell us how we can help.",
        )
        .await;
    assert_eq!(outcome.sid(), Some(reply));
    app.store().flush().await.unwrap();

    let browser = Browser::start().await;
    let b = &browser;
    // From the messages list, inbound only, to the conversation by the contact's link.
    browser
        .goto(&format!("{}?direction=inbound", app.dashboard_url()))
        .await;
    browser.log_in(PASSWORD).await;
    browser
        .wait_until("the inbound message in the list", || async move {
            b.texts("#messages").await.join(" ").contains(INBOUND_SID)
        })
        .await;
    assert!(!browser.text("#messages").await.contains(reply));
    browser
        .client()
        .find(Locator::Css("#messages a.contact"))
        .await
        .expect("a link to the conversation")
        .click()
        .await
        .unwrap();
    browser
        .wait_until("the conversation with both messages", || async move {
            b.texts("ol.conversation li.msg").await.len() == 2
        })
        .await;
    assert!(
        browser
            .client()
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/apps/crm/conversations/+393331234567")
    );
    let window = browser.text("#window").await;
    assert!(
        window.contains("24-hour window: open until") && window.contains("UTC"),
        "{window}"
    );

    // Twilio reports the reply sent, delivered and read while the page is open.
    for status in ["sent", "delivered", "read"] {
        assert_eq!(app.post_status(COMPANY, reply, status).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser
        .wait_until("the reply marked read", || async move {
            b.texts("ol.conversation li.outbound .status")
                .await
                .join(" ")
                .contains("read")
        })
        .await;
    let messages = browser.texts("ol.conversation li.msg").await;
    assert!(
        messages[0].contains("Ana") && messages[0].contains("hi"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("Hi Ana!") && messages[1].contains(reply),
        "{messages:?}"
    );
    assert_eq!(
        browser
            .number(
                "return document.querySelector('li.msg.outbound .bubble').getBoundingClientRect().left \
                 - document.querySelector('li.msg.inbound .bubble').getBoundingClientRect().left;"
            )
            .await
            .signum(),
        1.0,
        "the reply sits to the right of the contact's message"
    );
    browser.assert_no_auth_key().await;
    browser.client().set_window_size(1000, 640).await.unwrap();
    for path in screenshot_paths("conversation.png") {
        browser.screenshot(&path).await;
    }

    // On a phone-sized screen nothing is cut off.
    browser.client().set_window_size(390, 844).await.unwrap();
    let here = browser.client().current_url().await.unwrap();
    browser.goto(here.as_str()).await;
    let width = browser
        .number("return document.documentElement.scrollWidth;")
        .await;
    let viewport = browser.number("return window.innerWidth;").await;
    assert!(
        width <= viewport,
        "the page is {width}px wide on a {viewport}px screen"
    );

    browser.close().await;
    app.stop().await;
}
