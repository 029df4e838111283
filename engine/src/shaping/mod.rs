//! Shaping that listens: rules that turn a receiver's "slow down" into
//! action on its site; and the bounce classification they and the
//! rest of baton use ([`classify`]).
//!
//! A rule matches a deferral's or failure's reply, as a bounce
//! classification rule does (`crate::shaping::classify::Patterns`: a code,
//! an enhanced code, a text), and may also ask for a category and a
//! destination (a domain, or a site's name). The first rule that matches
//! acts on the site the reply came from (`crate::queue`: a route's next
//! hop, or the MX hosts its domains share):
//!
//! - `suspend`: no new connection for `duration`; then one connection,
//!   and one more per good transaction (`Queues::suspend_site_of`);
//! - `connections`: at most `connections_max` for `duration`;
//! - `rate`: at most `message_rate_max` messages a second for `duration`.
//!
//! Operators' `[[shaping_rule]]` tables come first, then `rules.toml`,
//! which ships the big providers' documented codes. Every action is
//! logged, shown by `baton site list`, and lifted by `baton site resume`.

#![forbid(unsafe_code)]

pub mod classify;
pub mod egress;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ShapingAction, ShapingRuleConfig};
use crate::queue::{Queues, Throttle};
use crate::route::Destination;
use crate::shaping::classify::{Category, Patterns};
use crate::smtp::reply::Reply;

/// The rules baton ships, tried after the operator's.
const SHIPPED_RULES: &str = include_str!("rules.toml");

/// `rules.toml`: `[[rule]]` tables written as `[[shaping_rule]]` ones,
/// without a destination.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShippedFile {
    rule: Vec<ShapingRuleConfig>,
}

struct Rule {
    /// `shaping_rule[2]` or `shipped rule 1`, for the log and the reason.
    name: String,
    category: Option<Category>,
    /// A domain, or `.parent` for its subdomains; `None`: any.
    destination: Option<String>,
    action: ShapingAction,
    duration: Duration,
    connections_max: Option<usize>,
    message_rate_max: Option<u32>,
}

/// The rules, compiled.
pub struct ShapingRules {
    rules: Vec<Rule>,
    patterns: Patterns,
}

/// Why a rule is refused: its name and what is wrong.
pub type RuleError = (String, String);

impl ShapingRules {
    /// The operator's rules, then the shipped ones. An error names the
    /// rule (`shaping_rule[i]`) and the key at fault.
    pub fn new(configured: &[ShapingRuleConfig]) -> Result<ShapingRules, RuleError> {
        let shipped: ShippedFile =
            toml::from_str(SHIPPED_RULES).expect("the shipped shaping rules parse");
        let named = configured
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("shaping_rule[{i}]"), r))
            .chain(
                shipped
                    .rule
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("shipped rule {}", i + 1), r)),
            );
        let mut rules = Vec::new();
        let mut patterns = Vec::new();
        for (name, r) in named {
            rules.push(rule(name, r)?);
            patterns.push((r.code.as_deref(), r.enhanced.as_deref(), r.text.as_deref()));
        }
        let patterns =
            Patterns::compile(patterns).map_err(|(i, why)| (rules[i].name.clone(), why))?;
        Ok(ShapingRules { rules, patterns })
    }

    /// Acts on the site of `destination` when a rule matches `reply`
    /// (classified `category`); returns what was done when it changed the
    /// site's state (a suspension or throttle already in force is only
    /// extended), for the log.
    pub fn apply(
        &self,
        queues: &Queues,
        destination: &Destination,
        lane: &Arc<str>,
        reply: &Reply,
        category: Category,
        now_ms: u64,
    ) -> Option<String> {
        let name = destination.as_str();
        let site = queues.site_of(destination);
        let rule = self
            .patterns
            .matching(reply)
            .map(|i| &self.rules[i])
            .find(|r| {
                r.category.is_none_or(|c| c == category)
                    && r.destination
                        .as_deref()
                        .is_none_or(|d| match d.strip_prefix('.') {
                            Some(parent) => name.len() > parent.len() + 1 && name.ends_with(d),
                            None => name == d || *site == *d,
                        })
            })?;
        let until_ms = now_ms + rule.duration.as_millis() as u64;
        let reply_line = crate::shard::reply_text(reply);
        let reason = format!("{}: {reply_line}", rule.name);
        let done = match rule.action {
            ShapingAction::Suspend => {
                if !queues.suspend_site_of(destination, lane, until_ms, reason.clone(), now_ms) {
                    return None;
                }
                format!("suspended for {}", humanize(rule.duration))
            }
            ShapingAction::Connections | ShapingAction::Rate => {
                let throttle = Throttle {
                    until_ms,
                    connections_max: rule.connections_max,
                    message_rate_max: rule.message_rate_max,
                    reason: reason.clone(),
                };
                if !queues.throttle_site_of(destination, lane, throttle, now_ms) {
                    return None;
                }
                match rule.action {
                    ShapingAction::Connections => format!(
                        "at most {} connections for {}",
                        rule.connections_max.unwrap_or(1),
                        humanize(rule.duration)
                    ),
                    _ => format!(
                        "at most {} messages/s for {}",
                        rule.message_rate_max.unwrap_or(1),
                        humanize(rule.duration)
                    ),
                }
            }
        };
        Some(format!("{done} ({reason})"))
    }
}

fn rule(name: String, config: &ShapingRuleConfig) -> Result<Rule, RuleError> {
    let ShapingRuleConfig {
        category,
        destination,
        action,
        duration,
        connections_max,
        message_rate_max,
        ..
    } = config.clone();
    let category = category
        .as_deref()
        .map(|c| {
            Category::parse(c).ok_or_else(|| (name.clone(), format!("category: unknown {c:?}")))
        })
        .transpose()?;
    match action {
        ShapingAction::Connections if connections_max.is_none_or(|n| n == 0) => {
            return Err((
                name,
                "connections_max: at least 1 with action = \"connections\"".into(),
            ))
        }
        ShapingAction::Rate if message_rate_max.is_none_or(|n| n == 0) => {
            return Err((
                name,
                "message_rate_max: at least 1 with action = \"rate\"".into(),
            ))
        }
        _ => {}
    }
    if duration.is_zero() {
        return Err((name, "duration: more than zero".into()));
    }
    Ok(Rule {
        name,
        category,
        destination: destination.map(|d| d.to_ascii_lowercase()),
        action,
        duration,
        connections_max,
        message_rate_max,
    })
}

/// `10m`, `1h`, `90s`, as the configuration writes durations.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Shaping;

    fn queues() -> Queues {
        Queues::new(Box::new(|_| Shaping::default()))
    }

    fn lane() -> Arc<str> {
        crate::queue::DEFAULT_LANE.into()
    }

    #[test]
    fn gmails_4_7_28_suspends_the_destination_for_ten_minutes() {
        let rules = ShapingRules::new(&[]).unwrap();
        let queues = queues();
        let d = Destination::new("gmail.com");
        let reply = Reply::new(421, Some((4, 7, 28)), "unusual rate of unsolicited mail");
        let done = rules
            .apply(&queues, &d, &lane(), &reply, Category::RateLimited, 1_000)
            .unwrap();
        assert!(
            done.starts_with("suspended for 10m (shipped rule 1: 421 4.7.28"),
            "{done}"
        );
        assert_eq!(queues.summary_at(0)[0].paused_until_ms, 601_000);
        // A plain transient reply does nothing.
        let busy = Reply::new(451, Some((4, 3, 0)), "busy");
        assert!(rules
            .apply(&queues, &d, &lane(), &busy, Category::Transient, 1_000)
            .is_none());
    }

    #[test]
    fn gmails_and_microsofts_authentication_limits_cut_to_one_connection() {
        let rules = ShapingRules::new(&[]).unwrap();
        for (code, enhanced, text, category) in [
            (421, (4, 7, 29), "Your email has been rate limited because you're not using a TLS connection.", Category::TlsRequired),
            (421, (4, 7, 40), "Your email has been rate limited because the sending domain doesn't have a DMARC record", Category::AuthFailure),
            (550, (5, 7, 32), "Your email was blocked because the From: header (RFC5322) in this message isn't aligned", Category::AuthFailure),
            (550, (5, 7, 515), "Access denied, sending domain [example.com] does not meet the required authentication level.", Category::AuthFailure),
        ] {
            let queues = queues();
            let d = Destination::new("gmail.com");
            let reply = Reply::new(code, Some(enhanced), text);
            let done = rules.apply(&queues, &d, &lane(), &reply, category, 0).unwrap_or_default();
            assert!(done.starts_with("at most 1 connections for 1h"), "{code} {enhanced:?}: {done}");
        }
    }

    #[test]
    fn an_operators_rule_comes_first_and_may_name_a_destination() {
        let configured: Vec<ShapingRuleConfig> = toml::from_str::<toml::Table>(
            "[[r]]\ntext = 'slow down'\ndestination = \".example.net\"\naction = \"rate\"\nmessage_rate_max = 5\nduration = \"2m\"\n",
        )
        .unwrap()["r"]
            .clone()
            .try_into()
            .unwrap();
        let rules = ShapingRules::new(&configured).unwrap();
        let queues = queues();
        let reply = Reply::new(451, None, "please slow down");
        let here = Destination::new("mx.example.net");
        let done = rules
            .apply(&queues, &here, &lane(), &reply, Category::RateLimited, 0)
            .unwrap();
        assert!(
            done.starts_with("at most 5 messages/s for 2m (shaping_rule[0]"),
            "{done}"
        );
        // Elsewhere the shipped rule for rate_limited applies instead.
        let there = Destination::new("example.org");
        let done = rules
            .apply(&queues, &there, &lane(), &reply, Category::RateLimited, 0)
            .unwrap();
        assert!(done.contains("at most 1 connections"), "{done}");
    }

    #[test]
    fn a_rule_without_its_limit_is_refused_by_name() {
        let configured: Vec<ShapingRuleConfig> = toml::from_str::<toml::Table>(
            "[[r]]\ncode = \"4xx\"\naction = \"connections\"\nduration = \"1m\"\n",
        )
        .unwrap()["r"]
            .clone()
            .try_into()
            .unwrap();
        let err = ShapingRules::new(&configured).err().unwrap();
        assert_eq!(err.0, "shaping_rule[0]");
        assert!(err.1.contains("connections_max"), "{err:?}");
    }
}
