//! Media checks can't probe the inside: the media check fetches only https URLs, to public
//! addresses checked after DNS resolution, and follows no redirect. `[media] allow_local` lifts
//! the first two rules for local stand-ins, and the server warns when it is on.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::host::{Host, Setup};
use crate::helpers::stand_ins::*;
use crate::helpers::*;

/// A host whose media check keeps the rules, as in production.
async fn guarded_host(twilio: &TwilioStandIn) -> Host {
    let setup = Setup {
        media_allow_local: false,
        ..Setup::default()
    };
    Host::start(&twilio.uri(), setup).await
}

/// A three-argument send of `url` as the app's media.
fn send_media(url: &str) -> String {
    format!(
        "utils.sendWhatsappMessage('+39 333 123 4567', 'look', {})",
        serde_json::to_string(url).unwrap()
    )
}

/// Sends `url` and checks the send failed with 21620 and a message naming `rule`, and that
/// Twilio got no request. Returns the message.
async fn assert_refused(host: &Host, twilio: &TwilioStandIn, url: &str, rule: &str) -> String {
    let outcome = host.send(&send_media(url)).await;
    assert_eq!(outcome["sid"], Value::Null, "{url}: {outcome}");
    assert_eq!(outcome["status"], "failed", "{url}: {outcome}");
    assert_eq!(outcome["error_code"], 21620, "{url}: {outcome}");
    let message = outcome["error_message"].as_str().unwrap().to_string();
    assert!(message.contains(rule), "{url}: {message}");
    assert!(
        twilio.requests().await.is_empty(),
        "{url}: twilio got a create"
    );
    message
}

/// A port on 127.0.0.1 that records whether anything connected: proof a URL was not dialled.
struct Witness(TcpListener);

impl Witness {
    fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    /// The kernel completes a connection before `accept`, so an empty queue means none came.
    fn was_never_dialled(&self) -> bool {
        matches!(self.0.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_urls_to_loopback_private_and_metadata_addresses_are_refused_with_their_rule() {
    let twilio = TwilioStandIn::start().await;
    let host = guarded_host(&twilio).await;
    let witness = Witness::bind();
    let port = witness.port();
    let cases = [
        (
            format!("https://127.0.0.1:{port}/a.jpg"),
            "resolves to 127.0.0.1, a loopback address; only public addresses are fetched",
        ),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/a.jpg"),
            "resolves to ::ffff:127.0.0.1, a loopback address",
        ),
        (
            "https://10.0.0.1/a.jpg".to_string(),
            "resolves to 10.0.0.1, a private address",
        ),
        (
            "https://169.254.169.254/latest/meta-data/".to_string(),
            "resolves to 169.254.169.254, a cloud metadata address",
        ),
        (
            "https://[fd00:ec2::254]/latest/meta-data/".to_string(),
            "resolves to fd00:ec2::254, a cloud metadata address",
        ),
        (
            "https://100.100.100.200/latest/meta-data/".to_string(),
            "a shared (carrier-grade NAT) address",
        ),
    ];
    for (url, rule) in &cases {
        let message = assert_refused(&host, &twilio, url, rule).await;
        assert!(message.contains("[media] allow_local = true"), "{message}");
    }
    assert!(witness.was_never_dialled(), "the loopback url was fetched");
    assert!(host.probes().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_media_url_is_refused_before_any_request() {
    let twilio = TwilioStandIn::start().await;
    let host = guarded_host(&twilio).await;
    let witness = Witness::bind();
    for url in [
        format!("http://127.0.0.1:{}/a.jpg", witness.port()),
        "http://media.example.com/a.jpg?token=abc".to_string(),
    ] {
        let message = assert_refused(
            &host,
            &twilio,
            &url,
            "must use https (set [media] allow_local = true for local stand-ins)",
        )
        .await;
        assert!(!message.contains("token=abc"), "{message}");
    }
    assert!(witness.was_never_dialled(), "the http url was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_refused_after_resolution() {
    let twilio = TwilioStandIn::start().await;
    let host = guarded_host(&twilio).await;
    let witness = Witness::bind();
    let url = format!("https://localhost:{}/a.jpg", witness.port());
    let message = assert_refused(&host, &twilio, &url, "a loopback address").await;
    assert!(message.contains("localhost"), "{message}");
    assert!(message.contains("resolves to"), "{message}");
    assert!(witness.was_never_dialled(), "localhost was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_error_names_the_rule() {
    let twilio = TwilioStandIn::start().await;
    // allow_local only lifts https and the address rules; redirects stay refused.
    let host = Host::with_twilio(&twilio).await;
    let target = host.media_url("/final.jpg?token=abc");
    let redirector = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", target.as_str()))
        .mount(&redirector)
        .await;
    let url = format!("{}/moved.jpg", redirector.uri());
    let message = assert_refused(&host, &twilio, &url, "redirects are not followed").await;
    assert!(
        message.contains(&format!("redirects to {}", host.media_url("/final.jpg?…"))),
        "{message}"
    );
    assert!(!message.contains("token=abc"), "{message}");
    assert_eq!(redirector.received_requests().await.unwrap().len(), 1);
    assert!(
        host.probes().await.is_empty(),
        "the redirect target got a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_local_lets_the_check_fetch_a_local_http_stand_in() {
    let twilio = TwilioStandIn::start().await;
    let guarded = guarded_host(&twilio).await;
    let url = guarded.media_url("/photo.jpg");
    assert_refused(&guarded, &twilio, &url, "must use https").await;
    assert!(guarded.probes().await.is_empty());

    let local = Host::with_twilio(&twilio).await;
    let url = local.media_url("/photo.jpg");
    let outcome = local.send(&send_media(&url)).await;
    assert!(outcome["sid"].is_string(), "{outcome}");
    assert_eq!(local.probes().await.len(), 1);
    assert_eq!(twilio.requests().await.len(), 1);
}

/// Runs `serve` on `config` until it says it is serving; returns what it logged by then.
fn serve_log(config: &TestConfig) -> String {
    let mut child = config
        .command()
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut log = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("whatsapp-host is serving") {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().expect("the server stops");
    child.wait().unwrap();
    drop(rx);
    reader.join().unwrap();
    assert!(log.contains("whatsapp-host is serving"), "{log}");
    log
}

#[test]
fn serve_warns_loudly_when_allow_local_is_on_and_not_otherwise() {
    let mut config = TestConfig::on_status("").api_base("simulate");
    config.write(free_addr());
    assert!(!serve_log(&config).contains("allow_local"));

    config.media_allow_local = true;
    config.write(free_addr());
    let log = serve_log(&config);
    assert!(
        log.contains("MEDIA URLS MAY REACH INSIDE THIS NETWORK ([media] allow_local = true)"),
        "{log}"
    );
}
