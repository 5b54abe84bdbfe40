//! Media: the only module that talks to Cloud Storage (V4 signed URLs, signed locally) and that
//! probes media URLs for the size and type WhatsApp will accept, over https, to public addresses
//! only, without following redirects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::signer::Signer;
use google_cloud_storage::builder::storage::SignedUrlBuilder;
use reqwest::{header, redirect};
use url::{Host, Url};

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
    #[error("media url {url} must use https (set [media] allow_local = true for local stand-ins)")]
    NotHttps { url: String },
    #[error(
        "media url {url} resolves to {address}, {kind}; only public addresses are fetched (set [media] allow_local = true for local stand-ins)"
    )]
    NonPublicAddress {
        url: String,
        address: IpAddr,
        kind: AddressKind,
    },
    #[error(
        "media url {url} redirects to {location}; redirects are not followed: pass the final url"
    )]
    Redirected { url: String, location: String },
    #[error(
        "app {app:?} may not sign urls for bucket {bucket:?}: add it to gcs_buckets in [apps.{app}.WHATSAPP]"
    )]
    BucketNotAllowed { app: String, bucket: String },
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
pub(crate) struct MediaInfo {
    pub(crate) size: Option<u64>,
    pub(crate) content_type: Option<String>,
}

/// Reads the first byte of a media URL to learn its size and type before Twilio fetches it.
///
/// The URL comes from a script, so the probe must not become a way to read the host's own
/// network. It has its own client (not Twilio's), which follows no redirect and, unless
/// `[media] allow_local` is on, accepts only https, uses no proxy and resolves names through
/// `PublicOnly`, so it connects only to addresses that passed the check; IP literals, which are
/// never resolved, are checked before the request.
#[derive(Clone)]
pub(crate) struct Probe {
    http: reqwest::Client,
    max_bytes: u64,
    timeout: Duration,
    /// `[media] allow_local`: plain http and any address, for local stand-ins.
    allow_local: bool,
}

impl Probe {
    /// Builds the probe and its client from `[media]`; `timeout` bounds each probe.
    pub(crate) fn new(media: &settings::Media, timeout: Duration) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("whatsapp-host/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(redirect::Policy::none());
        if !media.allow_local {
            // A proxy would resolve the name itself, out of the resolver's reach.
            builder = builder
                .https_only(true)
                .no_proxy()
                .dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            http: builder.build()?,
            max_bytes: media.max_bytes,
            timeout,
            allow_local: media.allow_local,
        })
    }

    /// Fails when the URL is not https, points at a non-public address, redirects, or is
    /// unreadable, too large or of a type WhatsApp refuses.
    pub(crate) async fn check(&self, url: &str) -> Result<MediaInfo, MediaError> {
        let unreadable = |detail: String| MediaError::Unreadable {
            url: redact_query(url),
            detail,
        };
        if !self.allow_local {
            check_target(url)?;
        }
        let response = self
            .http
            .get(url)
            .header(header::RANGE, "bytes=0-0")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| match refusal_in(&e) {
                Some(refused) => MediaError::NonPublicAddress {
                    url: redact_query(url),
                    address: refused.address,
                    kind: refused.kind,
                },
                None => unreadable(e.without_url().to_string()),
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "an unnamed location".to_string(), redact_query);
            return Err(MediaError::Redirected {
                url: redact_query(url),
                location,
            });
        }
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

/// The rules that need no DNS: https only, and an IP-literal host must be public (the
/// resolver never sees literals, so this is their only check).
fn check_target(url: &str) -> Result<(), MediaError> {
    let parsed = Url::parse(url).map_err(|_| MediaError::Unreadable {
        url: redact_query(url),
        detail: "it is not a url".into(),
    })?;
    if parsed.scheme() != "https" {
        return Err(MediaError::NotHttps {
            url: redact_query(url),
        });
    }
    let address = match parsed.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match classify(address) {
        Some(kind) => Err(MediaError::NonPublicAddress {
            url: redact_query(url),
            address,
            kind,
        }),
        None => Ok(()),
    }
}

/// Why an address is not fetched: what it is, in words for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Loopback,
    /// RFC 1918 and IPv6 unique local (fc00::/7).
    Private,
    /// 169.254/16 and fe80::/10.
    LinkLocal,
    /// Cloud instance metadata: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// 0.0.0.0/8 and `::`.
    Unspecified,
    Broadcast,
    /// Carrier-grade NAT, 100.64/10.
    Shared,
    Multicast,
    /// Documentation, benchmarking, IETF protocol and future-use ranges.
    Reserved,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Loopback => "a loopback address",
            AddressKind::Private => "a private address",
            AddressKind::LinkLocal => "a link-local address",
            AddressKind::Metadata => "a cloud metadata address",
            AddressKind::Unspecified => "an unspecified address",
            AddressKind::Broadcast => "a broadcast address",
            AddressKind::Shared => "a shared (carrier-grade NAT) address",
            AddressKind::Multicast => "a multicast address",
            AddressKind::Reserved => "a reserved address",
        })
    }
}

/// Cloud metadata services, named before the wider ranges they sit in.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// `None` for a public address; otherwise what it is. IPv6 addresses that carry an IPv4 one
/// (`::ffff:10.0.0.1`, NAT64's `64:ff9b::10.0.0.1`) are judged by that IPv4 address.
pub(crate) fn classify(address: IpAddr) -> Option<AddressKind> {
    match address {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    let [a, b, c, _] = ip.octets();
    Some(if ip == METADATA_V4 {
        AddressKind::Metadata
    } else if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_private() {
        AddressKind::Private
    } else if ip.is_link_local() {
        AddressKind::LinkLocal
    } else if a == 0 {
        AddressKind::Unspecified
    } else if ip.is_broadcast() {
        AddressKind::Broadcast
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressKind::Shared
    } else if ip.is_multicast() {
        AddressKind::Multicast
    } else if ip.is_documentation()
        || a >= 240
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 0 && c == 0)
    {
        AddressKind::Reserved
    } else {
        return None;
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressKind> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // Forms that carry an IPv4 address, judged as that address: NAT64 (64:ff9b::/96 and the
    // local-use 64:ff9b:1::/48) and 6to4 (2002::/16). Teredo (2001::/32) tunnels to an address
    // that can't be checked here, so it is never fetched.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return classify_v4(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(v4(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(AddressKind::Reserved);
    }
    Some(if ip == METADATA_V6 {
        AddressKind::Metadata
    } else if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_unspecified() {
        AddressKind::Unspecified
    } else if ip.is_unique_local() {
        AddressKind::Private
    } else if ip.is_unicast_link_local() {
        AddressKind::LinkLocal
    } else if ip.is_multicast() {
        AddressKind::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xffc0) == 0xfec0 || s[0] == 0 {
        // Documentation, deprecated site-local, and the rest of ::/16 (IPv4-compatible).
        AddressKind::Reserved
    } else {
        return None;
    })
}

/// The probe's resolver: resolves with the system's resolver, then refuses the name when any
/// address it has is not public, so the connection can only go to an address that was checked.
#[derive(Debug)]
struct PublicOnly;

/// A name refused by [`PublicOnly`]; found again in reqwest's error chain by [`refusal_in`].
#[derive(Debug, thiserror::Error)]
#[error("{address} is {kind}")]
struct Refused {
    address: IpAddr,
    kind: AddressKind,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(refused) = addrs.iter().find_map(|a| {
                classify(a.ip()).map(|kind| Refused {
                    address: a.ip(),
                    kind,
                })
            }) {
                return Err(refused.into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver's refusal, when that is why a request failed.
fn refusal_in(error: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// `bytes 0-0/17825792` → 17825792. An unknown total (`*`) gives `None`.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// Images, audio, video, PDF and office documents: what WhatsApp delivers as media.
pub(crate) fn is_accepted_type(content_type: &str) -> bool {
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
pub(crate) fn redact_query(url: &str) -> String {
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
    pub(crate) path: String,
    pub(crate) detail: String,
}

impl UrlSigner {
    /// A signer that refuses every request with a message saying how to configure one.
    pub(crate) fn disabled() -> Self {
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

    pub(crate) fn is_configured(&self) -> bool {
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
    fn addresses_inside_the_network_are_classified_and_public_ones_pass() {
        use AddressKind::*;
        let cases = [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.5.4", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("255.255.255.255", Some(Broadcast)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.254", Some(Shared)),
            ("224.0.0.1", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.2.7", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("192.0.0.170", Some(Reserved)),
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Reserved)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("64:ff9b::a00:1", Some(Private)),
            ("64:ff9b:1::a9fe:a9fe", Some(Metadata)),
            ("2002:a9fe:a9fe::", Some(Metadata)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:808:808::1", None),
            ("2001:0:4136:e378::1", Some(Reserved)),
            ("::127.0.0.1", Some(Reserved)),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("172.32.0.1", None),
            ("142.250.180.14", None),
            ("2a00:1450:4002:400::200e", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
        ];
        for (text, expected) in cases {
            let address: IpAddr = text.parse().unwrap();
            assert_eq!(classify(address), expected, "{text}");
        }
    }

    #[test]
    fn only_https_urls_to_public_literals_pass_the_first_check() {
        assert!(check_target("https://media.example.com/a.jpg").is_ok());
        assert!(check_target("https://8.8.8.8/a.jpg").is_ok());
        let err = check_target("http://media.example.com/a.jpg?token=abc").unwrap_err();
        assert!(matches!(err, MediaError::NotHttps { .. }), "{err}");
        assert!(err.to_string().contains("must use https"), "{err}");
        assert!(!err.to_string().contains("token=abc"), "{err}");
        // WHATWG parsing turns these spellings into IPv4 literals, as reqwest will.
        for url in [
            "https://0x7f000001/a",
            "https://2130706433/a",
            "https://127.1/a",
            "https://[::ffff:127.0.0.1]/a",
        ] {
            let err = check_target(url).unwrap_err();
            assert!(
                matches!(
                    err,
                    MediaError::NonPublicAddress {
                        kind: AddressKind::Loopback,
                        ..
                    }
                ),
                "{url}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        let media = settings::Media {
            check: true,
            max_bytes: 1,
            allow_local: false,
        };
        let probe = Probe::new(&media, Duration::from_secs(5)).unwrap();
        let err = probe.check("https://localhost:9/a.jpg").await.unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::NonPublicAddress {
                    kind: AddressKind::Loopback,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("a loopback address"), "{err}");
    }

    #[test]
    fn signed_url_queries_are_redacted() {
        assert_eq!(
            redact_query("https://s/b/o?X-Goog-Signature=abc"),
            "https://s/b/o?…"
        );
    }
}
