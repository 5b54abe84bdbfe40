//! Content templates end to end: `utils.sendWhatsappTemplate` in both forms, run through the JS
//! engine against a local Twilio stand-in: the exact form Twilio gets (`ContentSid`,
//! `ContentVariables` as JSON, no `Body`), the refusals made before any request with Twilio's own
//! codes, the script mistakes that throw, retries, sandbox spacing, the store's row, simulate mode
//! and `send --template`.

use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_host::js::Program;
use whatsapp_host::outbound::Caller;
use whatsapp_host::store::EventState;
use whatsapp_host::twilio::RetryPolicy;
use wiremock::Request;

use crate::helpers::host::{COMPANY, Host, Setup};
use crate::helpers::stand_ins::*;
use crate::helpers::*;

/// A well-formed Content template sid.
const CONTENT_SID: &str = "HX0123456789abcdef0123456789abcdef";
/// Where app sends ask Twilio to post status callbacks.
const CALLBACK: &str = "http://127.0.0.1:0/whatsapp/callback/crm/ACME";
/// The recipient every spelling in these tests stands for.
const TO: &str = "+393331234567";

/// A JS string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A JS call of `utils.sendWhatsappTemplate` with already-written arguments.
fn call(args: &[&str]) -> String {
    format!("utils.sendWhatsappTemplate({})", args.join(", "))
}

fn tenant_prefix() -> String {
    format!(
        "{}, {}, {}",
        js(TENANT_SID),
        js(TENANT_SECRET),
        js(TENANT_FROM)
    )
}

/// The single create Twilio received: checks its path, Basic auth and that it carries exactly
/// `To`, `From`, `ContentSid`, `ContentVariables` when given, and `StatusCallback` when given, in
/// that order. No `Body`, no `MediaUrl`.
async fn only_template_create(
    twilio: &TwilioStandIn,
    (account, secret): (&str, &str),
    from: &str,
    variables: Option<&str>,
    callback: Option<&str>,
) -> (Request, Value) {
    let requests = twilio.requests().await;
    assert_eq!(requests.len(), 1, "twilio received exactly one request");
    let request = &requests[0];
    assert_eq!(
        request.url.path(),
        format!("/2010-04-01/Accounts/{account}/Messages.json")
    );
    let (user, password) = basic_auth(request);
    assert_eq!(user, account, "Basic auth user is the account sid");
    assert!(
        password == secret,
        "Basic auth password is not the expected account's auth token"
    );
    let mut expected = vec![
        ("To".to_string(), format!("whatsapp:{TO}")),
        ("From".to_string(), format!("whatsapp:{from}")),
        ("ContentSid".to_string(), CONTENT_SID.to_string()),
    ];
    if let Some(variables) = variables {
        expected.push(("ContentVariables".into(), variables.into()));
    }
    if let Some(callback) = callback {
        expected.push(("StatusCallback".into(), callback.into()));
    }
    assert_eq!(form(request), expected, "the exact form body");
    (request.clone(), twilio.arrivals()[0].body.clone())
}

/// The newest row of the messages table, read as the dashboard and CLI would see it.
#[derive(Debug, PartialEq)]
struct Row {
    sid: Option<String>,
    direction: String,
    to: String,
    status: String,
    error_code: Option<String>,
    content_sid: Option<String>,
    content_variables: Option<String>,
}

async fn newest_row(config: &TestConfig) -> Row {
    let row = config
        .store_row(
            "SELECT sid, direction, to_number, status, error_code, content_sid, \
             content_variables FROM messages ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await;
    let [
        sid,
        direction,
        to,
        status,
        error_code,
        content_sid,
        content_variables,
    ] = <[Option<String>; 7]>::try_from(row).expect("seven columns");
    Row {
        sid,
        direction: direction.expect("direction is NOT NULL"),
        to: to.expect("to_number is NOT NULL"),
        status: status.expect("status is NOT NULL"),
        error_code,
        content_sid,
        content_variables,
    }
}

async fn row_of(host: &Host) -> Row {
    host.services.store.flush().await.unwrap();
    newest_row(&host.config).await
}

// ---- both forms -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_form_sends_content_sid_and_variables_as_json_without_a_body() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[
            &js("+39 333 123 4567"),
            &js(CONTENT_SID),
            r#"{ 1: "Ana", 2: "3pm" }"#,
        ]))
        .await;
    let variables = r#"{"1":"Ana","2":"3pm"}"#;
    let (_, resource) = only_template_create(
        &twilio,
        (ACCOUNT_SID, AUTH_KEY),
        FROM,
        Some(variables),
        Some(CALLBACK),
    )
    .await;
    assert_eq!(
        outcome, resource,
        "the outcome is twilio's resource as sent"
    );
    assert_eq!(
        row_of(&host).await,
        Row {
            sid: resource["sid"].as_str().map(str::to_string),
            direction: "outbound".into(),
            to: TO.into(),
            status: "queued".into(),
            error_code: None,
            content_sid: Some(CONTENT_SID.into()),
            content_variables: Some(variables.into()),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_form_sends_with_the_tenants_credentials_and_number() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[
            &tenant_prefix(),
            &js("whatsapp:+393331234567"),
            &js(CONTENT_SID),
            r#"{ name: "Ana", "when": "3pm" }"#,
        ]))
        .await;
    let variables = r#"{"name":"Ana","when":"3pm"}"#;
    // A project no tenant entry names gets no callback URL, as for its text sends.
    let (_, resource) = only_template_create(
        &twilio,
        (TENANT_SID, TENANT_SECRET),
        TENANT_FROM,
        Some(variables),
        None,
    )
    .await;
    assert_eq!(outcome, resource);
    let row = row_of(&host).await;
    assert_eq!(row.content_sid.as_deref(), Some(CONTENT_SID));
    assert_eq!(row.content_variables.as_deref(), Some(variables));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_sent_as_strings_in_the_objects_key_order() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    host.send(&call(&[
        &js(TO),
        &js(CONTENT_SID),
        r#"{ b: 15, a: 2.5, 10: -3, 2: "x\"y" }"#,
    ]))
    .await;
    // Integer keys first in ascending order, then the others as written: `Object.keys`'s order.
    only_template_create(
        &twilio,
        (ACCOUNT_SID, AUTH_KEY),
        FROM,
        Some(r#"{"2":"x\"y","10":"-3","b":"15","a":"2.5"}"#),
        Some(CALLBACK),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_missing_variables_send_no_content_variables() {
    for args in [
        vec![js(TO), js(CONTENT_SID), "null".into()],
        vec![js(TO), js(CONTENT_SID)],
        vec![tenant_prefix(), js(TO), js(CONTENT_SID), "undefined".into()],
    ] {
        let twilio = TwilioStandIn::start().await;
        let host = Host::with_twilio(&twilio).await;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = host.send(&call(&args)).await;
        assert!(outcome["sid"].is_string(), "{outcome}");
        let form = form(&twilio.requests().await[0]);
        assert!(values(&form, "ContentVariables").is_empty(), "{args:?}");
        assert!(values(&form, "Body").is_empty(), "{args:?}");
        assert_eq!(values(&form, "ContentSid"), [CONTENT_SID]);
        assert_eq!(row_of(&host).await.content_variables, None);
    }
}

// ---- refusals: Twilio's codes, no request -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_template_is_refused_with_twilios_code_and_no_request() {
    let hundred_and_one =
        "Object.fromEntries(Array.from({ length: 101 }, (_, i) => [String(i + 1), 'v']))"
            .to_string();
    let cases: Vec<(&str, String, String, i64, &str)> = vec![
        (
            "short sid",
            js(&CONTENT_SID[..33]),
            "null".into(),
            21655,
            "contentSid",
        ),
        (
            "long sid",
            js(&format!("{CONTENT_SID}0")),
            "null".into(),
            21655,
            "contentSid",
        ),
        (
            "not hex",
            js("HX0123456789abcdef0123456789abcdeg"),
            "null".into(),
            21655,
            "contentSid",
        ),
        (
            "wrong prefix",
            js("MG0123456789abcdef0123456789abcdef"),
            "null".into(),
            21655,
            "contentSid",
        ),
        ("empty sid", js(""), "null".into(), 21655, "contentSid"),
        (
            "101 variables",
            js(CONTENT_SID),
            hundred_and_one,
            21656,
            "limit of 100",
        ),
        (
            "empty key",
            js(CONTENT_SID),
            r#"{ "": "x" }"#.into(),
            21656,
            "empty name",
        ),
        (
            "null value",
            js(CONTENT_SID),
            r#"{ 1: "Ana", 2: null }"#.into(),
            21656,
            "\"2\" is null",
        ),
        (
            "undefined value",
            js(CONTENT_SID),
            "{ 1: undefined }".into(),
            21656,
            "\"1\" is null",
        ),
        (
            "empty value",
            js(CONTENT_SID),
            r#"{ 1: "" }"#.into(),
            21656,
            "\"1\" is empty",
        ),
    ];
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let to = js(TO);
    for (case, sid, variables, code, says) in &cases {
        for prefix in [None, Some(tenant_prefix())] {
            let mut args = prefix.iter().map(String::as_str).collect::<Vec<_>>();
            args.extend([to.as_str(), sid.as_str(), variables.as_str()]);
            let outcome = host.send(&call(&args)).await;
            assert_eq!(outcome["sid"], Value::Null, "{case}: {outcome}");
            assert_eq!(outcome["status"], "failed", "{case}");
            assert_eq!(outcome["error_code"], *code, "{case}: {outcome}");
            let message = outcome["error_message"].as_str().unwrap();
            assert!(message.contains(says), "{case}: {message}");
            let row = row_of(&host).await;
            assert_eq!(row.status, "failed", "{case}: the refusal is recorded");
            assert_eq!(row.error_code, Some(code.to_string()), "{case}");
        }
    }
    assert!(
        twilio.requests().await.is_empty(),
        "no refused template reached twilio"
    );
    // Exactly 100 is within the limit.
    let hundred = "Object.fromEntries(Array.from({ length: 100 }, (_, i) => [String(i + 1), 'v']))";
    let outcome = host
        .send(&call(&[&js(TO), &js(CONTENT_SID), hundred]))
        .await;
    assert!(outcome["sid"].is_string(), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_calls_it_wrongly_gets_a_type_error_and_nothing_is_sent() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let to = js(TO);
    let sid = js(CONTENT_SID);
    let cases = [
        (call(&[&to]), "got 1 arguments"),
        (call(&[&to, &sid, "null", "null"]), "got 4 arguments"),
        (
            call(&[&to, "42", "null"]),
            "contentSid (argument 2) must be a string",
        ),
        (
            call(&[&to, &sid, "'1=Ana'"]),
            "variables (argument 3) must be an object",
        ),
        (call(&[&to, &sid, "['Ana']"]), "got an array"),
        (
            call(&[&to, &sid, "{ 1: true }"]),
            "variable \"1\" must be a string or a number",
        ),
        (
            call(&[&to, &sid, "{ 1: { a: 1 } }"]),
            "must be a string or a number, got object",
        ),
        (
            call(&[&tenant_prefix(), &to, &sid, "7"]),
            "variables (argument 6) must be an object",
        ),
        (
            call(&[&js("AC1"), &js("s"), &js(TENANT_FROM), &to, &sid, "null"]),
            "not a Twilio account sid",
        ),
    ];
    for (code, says) in &cases {
        let (name, message) = host.throws(APP, code).await;
        assert_eq!(name, "TypeError", "{code}: {message}");
        assert!(
            message.starts_with("utils.sendWhatsappTemplate"),
            "{message}"
        );
        assert!(message.contains(says), "{code}: {message}");
    }
    assert!(twilio.requests().await.is_empty());
}

// ---- like every other send ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_template_is_retried_and_makes_one_message() {
    let twilio = TwilioStandIn::scripted(vec![Reply::rate_limited("0")], Reply::Created).await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[&js(TO), &js(CONTENT_SID), r#"{ 1: "Ana" }"#]))
        .await;
    assert!(outcome["sid"].is_string(), "{outcome}");
    let requests = twilio.requests().await;
    assert_eq!(requests.len(), 2, "one retry after the 429");
    assert_eq!(form(&requests[0]), form(&requests[1]), "the same create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_from_the_sandbox_waits_its_turn_like_text() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        app_toml: "sandbox = true\n".into(),
        retry: RetryPolicy::default(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let source = format!(
        "const first = JSON.parse(utils.sendWhatsappMessage({to}, 'hello'));\n\
         const second = JSON.parse({template});\n\
         JSON.stringify([first.sid, second.sid])",
        to = js(TO),
        template = call(&[&js(TO), &js(CONTENT_SID), "null"]),
    );
    let result = host.run(APP, &source).await.expect("the script runs");
    let sids: Vec<Option<String>> =
        serde_json::from_str(result.unwrap().as_str().unwrap()).unwrap();
    assert!(sids.iter().all(Option::is_some), "both were sent: {sids:?}");
    let arrivals = twilio.arrivals();
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(3),
        "the sandbox sender got two messages {gap:?} apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_in_simulate_mode_is_answered_and_its_callbacks_come_back() {
    let config = TestConfig::on_status("utils.info(vo.MessageStatus);").api_base("simulate");
    let app = spawn_app(&config).await;
    let caller = Caller {
        app: app.services.settings.apps[APP].clone(),
        company: COMPANY.to_string(),
    };
    let source = format!(
        "JSON.stringify(JSON.parse({}))",
        call(&[&js("3331234567"), &js(CONTENT_SID), r#"{ 1: "Ana" }"#])
    );
    let program = Program::Script {
        name: "template.js".into(),
        source,
    };
    let result = app.services.engine.run(caller, program).await.unwrap();
    let outcome: Value = serde_json::from_str(result.unwrap().as_str().unwrap()).unwrap();
    let sid = outcome["sid"].as_str().expect("a sid").to_string();
    assert!(sid.starts_with("SM"), "{outcome}");
    assert_eq!(outcome["status"], "queued");
    assert_eq!(outcome["to"], json!(format!("whatsapp:{TO}")));
    // Sent, delivered and read come back to the app's callback URL and move the message.
    app.services.outbound.settle().await;
    app.wait_for_events(3, EventState::Done).await;
    let (message, _) = app.store().message(&sid).await.unwrap().unwrap();
    assert_eq!(message.status, "read");
    let row = newest_row(&config).await;
    assert_eq!(row.content_sid.as_deref(), Some(CONTENT_SID));
    assert_eq!(row.content_variables.as_deref(), Some(r#"{"1":"Ana"}"#));
    app.stop().await;
}

// ---- the command line ---------------------------------------------------------------------

#[tokio::test]
async fn send_template_prints_the_outcome_and_records_the_template() {
    let config = TestConfig::simulated();
    let out = config.run(&[
        "send",
        "--app",
        APP,
        "--to",
        "0039 333 1234567",
        "--template",
        CONTENT_SID,
        "--var",
        "1=Ana",
        "--var",
        "2=3pm",
        "--var",
        "3=a=b",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_str(&stdout).unwrap();
    assert!(outcome["sid"].as_str().unwrap().starts_with("SM"));
    let row = newest_row(&config).await;
    assert_eq!(row.sid.as_deref(), outcome["sid"].as_str());
    assert_eq!(row.to, TO);
    assert_eq!(row.content_sid.as_deref(), Some(CONTENT_SID));
    assert_eq!(
        row.content_variables.as_deref(),
        Some(r#"{"1":"Ana","2":"3pm","3":"a=b"}"#),
        "values stay strings, split at the first ="
    );
}

#[test]
fn send_template_with_an_invalid_sid_prints_the_failure_and_exits_1() {
    let config = TestConfig::simulated();
    let out = config.run(&["send", "--app", APP, "--to", TO, "--template", "HX12"]);
    assert_eq!(out.status.code(), Some(1));
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["error_code"], 21655);
}

#[test]
fn send_refuses_a_template_with_a_message_or_a_var_without_a_template() {
    let config = TestConfig::simulated();
    for args in [
        &["--template", CONTENT_SID, "--message", "hi"][..],
        &["--message", "hi", "--var", "1=Ana"][..],
        &["--template", CONTENT_SID, "--var", "no-equals"][..],
        &[][..],
    ] {
        let mut all = vec!["send", "--app", APP, "--to", TO];
        all.extend_from_slice(args);
        let out = config.run(&all);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing was sent");
    }
}
