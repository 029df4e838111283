//! MTA-STS policies and their TXT records (RFC 8461 §3.1, §3.2, §4.1),
//! sans IO: text in, a [`Policy`] out.

use serde::{Deserialize, Serialize};

/// RFC 8461 §3.2: `max_age` is at most a year.
pub const POLICY_MAX_AGE_SECS_MAX: u64 = 31_557_600;
/// A policy file larger than this is refused (RFC 8461 §3.3 suggests
/// 64 KiB as the largest a sender need take).
pub const POLICY_BYTES_MAX: usize = 64 << 10;
/// MX patterns kept from one policy.
pub const POLICY_MX_PATTERNS_MAX: usize = 64;

/// What the domain asks senders to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts with a verified certificate.
    Enforce,
    /// Report what would fail, deliver as without a policy.
    Testing,
    /// No policy (a domain withdrawing one).
    None,
}

/// A domain's policy, as fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// `mx.example.com` or `*.example.com`, lowercased.
    pub mx: Vec<String>,
    pub max_age_secs: u64,
}

impl Policy {
    /// Parses a policy file; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("not a `key: value` line: {line:?}"));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_owned()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "max_age" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| format!("max_age is not a number: {value:?}"))?;
                    max_age = Some(secs.min(POLICY_MAX_AGE_SECS_MAX));
                }
                "mx" if mx.len() < POLICY_MX_PATTERNS_MAX => {
                    mx.push(value.trim_end_matches('.').to_ascii_lowercase())
                }
                // §3.2: unknown fields are ignored, for extensions.
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("no `version: STSv1`".into());
        }
        let mode = mode.ok_or("no `mode`")?;
        let max_age_secs = max_age.ok_or("no `max_age`")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no `mx` pattern".into());
        }
        Ok(Policy {
            mode,
            mx,
            max_age_secs,
        })
    }

    /// Whether MX host `name` is one the policy names (§4.1: a `*.`
    /// pattern stands for exactly one leftmost label).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == name,
            })
    }
}

/// The `id` of a `_mta-sts` TXT record (§3.1: `v=STSv1; id=...;`), or
/// `None` when the text is not an STSv1 record.
pub fn record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .filter_map(|field| field.split_once('='))
        .find(|(key, _)| key.trim() == "id")
        .map(|(_, id)| id.trim().to_owned())
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_example() {
        let policy = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age_secs, 604_800);
        assert!(policy.matches("mail.example.com"));
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("example.net"));
        assert!(!policy.matches("a.b.example.net"));
        assert!(!policy.matches("mail.example.org"));
    }

    #[test]
    fn refuses_what_is_not_a_policy() {
        assert!(Policy::parse("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
        assert!(Policy::parse("<html>not found</html>").is_err());
        let capped = Policy::parse("version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n");
        assert_eq!(capped.unwrap().max_age_secs, POLICY_MAX_AGE_SECS_MAX);
    }

    #[test]
    fn txt_record_ids() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;"),
            Some("20160831085700Z".into())
        );
        assert_eq!(record_id("v=STSv1;id=abc"), Some("abc".into()));
        assert_eq!(record_id("v=spf1 -all"), None);
        assert_eq!(record_id("v=STSv1; id=;"), None);
    }
}
