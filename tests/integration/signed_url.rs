//! Cloud Storage V4 signed URLs: made with a key generated at run time, then checked against
//! Google's documented V4 algorithm rebuilt here independently, down to the RSA signature.

use std::path::Path;

use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::{Digest, Sha256};
use rsa::signature::Verifier;
use url::Url;
use whatsapp_host::media::UrlSigner;
use whatsapp_host::settings::Settings;

use crate::helpers::stand_ins::{CLIENT_EMAIL, ServiceAccount};

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
