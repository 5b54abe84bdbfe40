//! Cloud Storage V4 signed URLs: made with a key generated at run time, then checked against
//! Google's documented V4 algorithm rebuilt here independently, down to the RSA signature; and
//! signed only for the buckets an app lists in `gcs_buckets`.

use std::path::Path;

use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::{Digest, Sha256};
use rsa::signature::Verifier;
use url::Url;
use whatsapp_host::media::UrlSigner;
use whatsapp_host::settings::Settings;

use crate::helpers::host::{COMPANY, Host, Setup};
use crate::helpers::stand_ins::{
    CLIENT_EMAIL, ServiceAccount, TENANT_FROM, TENANT_SECRET, TENANT_SID, TwilioStandIn,
};
use crate::helpers::{ACCOUNT_SID, APP, TestConfig};

/// Loads `[gcs]` the way the host does, from a settings file in `dir`.
fn signer(dir: &Path, gcs_toml: &str) -> UrlSigner {
    let path = dir.join("whatsapp-host.toml");
    let settings = Settings::from_toml(gcs_toml, &path, &[]).expect("settings with [gcs] load");
    UrlSigner::from_settings(settings.gcs.as_ref()).expect("the generated key loads")
}

/// RFC 3986 percent-encoding, as V4 signing requires: unreserved characters stay, every other
/// byte becomes `%XX` (upper-case hex). `keep_slash` is for paths.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex signature"))
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query parameters of a URL, decoded, in their order.
fn query(url: &Url) -> Vec<(String, String)> {
    url.query_pairs().into_owned().collect()
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> &'a str {
    let found: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(found.len(), 1, "exactly one {name} in the URL");
    found[0]
}

/// Google's V4 string-to-sign for a GET of `url`, built from the canonical request:
/// method, path, canonical query (sorted, RFC 3986-encoded, signature excluded), the `host`
/// header, the signed-header list, and `UNSIGNED-PAYLOAD`.
fn string_to_sign(url: &Url, bucket: &str, object: &str) -> String {
    let pairs = query(url);
    let mut canonical_query: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "X-Goog-Signature")
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    canonical_query.sort();
    let canonical_query = canonical_query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = format!("/{bucket}/{}", uri_encode(object, true));
    let host = url.host_str().unwrap();
    let canonical_request =
        format!("GET\n{path}\n{canonical_query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let credential = param(&pairs, "X-Goog-Credential");
    let scope = credential
        .strip_prefix(&format!("{CLIENT_EMAIL}/"))
        .expect("the credential starts with the service account's email");
    format!(
        "GOOG4-RSA-SHA256\n{}\n{scope}\n{}",
        param(&pairs, "X-Goog-Date"),
        hex_encode(&Sha256::digest(canonical_request.as_bytes()))
    )
}

fn verifies(key: &ServiceAccount, message: &str, signature_hex: &str) -> bool {
    let signature = Signature::try_from(hex_decode(signature_hex).as_slice())
        .expect("an RSA signature of the key's size");
    VerifyingKey::<Sha256>::new(key.public_key.clone())
        .verify(message.as_bytes(), &signature)
        .is_ok()
}

#[tokio::test]
async fn signed_url_names_the_object_and_verifies_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = ServiceAccount::create(dir.path());
    let signer = signer(dir.path(), &key.gcs_toml(900, None));
    let (bucket, object) = ("acme-invoices", "2024/march/invoice 7 (final)+é.pdf");

    let signed = signer.signed_get_url(bucket, object).await.unwrap();
    let url = Url::parse(&signed).unwrap();

    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("storage.googleapis.com"));
    assert_eq!(
        url.path(),
        format!("/{bucket}/{}", uri_encode(object, true)),
        "the path names the bucket and the encoded object"
    );
    let pairs = query(&url);
    assert_eq!(param(&pairs, "X-Goog-Algorithm"), "GOOG4-RSA-SHA256");
    assert_eq!(param(&pairs, "X-Goog-Expires"), "900");
    assert_eq!(param(&pairs, "X-Goog-SignedHeaders"), "host");
    let date = param(&pairs, "X-Goog-Date");
    assert_eq!(date.len(), 16, "X-Goog-Date is YYYYMMDDTHHMMSSZ: {date}");
    assert_eq!(
        param(&pairs, "X-Goog-Credential"),
        format!("{CLIENT_EMAIL}/{}/auto/storage/goog4_request", &date[..8])
    );
    assert_eq!(
        pairs.last().map(|(k, _)| k.as_str()),
        Some("X-Goog-Signature"),
        "the signature comes last"
    );

    let signature = param(&pairs, "X-Goog-Signature");
    let to_sign = string_to_sign(&url, bucket, object);
    assert!(
        verifies(&key, &to_sign, signature),
        "X-Goog-Signature does not verify over the V4 canonical request"
    );
    // The check is not vacuous: the same signature fails for another object or expiry.
    let other_object = string_to_sign(&url, bucket, "2024/march/invoice 8.pdf");
    assert!(!verifies(&key, &other_object, signature));
    let longer =
        Url::parse(&signed.replace("X-Goog-Expires=900", "X-Goog-Expires=604800")).unwrap();
    assert!(!verifies(
        &key,
        &string_to_sign(&longer, bucket, object),
        signature
    ));
}

#[tokio::test]
async fn signed_url_lifetime_defaults_to_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let key = ServiceAccount::create(dir.path());
    let toml = format!("[gcs]\nservice_account_key = \"{}\"\n", key.path.display());
    let signed = signer(dir.path(), &toml)
        .signed_get_url("b", "o.jpg")
        .await
        .unwrap();
    let url = Url::parse(&signed).unwrap();
    assert_eq!(param(&query(&url), "X-Goog-Expires"), "3600");
    assert!(verifies(
        &key,
        &string_to_sign(&url, "b", "o.jpg"),
        param(&query(&url), "X-Goog-Signature")
    ));
}

#[tokio::test]
async fn signed_url_uses_the_configured_endpoint_in_path_style() {
    let dir = tempfile::tempdir().unwrap();
    let key = ServiceAccount::create(dir.path());
    let signer = signer(dir.path(), &key.gcs_toml(60, Some("http://127.0.0.1:4443")));
    let signed = signer.signed_get_url("media", "a/b.png").await.unwrap();
    assert!(
        signed.starts_with("http://127.0.0.1:4443/media/a/b.png?"),
        "{signed}"
    );
    assert_eq!(
        param(&query(&Url::parse(&signed).unwrap()), "X-Goog-Expires"),
        "60"
    );
}

#[tokio::test]
async fn signer_without_a_key_says_how_to_configure_one() {
    let err = UrlSigner::from_settings(None)
        .unwrap()
        .signed_get_url("b", "o")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("[gcs] service_account_key"), "{err}");
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{err}");
}

#[test]
fn unusable_key_file_is_named_in_the_error_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    let secret = "-----BEGIN PRIVATE KEY-----\nnot-really-a-key\n-----END PRIVATE KEY-----\n";
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k",
        "private_key": secret,
        "client_email": CLIENT_EMAIL,
    });
    std::fs::write(&path, json.to_string()).unwrap();
    let toml = format!("[gcs]\nservice_account_key = \"{}\"\n", path.display());
    let settings = Settings::from_toml(&toml, &dir.path().join("whatsapp-host.toml"), &[]).unwrap();
    let err = match UrlSigner::from_settings(settings.gcs.as_ref()) {
        Ok(_) => panic!("a key that is not a key must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("broken.json"), "{err}");
    assert!(!err.contains("not-really-a-key"), "the error shows the key");
}

// ---- gcs_buckets: which buckets an app may sign -------------------------------------------

/// A second app, `shop`, that may sign only its own bucket.
const SHOP: &str = r#"
[apps.shop.WHATSAPP]
account_id = "AC00000000000000000000000000000000"
auth_key = "shop-auth-key"
from_number = "+447911123456"
gcs_buckets = ["shop-media"]
"#;

/// Sends `(to, message, bucket, file)` as `app`.
async fn send_object(host: &Host, app: &str, bucket: &str, file: &str) -> serde_json::Value {
    host.send_as(
        app,
        &format!(
            "utils.sendWhatsappMessage('+39 333 123 4567', 'your file', '{bucket}', '{file}')"
        ),
    )
    .await
}

/// Checks a bucket send was refused with 21620, naming the app, the bucket and the setting,
/// with no URL in the message.
fn assert_bucket_refused(outcome: &serde_json::Value, app: &str, bucket: &str) {
    assert_eq!(outcome["sid"], serde_json::Value::Null, "{outcome}");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["error_code"], 21620, "{outcome}");
    let message = outcome["error_message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "app {app:?} may not sign urls for bucket {bucket:?}"
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("gcs_buckets in [apps.{app}.WHATSAPP]")),
        "{message}"
    );
    assert!(!message.contains("X-Goog-Signature"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_not_in_gcs_buckets_is_refused_and_nothing_is_signed_or_sent() {
    let twilio = TwilioStandIn::start().await;
    let host = Host::with_twilio(&twilio).await;
    let outcome = send_object(&host, APP, "payroll", "2024/march.pdf").await;
    assert_bucket_refused(&outcome, APP, "payroll");

    let tenant = host
        .send(&format!(
            "utils.sendWhatsappMessage('{TENANT_SID}', '{TENANT_SECRET}', '{TENANT_FROM}', '3331234567', 'receipt', 'payroll', 'r/7.pdf')"
        ))
        .await;
    assert_bucket_refused(&tenant, APP, "payroll");

    assert!(host.probes().await.is_empty(), "a signed url was fetched");
    assert!(twilio.requests().await.is_empty(), "twilio got a create");
    host.services.store.flush().await.unwrap();
    let messages = host
        .services
        .store
        .messages(whatsapp_host::store::MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(m.status, "failed");
        assert_eq!(m.error_code.as_deref(), Some("21620"));
        assert_eq!(m.company, COMPANY);
        assert!(m.media.as_deref().unwrap().starts_with("gs://payroll/"));
    }
    assert!(
        messages
            .iter()
            .any(|m| m.account_sid.as_deref() == Some(ACCOUNT_SID))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_signs_only_its_own_buckets_and_none_without_the_list() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        gcs_buckets: Vec::new(),
        extra: SHOP.into(),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    // crm lists no bucket: even the usual ones are refused.
    let outcome = send_object(&host, APP, "tickets", "t-1.pdf").await;
    assert_bucket_refused(&outcome, APP, "tickets");
    let outcome = send_object(&host, APP, "shop-media", "menu.pdf").await;
    assert_bucket_refused(&outcome, APP, "shop-media");
    let outcome = send_object(&host, "shop", "tickets", "t-1.pdf").await;
    assert_bucket_refused(&outcome, "shop", "tickets");
    assert!(twilio.requests().await.is_empty());
    assert!(host.probes().await.is_empty());

    let outcome = send_object(&host, "shop", "shop-media", "menu.pdf").await;
    assert!(outcome["sid"].is_string(), "{outcome}");
    let probes = host.probes().await;
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].url.path(), "/shop-media/menu.pdf");
}

#[test]
fn send_with_a_bucket_outside_gcs_buckets_prints_a_failed_outcome_and_exits_1() {
    let mut config = TestConfig::on_status("").api_base("simulate");
    let key = ServiceAccount::create(config.dir.path());
    config.extra = key.gcs_toml(600, None);
    config.gcs_buckets = vec!["tickets".into()];
    // The signed URL would point at Google; the check must not go there from a test.
    config.media_check = false;
    config.write("127.0.0.1:9".parse().unwrap());
    let send = |bucket: &str| {
        config.run(&[
            "send",
            "--app",
            APP,
            "--to",
            "3331234567",
            "--message",
            "hi",
            "--bucket",
            bucket,
            "--file",
            "a.pdf",
        ])
    };
    let refused = send("payroll");
    assert_eq!(refused.status.code(), Some(1));
    let outcome: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_bucket_refused(&outcome, APP, "payroll");

    let allowed = send("tickets");
    let outcome: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert!(allowed.status.success(), "{outcome}");
    assert!(outcome["sid"].is_string(), "{outcome}");
}
