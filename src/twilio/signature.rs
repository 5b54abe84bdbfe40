//! `X-Twilio-Signature`: computing it (for the simulator and `simulate-callback`) and checking
//! it the way Twilio's own helper libraries do.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use url::Url;

/// The header Twilio signs every webhook request with.
pub(crate) const HEADER: &str = "x-twilio-signature";

/// `base64(HMAC-SHA1(auth_token, url + each param name and value, names in byte order))`.
///
/// Repeated names contribute each distinct value once, values sorted, as Twilio's libraries do
/// (they collect a name's values in a set): `Digits=5678&Digits=1234&Digits=1234` signs as
/// `Digits1234Digits5678`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a signature against the URL as given, without its port, and with the scheme's
/// default port added: Twilio may sign any of these depending on how the URL was registered.
/// Each comparison is constant-time; stopping at the first match reveals only which public
/// URL variant matched, never anything about the expected signature.
pub fn is_valid(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    url_variants(url).iter().any(|candidate| {
        let expected = sign(auth_token, candidate, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    })
}

fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    let Ok(parsed) = Url::parse(url) else {
        return variants;
    };
    let default_port = match parsed.scheme() {
        "https" => 443,
        "http" => 80,
        _ => return variants,
    };
    // `Url` hides a port equal to the scheme default, so splice the authority by hand.
    let host = parsed.host_str().unwrap_or_default();
    let after_host = |with_port: Option<u16>| {
        let mut s = format!("{}://", parsed.scheme());
        if !parsed.username().is_empty() {
            s.push_str(parsed.username());
            if let Some(p) = parsed.password() {
                s.push(':');
                s.push_str(p);
            }
            s.push('@');
        }
        s.push_str(host);
        if let Some(port) = with_port {
            s.push_str(&format!(":{port}"));
        }
        s.push_str(&url[url_path_start(url)..]);
        s
    };
    let without_port = after_host(None);
    let with_default = after_host(Some(default_port));
    for v in [without_port, with_default] {
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    variants
}

/// Index of the path in a URL string, so the path and query are kept byte for byte.
fn url_path_start(url: &str) -> usize {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variants_cover_port_removed_and_default_added() {
        assert_eq!(
            url_variants("https://a.com/x?y=1"),
            ["https://a.com/x?y=1", "https://a.com:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.com:1234/x"),
            ["http://a.com:1234/x", "http://a.com/x", "http://a.com:80/x"]
        );
        assert_eq!(
            url_variants("https://a.com:443/x"),
            ["https://a.com:443/x", "https://a.com/x"]
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = params(&[("MessageStatus", "sent"), ("MessageSid", "SM1")]);
        let sig = sign("secret", "https://a.com/cb", &p);
        assert!(is_valid("secret", "https://a.com/cb", &p, &sig));
        assert!(is_valid("secret", "https://a.com:443/cb", &p, &sig));
        assert!(!is_valid("other", "https://a.com/cb", &p, &sig));
        assert!(!is_valid("secret", "https://a.com/cb2", &p, &sig));
    }
}
