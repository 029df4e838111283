//! RFC 5322 §3.3 date-time from Unix seconds, for the `Received:` header
//! (RFC 5321 §4.4).
//!
//! Pure arithmetic, always in UTC (`+0000`): the clock comes in as a number
//! through the session's context, so there is nothing to read here and no
//! time zone database to consult.

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const SECONDS_PER_DAY: u64 = 86_400;

/// Formats `unix_secs` as `Sun, 22 Nov 2026 18:00:00 +0000`.
///
/// The day of the month is not padded (`1*2DIGIT`, RFC 5322 §3.3).
pub fn rfc5322_date(unix_secs: u64) -> String {
    let days = unix_secs / SECONDS_PER_DAY;
    let second_of_day = unix_secs % SECONDS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAY_NAMES[((days + 4) % 7) as usize];
    let month_name = MONTH_NAMES[(month - 1) as usize];
    // Written out by hand: every message gets one or two of these, and
    // `format!` took several thousand instructions for each.
    let mut text = String::with_capacity(31);
    text.push_str(weekday);
    text.push_str(", ");
    push_number(&mut text, day, 1);
    text.push(' ');
    text.push_str(month_name);
    text.push(' ');
    push_number(&mut text, year, 4);
    text.push(' ');
    push_number(&mut text, second_of_day / 3600, 2);
    text.push(':');
    push_number(&mut text, second_of_day % 3600 / 60, 2);
    text.push(':');
    push_number(&mut text, second_of_day % 60, 2);
    text.push_str(" +0000");
    text
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_number(text: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    at = at.min(digits.len() - width.min(digits.len()));
    text.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// RFC 3339 UTC date and time to the second: `2026-11-22T18:00:00`.
pub fn rfc3339_seconds(unix_secs: u64) -> String {
    let (year, month, day) = civil_from_days(unix_secs / 86_400);
    let secs = unix_secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>), restricted to
/// days on or after the epoch so that everything stays unsigned: shifting
/// the year to start on March 1st puts the leap day last, and eras of
/// 400 years (146 097 days) repeat exactly.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z - era * 146_097; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11, March = 0
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_seconds_of_known_instants() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00");
        assert_eq!(rfc3339_seconds(1_795_370_417), "2026-11-22T18:00:17");
    }

    #[test]
    fn epoch() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn known_dates() {
        assert_eq!(
            rfc5322_date(1_795_370_400),
            "Sun, 22 Nov 2026 18:00:00 +0000"
        );
        // Leap days, including the 400-year rule.
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(4_107_542_400),
            "Mon, 1 Mar 2100 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_709_251_199),
            "Thu, 29 Feb 2024 23:59:59 +0000"
        );
    }

    #[test]
    fn far_future_does_not_panic() {
        let formatted = rfc5322_date(u64::MAX);
        assert!(formatted.ends_with(" +0000"));
    }

    /// Counts whole years and months from 1970: slow but obviously right.
    fn civil_naive(mut days: u64) -> (u64, u64, u64) {
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut year = 1970;
        loop {
            let in_year = if leap(year) { 366 } else { 365 };
            if days < in_year {
                break;
            }
            days -= in_year;
            year += 1;
        }
        let mut lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if leap(year) {
            lengths[1] = 29;
        }
        let mut month = 1;
        for length in lengths {
            if days < length {
                break;
            }
            days -= length;
            month += 1;
        }
        (year, month, days + 1)
    }

    proptest! {
        #[test]
        fn written_by_hand_as_format_would(secs in 0u64..20_000_000_000) {
            let days = secs / SECONDS_PER_DAY;
            let (year, month, day) = civil_from_days(days);
            let s = secs % SECONDS_PER_DAY;
            let expected = format!(
                "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
                DAY_NAMES[((days + 4) % 7) as usize],
                MONTH_NAMES[(month - 1) as usize],
                s / 3600,
                s % 3600 / 60,
                s % 60
            );
            prop_assert_eq!(rfc5322_date(secs), expected);
        }

        #[test]
        fn civil_matches_naive_count(days in 0u64..400_000) {
            prop_assert_eq!(civil_from_days(days), civil_naive(days));
        }
    }
}
