//! Phone numbers: turns what people type (`+39 333…`, `0039…`, `333…`, `whatsapp:+…`) into
//! checked E.164, the only form the rest of the host handles.

use std::fmt;
use std::ops::Deref;

use phonenumber::{Mode, country};

use crate::twilio::address;

/// A checked number in E.164 (`+393331234567`). Only [`normalize`] makes one, so holding an
/// `E164` means the number was validated against its country's numbering plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct E164(String);

impl E164 {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for E164 {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for E164 {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<E164> for String {
    fn from(number: E164) -> String {
        number.0
    }
}

/// Why a number was refused. The message quotes the input so the script author can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid phone number: {reason}")]
pub(crate) struct PhoneError {
    pub(crate) input: String,
    pub(crate) reason: &'static str,
}

/// Normalizes a number to E.164 (`+393331234567`).
///
/// Numbers without an international prefix are read as national numbers of the country with
/// `default_country_code`, so a trunk `0` (as in UK `07911…`) is dropped the way locals expect.
///
/// A WhatsApp address as Twilio writes it (`whatsapp:+…`) is read as its number.
pub(crate) fn normalize(input: &str, default_country_code: &str) -> Result<E164, PhoneError> {
    let error = |reason| PhoneError {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.trim();
    let bare = address::strip_channel(trimmed).trim_start();
    if bare.is_empty() {
        return Err(error("it is empty"));
    }
    if bare
        .chars()
        .any(|c| !(c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')')))
    {
        return Err(error(
            "only digits, spaces, '+', '-', '.' and parentheses are allowed",
        ));
    }
    let parsed = if let Some(rest) = bare.strip_prefix("00") {
        phonenumber::parse(None, format!("+{rest}"))
    } else if bare.starts_with('+') {
        phonenumber::parse(None, bare)
    } else {
        match region_of(default_country_code) {
            Some(region) => phonenumber::parse(Some(region), bare),
            None => phonenumber::parse(None, format!("+{default_country_code}{bare}")),
        }
    }
    .map_err(|_| error("it could not be parsed; write it as +<country code><number>"))?;
    if !parsed.is_valid() {
        return Err(error(
            "no such number exists in its country's numbering plan",
        ));
    }
    Ok(E164(parsed.format().mode(Mode::E164).to_string()))
}

/// The main region for a calling code (`39` → Italy), so national formats parse correctly.
fn region_of(country_code: &str) -> Option<country::Id> {
    let code: u16 = country_code.parse().ok()?;
    let regions = phonenumber::metadata::DATABASE.by_code(&code)?;
    regions.first()?.id().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{E164, normalize};

    #[test]
    fn accepts_the_documented_spellings_and_rejects_the_rest() {
        let table: &[(&str, &str, Option<&str>)] = &[
            ("+393331234567", "39", Some("+393331234567")),
            ("+39 333 123 4567", "39", Some("+393331234567")),
            ("0039 333 1234567", "39", Some("+393331234567")),
            ("00393331234567", "1", Some("+393331234567")),
            ("3331234567", "39", Some("+393331234567")),
            ("333 123 4567", "39", Some("+393331234567")),
            ("whatsapp:+393331234567", "39", Some("+393331234567")),
            ("whatsapp:+1 415 523 8886", "39", Some("+14155238886")),
            ("  +1 (415) 523-8886  ", "39", Some("+14155238886")),
            ("415.523.8886", "1", Some("+14155238886")),
            ("07911 123456", "44", Some("+447911123456")),
            ("+44 7911 123456", "39", Some("+447911123456")),
            ("+34 612 34 56 78", "39", Some("+34612345678")),
            ("612345678", "34", Some("+34612345678")),
            ("", "39", None),
            ("whatsapp:", "39", None),
            ("hello", "39", None),
            ("+39 333 12ab", "39", None),
            ("+1 555", "39", None),
            ("12", "39", None),
            ("+999 123456789", "39", None),
            ("+39 333 123 4567 8901 2345", "39", None),
            ("whatsapp:+39;333", "39", None),
        ];
        for (input, cc, expected) in table {
            let got = normalize(input, cc).ok().map(E164::into_string);
            assert_eq!(
                got.as_deref(),
                *expected,
                "input {input:?} with country {cc}"
            );
        }
    }

    #[test]
    fn error_quotes_the_input() {
        let err = normalize("hello", "39").unwrap_err().to_string();
        assert!(
            err.starts_with("\"hello\" is not a valid phone number"),
            "{err}"
        );
    }
}
