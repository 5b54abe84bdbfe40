//! `X-Twilio-Signature` against the examples from Twilio's own helper libraries, kept in
//! `../shared/twilio/signature_examples.json`: what those libraries accept, we accept.

use serde_json::Value;
use whatsapp_host::twilio::signature::{is_valid, sign};

use crate::helpers::repo_root;

struct Example {
    id: String,
    auth_token: String,
    url: String,
    params: Vec<(String, String)>,
    signature: String,
}

/// Reads one list of examples; an array value becomes the same name repeated, as in a form.
fn examples(list: &str) -> Vec<Example> {
    let file = repo_root().join("../shared/twilio/signature_examples.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", file.display()));
    let json: Value = serde_json::from_str(&text).expect("examples file is JSON");
    let examples = json[list].as_array().expect("a list of examples");
    assert!(
        !examples.is_empty(),
        "no {list} examples in {}",
        file.display()
    );
    examples
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().expect(key).to_string();
            let mut params = Vec::new();
            for (name, value) in e["params"].as_object().expect("params") {
                match value {
                    Value::Array(values) => params.extend(
                        values
                            .iter()
                            .map(|v| (name.clone(), v.as_str().expect("string").to_string())),
                    ),
                    v => params.push((name.clone(), v.as_str().expect("string").to_string())),
                }
            }
            Example {
                id: text("id"),
                auth_token: text("auth_token"),
                url: text("url"),
                params,
                signature: text("expected_signature"),
            }
        })
        .collect()
}

/// The URL with the scheme's default port added: what Twilio signed in the `*_add_*` examples.
fn with_default_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("an absolute URL");
    let port = if scheme == "https" { 443 } else { 80 };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    format!("{scheme}://{}:{port}{}", &rest[..split], &rest[split..])
}

#[test]
fn every_valid_example_validates() {
    for e in examples("valid") {
        assert!(
            is_valid(&e.auth_token, &e.url, &e.params, &e.signature),
            "example {} should validate",
            e.id
        );
    }
}

#[test]
fn the_invalid_example_does_not_validate() {
    for e in examples("invalid") {
        assert!(
            !is_valid(&e.auth_token, &e.url, &e.params, &e.signature),
            "example {} should not validate",
            e.id
        );
    }
}

#[test]
fn sign_reproduces_each_expected_signature() {
    for e in examples("valid") {
        // Twilio signed either the URL as given or, in the default-port examples, the URL with
        // that port added; `sign` must produce the same bytes for whichever it was.
        let as_given = sign(&e.auth_token, &e.url, &e.params);
        let with_port = sign(&e.auth_token, &with_default_port(&e.url), &e.params);
        let expected_with_port = e.id.ends_with("_add_443") || e.id.ends_with("_add_80");
        if expected_with_port {
            assert_eq!(with_port, e.signature, "example {} with its port", e.id);
            assert_ne!(as_given, e.signature, "example {} as given", e.id);
        } else {
            assert_eq!(as_given, e.signature, "example {} as given", e.id);
        }
    }
}

#[test]
fn repeated_values_are_signed_in_sorted_order_whatever_order_they_arrive_in() {
    let e = examples("valid")
        .into_iter()
        .find(|e| e.id == "duplicate_multi_values")
        .expect("the repeated-values example");
    let mut reversed = e.params.clone();
    reversed.reverse();
    assert!(is_valid(&e.auth_token, &e.url, &reversed, &e.signature));
    assert_eq!(sign(&e.auth_token, &e.url, &reversed), e.signature);
}

#[test]
fn a_changed_url_param_or_token_invalidates_a_valid_example() {
    for e in examples("valid") {
        let other_url = e.url.replace("myapp.php", "other.php");
        assert!(
            !is_valid(&e.auth_token, &other_url, &e.params, &e.signature),
            "example {} on another path",
            e.id
        );
        let mut other_params = e.params.clone();
        other_params[0].1.push('0');
        assert!(
            !is_valid(&e.auth_token, &e.url, &other_params, &e.signature),
            "example {} with a changed value",
            e.id
        );
        assert!(
            !is_valid("54321", &e.url, &e.params, &e.signature),
            "example {} with another token",
            e.id
        );
    }
}
