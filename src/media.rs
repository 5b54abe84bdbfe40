//! Media: the only module that talks to Cloud Storage (V4 signed URLs, signed locally) and that
//! probes media URLs for the size and type WhatsApp will accept.

use std::time::Duration;

use google_cloud_auth::signer::Signer;
use google_cloud_storage::builder::storage::SignedUrlBuilder;
use reqwest::header;

use crate::settings;

/// No Cloud Storage key is configured, so no URL can be signed: a settings problem, which a
/// script sees as a thrown error rather than a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot sign cloud storage urls: no service account key is configured; set [gcs] service_account_key in the settings file or GOOGLE_APPLICATION_CREDENTIALS"
)]
pub struct NoSigner;

/// Why media was refused before any Twilio call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    #[error("media at {url} is {size} bytes, over the {limit}-byte limit WhatsApp accepts")]
    TooLarge { url: String, size: u64, limit: u64 },
    #[error(
        "media at {url} has content type {content_type:?}, which WhatsApp does not accept: send an image, audio, video, PDF or office document"
    )]
    UnsupportedType { url: String, content_type: String },
    #[error("media at {url} could not be read: {detail}")]
    Unreadable { url: String, detail: String },
    #[error(transparent)]
    NoSigner(#[from] NoSigner),
    #[error("failed to sign a url for gs://{bucket}/{object}: {detail}")]
    Signing {
        bucket: String,
        object: String,
        detail: String,
    },
}

/// What a probe learned about a media URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub size: Option<u64>,
    pub content_type: Option<String>,
}

/// Reads the first byte of a media URL to learn its size and type before Twilio fetches it.
#[derive(Clone)]
pub struct Probe {
    http: reqwest::Client,
    max_bytes: u64,
    timeout: Duration,
}

impl Probe {
    pub fn new(http: reqwest::Client, max_bytes: u64, timeout: Duration) -> Self {
        Self {
            http,
            max_bytes,
            timeout,
        }
    }

    /// Fails when the URL is unreadable, too large or of a type WhatsApp refuses.
    pub async fn check(&self, url: &str) -> Result<MediaInfo, MediaError> {
        let unreadable = |detail: String| MediaError::Unreadable {
            url: redact_query(url),
            detail,
        };
        let response = self
            .http
            .get(url)
            .header(header::RANGE, "bytes=0-0")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| unreadable(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unreadable(format!("it answered HTTP {status}")));
        }
        let headers = response.headers();
        let size = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(total_from_content_range)
            .or_else(|| {
                (status == reqwest::StatusCode::OK)
                    .then(|| response.content_length())
                    .flatten()
            });
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if let Some(size) = size
            && size > self.max_bytes
        {
            return Err(MediaError::TooLarge {
                url: redact_query(url),
                size,
                limit: self.max_bytes,
            });
        }
        if let Some(ct) = &content_type
            && !is_accepted_type(ct)
        {
            return Err(MediaError::UnsupportedType {
                url: redact_query(url),
                content_type: ct.clone(),
            });
        }
        Ok(MediaInfo { size, content_type })
    }
}

/// `bytes 0-0/17825792` → 17825792. An unknown total (`*`) gives `None`.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// Images, audio, video, PDF and office documents: what WhatsApp delivers as media.
pub fn is_accepted_type(content_type: &str) -> bool {
    let (kind, subtype) = content_type.split_once('/').unwrap_or((content_type, ""));
    match kind {
        "image" | "audio" | "video" => true,
        "application" => {
            subtype == "pdf"
                || subtype == "msword"
                || subtype == "vnd.ms-excel"
                || subtype == "vnd.ms-powerpoint"
                || subtype.starts_with("vnd.openxmlformats-officedocument.")
                || subtype.starts_with("vnd.oasis.opendocument.")
        }
        _ => false,
    }
}

/// Signed URLs carry a signature in their query; keep it out of errors and logs.
pub fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

/// Makes temporary V4 signed GET URLs for Cloud Storage objects, signing locally with a
/// service-account key so no network call is needed.
#[derive(Clone)]
pub struct UrlSigner {
    signer: Option<Signer>,
    ttl: Duration,
    endpoint: Option<String>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("configured", &self.signer.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why the `[gcs]` key could not be loaded. Never includes the key's contents.
#[derive(Debug, thiserror::Error)]
#[error("failed to load the cloud storage service account key {path}: {detail}")]
pub struct SignerLoadError {
    pub path: String,
    pub detail: String,
}

impl UrlSigner {
    /// A signer that refuses every request with a message saying how to configure one.
    pub fn disabled() -> Self {
        Self {
            signer: None,
            ttl: Duration::from_secs(3600),
            endpoint: None,
        }
    }

    /// Loads the service-account key named in `[gcs]`.
    pub fn from_settings(gcs: Option<&settings::Gcs>) -> Result<Self, SignerLoadError> {
        let Some(gcs) = gcs else {
            return Ok(Self::disabled());
        };
        let path = gcs.service_account_key.display().to_string();
        let fail = |detail: String| SignerLoadError {
            path: path.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&gcs.service_account_key)
            .map_err(|e| fail(format!("{e}; check [gcs] service_account_key")))?;
        let key: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| fail("it is not a JSON service account key".into()))?;
        if key.get("private_key").is_none() || key.get("client_email").is_none() {
            return Err(fail(
                "it has no private_key or client_email: download a JSON key for a service account"
                    .into(),
            ));
        }
        let signer = google_cloud_auth::credentials::service_account::Builder::new(key)
            .build_signer()
            .map_err(|_| fail("the key could not be used for signing".into()))?;
        // The builder only stores the PEM; signing once parses it, so a broken key fails here,
        // at load, and not on every bucket send. Local signing does no I/O, so no runtime is needed.
        futures::executor::block_on(signer.sign(b"whatsapp-host key check")).map_err(|_| {
            fail("its private_key is not a PKCS#8 RSA key: download a new JSON key".into())
        })?;
        Ok(Self {
            signer: Some(signer),
            ttl: gcs.signed_url_ttl,
            endpoint: gcs.endpoint.clone(),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.signer.is_some()
    }

    /// A GET URL for `gs://bucket/object` valid for the configured time.
    pub async fn signed_get_url(&self, bucket: &str, object: &str) -> Result<String, MediaError> {
        let signer = self.signer.as_ref().ok_or(NoSigner)?;
        let mut builder =
            SignedUrlBuilder::for_object(format!("projects/_/buckets/{bucket}"), object)
                .with_method(http::Method::GET)
                .with_expiration(self.ttl);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder
            .sign_with(signer)
            .await
            .map_err(|e| MediaError::Signing {
                bucket: bucket.to_string(),
                object: object.to_string(),
                detail: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total_is_read() {
        assert_eq!(
            total_from_content_range("bytes 0-0/17825792"),
            Some(17825792)
        );
        assert_eq!(total_from_content_range("bytes 0-0/*"), None);
    }

    #[test]
    fn whatsapp_types_are_accepted_and_web_pages_are_not() {
        for ok in [
            "image/jpeg",
            "audio/ogg",
            "video/mp4",
            "application/pdf",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/msword",
        ] {
            assert!(is_accepted_type(ok), "{ok}");
        }
        for bad in ["text/html", "application/json", "application/zip", "text"] {
            assert!(!is_accepted_type(bad), "{bad}");
        }
    }

    #[test]
    fn signed_url_queries_are_redacted() {
        assert_eq!(
            redact_query("https://s/b/o?X-Goog-Signature=abc"),
            "https://s/b/o?…"
        );
    }
}
