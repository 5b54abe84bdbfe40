//! UTC times for the dashboard: store milliseconds to `2026-11-25 14:23:05` and back from the
//! `datetime-local` form inputs. Pages show UTC only, so every operator reads the same time.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the Unix epoch.
pub(crate) fn format(ms: i64) -> String {
    civil(ms).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Like [`format`] with milliseconds, for timelines where several callbacks share a second.
pub(crate) fn format_precise(ms: i64) -> String {
    civil(ms).strftime("%Y-%m-%d %H:%M:%S.%3f").to_string()
}

/// `HH:MM` of `ms`, for "open until 14:05 UTC".
pub(crate) fn clock(ms: i64) -> String {
    civil(ms).strftime("%H:%M").to_string()
}

/// `YYYY-MM-DD` of `ms`.
pub(crate) fn date(ms: i64) -> String {
    civil(ms).strftime("%Y-%m-%d").to_string()
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (what a `datetime-local` input sends) as UTC milliseconds.
pub(crate) fn parse_input(text: &str) -> Option<i64> {
    let text = text.trim().replacen(' ', "T", 1);
    let datetime = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .into_iter()
        .find_map(|format| DateTime::strptime(format, &text).ok())?;
    Some(Offset::UTC.to_timestamp(datetime).ok()?.as_millisecond())
}

/// The UTC date and time of `ms`; instants beyond jiff's range (years ±9999) are clamped to it.
fn civil(ms: i64) -> DateTime {
    let at = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    Offset::UTC.to_datetime(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format(0), "1970-01-01 00:00:00");
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(format(1_709_251_199_999), "2024-02-29 23:59:59");
        assert_eq!(format(1_795_616_585_000), "2026-11-25 14:23:05");
        assert_eq!(format_precise(1_795_616_585_042), "2026-11-25 14:23:05.042");
        assert_eq!(clock(1_795_616_585_042), "14:23");
        assert_eq!(date(1_795_616_585_042), "2026-11-25");
    }

    #[test]
    fn form_input_is_read_as_utc() {
        let ms = 1_795_616_580_000;
        assert_eq!(parse_input("2026-11-25T14:23"), Some(ms));
        assert_eq!(parse_input("2026-11-25T14:23:05"), Some(ms + 5000));
        assert_eq!(parse_input("2026-13-01T00:00"), None);
        assert_eq!(parse_input("yesterday"), None);
        assert_eq!(parse_input(""), None);
    }
}
