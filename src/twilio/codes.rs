//! Every error code the host reports, in one table: the Twilio codes it emits itself (for
//! refusals caught before Twilio, so scripts see the code Twilio would have given), its own 9000x
//! codes, and what Twilio's common WhatsApp codes mean, in words an operator can act on.

/// Twilio's code for media over the size limit (16 MB for WhatsApp).
pub(crate) const MEDIA_TOO_LARGE: i64 = 11751;
/// Twilio's code for media of a content type WhatsApp does not accept.
pub(crate) const UNSUPPORTED_MEDIA_TYPE: i64 = 12300;
/// Twilio's code for an invalid `To` number.
pub(crate) const INVALID_TO: i64 = 21211;
/// Twilio's code for an invalid `From` number.
pub(crate) const INVALID_FROM: i64 = 21212;
/// Twilio's code for a body over 1600 characters.
pub(crate) const BODY_TOO_LONG: i64 = 21617;
/// Twilio's code for a media URL that cannot be read; here also one the media check will not
/// fetch (not https, a non-public address, a redirect) or a bucket the app may not sign.
pub(crate) const INVALID_MEDIA_URL: i64 = 21620;
/// Twilio's code for a `ContentSid` that is not a Content template's SID (`HX` + 32 hex
/// digits), or names no template of the sending account.
pub(crate) const INVALID_CONTENT_SID: i64 = 21655;
/// Twilio's code for `ContentVariables` it cannot use: not a JSON object of strings, or a
/// variable null or empty. The host also gives it to a key that is empty and to more variables
/// than the 100 a template may have.
pub(crate) const INVALID_CONTENT_VARIABLES: i64 = 21656;
/// Twilio's code for a free-form message outside the 24-hour window; the simulator's failures
/// carry it.
pub(crate) const OUTSIDE_SESSION_WINDOW: i64 = 63016;

/// This host's code: Twilio could not be reached; nothing was sent.
pub(crate) const UNREACHABLE: i64 = 90001;
/// This host's code: the request timed out; the outcome is unknown.
pub(crate) const TIMED_OUT: i64 = 90002;
/// This host's code: the connection failed after the request was sent.
pub(crate) const TRANSPORT: i64 = 90003;
/// This host's code: Twilio's answer could not be read.
pub(crate) const BAD_RESPONSE: i64 = 90004;

/// Twilio's error codes seen most with WhatsApp, and this host's own, with their meaning.
const MEANINGS: &[(i64, &str)] = &[
    (
        MEDIA_TOO_LARGE,
        "media exceeds the size limit the messaging provider accepts (16 MB for WhatsApp)",
    ),
    (
        UNSUPPORTED_MEDIA_TYPE,
        "invalid Content-Type: the media URL serves a type WhatsApp does not accept",
    ),
    (INVALID_TO, "invalid 'To' phone number"),
    (INVALID_FROM, "invalid 'From' phone number"),
    (
        21408,
        "permission to send to the region of the 'To' number is not enabled on the account (geo permissions)",
    ),
    (
        21610,
        "the recipient has unsubscribed (replied STOP); no message can be sent until they opt in again",
    ),
    (21614, "'To' number is not a valid mobile number"),
    (
        BODY_TOO_LONG,
        "the message body exceeds the 1600 character limit",
    ),
    (
        INVALID_CONTENT_SID,
        "invalid ContentSid: not 'HX' followed by 32 hex digits, or no Content template of the sending account (deleted, mistyped or another account's)",
    ),
    (
        INVALID_CONTENT_VARIABLES,
        "invalid ContentVariables: a template variable is null or empty, a key is empty, there are more than 100, or the value is not a JSON object of strings",
    ),
    (
        INVALID_MEDIA_URL,
        "invalid media URL: it could not be read, is not https, points at a non-public address or redirects, or a Cloud Storage URL could not be signed (or its bucket is not in the app's gcs_buckets)",
    ),
    (
        30003,
        "unreachable destination handset: the phone is off or out of coverage",
    ),
    (
        30005,
        "unknown destination handset: the number does not exist",
    ),
    (
        30006,
        "landline or unreachable carrier: the number cannot receive this message",
    ),
    (
        30007,
        "message filtered by the carrier or WhatsApp (spam or content rules)",
    ),
    (30008, "unknown error from the carrier or WhatsApp"),
    (
        63003,
        "WhatsApp could not find the 'To' address: the number has no WhatsApp account",
    ),
    (
        OUTSIDE_SESSION_WINDOW,
        "outside the 24-hour customer service window: a free-form message needs a reply from the user first; send an approved template instead",
    ),
    (
        63018,
        "rate limit exceeded for the WhatsApp sender; slow down and retry later",
    ),
    (
        63024,
        "invalid message recipient: the number cannot receive WhatsApp messages from this sender",
    ),
    (
        63032,
        "WhatsApp will not deliver to this user because of a WhatsApp limitation (for example, the user's marketing message limit)",
    ),
    (
        63049,
        "Meta chose not to deliver this WhatsApp marketing message, to keep user engagement healthy",
    ),
    (
        UNREACHABLE,
        "this host could not reach Twilio (after retries); nothing was sent",
    ),
    (
        TIMED_OUT,
        "Twilio did not answer in time; the message may still have been sent",
    ),
    (
        TRANSPORT,
        "the connection to Twilio broke after the request was sent; the outcome is unknown",
    ),
    (
        BAD_RESPONSE,
        "Twilio answered success with a body this host could not read",
    ),
];

/// The meaning of an error code, when it is one of the common ones.
pub(crate) fn meaning(code: i64) -> Option<&'static str> {
    MEANINGS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, meaning)| *meaning)
}

/// Like [`meaning`] for a code as stored (callbacks carry it as text).
pub(crate) fn meaning_of(code: &str) -> Option<&'static str> {
    code.trim().parse().ok().and_then(meaning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_host_emits_has_a_meaning() {
        for code in [
            MEDIA_TOO_LARGE,
            UNSUPPORTED_MEDIA_TYPE,
            INVALID_TO,
            INVALID_FROM,
            BODY_TOO_LONG,
            INVALID_MEDIA_URL,
            INVALID_CONTENT_SID,
            INVALID_CONTENT_VARIABLES,
            OUTSIDE_SESSION_WINDOW,
            UNREACHABLE,
            TIMED_OUT,
            TRANSPORT,
            BAD_RESPONSE,
        ] {
            assert!(meaning(code).is_some(), "{code} has no meaning");
        }
    }

    #[test]
    fn common_whatsapp_and_host_codes_have_a_meaning() {
        for code in [
            63016, 63003, 63018, 63024, 63032, 63049, 21211, 21408, 21610, 21614, 21617, 21620,
            21655, 21656, 30003, 30005, 30006, 30007, 30008, 11751, 12300, 90001, 90002, 90003,
            90004,
        ] {
            assert!(meaning(code).is_some(), "{code} has no meaning");
        }
        assert!(meaning_of(" 63016").unwrap().contains("24-hour"));
        assert_eq!(meaning_of("not a code"), None);
        assert_eq!(meaning(12345), None);
    }
}
