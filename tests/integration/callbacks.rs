//! The callback endpoint over real HTTP: signatures, bad input, durability and dispatch.
//!
//! What an action did is observed from outside: the actions here send a WhatsApp message whose
//! body reports what they saw, and a `wiremock` Twilio records what was sent.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use std::time::Duration;
use whatsapp_host::store::{EventFilter, EventState};
use whatsapp_host::twilio::{self, signature};

use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::stand_ins::{SENT_SID, created, mock_twilio};
use crate::helpers::*;

/// An action that reports everything it saw as the body of a message.
const ECHO_VO: &str = "utils.sendWhatsappMessage('+393331234567', JSON.stringify(vo));";

/// The `Body` of every message the mock Twilio received, in order.
async fn sent_bodies(twilio: &MockServer) -> Vec<String> {
    twilio
        .received_requests()
        .await
        .expect("wiremock records requests")
        .iter()
        .map(|r| {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&r.body).expect("twilio create is a form");
            form.into_iter()
                .find(|(k, _)| k == "Body")
                .map(|(_, v)| v)
                .expect("twilio create has a Body")
        })
        .collect()
}

/// Sent bodies parsed as the JSON the actions here write.
async fn sent_json(twilio: &MockServer) -> Vec<Value> {
    sent_bodies(twilio)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).expect("the action sent JSON"))
        .collect()
}

/// After requests that must have changed nothing, a good callback still gets through: proves
/// the server kept serving and gives asynchronous dispatch a point to be observed at.
async fn assert_still_serving(app: &TestApp, sid: &str) {
    let response = app.post_status("ACME", sid, "delivered").await;
    assert_eq!(response.status(), 200, "a good callback after the bad ones");
    app.wait_for_events(1, EventState::Done).await;
    assert_eq!(app.all_events().await[0].message_sid.as_deref(), Some(sid));
}

#[tokio::test]
async fn signed_callback_is_stored_and_dispatched() {
    let config = TestConfig::on_status("utils.info('got ' + vo.MessageStatus);");
    let app = spawn_app(&config).await;
    let response = app
        .post_status("ACME", "SM00000000000000000000000000000001", "delivered")
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(1, EventState::Done).await;
    app.stop().await;
}

#[tokio::test]
async fn action_sees_exactly_the_posted_fields_plus_app_and_company() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let sid = "SM00000000000000000000000000000002";
    let mut fields = status_fields(sid, "undelivered");
    fields.push(("Note".into(), "a b&c=d €".into()));
    // A company with a space travels percent-encoded in the path Twilio signs.
    let url = format!("{}/whatsapp/callback/{APP}/Acme%20Srl", app.base_url);
    let response = app.post_signed_as(&url, &url, &fields).await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(1, EventState::Done).await;

    let mut expected: BTreeMap<String, String> = fields.into_iter().collect();
    expected.insert("appId".into(), APP.into());
    expected.insert("companyId".into(), "Acme Srl".into());
    let seen = sent_json(&twilio).await;
    assert_eq!(seen, vec![json!(expected)]);
    app.stop().await;
}

#[tokio::test]
async fn callback_with_forged_signature_is_rejected_and_not_stored() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let fields = status_fields("SM00000000000000000000000000000003", "delivered");

    let other_key = signature::sign("not-the-auth-key", &url, &fields);
    let response = app.post_form(&url, &fields, Some(&other_key), None).await;
    assert_eq!(response.status(), 403, "signed with another key");
    let garbage = app
        .post_form(&url, &fields, Some("bm90IGEgc2lnbmF0dXJl"), None)
        .await;
    assert_eq!(garbage.status(), 403, "a made-up signature");
    // A valid signature for other fields: the body was tampered with after signing.
    let mut tampered = fields.clone();
    let sig = signature::sign(AUTH_KEY, &url, &fields);
    tampered[2].1 = "read".into();
    let response = app.post_form(&url, &tampered, Some(&sig), None).await;
    assert_eq!(response.status(), 403, "fields changed after signing");

    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000033").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn callback_without_signature_is_rejected_and_not_stored() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let fields = status_fields("SM00000000000000000000000000000004", "delivered");

    let response = app.post_form(&url, &fields, None, None).await;
    assert_eq!(response.status(), 403, "no signature header");
    let response = app.post_form(&url, &fields, Some(""), None).await;
    assert_eq!(response.status(), 403, "an empty signature header");

    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000044").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn callback_signed_for_another_url_is_rejected_and_not_stored() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let fields = status_fields("SM00000000000000000000000000000005", "delivered");
    let stale = [
        // Another tenant's callback URL, replayed against this one.
        app.callback_url(APP, "OTHER"),
        // The same path on another host, and on another port.
        format!("http://attacker.example.test/whatsapp/callback/{APP}/ACME"),
        format!("http://127.0.0.1:1/whatsapp/callback/{APP}/ACME"),
        // Another scheme, and a query string the request does not carry.
        url.replacen("http://", "https://", 1),
        format!("{url}?x=1"),
    ];
    for signed in &stale {
        let response = app.post_signed_as(&url, signed, &fields).await;
        assert_eq!(response.status(), 403, "signed over {signed}");
    }

    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000055").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn signature_over_the_default_port_variants_is_accepted() {
    // Twilio calls https://hooks.example.test/platform/...; a proxy forwards to this server.
    let mut config = TestConfig::on_status("utils.debug(vo.MessageSid);");
    config.public_url = Some("https://hooks.example.test/platform".into());
    let app = spawn_app(&config).await;
    let path = format!("/platform/whatsapp/callback/{APP}/ACME");
    let url = format!("{}{path}", app.base_url);
    for (i, signed) in [
        format!("https://hooks.example.test{path}"),
        format!("https://hooks.example.test:443{path}"),
    ]
    .iter()
    .enumerate()
    {
        let fields = status_fields(&format!("SM0000000000000000000000000000006{i}"), "sent");
        let response = app.post_signed_as(&url, signed, &fields).await;
        assert_eq!(response.status(), 200, "signed over {signed}");
    }
    // The default port of the other scheme is not a variant of this URL.
    let fields = status_fields("SM00000000000000000000000000000069", "sent");
    let signed = format!("https://hooks.example.test:80{path}");
    let response = app.post_signed_as(&url, &signed, &fields).await;
    assert_eq!(response.status(), 403, "signed over {signed}");
    app.wait_for_events(2, EventState::Done).await;
    app.stop().await;

    // Registered with an explicit port, Twilio may sign the URL without it.
    let mut config = TestConfig::on_status("utils.debug(vo.MessageSid);");
    config.public_url = Some("http://hooks.example.test:8080".into());
    let app = spawn_app(&config).await;
    let path = format!("/whatsapp/{APP}/ACME");
    let url = format!("{}{path}", app.base_url);
    for (i, signed) in [
        format!("http://hooks.example.test:8080{path}"),
        format!("http://hooks.example.test{path}"),
    ]
    .iter()
    .enumerate()
    {
        let fields = status_fields(&format!("SM0000000000000000000000000000007{i}"), "sent");
        let response = app.post_signed_as(&url, signed, &fields).await;
        assert_eq!(response.status(), 200, "signed over {signed}");
    }
    app.wait_for_events(2, EventState::Done).await;
    app.stop().await;
}

#[tokio::test]
async fn both_callback_routes_store_and_dispatch() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let documented = app.callback_url(APP, "ACME");
    let console = format!("{}/whatsapp/{APP}/NODEFINED", app.base_url);
    let first = status_fields("SM00000000000000000000000000000008", "sent");
    let second = status_fields("SM00000000000000000000000000000009", "sent");
    assert_eq!(app.post_signed(&documented, &first).await.status(), 200);
    assert_eq!(app.post_signed(&console, &second).await.status(), 200);
    app.wait_for_events(2, EventState::Done).await;

    let mut seen: Vec<(String, String)> = sent_json(&twilio)
        .await
        .iter()
        .map(|vo| {
            (
                vo["MessageSid"].as_str().unwrap().to_string(),
                vo["companyId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("SM00000000000000000000000000000008".into(), "ACME".into()),
            (
                "SM00000000000000000000000000000009".into(),
                "NODEFINED".into()
            )
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_app_gets_the_same_answer_as_a_bad_signature() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let fields = status_fields("SM00000000000000000000000000000010", "sent");
    let mut answers = Vec::new();
    for url in [
        app.callback_url("nosuchapp", "ACME"),
        format!("{}/whatsapp/nosuchapp/ACME", app.base_url),
    ] {
        answers.push((
            "an unknown app",
            app.post_signed_as(&url, &url, &fields).await,
        ));
    }
    let url = app.callback_url(APP, "ACME");
    let forged = app
        .post_form(&url, &fields, Some("bm90IGEgc2lnbmF0dXJl"), None)
        .await;
    answers.push(("a bad signature", forged));
    answers.push((
        "no signature",
        app.post_form(&url, &fields, None, None).await,
    ));
    let mut seen = Vec::new();
    for (what, response) in answers {
        let status = response.status().as_u16();
        seen.push((what, status, response.text().await.unwrap()));
    }
    for (what, status, body) in &seen {
        assert_eq!(
            (*status, body.as_str()),
            (403, whatsapp_host::server::CALLBACK_REFUSED),
            "{what}"
        );
    }
    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000011").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn a_callback_from_another_account_is_refused_like_a_bad_signature() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let sid = "SM00000000000000000000000000000080";
    // Correctly signed with the app's token, but naming another project, or none.
    let other_account = twilio::simulate::status_callback_fields(
        sid,
        "AC11111111111111111111111111111111",
        FROM,
        "+393331234567",
        "failed",
    );
    let mut no_account = status_fields(sid, "failed");
    no_account.retain(|(k, _)| k != "AccountSid");
    for (what, fields) in [
        ("another account", &other_account),
        ("no account", &no_account),
    ] {
        let response = app.post_signed_as(&url, &url, fields).await;
        assert_eq!(response.status(), 403, "{what}");
        assert_eq!(
            response.text().await.unwrap(),
            whatsapp_host::server::CALLBACK_REFUSED,
            "{what}"
        );
    }
    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, sid).await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

/// Posts a signed callback over a bare TCP connection with the request target exactly as given:
/// HTTP clients resolve `.` and `..` segments before sending, as browsers do, but an attacker's
/// need not. Returns the status and body.
async fn post_target_as_is(
    app: &TestApp,
    target: &str,
    fields: &[(String, String)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = app.base_url.trim_start_matches("http://");
    let signed = format!("{}{target}", app.base_url);
    let body = serde_urlencoded::to_string(fields).unwrap();
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {authority}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         X-Twilio-Signature: {}\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        signature::sign(AUTH_KEY, &signed, fields),
    );
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().expect("an HTTP status line");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[tokio::test]
async fn a_company_id_that_is_dots_too_long_or_has_slashes_or_control_characters_is_refused() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let fields = status_fields("SM00000000000000000000000000000081", "sent");
    let too_long = "x".repeat(65);
    let bad = [
        (".", "must not be \".\" or \"..\""),
        ("..", "must not be \".\" or \"..\""),
        ("a%2Fb", "'/'"),
        ("a%0Ab", "control characters"),
        ("a%1B%5B31m", "control characters"),
        ("a%7F", "control characters"),
        (too_long.as_str(), "at most 64 characters"),
    ];
    for (company, expected) in bad {
        for route in ["/whatsapp/callback/crm", "/whatsapp/crm"] {
            let target = format!("{route}/{company}");
            let (status, body) = post_target_as_is(&app, &target, &fields).await;
            assert_eq!(status, 400, "{target}: {body}");
            assert!(body.contains("company id"), "{target}: {body}");
            assert!(body.contains(expected), "{target}: {body}");
        }
    }
    // 64 characters, dots inside an id and non-ASCII letters are fine.
    for company in ["x".repeat(64), "a.b".into(), "%E2%82%ACuro".into()] {
        let target = format!("/whatsapp/callback/crm/{company}");
        let (status, body) = post_target_as_is(&app, &target, &fields).await;
        assert_eq!(status, 200, "{target}: {body}");
    }
    app.wait_for_events(1, EventState::Done).await;
    assert_eq!(
        sent_bodies(&twilio).await.len(),
        1,
        "one event: the sid repeats"
    );
    app.stop().await;
}

#[tokio::test]
async fn newlines_and_escapes_from_a_request_never_reach_the_log_raw() {
    // The real binary, its log read from stderr as an operator's log shipper would.
    let config = TestConfig::on_status("utils.info('status ' + vo.MessageStatus);");
    let log = config.dir.path().join("serve.log");
    let ServedBinary {
        mut child,
        base_url,
        ..
    } = config.serve_binary(&log, "info", WAIT).await;
    let http = reqwest::Client::new();

    // A forged line after %0A, and a terminal colour after %1B, in each path parameter.
    let forged = "x%0AFORGED%20INFO%20all%20is%20well%1B%5B31m";
    let fields = status_fields("SM00000000000000000000000000000082", "sent");
    let mut answers = Vec::new();
    for (url, status) in [
        (format!("{base_url}/whatsapp/callback/{APP}/{forged}"), 400),
        (format!("{base_url}/whatsapp/callback/{forged}/ACME"), 403),
        (format!("{base_url}/whatsapp/{forged}/{forged}"), 400),
    ] {
        let response = signed_callback(&http, &url, &fields).send().await.unwrap();
        answers.push((url, status, response.status()));
    }
    // And in an unsigned form's sid, which the refusal's log names.
    let mut unsigned = fields.clone();
    for (k, v) in unsigned.iter_mut() {
        if k == "MessageSid" {
            *v = "x\nFORGED INFO all is well\u{1b}[31m".into();
        }
    }
    let url = callback_url(&base_url, APP, "ACME");
    let response = http.post(&url).form(&unsigned).send().await.unwrap();
    answers.push((url, 403, response.status()));

    // Five values carry the text: wait until each has been logged, or for WAIT at most.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.matches("FORGED").count() >= 5 || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    child.kill().await.unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape reached the log:\n{text:?}"
    );
    assert!(
        !text.lines().any(|line| line.starts_with("FORGED")),
        "a forged line:\n{text}"
    );
    // Each value is there, escaped.
    assert_eq!(
        text.matches("x\\nFORGED INFO all is well\\u{1b}[31m")
            .count(),
        5,
        "{text}"
    );
    for (url, expected, status) in answers {
        assert_eq!(status, expected, "{url}");
    }
}

#[tokio::test]
async fn callback_body_over_64_kib_is_too_large() {
    let config = TestConfig::on_status("utils.debug(vo.MessageSid);");
    let app = spawn_app(&config).await;
    let url = app.callback_url(APP, "ACME");
    let limit = 64 * 1024;

    // A signed form of exactly 64 KiB is accepted; one byte more is refused before parsing.
    let mut fields = status_fields("SM00000000000000000000000000000012", "sent");
    fields.push(("Padding".into(), String::new()));
    let base = serde_urlencoded::to_string(&fields).unwrap().len();
    fields.last_mut().unwrap().1 = "a".repeat(limit - base);
    assert_eq!(serde_urlencoded::to_string(&fields).unwrap().len(), limit);
    let response = app.post_signed_as(&url, &url, &fields).await;
    assert_eq!(response.status(), 200, "exactly 64 KiB");

    fields[0].1 = "SM00000000000000000000000000000013".into();
    fields.last_mut().unwrap().1.push('a');
    let response = app.post_signed_as(&url, &url, &fields).await;
    assert_eq!(response.status(), 413, "64 KiB and one byte");
    let huge = app
        .post_raw(
            &url,
            "application/x-www-form-urlencoded",
            vec![b'a'; 1024 * 1024],
        )
        .await;
    assert_eq!(huge.status(), 413, "1 MiB");

    app.wait_for_events(1, EventState::Done).await;
    assert_eq!(
        app.all_events().await[0].message_sid.as_deref(),
        Some("SM00000000000000000000000000000012")
    );
    app.stop().await;
}

#[tokio::test]
async fn callback_that_is_not_a_form_is_unsupported_media_type() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let json_body =
        serde_json::to_vec(&json!({"MessageSid": "SM00000000000000000000000000000014"})).unwrap();
    let response = app.post_raw(&url, "application/json", json_body).await;
    assert_eq!(response.status(), 415, "a JSON body");
    let response = app
        .post_raw(&url, "text/plain", b"MessageSid=SM1".to_vec())
        .await;
    assert_eq!(response.status(), 415, "a form sent as text/plain");
    let response = app
        .http
        .post(&url)
        .body("MessageSid=SM1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415, "no content type");

    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000015").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn callback_with_an_undecodable_body_is_a_bad_request() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let form = "application/x-www-form-urlencoded";
    let bodies: [(&str, Vec<u8>); 4] = [
        (
            "a bad percent escape",
            b"MessageSid=%zz&MessageStatus=sent".to_vec(),
        ),
        ("a truncated percent escape", b"MessageSid=SM1%2".to_vec()),
        (
            "an escape decoding to invalid UTF-8",
            b"MessageSid=%ff%fe".to_vec(),
        ),
        (
            "raw bytes that are not UTF-8",
            b"MessageSid=\xff\xfe".to_vec(),
        ),
    ];
    for (what, body) in bodies {
        let response = app.post_raw(&url, form, body).await;
        assert_eq!(response.status(), 400, "{what}");
    }

    assert!(app.all_events().await.is_empty(), "nothing stored");
    assert_still_serving(&app, "SM00000000000000000000000000000016").await;
    assert_eq!(sent_bodies(&twilio).await.len(), 1, "only the good one ran");
    app.stop().await;
}

#[tokio::test]
async fn throwing_action_ends_dead_after_max_attempts_with_its_error() {
    let mut config = TestConfig::on_status(
        "function explode(sid) { throw new Error('no handler for ' + sid); }\nexplode(vo.MessageSid);",
    );
    config.actions_toml = "max_attempts = 3".into();
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000017";
    assert_eq!(app.post_status("ACME", sid, "read").await.status(), 200);
    app.wait_for_events(1, EventState::Dead).await;

    let event = app.all_events().await.remove(0);
    assert_eq!(event.attempts, 3);
    let error = event.last_error.expect("the error is stored");
    assert!(
        error.contains(&format!("Error: no handler for {sid}")),
        "message in {error:?}"
    );
    assert!(error.contains("explode"), "stack in {error:?}");
    app.stop().await;
}

#[tokio::test]
async fn looping_action_is_stopped_by_its_budget_and_later_events_still_run() {
    let twilio = mock_twilio().await;
    let mut config = TestConfig::on_status(
        "if (vo.MessageStatus === 'sent') { while (true) {} }\n\
         utils.sendWhatsappMessage('+393331234567', vo.MessageSid);",
    )
    .api_base(twilio.uri());
    // The loop limit stays far above what 300 ms can run, so the wall clock is what stops it;
    // it still ends the abandoned workers' spinning once the test has its answer.
    config.actions_toml =
        "budget_ms = 300\nmax_attempts = 1\nloop_iteration_limit = 30000000".into();
    let app = spawn_app(&config).await;

    // As many endless events as there are workers: every original worker is abandoned.
    let looping = [
        "SM00000000000000000000000000000018",
        "SM00000000000000000000000000000019",
    ];
    for sid in looping {
        assert_eq!(app.post_status("ACME", sid, "sent").await.status(), 200);
    }
    app.wait_for("the looping events to be dead", WAIT, || async {
        app.all_events()
            .await
            .iter()
            .filter(|e| e.state == EventState::Dead)
            .count()
            == 2
    })
    .await;
    for event in app.all_events().await {
        let error = event.last_error.unwrap_or_default();
        assert!(
            error.contains("wall-clock budget of 300ms exceeded"),
            "{error:?}"
        );
    }

    let normal = [
        "SM00000000000000000000000000000020",
        "SM00000000000000000000000000000021",
        "SM00000000000000000000000000000022",
    ];
    for sid in normal {
        assert_eq!(
            app.post_status("ACME", sid, "delivered").await.status(),
            200
        );
    }
    app.wait_for("the later events to be done", WAIT, || async {
        app.all_events()
            .await
            .iter()
            .filter(|e| e.state == EventState::Done)
            .count()
            == 3
    })
    .await;
    let mut sent = sent_bodies(&twilio).await;
    sent.sort();
    assert_eq!(sent, normal);
    app.stop().await;
}

#[tokio::test]
async fn out_of_order_status_events_leave_the_most_advanced_status() {
    let config = TestConfig::on_status("utils.debug(vo.MessageStatus);");
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000023";
    for status in ["read", "sent", "delivered"] {
        assert_eq!(app.post_status("ACME", sid, status).await.status(), 200);
    }
    app.wait_for_events(3, EventState::Done).await;
    let (message, events) = app.store().message(sid).await.unwrap().expect("a row");
    assert_eq!(message.status, "read");
    assert_eq!(message.app, APP);
    assert_eq!(message.company, "ACME");
    let history: Vec<_> = events
        .iter()
        .map(|e| e.message_status.clone().unwrap())
        .collect();
    assert_eq!(history, ["read", "sent", "delivered"]);
    app.stop().await;
}

#[tokio::test]
async fn failed_status_is_final() {
    let config = TestConfig::on_status("utils.debug(vo.MessageStatus);");
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000024";
    for status in ["sent", "failed", "delivered", "read"] {
        assert_eq!(app.post_status("ACME", sid, status).await.status(), 200);
    }
    app.wait_for_events(4, EventState::Done).await;
    let (message, _) = app.store().message(sid).await.unwrap().expect("a row");
    assert_eq!(message.status, "failed");
    assert_eq!(message.error_code.as_deref(), Some("63016"));
    app.stop().await;
}

#[tokio::test]
async fn repeated_delivery_with_the_same_idempotency_token_is_dispatched_once() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let url = app.callback_url(APP, "ACME");
    let sign = |fields: &[(String, String)]| signature::sign(AUTH_KEY, &url, fields);
    let first = status_fields("SM00000000000000000000000000000025", "delivered");
    // Same token, other content: the token alone makes it a repeat.
    let other = status_fields("SM00000000000000000000000000000026", "read");
    for fields in [&first, &first, &other] {
        let response = app
            .post_form(&url, fields, Some(&sign(fields)), Some("ID-one"))
            .await;
        assert_eq!(response.status(), 200, "every delivery is acknowledged");
    }
    let response = app
        .post_form(&url, &other, Some(&sign(&other)), Some("ID-two"))
        .await;
    assert_eq!(response.status(), 200);
    app.wait_for_events(2, EventState::Done).await;
    app.wait_for_idle().await;

    let events = app.all_events().await;
    let tokens: Vec<_> = events
        .iter()
        .rev()
        .map(|e| e.idempotency_token.clone())
        .collect();
    assert_eq!(tokens, [Some("ID-one".into()), Some("ID-two".into())]);
    let mut sids: Vec<_> = sent_json(&twilio)
        .await
        .iter()
        .map(|vo| vo["MessageSid"].as_str().unwrap().to_string())
        .collect();
    sids.sort();
    assert_eq!(
        sids,
        [
            "SM00000000000000000000000000000025",
            "SM00000000000000000000000000000026"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn repeated_delivery_with_the_same_sid_status_and_error_code_is_dispatched_once() {
    let (app, twilio) = spawn_app_with_twilio(ECHO_VO).await;
    let sid = "SM00000000000000000000000000000027";
    for _ in 0..3 {
        assert_eq!(
            app.post_status("ACME", sid, "delivered").await.status(),
            200
        );
    }
    let url = app.callback_url(APP, "ACME");
    let mut coded = status_fields(sid, "undelivered");
    for code in ["63016", "63016", "63024"] {
        coded.last_mut().unwrap().1 = code.into();
        let response = app.post_signed_as(&url, &url, &coded).await;
        assert_eq!(response.status(), 200);
    }
    app.wait_for_events(3, EventState::Done).await;
    app.wait_for_idle().await;

    let mut seen: Vec<String> = sent_json(&twilio)
        .await
        .iter()
        .map(|vo| {
            format!(
                "{}|{}",
                vo["MessageStatus"].as_str().unwrap(),
                vo["ErrorCode"].as_str().unwrap_or("")
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["delivered|", "undelivered|63016", "undelivered|63024"]
    );
    app.stop().await;
}

#[tokio::test]
async fn healthz_is_ok_when_every_action_compiled() {
    let config = TestConfig::on_status("utils.debug(vo.MessageSid);");
    let app = spawn_app(&config).await;
    let (status, body) = app.healthz().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store_writable"], true);
    app.stop().await;
}

#[tokio::test]
async fn healthz_is_unavailable_when_an_action_does_not_compile() {
    let config = TestConfig::on_status("if (vo.MessageSid { utils.debug('x');");
    let app = spawn_app(&config).await;
    let (status, body) = app.healthz().await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unhealthy");
    let errors = body["action_errors"].as_array().expect("a list of errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert!(
        errors[0].as_str().unwrap().contains("onStatus"),
        "names the action: {body}"
    );

    // Its events are still stored, and fail visibly rather than vanish.
    let sid = "SM00000000000000000000000000000028";
    assert_eq!(app.post_status("ACME", sid, "sent").await.status(), 200);
    app.wait_for("the event to fail", WAIT, || async {
        app.all_events().await.first().is_some_and(|e| {
            e.last_error
                .as_deref()
                .is_some_and(|l| l.contains("compile"))
        })
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn eval_and_new_function_throw_inside_actions() {
    let source = r#"
const attempts = {
  direct: () => eval('1 + 1'),
  indirect: () => (0, eval)('1 + 1'),
  newFunction: () => new Function('return 1')(),
  callFunction: () => Function('return 1')(),
  asyncFunction: () => Object.getPrototypeOf(async function () {}).constructor('return 1'),
  generatorFunction: () => Object.getPrototypeOf(function* () {}).constructor('yield 1'),
};
const outcome = {};
for (const [name, attempt] of Object.entries(attempts)) {
  try {
    attempt();
    outcome[name] = 'ran';
  } catch (e) {
    outcome[name] = e.name + ': ' + e.message;
  }
}
utils.sendWhatsappMessage('+393331234567', JSON.stringify(outcome));
"#;
    let (app, twilio) = spawn_app_with_twilio(source).await;
    let sid = "SM00000000000000000000000000000029";
    assert_eq!(app.post_status("ACME", sid, "sent").await.status(), 200);
    app.wait_for_events(1, EventState::Done).await;

    let outcome = sent_json(&twilio).await.remove(0);
    let outcome = outcome.as_object().unwrap();
    assert_eq!(outcome.len(), 6, "{outcome:?}");
    for (name, result) in outcome {
        let result = result.as_str().unwrap();
        assert!(result.starts_with("EvalError: "), "{name}: {result}");
        assert!(result.contains("disabled"), "{name}: {result}");
    }
    app.stop().await;
}

#[tokio::test]
async fn top_level_declarations_are_fresh_and_globals_do_not_leak_between_events() {
    let source = r#"
let counter = 0;
counter += 1;
const seen = [];
seen.push(vo.MessageSid);
function attempt(f) {
  try { f(); return 'allowed'; } catch (e) { return e.name; }
}
const report = {
  counter,
  seen: seen.length,
  leakBefore: typeof globalThis.leak,
  undeclaredBefore: typeof undeclaredVariable,
  setGlobal: attempt(() => { globalThis.leak = 1; }),
  undeclared: attempt(() => { undeclaredVariable = 2; }),
  defineGlobal: attempt(() => Object.defineProperty(globalThis, 'sneaky', { value: 3 })),
};
utils.sendWhatsappMessage('+393331234567', JSON.stringify(report));
"#;
    let (app, twilio) = spawn_app_with_twilio(source).await;
    // More events than workers, one after the other, so each worker runs the action again.
    for i in 0..4 {
        let sid = format!("SM0000000000000000000000000000003{i}");
        assert_eq!(app.post_status("ACME", &sid, "sent").await.status(), 200);
        app.wait_for_events(i + 1, EventState::Done).await;
    }
    let expected = json!({
        "counter": 1,
        "seen": 1,
        "leakBefore": "undefined",
        "undeclaredBefore": "undefined",
        "setGlobal": "TypeError",
        "undeclared": "ReferenceError",
        "defineGlobal": "TypeError",
    });
    assert_eq!(sent_json(&twilio).await, vec![expected; 4]);
    app.stop().await;
}

#[tokio::test]
async fn built_ins_and_utils_are_frozen_so_no_change_reaches_the_next_event() {
    let source = r#"
function attempt(f) {
  try { f(); return 'allowed'; } catch (e) { return e.name; }
}
class NotFound extends Error {
  constructor(m) { super(m); this.name = 'NotFound'; }
}
const report = {
  prototype: typeof Object.prototype.polluted,
  math: typeof Math.leak,
  json: typeof JSON.parse,
  info: String(utils.info).includes('native code'),
  pollute: attempt(() => { Object.prototype.polluted = 1; }),
  mathLeak: attempt(() => { Math.leak = 1; }),
  replaceJson: attempt(() => { JSON.parse = null; }),
  replaceUtils: attempt(() => { utils.info = function () {}; }),
  replaceGlobal: attempt(() => { globalThis.JSON = null; }),
  errorSubclass: new NotFound('x').name,
  ownToString: attempt(() => { const o = {}; o.toString = () => 'mine'; if (String(o) !== 'mine') throw new Error(); }),
};
utils.sendWhatsappMessage('+393331234567', JSON.stringify(report));
"#;
    let (app, twilio) = spawn_app_with_twilio(source).await;
    // More events than workers, one after the other, so each worker runs the action again.
    for i in 0..4 {
        let sid = format!("SM0000000000000000000000000000005{i}");
        assert_eq!(app.post_status("ACME", &sid, "sent").await.status(), 200);
        app.wait_for_events(i + 1, EventState::Done).await;
    }
    let pristine = json!({
        "prototype": "undefined",
        "math": "undefined",
        "json": "function",
        "info": true,
        "pollute": "TypeError",
        "mathLeak": "TypeError",
        "replaceJson": "TypeError",
        "replaceUtils": "TypeError",
        "replaceGlobal": "TypeError",
        "errorSubclass": "NotFound",
        "ownToString": "allowed",
    });
    assert_eq!(sent_json(&twilio).await, vec![pristine; 4]);
    app.stop().await;
}

#[tokio::test]
async fn one_apps_action_cannot_tamper_with_another_apps_events() {
    let twilio = mock_twilio().await;
    let mut config = TestConfig::on_status(ECHO_VO).api_base(twilio.uri());
    config.actions.insert(
        "tamper".into(),
        "try { JSON.stringify = () => '{\"tampered\":true}'; } catch (e) {}\n\
         try { utils.sendWhatsappMessage = () => 'swallowed'; } catch (e) {}\n\
         try { Object.prototype.toJSON = function () { return 'tampered'; }; } catch (e) {}"
            .into(),
    );
    config.extra = format!(
        "[apps.other.WHATSAPP]\naccount_id = \"{ACCOUNT_SID}\"\nauth_key = \"{AUTH_KEY}\"\n\
         from_number = \"{FROM}\"\ncallback = \"tamper\"\n"
    );
    let app = spawn_app(&config).await;
    let tamper_url = app.callback_url("other", "ACME");
    // Tamper on every worker first, then the victim's events.
    for i in 0..2 {
        let fields = status_fields(&format!("SM0000000000000000000000000000006{i}"), "sent");
        let response = app.post_signed_as(&tamper_url, &tamper_url, &fields).await;
        assert_eq!(response.status(), 200);
        app.wait_for_events(i + 1, EventState::Done).await;
    }
    for i in 0..2 {
        let sid = format!("SM0000000000000000000000000000007{i}");
        assert_eq!(app.post_status("ACME", &sid, "sent").await.status(), 200);
        app.wait_for_events(i + 3, EventState::Done).await;
    }
    let seen: Vec<String> = sent_json(&twilio)
        .await
        .iter()
        .map(|vo| vo["MessageSid"].as_str().expect("the real vo").to_string())
        .collect();
    assert_eq!(
        seen,
        [
            "SM00000000000000000000000000000070",
            "SM00000000000000000000000000000071"
        ]
    );
    app.stop().await;
}

/// About the embedded store's files (its write-ahead log), so SQLite only: the PostgreSQL
/// matrix run skips it by the `sqlite_only` in its name.
#[tokio::test]
async fn graceful_stop_closes_the_store_cleanly_sqlite_only() {
    let config = TestConfig::on_status("utils.debug(vo.MessageSid);").sqlite();
    let data_dir = config.data_dir();
    let app = spawn_app(&config).await;
    let sids: Vec<String> = (0..5)
        .map(|i| format!("SM0000000000000000000000000000004{i}"))
        .collect();
    for sid in &sids {
        assert_eq!(
            app.post_status("ACME", sid, "delivered").await.status(),
            200
        );
    }
    let store = app.store().clone();
    app.stop().await;

    // The writer is gone: later writes are refused rather than lost silently.
    assert!(!store.is_writable().await);
    assert!(store.flush().await.is_err());
    // The log was checkpointed into the database file at close.
    let wal = data_dir.join("store.sqlite3-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(wal_len, 0, "{} after close", wal.display());
    drop(store);

    // Everything acknowledged is there on reopening.
    let reopened = whatsapp_host::store::Store::open(&data_dir).unwrap();
    let events = reopened.events(EventFilter::default()).await.unwrap();
    let mut stored: Vec<_> = events
        .iter()
        .filter_map(|e| e.message_sid.clone())
        .collect();
    stored.sort();
    assert_eq!(stored, sids);
    reopened.close().await;
}

#[tokio::test]
async fn another_apps_signed_callback_naming_a_sid_leaves_the_owners_message_and_dedupe_untouched()
{
    const OTHER_ACCOUNT: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const OTHER_KEY: &str = "other-auth-key-do-not-print";
    let mut config = TestConfig::new().action("onStatus", "utils.debug(vo.MessageStatus);");
    config.extra = format!(
        "[apps.other.WHATSAPP]\naccount_id = \"{OTHER_ACCOUNT}\"\nauth_key = \"{OTHER_KEY}\"\n\
         from_number = \"{FROM}\"\ncallback = \"onStatus\"\n"
    );
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000080";
    assert_eq!(
        app.post_status("ACME", sid, "delivered").await.status(),
        200
    );

    // The other app's owner signs, with their own token and account, callbacks naming the sid.
    let other_url = app.callback_url("other", "ACME");
    for status in ["failed", "read"] {
        let fields = whatsapp_host::twilio::simulate::status_callback_fields(
            sid,
            OTHER_ACCOUNT,
            FROM,
            "+393331234567",
            status,
        );
        let sig = signature::sign(OTHER_KEY, &other_url, &fields);
        let response = app.post_form(&other_url, &fields, Some(&sig), None).await;
        assert_eq!(response.status(), 200, "the other app's own callback");
    }
    // The owner's genuine `read` is a new event, not a repeat of the other app's.
    assert_eq!(app.post_status("ACME", sid, "read").await.status(), 200);
    app.wait_for_events(4, EventState::Done).await;

    let (message, events) = app
        .store()
        .app_message(APP, sid)
        .await
        .unwrap()
        .expect("the owner's row");
    assert_eq!(message.status, "read");
    assert_eq!(message.error_code, None);
    assert_eq!(message.account_sid.as_deref(), Some(ACCOUNT_SID));
    let history: Vec<_> = events
        .iter()
        .map(|e| (e.app.clone(), e.message_status.clone().unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            (APP.into(), "delivered".into()),
            (APP.into(), "read".into())
        ]
    );
    let others = app
        .store()
        .events(EventFilter {
            app: Some("other".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(others.len(), 2, "the other app's callbacks are its own");
    app.stop().await;
}

/// A send already on its way to Twilio when its run passes the budget finishes and is
/// recorded: killing the worker must not lose a message Twilio may have accepted.
#[tokio::test]
async fn a_send_in_flight_when_its_worker_is_killed_is_still_recorded() {
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(created(SENT_SID, "+393331234567").set_delay(Duration::from_millis(1500)))
        .mount(&twilio)
        .await;
    let mut config = TestConfig::on_status(
        "utils.sendWhatsappMessage('+393331234567', 'slow ' + vo.MessageSid);",
    )
    .api_base(twilio.uri());
    config.actions_toml = "budget_ms = 300\nmax_attempts = 1".into();
    let app = spawn_app(&config).await;
    let sid = "SM00000000000000000000000000000031";
    assert_eq!(
        app.post_status("ACME", sid, "delivered").await.status(),
        200
    );
    app.wait_for("the slow send's event to be dead", WAIT, || async {
        app.all_events()
            .await
            .iter()
            .any(|e| e.state == EventState::Dead)
    })
    .await;
    app.wait_for("the send to be recorded", WAIT, || async {
        app.store().message(SENT_SID).await.unwrap().is_some()
    })
    .await;
    let (message, _) = app.store().message(SENT_SID).await.unwrap().unwrap();
    assert_eq!(
        message.body.as_deref(),
        Some(format!("slow {sid}").as_str())
    );
    app.stop().await;
}
