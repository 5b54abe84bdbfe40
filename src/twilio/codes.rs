//! What Twilio's common WhatsApp error codes mean, and this host's own 9000x codes, in words an
//! operator can act on. Twilio's console explains every code; these are the ones seen most.

use super::host_codes;

/// Twilio's error codes seen most with WhatsApp, and this host's own, with their meaning.
const MEANINGS: &[(i64, &str)] = &[
    (
        11751,
        "media exceeds the size limit the messaging provider accepts (16 MB for WhatsApp)",
    ),
    (
        12300,
        "invalid Content-Type: the media URL serves a type WhatsApp does not accept",
    ),
    (21211, "invalid 'To' phone number"),
    (21212, "invalid 'From' phone number"),
    (
        21408,
        "permission to send to the region of the 'To' number is not enabled on the account (geo permissions)",
    ),
    (
        21610,
        "the recipient has unsubscribed (replied STOP); no message can be sent until they opt in again",
    ),
    (21614, "'To' number is not a valid mobile number"),
    (21617, "the message body exceeds the 1600 character limit"),
    (
        21620,
        "invalid media URL: it could not be read, or a Cloud Storage URL could not be signed",
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
        63016,
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
        host_codes::UNREACHABLE,
        "this host could not reach Twilio (after retries); nothing was sent",
    ),
    (
        host_codes::TIMED_OUT,
        "Twilio did not answer in time; the message may still have been sent",
    ),
    (
        host_codes::TRANSPORT,
        "the connection to Twilio broke after the request was sent; the outcome is unknown",
    ),
    (
        host_codes::BAD_RESPONSE,
        "Twilio answered success with a body this host could not read",
    ),
];

/// The meaning of an error code, when it is one of the common ones.
pub fn meaning(code: i64) -> Option<&'static str> {
    MEANINGS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, meaning)| *meaning)
}

/// Like [`meaning`] for a code as stored (callbacks carry it as text).
pub fn meaning_of(code: &str) -> Option<&'static str> {
    code.trim().parse().ok().and_then(meaning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_whatsapp_and_host_codes_have_a_meaning() {
        for code in [
            63016, 63003, 63018, 63024, 63032, 63049, 21211, 21408, 21610, 21614, 21617, 21620,
            30003, 30005, 30006, 30007, 30008, 11751, 12300, 90001, 90002, 90003, 90004,
        ] {
            assert!(meaning(code).is_some(), "{code} has no meaning");
        }
        assert!(meaning_of(" 63016").unwrap().contains("24-hour"));
        assert_eq!(meaning_of("not a code"), None);
        assert_eq!(meaning(12345), None);
    }
}
