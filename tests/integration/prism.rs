//! Conformance with Twilio's own API description: Stoplight Prism serves
//! `../shared/twilio/twilio_api_v2010_messages.json` on 127.0.0.1 and validates every request
//! the real client makes, in every form of `utils.sendWhatsappMessage` and
//! `utils.sendWhatsappTemplate`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::helpers::host::{Host, Setup};
use crate::helpers::stand_ins::*;
use crate::helpers::*;

/// Prism as installed by `npm ci` from the committed package-lock.json.
fn prism_bin() -> PathBuf {
    repo_root().join("node_modules/.bin/prism")
}

/// Twilio's OpenAPI description of the Messages API, shared beside the repository.
fn twilio_spec() -> PathBuf {
    repo_root().join("../shared/twilio/twilio_api_v2010_messages.json")
}

/// A running Prism mock; killed when dropped.
struct Prism {
    child: Child,
    url: String,
    log: PathBuf,
    /// Holds Prism's log file.
    _dir: tempfile::TempDir,
}

impl Prism {
    /// Starts `prism mock` on a free port and waits until it accepts connections.
    async fn start() -> Prism {
        let bin = prism_bin();
        assert!(
            bin.exists(),
            "stoplight prism is not installed at {}: run `npm ci` in the repository root \
             (.ci/run does this) to install it from package-lock.json",
            bin.display()
        );
        let spec = twilio_spec();
        assert!(
            spec.exists(),
            "twilio's API description is missing at {}: the shared/ folder must sit beside \
             the repository",
            spec.display()
        );
        let port = free_addr().port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("prism.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            // Request violations are always refused with 422; --errors also refuses answers
            // that would violate the description.
            .arg("--errors")
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", bin.display()));
        let mut prism = Prism {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        prism.wait_until_listening(port).await;
        prism
    }

    async fn wait_until_listening(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "prism exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "prism did not listen on port {port} within 90 s:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn messages_url(&self, account: &str) -> String {
        format!("{}/2010-04-01/Accounts/{account}/Messages.json", self.url)
    }
}

/// The `sid` of the 201 example in the description: what Prism answers a valid create with.
fn created_example_sid() -> String {
    let spec: Value = serde_json::from_slice(&std::fs::read(twilio_spec()).unwrap()).unwrap();
    let create = &spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"];
    create["responses"]["201"]["content"]["application/json"]["examples"]["create"]["value"]["sid"]
        .as_str()
        .expect("the description has a 201 example")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_is_accepted_by_twilios_api_description() {
    let prism = Prism::start().await;
    let host = Host::start(&prism.url, Setup::default()).await;
    let expected_sid = created_example_sid();

    let q = |s: &str| serde_json::to_string(s).unwrap();
    let public = q(&host.media_url("/files/photo.jpg"));
    let tenant = format!(
        "{}, {}, {}",
        q(TENANT_SID),
        q(TENANT_SECRET),
        q(TENANT_FROM)
    );
    let forms = [
        ("2 args", "'+39 333 123 4567', 'hello'".to_string()),
        (
            "3 args, url",
            format!("'0039 333 1234567', 'photo', {public}"),
        ),
        ("3 args, null", "'3331234567', 'text', null".to_string()),
        (
            "4 args, bucket and file",
            "'whatsapp:+393331234567', 'ticket', 'tickets', '2024/ticket 1.pdf'".to_string(),
        ),
        (
            "4 args, nulls",
            "'3331234567', 'text', null, null".to_string(),
        ),
        ("5 args", format!("{tenant}, '+39 333 123 4567', 'hello'")),
        (
            "6 args, url",
            format!("{tenant}, '3331234567', 'photo', {public}"),
        ),
        (
            "6 args, null",
            format!("{tenant}, '3331234567', 'text', null"),
        ),
        (
            "7 args, bucket and file",
            format!("{tenant}, '3331234567', 'receipt', 'receipts', 'r/7.pdf'"),
        ),
        (
            "7 args, nulls",
            format!("{tenant}, '3331234567', 'text', null, null"),
        ),
    ];
    for (form, args) in &forms {
        let result = host
            .run(APP, &format!("utils.sendWhatsappMessage({args})"))
            .await
            .unwrap_or_else(|e| panic!("{form}: the script failed: {e}"));
        let text = result.and_then(|v| v.as_str().map(str::to_string));
        let outcome: Value = serde_json::from_str(&text.expect("a JSON string")).unwrap();
        assert_eq!(
            outcome["sid"].as_str(),
            Some(expected_sid.as_str()),
            "{form}: prism did not answer 201: {outcome}\n{}",
            prism.log()
        );
    }
    // Media was checked before each create: two public URLs and two signed ones.
    let probes = host.probes().await;
    assert_eq!(probes.len(), 4, "two public and two signed media probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_in_both_forms_is_accepted_by_twilios_api_description() {
    let prism = Prism::start().await;
    let host = Host::start(&prism.url, Setup::default()).await;
    let expected_sid = created_example_sid();
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let content_sid = q("HX0123456789abcdef0123456789abcdef");
    let tenant = format!(
        "{}, {}, {}",
        q(TENANT_SID),
        q(TENANT_SECRET),
        q(TENANT_FROM)
    );
    let forms = [
        (
            "app, variables",
            format!("'+39 333 123 4567', {content_sid}, {{ 1: 'Ana', 2: 15 }}"),
        ),
        ("app, null", format!("'3331234567', {content_sid}, null")),
        (
            "tenant, variables",
            format!("{tenant}, '3331234567', {content_sid}, {{ name: 'Ana' }}"),
        ),
    ];
    for (form, args) in &forms {
        let result = host
            .run(APP, &format!("utils.sendWhatsappTemplate({args})"))
            .await
            .unwrap_or_else(|e| panic!("{form}: the script failed: {e}"));
        let text = result.and_then(|v| v.as_str().map(str::to_string));
        let outcome: Value = serde_json::from_str(&text.expect("a JSON string")).unwrap();
        assert_eq!(
            outcome["sid"].as_str(),
            Some(expected_sid.as_str()),
            "{form}: prism did not answer 201: {outcome}\n{}",
            prism.log()
        );
    }
}

#[tokio::test]
async fn prism_refuses_a_malformed_content_sid_with_422() {
    let prism = Prism::start().await;
    let http = reqwest::Client::new();
    let send = |content_sid: &'static str| {
        http.post(prism.messages_url(ACCOUNT_SID))
            .basic_auth(ACCOUNT_SID, Some(AUTH_KEY))
            .form(&[
                ("To", "whatsapp:+393331234567"),
                ("From", "whatsapp:+14155238886"),
                ("ContentSid", content_sid),
                ("ContentVariables", r#"{"1":"Ana"}"#),
            ])
            .send()
    };
    // The pattern the host checks before sending is the description's own.
    let malformed = send("HX12").await.unwrap();
    assert_eq!(malformed.status(), 422);
    let well_formed = send("HX0123456789abcdef0123456789abcdef").await.unwrap();
    assert_eq!(well_formed.status(), 201);
}

#[tokio::test]
async fn prism_refuses_a_create_missing_to_with_422() {
    let prism = Prism::start().await;
    let http = reqwest::Client::new();
    let send = |fields: Vec<(&'static str, &'static str)>| {
        http.post(prism.messages_url(ACCOUNT_SID))
            .basic_auth(ACCOUNT_SID, Some(AUTH_KEY))
            .form(&fields)
            .send()
    };
    let without_to = send(vec![("From", "whatsapp:+14155238886"), ("Body", "hello")])
        .await
        .unwrap();
    assert_eq!(without_to.status(), 422);
    let problem: Value = without_to.json().await.unwrap();
    assert!(
        problem.to_string().contains("'To'"),
        "the refusal names To: {problem}"
    );

    // The same request with To is accepted, so it was the missing field that was refused.
    let with_to = send(vec![
        ("To", "whatsapp:+393331234567"),
        ("From", "whatsapp:+14155238886"),
        ("Body", "hello"),
    ])
    .await
    .unwrap();
    assert_eq!(with_to.status(), 201);
}
