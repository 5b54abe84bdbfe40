//! Inbound messages over real HTTP: the inbound route and the shared callback URL, the action's
//! `vo` and its `media`, repeats, forged signatures, the reply, the 24-hour window and the CLI.
//!
//! What an action did is observed from outside: the actions here reply with a WhatsApp message
//! whose body reports what they saw, and a `wiremock` Twilio records what was sent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_host::js::Program;
use whatsapp_host::outbound::Caller;
use whatsapp_host::store::{Direction, EventKind, EventState, MessageFilter};
use whatsapp_host::twilio::{signature, simulate};
use wiremock::MockServer;

use crate::helpers::stand_ins::mock_twilio;
use crate::helpers::*;

/// The contact who writes to the app in these tests.
const CONTACT: &str = "+393331234567";
/// An inbound action that replies to the sender with everything it saw.
const ECHO_VO: &str = "utils.sendWhatsappMessage(vo.From, JSON.stringify(vo));";
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

/// Settings whose app runs `inbound` for inbound messages (as action `onMessage`) and, for
/// status callbacks, an action that would send a message saying so.
fn inbound_config(inbound: &str) -> TestConfig {
    let mut config = TestConfig::on_status("utils.sendWhatsappMessage(vo.To, 'status');");
    config
        .actions
        .insert("onMessage".to_string(), inbound.to_string());
    config.app_toml = "inbound = \"onMessage\"\n".into();
    config
}

/// Starts a server on `inbound_config(inbound)` whose Twilio is a stand-in accepting every create.
async fn spawn_inbound(inbound: &str) -> (TestApp, MockServer) {
    let twilio = mock_twilio().await;
    let app = spawn_app(&inbound_config(inbound).api_base(twilio.uri())).await;
    (app, twilio)
}

/// The fields Twilio posts when `CONTACT` writes `body` to the app's number, with `media`.
fn message_fields(body: &str, media: &[(&str, &str)]) -> Vec<(String, String)> {
    let media: Vec<(String, String)> = media
        .iter()
        .map(|(u, t)| (u.to_string(), t.to_string()))
        .collect();
    simulate::inbound_message_fields(ACCOUNT_SID, CONTACT, FROM, "Ana", body, &media)
}

fn sid_of(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .find(|(k, _)| k == "MessageSid")
        .map(|(_, v)| v.clone())
        .expect("a MessageSid")
}

impl TestApp {
    fn inbound_url(&self, company: &str) -> String {
        let base = url::Url::parse(&self.base_url).unwrap();
        whatsapp_host::routes::inbound_url(&base, APP, company)
    }
}

/// Every create Twilio received, as its form fields.
async fn creates(twilio: &MockServer) -> Vec<BTreeMap<String, String>> {
    twilio
        .received_requests()
        .await
        .expect("wiremock records requests")
        .iter()
        .map(|r| serde_urlencoded::from_bytes(&r.body).expect("twilio create is a form"))
        .collect()
}

#[tokio::test]
async fn an_inbound_message_runs_the_inbound_action_with_vo_as_posted_plus_the_media_array() {
    let (app, twilio) = spawn_inbound(ECHO_VO).await;
    let fields = message_fields(
        "the receipt",
        &[
            ("https://media.example.com/receipt.jpg", "image/jpeg"),
            ("https://media.example.com/terms.pdf", "application/pdf"),
        ],
    );
    let url = app.inbound_url("ACME");
    let response = app.post_signed(&url, &fields).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    assert_eq!(response.text().await.unwrap(), EMPTY_TWIML);
    app.wait_for_events(1, EventState::Done).await;

    let event = &app.all_events().await[0];
    assert_eq!(event.kind, EventKind::Inbound);
    assert_eq!(event.fields, fields, "stored exactly as posted");
    let sent = creates(&twilio).await;
    assert_eq!(
        sent.len(),
        1,
        "the inbound action ran, the status action did not"
    );
    assert_eq!(
        sent[0]["To"],
        format!("whatsapp:{CONTACT}"),
        "replied to the sender"
    );
    let seen: Value = serde_json::from_str(&sent[0]["Body"]).expect("the action sent JSON");
    let mut expected: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    expected.insert("appId".into(), APP.into());
    expected.insert("companyId".into(), "ACME".into());
    expected.insert(
        "media".into(),
        json!([
            {"url": "https://media.example.com/receipt.jpg", "contentType": "image/jpeg"},
            {"url": "https://media.example.com/terms.pdf", "contentType": "application/pdf"},
        ]),
    );
    assert_eq!(seen, Value::Object(expected));

    let (message, _) = app
        .store()
        .app_message(APP, &sid_of(&fields))
        .await
        .unwrap()
        .expect("the inbound message is stored");
    assert_eq!(message.direction, Direction::Inbound);
    assert_eq!(message.status, "received");
    assert_eq!(
        (message.from.as_deref(), message.to.as_deref()),
        (Some(CONTACT), Some(FROM))
    );
    assert_eq!(message.body.as_deref(), Some("the receipt"));
    assert_eq!(message.profile_name.as_deref(), Some("Ana"));
    assert_eq!(message.wa_id.as_deref(), Some("393331234567"));
    app.stop().await;
}

#[tokio::test]
async fn a_message_without_media_gets_an_empty_media_array_and_status_callbacks_get_none() {
    let source = "utils.sendWhatsappMessage('+393331234567', \
                  JSON.stringify({ media: vo.media === undefined ? 'none' : vo.media }));";
    let twilio = mock_twilio().await;
    let mut config = TestConfig::on_status(source).api_base(twilio.uri());
    config
        .actions
        .insert("onMessage".to_string(), source.to_string());
    config.app_toml = "inbound = \"onMessage\"\n".into();
    let app = spawn_app(&config).await;
    let inbound = app
        .post_signed(&app.inbound_url("ACME"), &message_fields("hi", &[]))
        .await;
    assert_eq!(inbound.status(), 200);
    app.wait_for_events(1, EventState::Done).await;
    let status = app
        .post_status("ACME", "SM00000000000000000000000000000001", "delivered")
        .await;
    assert_eq!(status.status(), 200);
    app.wait_for_events(2, EventState::Done).await;
    let bodies: Vec<String> = creates(&twilio)
        .await
        .into_iter()
        .map(|c| c["Body"].clone())
        .collect();
    assert_eq!(bodies, [r#"{"media":[]}"#, r#"{"media":"none"}"#]);
    app.stop().await;
}

#[tokio::test]
async fn a_received_post_to_the_shared_callback_urls_is_an_inbound_message() {
    let (app, twilio) = spawn_inbound(ECHO_VO).await;
    let documented = app.callback_url(APP, "ACME");
    let short = format!("{}/whatsapp/{APP}/ACME", app.base_url);
    for url in [&documented, &short] {
        let response = app.post_signed(url, &message_fields("hi", &[])).await;
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.text().await.unwrap(), EMPTY_TWIML);
    }
    app.wait_for_events(2, EventState::Done).await;
    assert!(
        app.all_events()
            .await
            .iter()
            .all(|e| e.kind == EventKind::Inbound)
    );
    let sent = creates(&twilio).await;
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|c| c["To"] == format!("whatsapp:{CONTACT}"))
    );

    // A status callback is still a status callback on the same URL.
    let status = app
        .post_status("ACME", "SM00000000000000000000000000000002", "delivered")
        .await;
    assert_eq!(status.status(), 200);
    app.wait_for_events(3, EventState::Done).await;
    assert_eq!(app.all_events().await[0].kind, EventKind::Status);
    assert_eq!(creates(&twilio).await[2]["Body"], "status");
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_inbound_message_is_acknowledged_and_dispatched_once() {
    let (app, twilio) = spawn_inbound(ECHO_VO).await;
    let url = app.inbound_url("ACME");
    let fields = message_fields("hi", &[]);
    let sig = signature::sign(AUTH_KEY, &url, &fields);
    for token in [Some("ID-1"), Some("ID-1"), None] {
        let response = app.post_form(&url, &fields, Some(&sig), token).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), EMPTY_TWIML);
    }
    // The same message on the shared callback URL is a repeat too.
    let again = app
        .post_signed(&app.callback_url(APP, "ACME"), &fields)
        .await;
    assert_eq!(again.status(), 200);
    // Another message under the same idempotency token is a repeat of the first.
    let other = message_fields("hello", &[]);
    let other_sig = signature::sign(AUTH_KEY, &url, &other);
    let response = app
        .post_form(&url, &other, Some(&other_sig), Some("ID-1"))
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(1, EventState::Done).await;
    app.wait_for_idle().await;
    assert_eq!(creates(&twilio).await.len(), 1, "dispatched once");
    let messages = app
        .store()
        .messages(MessageFilter::default())
        .await
        .unwrap();
    let inbound = messages
        .iter()
        .filter(|m| m.direction == Direction::Inbound);
    assert_eq!(inbound.count(), 1, "stored once");
    app.stop().await;
}

#[tokio::test]
async fn an_inbound_message_with_a_forged_signature_is_refused_and_not_stored() {
    let (app, twilio) = spawn_inbound(ECHO_VO).await;
    let url = app.inbound_url("ACME");
    let fields = message_fields("hi", &[]);
    let forged = signature::sign("not-the-auth-key", &url, &fields);
    let response = app.post_form(&url, &fields, Some(&forged), None).await;
    assert_eq!(response.status(), 403);
    let unsigned = app.post_form(&url, &fields, None, None).await;
    assert_eq!(unsigned.status(), 403);
    // Signed for the callback route, replayed against the inbound one.
    let elsewhere = app.callback_url(APP, "ACME");
    let replayed = app.post_signed_as(&url, &elsewhere, &fields).await;
    assert_eq!(replayed.status(), 403);
    let unknown_app = url.replace(&format!("/{APP}/"), "/nope/");
    let response = app.post_signed(&unknown_app, &fields).await;
    assert_eq!(response.status(), 403);
    let bad_company = format!("{}/whatsapp/inbound/{APP}/..", app.base_url);
    let response = app.post_signed(&bad_company, &fields).await;
    assert!(response.status().is_client_error());

    assert!(app.all_events().await.is_empty(), "nothing stored");
    let messages = app.store().messages(MessageFilter::default()).await;
    assert!(messages.unwrap().is_empty());
    assert!(creates(&twilio).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn without_an_inbound_action_the_message_is_stored_and_done() {
    let twilio = mock_twilio().await;
    let config = TestConfig::on_status("utils.sendWhatsappMessage(vo.To, 'status');");
    let app = spawn_app(&config.api_base(twilio.uri())).await;
    let response = app
        .post_signed(&app.inbound_url("ACME"), &message_fields("hi", &[]))
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(1, EventState::Done).await;
    assert!(creates(&twilio).await.is_empty(), "no action ran");
    let filter = MessageFilter::default();
    let messages = app.store().messages(filter).await.unwrap();
    assert_eq!(messages[0].direction, Direction::Inbound);
    app.stop().await;
}

/// The committed example action.
fn example_action() -> String {
    std::fs::read_to_string(repo_root().join("actions/onWhatsappMessage.js"))
        .expect("actions/onWhatsappMessage.js is committed")
}

#[tokio::test]
async fn the_example_action_greets_hi_and_helps_otherwise_replying_to_the_sender() {
    let (app, twilio) = spawn_inbound(&example_action()).await;
    let url = app.inbound_url("ACME");
    for body in ["Hi", "what are your hours?"] {
        let response = app.post_signed(&url, &message_fields(body, &[])).await;
        assert_eq!(response.status(), 200);
    }
    app.wait_for_events(2, EventState::Done).await;
    let sent = creates(&twilio).await;
    assert_eq!(sent.len(), 2);
    for create in &sent {
        assert_eq!(create["To"], format!("whatsapp:{CONTACT}"));
        assert_eq!(create["From"], format!("whatsapp:{FROM}"));
        assert!(create.contains_key("StatusCallback"));
    }
    let mut bodies: Vec<&str> = sent.iter().map(|c| c["Body"].as_str()).collect();
    bodies.sort_by_key(|b| !b.starts_with("Hi"));
    assert!(bodies[0].starts_with("Hi Ana!"), "{bodies:?}");
    assert!(bodies[1].contains("\"hi\""), "a help message: {bodies:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_session_is_open_after_an_inbound_message_and_closed_24_hours_later() {
    let (app, _twilio) = spawn_inbound("utils.info('received');").await;
    let caller = Caller {
        app: app.services.settings.apps[APP].clone(),
        company: "ACME".to_string(),
    };
    let windows = || {
        let (app, caller) = (&app, caller.clone());
        async move {
            let source = format!(
                "[utils.whatsappSessionOpen('whatsapp:{CONTACT}'), \
                  utils.whatsappSessionOpen('{FROM}', '333 123 4567'), \
                  utils.whatsappSessionOpen('+447911123456', '{CONTACT}'), \
                  utils.whatsappSessionOpen('+393339999999')]"
            );
            let program = Program::Script {
                name: "window.js".into(),
                source,
            };
            app.services.engine.run(caller, program).await.unwrap()
        }
    };
    assert_eq!(windows().await, Some(json!([false, false, false, false])));
    let response = app
        .post_signed(&app.inbound_url("ACME"), &message_fields("hi", &[]))
        .await;
    assert_eq!(response.status(), 200);
    // Open at once: the message was committed before the 200. The app's number and the
    // tenant form naming it agree; another number and another contact have no window.
    assert_eq!(windows().await, Some(json!([true, true, false, false])));
    let clock = app.store().clock();
    clock.advance(Duration::from_secs(23 * 3600 + 59 * 60));
    assert_eq!(windows().await, Some(json!([true, true, false, false])));
    clock.advance(Duration::from_secs(60));
    assert_eq!(windows().await, Some(json!([false, false, false, false])));

    let bad = Program::Script {
        name: "bad.js".into(),
        source: "utils.whatsappSessionOpen('not a number')".into(),
    };
    let error = app.services.engine.run(caller.clone(), bad).await;
    let error = error.expect_err("a bad number throws").to_string();
    assert!(error.contains("TypeError"), "{error}");
    assert!(error.contains("utils.whatsappSessionOpen"), "{error}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_inbound_posts_a_signed_message_and_messages_lists_it_by_direction() {
    let twilio = mock_twilio().await;
    let config = inbound_config(&example_action()).api_base(twilio.uri());
    let app = spawn_app(&config).await;
    let run = |args: &'static [&'static str]| {
        let mut command = config.command();
        command.args(args).env("RUST_LOG", "warn");
        tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
    };
    let out = run(&[
        "simulate-inbound",
        "--app",
        APP,
        "--company",
        "ACME",
        "--from",
        "333 123 4567",
        "--body",
        "hi",
        "--media",
        "https://media.example.com/photo.jpg",
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("from {CONTACT}")), "{stdout}");
    app.wait_for_events(1, EventState::Done).await;
    let event = &app.all_events().await[0];
    assert_eq!(
        (event.kind, event.company.as_str()),
        (EventKind::Inbound, "ACME")
    );
    let field = |name: &str| {
        event
            .fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("From"), Some("whatsapp:+393331234567"));
    assert_eq!(field("To"), Some("whatsapp:+14155238886"));
    assert_eq!(field("SmsStatus"), Some("received"));
    assert_eq!(field("NumMedia"), Some("1"));
    assert_eq!(field("MediaContentType0"), Some("image/jpeg"));
    let sent = creates(&twilio).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["To"], format!("whatsapp:{CONTACT}"));
    app.wait_for_idle().await;

    let listed = |direction: &'static str| {
        let out = run(match direction {
            "inbound" => &["messages", "--direction", "inbound", "--json"],
            _ => &["messages", "--direction", "outbound", "--json"],
        });
        async move {
            let out = out.await.unwrap();
            assert!(out.status.success(), "{out:?}");
            serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("messages --json")
        }
    };
    let inbound = listed("inbound").await;
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(inbound[0]["direction"], "inbound");
    assert_eq!(inbound[0]["from"], CONTACT);
    assert_eq!(inbound[0]["status"], "received");
    let media: Value = serde_json::from_str(inbound[0]["media"].as_str().unwrap()).unwrap();
    assert_eq!(
        media,
        json!([{"url": "https://media.example.com/photo.jpg", "contentType": "image/jpeg"}])
    );
    let outbound = listed("outbound").await;
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(outbound[0]["direction"], "outbound");
    assert_eq!(outbound[0]["to"], CONTACT);
    let text = run(&["messages", "--direction", "inbound"]).await.unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("received") && text.contains(CONTACT),
        "{text}"
    );
    let refused = run(&["messages", "--direction", "sideways"]).await.unwrap();
    assert!(!refused.status.success());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_simulate_mode_an_inbound_hi_is_answered_and_the_reply_comes_back_as_status_callbacks() {
    let mut config = TestConfig::on_status("utils.info('status ' + vo.MessageStatus);");
    config
        .actions
        .insert("onMessage".to_string(), example_action());
    config.app_toml = "inbound = \"onMessage\"\n".into();
    let config = config.api_base("simulate");
    let app = spawn_app(&config).await;
    let mut command = config.command();
    command.args([
        "simulate-inbound",
        "--app",
        APP,
        "--from",
        CONTACT,
        "--body",
        "hi",
    ]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The inbound message, then the reply's sent, delivered and read.
    app.wait_for_events(4, EventState::Done).await;
    let events = app.all_events().await;
    let kinds: Vec<_> = events
        .iter()
        .rev()
        .map(|e| (e.kind, e.message_status.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Inbound, "received"),
            (EventKind::Status, "sent"),
            (EventKind::Status, "delivered"),
            (EventKind::Status, "read"),
        ]
    );
    let reply = events[0].message_sid.clone().unwrap();
    let (message, _) = app.store().app_message(APP, &reply).await.unwrap().unwrap();
    assert_eq!(message.direction, Direction::Outbound);
    assert_eq!(message.to.as_deref(), Some(CONTACT));
    assert!(message.body.unwrap().starts_with("Hi Simulated contact!"));
    assert_eq!(message.status, "read");
    app.stop().await;
}

#[test]
fn check_names_an_inbound_action_that_has_no_file() {
    let mut config = TestConfig::simulated();
    config.app_toml = "inbound = \"onMessage\"\n".into();
    config.write("127.0.0.1:9".parse().unwrap());
    let out = config.run(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("inbound onMessage"), "{stdout}");
    assert!(
        stdout.contains("names inbound action \"onMessage\" but"),
        "{stdout}"
    );
    let action = config.dir.path().join("actions/onMessage.js");
    std::fs::write(action, "utils.info(vo.Body);").unwrap();
    let out = config.run(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_failing_inbound_action_is_retried_as_an_inbound_event_then_dead() {
    let config =
        inbound_config("throw new Error('inbound boom');").actions_setting("max_attempts", 2);
    let app = spawn_app(&config).await;
    let response = app
        .post_signed(&app.inbound_url("ACME"), &message_fields("hi", &[]))
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(1, EventState::Dead).await;
    let event = &app.all_events().await[0];
    assert_eq!((event.kind, event.attempts), (EventKind::Inbound, 2));
    let error = event.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("inbound boom"),
        "the retry ran the inbound action: {error}"
    );
    app.stop().await;
}
