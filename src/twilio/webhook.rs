//! Twilio's incoming webhooks: decoding the form, the URL Twilio signs and the signature check,
//! the headers Twilio sends, the empty TwiML answer, status ranks, and the typed
//! [`StatusCallback`] (which also carries an inbound message: the "a message comes in" webhook).
//! Everything else reads callbacks through this module, never by field name.

use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};

use super::{address, signature};

/// The header Twilio sets to the same value on every retry of one webhook request.
pub(crate) const IDEMPOTENCY_HEADER: &str = "i-twilio-idempotency-token";

/// The empty TwiML answer: valid for status callbacks and for incoming-message webhooks.
pub(crate) const EMPTY_TWIML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

const MESSAGE_SID: &str = "MessageSid";
const MESSAGE_STATUS: &str = "MessageStatus";
const ERROR_CODE: &str = "ErrorCode";
const TO: &str = "To";
const FROM: &str = "From";
const ACCOUNT_SID: &str = "AccountSid";
const SMS_STATUS: &str = "SmsStatus";
const BODY: &str = "Body";
const PROFILE_NAME: &str = "ProfileName";
const WA_ID: &str = "WaId";
const NUM_MEDIA: &str = "NumMedia";
const MEDIA_URL: &str = "MediaUrl";
const MEDIA_CONTENT_TYPE: &str = "MediaContentType";

/// The status of a message a contact sent to the app's number: what Twilio's incoming-message
/// webhook carries as `SmsStatus`, and what an inbound message row keeps.
pub(crate) const RECEIVED: &str = "received";

/// Most media one inbound message may name; WhatsApp allows one, MMS ten. A larger `NumMedia`
/// reads as this many, so a forged count cannot make a reader loop.
const MAX_MEDIA: usize = 20;

/// How far along a message is. Statuses only move to a higher rank; failed and undelivered are
/// final. Twilio does not promise callback order, so a late `sent` after `read` changes nothing.
pub(crate) fn status_rank(status: &str) -> i64 {
    match status {
        "accepted" | "scheduled" => 1,
        "queued" => 2,
        "sending" => 3,
        "sent" => 4,
        "delivered" => 5,
        "read" => 6,
        "failed" | "undelivered" | "canceled" => 10,
        // An inbound message is final when it arrives: no status callback moves it.
        RECEIVED => 10,
        _ => 0,
    }
}

/// A status callback as Twilio posted it: the values the host acts on, read once here, and
/// every field as sent, for the action's `vo`.
///
/// When a name is repeated, its first value wins, as in Twilio's own helper libraries and most
/// form parsers; [`message_sid`] reads the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StatusCallback {
    /// `MessageSid`: the message the event is about.
    pub(crate) sid: Option<String>,
    /// `MessageStatus`, as Twilio spells it (`sent`, `delivered`, …).
    pub(crate) status: Option<String>,
    /// `ErrorCode`, as text, as Twilio sends it.
    pub(crate) error_code: Option<String>,
    /// `To`, without the `whatsapp:` channel prefix.
    pub(crate) to: Option<String>,
    /// `From`, without the `whatsapp:` channel prefix.
    pub(crate) from: Option<String>,
    /// `AccountSid`: the Twilio project that sent the message, whose token signs the callback.
    pub(crate) account_sid: Option<String>,
    /// `SmsStatus`: the only status an incoming-message webhook carries (`received`).
    pub(crate) sms_status: Option<String>,
    /// Every field in the order received.
    pub(crate) fields: Vec<(String, String)>,
}

impl StatusCallback {
    /// Reads the typed values from decoded form fields; missing ones are `None`.
    pub(crate) fn from_fields(fields: Vec<(String, String)>) -> Self {
        let value = |name| first(&fields, name).map(str::to_string);
        let number = |name| first(&fields, name).map(|v| address::strip_channel(v).to_string());
        StatusCallback {
            sid: value(MESSAGE_SID),
            status: value(MESSAGE_STATUS),
            error_code: value(ERROR_CODE),
            to: number(TO),
            from: number(FROM),
            account_sid: value(ACCOUNT_SID),
            sms_status: value(SMS_STATUS),
            fields,
        }
    }

    /// Whether this post is a message a contact sent to the app's number rather than a status
    /// callback. Admins often paste one URL into both of Twilio's console fields, so either route
    /// may receive either: a `MessageStatus` other than `received` is a status callback wherever
    /// it is posted; otherwise a post to the inbound route, or one whose status is `received`,
    /// is an inbound message.
    pub(crate) fn is_inbound(&self, on_inbound_route: bool) -> bool {
        match self.status.as_deref() {
            Some(status) => status == RECEIVED,
            None => on_inbound_route || self.sms_status.as_deref() == Some(RECEIVED),
        }
    }

    /// What an inbound message carries beyond a status callback's values.
    pub(crate) fn inbound(&self) -> Inbound {
        let value = |name| first(&self.fields, name).map(str::to_string);
        Inbound {
            body: value(BODY),
            profile_name: value(PROFILE_NAME),
            wa_id: value(WA_ID),
            media: inbound_media(&self.fields),
        }
    }

    /// Decodes a callback body strictly (see [`parse_form`]) and reads it.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, FormError> {
        parse_form(body).map(Self::from_fields)
    }
}

/// An inbound message's own fields, read once here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Inbound {
    /// `Body`: the text the contact wrote (a button's text for a button reply).
    pub(crate) body: Option<String>,
    /// `ProfileName`: the sender's WhatsApp profile name.
    pub(crate) profile_name: Option<String>,
    /// `WaId`: the sender's WhatsApp id (their number without `+`).
    pub(crate) wa_id: Option<String>,
    /// `(url, content type)` of each attachment, in order; see [`inbound_media`].
    pub(crate) media: Vec<(String, String)>,
}

/// The attachments of an inbound message's fields, as `(url, content type)` in order: `NumMedia`
/// says how many, `MediaUrlN` and `MediaContentTypeN` (N from 0) give each. An entry without a
/// URL is skipped; a missing content type is empty.
pub(crate) fn inbound_media(fields: &[(String, String)]) -> Vec<(String, String)> {
    let count = first(fields, NUM_MEDIA)
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_MEDIA);
    (0..count)
        .filter_map(|i| {
            let url = first(fields, &format!("{MEDIA_URL}{i}"))?;
            let content_type = first(fields, &format!("{MEDIA_CONTENT_TYPE}{i}")).unwrap_or("");
            Some((url.to_string(), content_type.to_string()))
        })
        .collect()
}

/// The message sid of stored callback fields, read as [`StatusCallback`] reads it.
pub(crate) fn message_sid(fields: &[(String, String)]) -> Option<&str> {
    first(fields, MESSAGE_SID)
}

fn first<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The URL Twilio signed: the public origin (`scheme://host[:port]` of `public_url`) joined with
/// the path and query the request arrived on, byte for byte.
pub(crate) fn signed_url(origin: &str, path_and_query: &str) -> String {
    format!("{origin}{path_and_query}")
}

/// The `X-Twilio-Signature` header, when present and readable.
pub(crate) fn signature(headers: &HeaderMap) -> Option<&str> {
    header(headers, signature::HEADER)
}

/// The `I-Twilio-Idempotency-Token` header, when present and readable.
pub(crate) fn idempotency_token(headers: &HeaderMap) -> Option<&str> {
    header(headers, IDEMPOTENCY_HEADER)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `signature` is Twilio's signature of `url` and `fields` under the account's auth
/// token. A missing signature is never valid.
pub(crate) fn is_signed(
    auth_token: &SecretString,
    url: &str,
    fields: &[(String, String)],
    signature: Option<&str>,
) -> bool {
    signature.is_some_and(|sig| signature::is_valid(auth_token.expose_secret(), url, fields, sig))
}

/// Why a webhook body is not a form Twilio could have sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FormError(String);

/// Decodes `application/x-www-form-urlencoded` strictly: invalid percent escapes or UTF-8 are
/// errors, not replacement characters, so what is stored is exactly what Twilio signed.
pub(crate) fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let text = std::str::from_utf8(body).map_err(|_| FormError("it is not UTF-8".to_string()))?;
    let decode = |s: &str| -> Result<String, FormError> {
        let plus = s.replace('+', " ");
        let bytes = plus.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        FormError(format!("bad percent escape near {:?}", truncate(s, 40)))
                    })?;
                out.push(hex);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out)
            .map_err(|_| FormError(format!("{:?} decodes to invalid UTF-8", truncate(s, 40))))
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_strict() {
        assert_eq!(
            parse_form(b"A=1&B=a+b%21&C=").unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "a b!".into()),
                ("C".into(), "".into())
            ]
        );
        assert!(parse_form(b"A=%zz").is_err());
        assert!(parse_form(b"A=%ff").is_err());
        assert!(parse_form(&[0x41, 0x3d, 0xff]).is_err());
    }

    #[test]
    fn a_status_callback_reads_its_values_and_keeps_every_field() {
        let body = b"MessageStatus=undelivered&To=whatsapp%3A%2B393331234567\
            &From=whatsapp%3A%2B14155238886&MessageSid=SM1&ErrorCode=63016&AccountSid=AC1";
        let callback = StatusCallback::parse(body).unwrap();
        assert_eq!(callback.sid.as_deref(), Some("SM1"));
        assert_eq!(callback.status.as_deref(), Some("undelivered"));
        assert_eq!(callback.error_code.as_deref(), Some("63016"));
        assert_eq!(callback.to.as_deref(), Some("+393331234567"));
        assert_eq!(callback.from.as_deref(), Some("+14155238886"));
        assert_eq!(callback.account_sid.as_deref(), Some("AC1"));
        assert_eq!(callback.fields.len(), 6);
        assert_eq!(
            callback.fields[1].1, "whatsapp:+393331234567",
            "raw as sent"
        );

        let bare = StatusCallback::parse(b"AccountSid=AC1").unwrap();
        assert_eq!((bare.sid, bare.status, bare.error_code), (None, None, None));
        assert_eq!(bare.account_sid.as_deref(), Some("AC1"));
        assert_eq!(
            StatusCallback::parse(b"MessageSid=SM1")
                .unwrap()
                .account_sid,
            None
        );
    }

    #[test]
    fn a_repeated_message_sid_reads_as_its_first_value_everywhere() {
        let callback =
            StatusCallback::parse(b"MessageSid=SM1&MessageStatus=sent&MessageSid=SM2").unwrap();
        assert_eq!(callback.sid.as_deref(), Some("SM1"));
        assert_eq!(message_sid(&callback.fields), Some("SM1"));
    }

    #[test]
    fn a_signature_is_checked_against_the_public_origin_and_the_path_as_received() {
        let token = SecretString::from("secret");
        let url = signed_url(
            "https://hooks.example.com",
            "/whatsapp/callback/crm/ACME?x=1",
        );
        assert_eq!(
            url,
            "https://hooks.example.com/whatsapp/callback/crm/ACME?x=1"
        );
        let fields = vec![("MessageSid".to_string(), "SM1".to_string())];
        let sig = signature::sign("secret", &url, &fields);
        assert!(is_signed(&token, &url, &fields, Some(&sig)));
        assert!(!is_signed(&token, &url, &fields, None));
        assert!(!is_signed(&token, &url, &fields, Some("forged")));

        let mut headers = HeaderMap::new();
        headers.insert(signature::HEADER, sig.parse().unwrap());
        let as_twilio_spells_it = http::HeaderName::from_bytes(b"I-Twilio-Idempotency-Token");
        headers.insert(as_twilio_spells_it.unwrap(), "tok".parse().unwrap());
        assert_eq!(signature(&headers), Some(sig.as_str()));
        assert_eq!(idempotency_token(&headers), Some("tok"));
    }

    #[test]
    fn an_inbound_message_reads_its_fields_and_media_in_order() {
        let body = b"SmsStatus=received&MessageSid=MM1&AccountSid=AC1\
            &From=whatsapp%3A%2B393331234567&To=whatsapp%3A%2B14155238886&Body=the+receipt\
            &ProfileName=Ana&WaId=393331234567&NumMedia=2\
            &MediaUrl1=https%3A%2F%2Fm%2F1&MediaContentType1=application%2Fpdf\
            &MediaUrl0=https%3A%2F%2Fm%2F0&MediaContentType0=image%2Fjpeg";
        let callback = StatusCallback::parse(body).unwrap();
        assert_eq!(callback.from.as_deref(), Some("+393331234567"));
        assert_eq!(callback.status, None);
        let inbound = callback.inbound();
        assert_eq!(inbound.body.as_deref(), Some("the receipt"));
        assert_eq!(inbound.profile_name.as_deref(), Some("Ana"));
        assert_eq!(inbound.wa_id.as_deref(), Some("393331234567"));
        assert_eq!(
            inbound.media,
            [
                ("https://m/0".to_string(), "image/jpeg".to_string()),
                ("https://m/1".to_string(), "application/pdf".to_string())
            ]
        );
        let counted = |n: &str| {
            let mut fields = vec![("NumMedia".to_string(), n.to_string())];
            fields.push(("MediaUrl0".into(), "https://m/0".into()));
            inbound_media(&fields).len()
        };
        assert_eq!((counted("0"), counted("x"), counted("99999999")), (0, 0, 1));
    }

    #[test]
    fn either_route_tells_an_inbound_message_from_a_status_callback() {
        let post = |fields: &[(&str, &str)]| {
            StatusCallback::from_fields(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let inbound = post(&[("SmsStatus", "received"), ("MessageSid", "SM1")]);
        let status = post(&[("SmsStatus", "sent"), ("MessageStatus", "sent")]);
        let received = post(&[("MessageStatus", "received")]);
        let bare = post(&[("MessageSid", "SM1")]);
        for on_inbound_route in [false, true] {
            assert!(inbound.is_inbound(on_inbound_route));
            assert!(received.is_inbound(on_inbound_route));
            assert!(!status.is_inbound(on_inbound_route));
        }
        assert!(bare.is_inbound(true));
        assert!(!bare.is_inbound(false));
    }

    #[test]
    fn statuses_rank_forward_and_failures_are_final() {
        let order = ["queued", "sending", "sent", "delivered", "read", "failed"];
        assert!(
            order
                .windows(2)
                .all(|w| status_rank(w[0]) < status_rank(w[1]))
        );
        assert_eq!(status_rank("undelivered"), status_rank("failed"));
        assert_eq!(status_rank(RECEIVED), status_rank("failed"), "never moved");
        assert_eq!(status_rank("something new"), 0);
    }
}
