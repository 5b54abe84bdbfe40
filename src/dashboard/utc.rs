//! UTC times for the dashboard: store milliseconds to `2026-11-25 14:23:05` and back from the
//! `datetime-local` form inputs. Pages show UTC only, so every operator reads the same time.

const MS_PER_DAY: i64 = 86_400_000;

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the Unix epoch.
pub fn format(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Like [`format`] with milliseconds, for timelines where several callbacks share a second.
pub fn format_precise(ms: i64) -> String {
    format!("{}.{:03}", format(ms), ms.rem_euclid(1000))
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (what a `datetime-local` input sends) as UTC milliseconds.
pub fn parse_input(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min) = (time.next()??, time.next()??);
    let s = time.next().map_or(Some(0), |s| s)?;
    let valid = (1..=12).contains(&m)
        && (1..=31).contains(&d)
        && (0..24).contains(&h)
        && (0..60).contains(&min)
        && (0..60).contains(&s);
    if !valid {
        return None;
    }
    Some(days_from_civil(y, m, d) * MS_PER_DAY + ((h * 60 + min) * 60 + s) * 1000)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
