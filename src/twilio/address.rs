//! WhatsApp addresses as Twilio writes them (`whatsapp:+393331234567`): the one place that adds
//! or strips the channel prefix. It imports nothing, so `phone` can use it without depending on
//! the rest of `twilio`.

/// The channel prefix Twilio puts before a WhatsApp number in `To` and `From`.
const CHANNEL_PREFIX: &str = "whatsapp:";

/// The number without Twilio's `whatsapp:` prefix; anything else is returned unchanged.
pub(crate) fn strip_channel(address: &str) -> &str {
    address.strip_prefix(CHANNEL_PREFIX).unwrap_or(address)
}

/// The WhatsApp address Twilio expects for a number: `whatsapp:` followed by it.
pub(crate) fn with_channel(number: &str) -> String {
    format!("{CHANNEL_PREFIX}{number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_prefix_round_trips_and_bare_numbers_pass_through() {
        assert_eq!(with_channel("+393331234567"), "whatsapp:+393331234567");
        assert_eq!(strip_channel("whatsapp:+393331234567"), "+393331234567");
        assert_eq!(strip_channel("+393331234567"), "+393331234567");
        assert_eq!(strip_channel("sms:+393331234567"), "sms:+393331234567");
    }
}
