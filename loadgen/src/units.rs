//! Sizes (`5KiB`), durations (`500ms`) and probabilities as the command
//! line writes them.

use std::time::Duration;

use anyhow::{bail, Context as _};

/// `5120`, `5k`, `5KiB`, `1M`, `1MiB`, `1G`: bytes, with binary multiples
/// (k = 1024).
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiple: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => bail!("unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"),
    };
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad size {text:?}"))?;
    if !number.is_finite() || number < 0.0 {
        bail!("bad size {text:?}");
    }
    Ok((number * multiple as f64).round() as u64)
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => bail!("unknown duration unit {other:?} in {text:?} (use ms, s, m, h)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("bad duration {text:?}"))
}

/// A probability in `[0, 1]`.
pub fn parse_probability(text: &str) -> anyhow::Result<f64> {
    let p: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("bad probability {text:?}"))?;
    if !(0.0..=1.0).contains(&p) {
        bail!("a probability is between 0 and 1, not {p}");
    }
    Ok(p)
}

/// Bytes for people: `5.0 KiB`, `12.3 MiB`.
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("5120").unwrap(), 5120);
        assert_eq!(parse_bytes("5KiB").unwrap(), 5120);
        assert_eq!(parse_bytes("5k").unwrap(), 5120);
        assert_eq!(parse_bytes("1.5M").unwrap(), 1_572_864);
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("0.25").unwrap(), 0.25);
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
    }
}
