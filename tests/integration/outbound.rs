//! The outbound path end to end: `utils.sendWhatsappMessage` in every form, run through the JS
//! engine against a local Twilio stand-in and media server, with its outcomes, throws, retries,
//! media checks, sandbox spacing and store records.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use whatsapp_host::outbound::{Account, Media, SendRequest};
use whatsapp_host::store::MessageFilter;
use whatsapp_host::twilio::RetryPolicy;
use wiremock::{MockServer, Request};

use crate::helpers::host::{COMPANY, Host, Setup};
use crate::helpers::stand_ins::*;
use crate::helpers::*;
/// Where app sends ask Twilio to post status callbacks: the documented route under `public_url`.
const CALLBACK: &str = "http://127.0.0.1:0/whatsapp/callback/crm/ACME";
/// The recipient every valid spelling in these tests stands for.
const TO: &str = "whatsapp:+393331234567";

/// A JS string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A JS call of `utils.sendWhatsappMessage` with already-quoted arguments.
fn call(args: &[String]) -> String {
    format!("utils.sendWhatsappMessage({})", args.join(", "))
}

fn tenant_args() -> Vec<String> {
    vec![js(TENANT_SID), js(TENANT_SECRET), js(TENANT_FROM)]
}

/// Checks one create request: the documented path, Basic auth with `account`'s credentials, and
/// `To`, `From` and `Body` each sent once. Returns the form for the media and callback checks.
fn assert_create(
    request: &Request,
    (account, secret): (&str, &str),
    from: &str,
    body: &str,
) -> Vec<(String, String)> {
    assert_eq!(request.method.as_str(), "POST");
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
    assert_eq!(
        request.headers.get("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
    let form = form(request);
    assert_eq!(values(&form, "To"), [TO]);
    assert_eq!(values(&form, "From"), [format!("whatsapp:{from}")]);
    assert_eq!(values(&form, "Body"), [body]);
    for (key, _) in &form {
        assert!(
            ["To", "From", "Body", "MediaUrl", "StatusCallback"].contains(&key.as_str()),
            "unexpected form field {key:?}"
        );
    }
    form
}

fn app_credentials() -> (&'static str, &'static str) {
    (ACCOUNT_SID, AUTH_KEY)
}

fn tenant_credentials() -> (&'static str, &'static str) {
    (TENANT_SID, TENANT_SECRET)
}

/// The single request Twilio received, and the resource it answered with.
async fn only_create(twilio: &TwilioStandIn) -> (Request, Value) {
    let requests = twilio.requests().await;
    assert_eq!(requests.len(), 1, "twilio received exactly one request");
    (requests[0].clone(), twilio.arrivals()[0].body.clone())
}

/// Checks that the signed URL sent as `MediaUrl` names the bucket and object on the storage
/// endpoint, and that the media server was probed at exactly that URL.
async fn assert_signed_media(host: &Host, media_url: &str, bucket_and_object: &str) {
    let expected_prefix = format!("{}/{bucket_and_object}?", host.media.uri());
    assert!(
        media_url.starts_with(&expected_prefix),
        "MediaUrl {media_url} does not start with {expected_prefix}"
    );
    let url = url::Url::parse(media_url).unwrap();
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(values(&query, "X-Goog-Algorithm"), ["GOOG4-RSA-SHA256"]);
    assert_eq!(values(&query, "X-Goog-Expires"), ["600"]);
    assert_eq!(values(&query, "X-Goog-Signature").len(), 1);
    let probes = host.probes().await;
    assert_eq!(probes.len(), 1, "the signed URL is probed once");
    assert_eq!(target(&probes[0].url), target(&url));
}

/// The path and query a request was made for (wiremock records them under its own host).
fn target(url: &url::Url) -> String {
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

// ---- every form ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_argument_form_sends_with_the_apps_credentials_and_callback() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), js("Benvenuto!")]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "Benvenuto!");
    assert!(values(&form, "MediaUrl").is_empty());
    assert_eq!(values(&form, "StatusCallback"), [CALLBACK]);
    assert_eq!(
        outcome, resource,
        "the outcome is twilio's resource as sent"
    );
    assert_eq!(outcome["sid"], "SM00000000000000000000000000000001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_argument_form_attaches_the_public_media_url_after_probing_it() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let media_url = host.media_url("/files/invoice.jpg");
    let outcome = host
        .send(&call(&[
            js("0039 333 1234567"),
            js("Your invoice"),
            js(&media_url),
        ]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "Your invoice");
    assert_eq!(values(&form, "MediaUrl"), [media_url.as_str()]);
    assert_eq!(values(&form, "StatusCallback"), [CALLBACK]);
    assert_eq!(outcome, resource);
    let probes = host.probes().await;
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].url.path(), "/files/invoice.jpg");
    assert_eq!(probes[0].headers.get("range").unwrap(), "bytes=0-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_argument_form_with_null_media_sends_text_only() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[js("3331234567"), js("Text only"), "null".into()]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "Text only");
    assert!(values(&form, "MediaUrl").is_empty());
    assert_eq!(outcome, resource);
    assert!(host.probes().await.is_empty(), "no media, no probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_argument_form_attaches_a_signed_url_for_the_bucket_object() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[
            js("whatsapp:+393331234567"),
            js("Your ticket"),
            js("tickets-eu"),
            js("2024/ticket 42.pdf"),
        ]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "Your ticket");
    assert_eq!(values(&form, "StatusCallback"), [CALLBACK]);
    let media = values(&form, "MediaUrl");
    assert_eq!(media.len(), 1, "one MediaUrl field");
    assert_signed_media(&host, &media[0], "tickets-eu/2024/ticket%2042.pdf").await;
    assert_eq!(outcome, resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_argument_form_with_null_bucket_and_file_sends_text_only() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[
            js("+39 333 123 4567"),
            js("No attachment"),
            "null".into(),
            "null".into(),
        ]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "No attachment");
    assert!(values(&form, "MediaUrl").is_empty());
    assert_eq!(outcome, resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_argument_form_uses_the_tenants_credentials_not_the_apps() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let mut args = tenant_args();
    args.extend([js("+39 333 123 4567"), js("From your shop")]);
    let outcome = host.send(&call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(
        &request,
        tenant_credentials(),
        TENANT_FROM,
        "From your shop",
    );
    assert!(values(&form, "MediaUrl").is_empty());
    assert!(
        values(&form, "StatusCallback").is_empty(),
        "tenant sends leave the tenant's own callback setting in force"
    );
    assert_eq!(outcome, resource);
    assert_eq!(outcome["account_sid"], TENANT_SID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_argument_form_uses_the_tenants_credentials_and_attaches_the_media_url() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let media_url = host.media_url("/menu/today.jpg");
    let mut args = tenant_args();
    args.extend([js("0039 333 1234567"), js("Today's menu"), js(&media_url)]);
    let outcome = host.send(&call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, tenant_credentials(), TENANT_FROM, "Today's menu");
    assert_eq!(values(&form, "MediaUrl"), [media_url]);
    assert!(values(&form, "StatusCallback").is_empty());
    assert_eq!(outcome, resource);
    assert_eq!(host.probes().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_argument_form_with_null_media_sends_text_only() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let mut args = tenant_args();
    args.extend([js("3331234567"), js("Just text"), "null".into()]);
    let outcome = host.send(&call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, tenant_credentials(), TENANT_FROM, "Just text");
    assert!(values(&form, "MediaUrl").is_empty());
    assert_eq!(outcome, resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_argument_form_uses_the_tenants_credentials_and_a_signed_url() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let mut args = tenant_args();
    args.extend([
        js("whatsapp:+393331234567"),
        js("Your receipt"),
        js("receipts"),
        js("acme/receipt-7.pdf"),
    ]);
    let outcome = host.send(&call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, tenant_credentials(), TENANT_FROM, "Your receipt");
    let media = values(&form, "MediaUrl");
    assert_eq!(media.len(), 1);
    assert_signed_media(&host, &media[0], "receipts/acme/receipt-7.pdf").await;
    assert!(values(&form, "StatusCallback").is_empty());
    assert_eq!(outcome, resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_argument_form_with_null_bucket_and_file_sends_text_only() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let mut args = tenant_args();
    args.extend([
        js("+39 333 123 4567"),
        js("Nothing attached"),
        "null".into(),
        "null".into(),
    ]);
    let outcome = host.send(&call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(
        &request,
        tenant_credentials(),
        TENANT_FROM,
        "Nothing attached",
    );
    assert!(values(&form, "MediaUrl").is_empty());
    assert_eq!(outcome, resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_without_whatsapp_section_can_still_send_with_tenant_credentials() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        extra: "\n[apps.bare]\n".into(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let mut args = tenant_args();
    args.extend([js("333 123 4567"), js("Hello from a bare app")]);
    let outcome = host.send_as("bare", &call(&args)).await;
    let (request, resource) = only_create(&twilio).await;
    assert_create(
        &request,
        tenant_credentials(),
        TENANT_FROM,
        "Hello from a bare app",
    );
    assert_eq!(outcome, resource);
}

// ---- failed outcomes ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_error_becomes_a_failed_outcome_with_twilios_code_and_details() {
    let twilio = TwilioStandIn::scripted(
        vec![],
        Reply::Error {
            status: 400,
            code: 63007,
            message: "Twilio could not find a Channel with the specified From address",
            retry_after: None,
        },
    )
    .await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    assert_eq!(
        outcome,
        json!({
            "sid": null,
            "status": "failed",
            "error_code": 63007,
            "error_message": "Twilio could not find a Channel with the specified From address",
            "more_info": "https://www.twilio.com/docs/errors/63007",
            "http_status": 400,
        })
    );
    assert_eq!(twilio.requests().await.len(), 1, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_to_fails_with_21211_without_calling_twilio() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host.send(&call(&[js("+39 333 12ab"), js("hi")])).await;
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 21211);
    let message = outcome["error_message"].as_str().unwrap();
    assert!(message.contains("+39 333 12ab"), "{message}");
    assert!(
        outcome.get("http_status").is_none(),
        "twilio gave no status"
    );
    assert!(outcome.get("more_info").is_none(), "twilio gave no details");
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_1600_characters_fails_with_21617_without_calling_twilio() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), "'x'.repeat(1601)".into()]))
        .await;
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 21617);
    assert!(
        outcome["error_message"].as_str().unwrap().contains("1601"),
        "{outcome}"
    );
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_1600_multibyte_characters_is_sent() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), "'è'.repeat(1600)".into()]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    assert_create(&request, app_credentials(), FROM, &"è".repeat(1600));
    assert_eq!(outcome, resource, "the limit counts characters, not bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_over_16_mb_fails_with_11751_and_twilio_gets_no_request() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        media: Some(media_server("video/mp4", 17 * 1024 * 1024).await),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let media_url = host.media_url("/videos/too-big.mp4");
    let outcome = host
        .send(&call(&[
            js("+39 333 123 4567"),
            js("watch"),
            js(&media_url),
        ]))
        .await;
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 11751);
    assert!(
        outcome["error_message"]
            .as_str()
            .unwrap()
            .contains("17825792"),
        "{outcome}"
    );
    assert_eq!(host.probes().await.len(), 1);
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_media_fails_with_12300_and_twilio_gets_no_request() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        media: Some(media_server("text/html; charset=utf-8", 2048).await),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let media_url = host.media_url("/a-web-page");
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), js("look"), js(&media_url)]))
        .await;
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 12300);
    assert!(
        outcome["error_message"]
            .as_str()
            .unwrap()
            .contains("text/html"),
        "{outcome}"
    );
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_media_url_fails_with_21620_and_twilio_gets_no_request() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        // A server with nothing mounted answers 404 to every probe.
        media: Some(MockServer::start().await),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let media_url = host.media_url("/gone.jpg");
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), js("look"), js(&media_url)]))
        .await;
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 21620);
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_not_probed_when_the_check_is_off() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        media: Some(media_server("text/html", 2048).await),
        media_check: false,
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let media_url = host.media_url("/page");
    let outcome = host
        .send(&call(&[js("+39 333 123 4567"), js("look"), js(&media_url)]))
        .await;
    let (request, resource) = only_create(&twilio).await;
    let form = assert_create(&request, app_credentials(), FROM, "look");
    assert_eq!(values(&form, "MediaUrl"), [media_url]);
    assert_eq!(outcome, resource);
    assert!(host.probes().await.is_empty());
}

// ---- retries and network failures ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_create_is_retried_after_retry_after_and_makes_one_message() {
    let twilio = TwilioStandIn::scripted(vec![Reply::rate_limited("1")], Reply::Created).await;
    // Backoff alone would wait at most 10 ms; only Retry-After can make the client wait 1 s.
    let setup = Setup {
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
        },
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    let arrivals = twilio.arrivals();
    let statuses: Vec<u16> = arrivals.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 201], "one rate-limited try, one message");
    let waited = arrivals[1].at - arrivals[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After: 1"
    );
    assert_eq!(outcome, arrivals[1].body);
    let requests = twilio.requests().await;
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry is the same create"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_three_times_gives_up_with_a_failed_outcome() {
    let twilio = TwilioStandIn::scripted(vec![], Reply::rate_limited("0")).await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    assert_eq!(twilio.requests().await.len(), 3, "at most 3 attempts");
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 20429);
    assert_eq!(outcome["http_status"], 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_not_retried_and_gives_a_failed_outcome() {
    let twilio = TwilioStandIn::scripted(
        vec![],
        Reply::Error {
            status: 500,
            code: 20500,
            message: "Internal Server Error",
            retry_after: None,
        },
    )
    .await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    assert_eq!(
        twilio.requests().await.len(),
        1,
        "a 5xx create may have sent the message; it must not be repeated"
    );
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 20500);
    assert_eq!(outcome["error_message"], "Internal Server Error");
    assert_eq!(outcome["http_status"], 500);
    assert_eq!(
        outcome["more_info"],
        "https://www.twilio.com/docs/errors/20500"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_twilio_gives_a_timed_out_outcome_within_the_timeout() {
    // The settings' timeout is 2 s; the stand-in would answer only after 6 s.
    let twilio = TwilioStandIn::scripted(vec![], Reply::Hang(Duration::from_secs(6))).await;
    let host = Host::with_twilio(&twilio).await;
    let started = Instant::now();
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    let took = started.elapsed();
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 90002);
    assert!(
        took < Duration::from_secs(5),
        "gave up after {took:?}, not at the 2 s timeout"
    );
    assert_eq!(
        twilio.requests().await.len(),
        1,
        "a timed-out create is not repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_gives_an_unreachable_outcome_quickly() {
    let closed = free_addr();
    let host = Host::start(&format!("http://{closed}"), Setup::default()).await;
    let started = Instant::now();
    let outcome = host.send(&call(&[js("+39 333 123 4567"), js("hi")])).await;
    let took = started.elapsed();
    assert_eq!(outcome["sid"], Value::Null);
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error_code"], 90001);
    assert!(
        outcome["error_message"]
            .as_str()
            .unwrap()
            .contains(&closed.to_string()),
        "{outcome}"
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: a refused connection must not wait for the 2 s timeout"
    );
}

// ---- programming errors throw -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_argument_count_throws_a_type_error() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    for (n, call) in [
        (0, "utils.sendWhatsappMessage()".to_string()),
        (1, call(&[js("+39 333 123 4567")])),
        (8, call(&vec![js("x"); 8])),
    ] {
        let (name, message) = host.throws("crm", &call).await;
        assert_eq!(name, "TypeError", "{call}");
        assert!(message.contains(&format!("got {n} arguments")), "{message}");
        assert!(message.contains("(to, message"), "{message}");
    }
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_argument_types_throw_a_type_error_naming_the_argument() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let to = js("+39 333 123 4567");
    let mut tenant_with_number_sid = tenant_args();
    tenant_with_number_sid[0] = "42".into();
    tenant_with_number_sid.extend([to.clone(), js("hi")]);
    let mut tenant_with_null_secret = tenant_args();
    tenant_with_null_secret[1] = "null".into();
    tenant_with_null_secret.extend([to.clone(), js("hi")]);
    for (call, names) in [
        (call(&[to.clone(), "42".into()]), "message (argument 2)"),
        (call(&["{}".into(), js("hi")]), "to (argument 1)"),
        (
            call(&[to.clone(), js("hi"), "42".into()]),
            "publicMediaURL (argument 3)",
        ),
        (
            call(&[to.clone(), js("hi"), "[]".into(), js("f.pdf")]),
            "bucketName (argument 3)",
        ),
        (call(&tenant_with_number_sid), "accountId (argument 1)"),
        (call(&tenant_with_null_secret), "secretKey (argument 2)"),
    ] {
        let (name, message) = host.throws("crm", &call).await;
        assert_eq!(name, "TypeError", "{call}");
        assert!(message.contains(names), "{call}: {message}");
    }
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_without_file_and_file_without_bucket_throw_a_type_error() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let to = js("+39 333 123 4567");
    let mut tenant_bucket_only = tenant_args();
    tenant_bucket_only.extend([to.clone(), js("hi"), js("bucket"), "null".into()]);
    let mut tenant_file_only = tenant_args();
    tenant_file_only.extend([to.clone(), js("hi"), "undefined".into(), js("f.pdf")]);
    for (call, expected) in [
        (
            call(&[to.clone(), js("hi"), js("bucket"), "null".into()]),
            "bucketName was given without fileName",
        ),
        (
            call(&[to.clone(), js("hi"), "null".into(), js("f.pdf")]),
            "fileName was given without bucketName",
        ),
        (
            call(&tenant_bucket_only),
            "bucketName was given without fileName",
        ),
        (
            call(&tenant_file_only),
            "fileName was given without bucketName",
        ),
    ] {
        let (name, message) = host.throws("crm", &call).await;
        assert_eq!(name, "TypeError", "{call}");
        assert!(message.contains(expected), "{call}: {message}");
    }
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tenant_account_id_throws_a_type_error() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let mut args = tenant_args();
    args[0] = js("AC123");
    args.extend([js("+39 333 123 4567"), js("hi")]);
    let (name, message) = host.throws("crm", &call(&args)).await;
    assert_eq!(name, "TypeError");
    assert!(message.contains("accountId"), "{message}");
    assert!(message.contains("AC123"), "{message}");
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tenant_secret_key_or_from_number_throws_a_type_error() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    for (i, name) in [(1, "secretKey"), (2, "fromNr")] {
        let mut args = tenant_args();
        args[i] = js(" ".repeat(i - 1).as_str());
        args.extend([js("+39 333 123 4567"), js("hi")]);
        let (class, message) = host.throws("crm", &call(&args)).await;
        assert_eq!(class, "TypeError", "empty {name}");
        assert!(message.contains(name), "{message}");
    }
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_without_whatsapp_section_throws_an_error_saying_how_to_configure_it() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        extra: "\n[apps.bare]\n".into(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    for call in [
        call(&[js("+39 333 123 4567"), js("hi")]),
        call(&[js("+39 333 123 4567"), js("hi"), js("b"), js("f.pdf")]),
    ] {
        let (name, message) = host.throws("bare", &call).await;
        assert_eq!(name, "Error", "{call}");
        assert!(message.contains("[apps.bare.WHATSAPP]"), "{message}");
    }
    assert!(twilio.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_forms_without_a_gcs_key_throw_and_other_forms_still_send() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        gcs: false,
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let to = js("+39 333 123 4567");
    let mut tenant = tenant_args();
    tenant.extend([to.clone(), js("hi"), js("bucket"), js("f.pdf")]);
    for call in [
        call(&[to.clone(), js("hi"), js("bucket"), js("f.pdf")]),
        call(&tenant),
    ] {
        let (name, message) = host.throws("crm", &call).await;
        assert_eq!(name, "Error", "{call}");
        assert!(message.contains("[gcs] service_account_key"), "{message}");
        assert!(
            message.contains("GOOGLE_APPLICATION_CREDENTIALS"),
            "{message}"
        );
    }
    assert!(twilio.requests().await.is_empty());
    let outcome = host.send(&call(&[to, js("text still works")])).await;
    let (_, resource) = only_create(&twilio).await;
    assert_eq!(outcome, resource);
}

// ---- sandbox spacing ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_sends_from_the_same_number_are_spaced_three_seconds_apart() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        app_toml: "sandbox = true\n".into(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let source = format!(
        "const first = JSON.parse({}); const second = JSON.parse({});\n\
         JSON.stringify([first.sid, second.sid])",
        call(&[js("+39 333 123 4567"), js("one")]),
        call(&[js("+39 333 123 4567"), js("two")]),
    );
    let result = host.run("crm", &source).await.expect("the script runs");
    let sids: Vec<Option<String>> =
        serde_json::from_str(result.unwrap().as_str().unwrap()).unwrap();
    assert!(sids.iter().all(Option::is_some), "both were sent: {sids:?}");
    let arrivals = twilio.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(3),
        "the sandbox sender got two messages {gap:?} apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_from_the_sandbox_number_wait_their_turn_even_from_a_tenant() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        app_toml: "sandbox = true\n".into(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let caller = host.caller("crm");
    let request = |account| SendRequest {
        account,
        to: "+39 333 123 4567".into(),
        body: "hi".into(),
        media: Media::None,
    };
    // The tenant sends from the sandbox number too, so it shares the app's spacing.
    let tenant = Account::Tenant {
        account_sid: TENANT_SID.into(),
        auth_token: TENANT_SECRET.to_string().into(),
        from: FROM.into(),
    };
    let (app_send, tenant_send) = tokio::join!(
        host.services.outbound.send(&caller, request(Account::App)),
        host.services.outbound.send(&caller, request(tenant)),
    );
    assert!(!app_send.unwrap().is_failed());
    assert!(!tenant_send.unwrap().is_failed());
    let arrivals = twilio.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(3),
        "the sandbox sender got two messages {gap:?} apart"
    );
}

// ---- the store ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_is_recorded_in_the_store_without_secrets() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let public_media = host.media_url("/files/photo.jpg?token=abc");
    let sent_with_media = host
        .send(&call(&[
            js("+39 333 123 4567"),
            js("with a photo"),
            js(&public_media),
        ]))
        .await;
    let mut tenant = tenant_args();
    tenant.extend([
        js("0039 333 1234567"),
        js("tenant ticket"),
        js("tickets"),
        js("t-1.pdf"),
    ]);
    let sent_by_tenant = host.send(&call(&tenant)).await;
    let refused = host.send(&call(&[js("hello"), js("to nobody")])).await;
    assert_eq!(refused["error_code"], 21211);

    // Also straight through the Rust API, as the `send` command does.
    let direct = host
        .services
        .outbound
        .send(
            &host.caller("crm"),
            SendRequest {
                account: Account::App,
                to: "333 123 4567".into(),
                body: "direct".into(),
                media: Media::None,
            },
        )
        .await
        .expect("a valid send");
    assert!(!direct.is_failed());

    host.services.store.flush().await.unwrap();
    let mut messages = host
        .services
        .store
        .messages(MessageFilter::default())
        .await
        .unwrap();
    messages.reverse(); // oldest first
    assert_eq!(messages.len(), 4, "{messages:#?}");

    let m = &messages[0];
    assert_eq!(m.sid.as_deref(), sent_with_media["sid"].as_str());
    assert_eq!((m.app.as_str(), m.company.as_str()), ("crm", COMPANY));
    assert_eq!(m.account_sid.as_deref(), Some(ACCOUNT_SID));
    assert_eq!(m.to.as_deref(), Some("+393331234567"));
    assert_eq!(m.from.as_deref(), Some(FROM));
    assert_eq!(m.body.as_deref(), Some("with a photo"));
    assert_eq!(
        m.media.as_deref(),
        Some(host.media_url("/files/photo.jpg?…").as_str()),
        "a media URL's query may hold a token and is not stored"
    );
    assert_eq!(m.status, "queued");

    let m = &messages[1];
    assert_eq!(m.sid.as_deref(), sent_by_tenant["sid"].as_str());
    assert_eq!(m.account_sid.as_deref(), Some(TENANT_SID));
    assert_eq!(m.from.as_deref(), Some(TENANT_FROM));
    assert_eq!(m.media.as_deref(), Some("gs://tickets/t-1.pdf"));

    let m = &messages[2];
    assert_eq!(m.sid, None);
    assert_eq!(m.status, "failed");
    assert_eq!(m.error_code.as_deref(), Some("21211"));
    assert_eq!(m.to.as_deref(), Some("hello"));
    assert!(m.error_message.as_deref().unwrap().contains("hello"));

    let m = &messages[3];
    assert_eq!(m.sid.as_deref(), direct.sid());
    assert_eq!(m.body.as_deref(), Some("direct"));

    // No secret anywhere in the store's files, the write-ahead log included.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(host.config.data_dir()).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains("with a photo"), "the scan reads the store");
    let pem_body = host.key.private_pem.lines().nth(1).unwrap();
    for (what, secret) in [
        ("the app's auth key", AUTH_KEY),
        ("the tenant's secret key", TENANT_SECRET),
        ("a URL signature", "X-Goog-Signature"),
        ("a media URL token", "token=abc"),
        ("the signing key", pem_body),
    ] {
        assert!(!stored.contains(secret), "the store holds {what}");
    }
}
