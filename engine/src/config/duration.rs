//! Durations as the configuration spells them: `"250ms"`, `"30s"`, `"5m"`,
//! `"1h"`, `"1d"`, or several in a row (`"1h30m"`).

use std::time::Duration;

/// Longest duration text accepted; bounds the parse loop.
const DURATION_TEXT_BYTES_MAX: usize = 64;

/// Parses a duration such as `"30s"` or `"1h30m"`. Every number needs a
/// unit (`ms`, `s`, `m`, `h`, `d`), so `"30"` is an error rather than a
/// guess between seconds and milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration; expected e.g. \"30s\", \"5m\", \"250ms\"".into());
    }
    if text.len() > DURATION_TEXT_BYTES_MAX {
        return Err(format!(
            "duration longer than {DURATION_TEXT_BYTES_MAX} bytes"
        ));
    }
    let invalid = || format!("invalid duration {text:?}; expected e.g. \"30s\", \"5m\", \"250ms\"");
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("duration {text:?} needs a unit: ms, s, m, h or d")),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {text:?}; use ms, s, m, h or d"
                ))
            }
        };
        rest = &rest[unit..];
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn errors() {
        for bad in [
            "", "30", "s", "5 m", "5M", "1.5s", "-1s", "5min", "1h30", " 5s", "ms5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5min")
            .unwrap_err()
            .contains("unknown unit \"min\""));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("99999999999999999999999s").is_err());
        assert!(parse_duration(&"9".repeat(100)).is_err());
    }
}
