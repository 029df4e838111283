//! Bounce classification: every reply that is not a success (a remote
//! host's, or one baton makes for a local failure: DNS, TLS, a timeout)
//! gets a category a sender can act on, in the spirit of RFC 3463 and of
//! KumoMTA's bounce classifier.
//!
//! Categories come from rules (`rules.toml`, shipped, and an operator's
//! file, `[delivery] classify_rules`, tried first): a rule names a reply
//! code class, an enhanced status code pattern and a regular expression
//! on the text, any of them optional, and the first rule that matches
//! decides. The texts are matched in one pass of a `RegexSet`; the codes
//! are compared only for the rules whose text matched (or that have none).
//!
//! Categories go into the `deferred`, `failed` events (`category`), the
//! per-category counters of `/metrics`, and decide what a hard bounce is
//! for the suppression list (a permanent `invalid_recipient` or
//! `bad_domain`).

#![forbid(unsafe_code)]

use std::path::Path;

use regex::{Regex, RegexSet, RegexSetBuilder};
use serde::Deserialize;

use crate::smtp::reply::Reply;

/// The rules baton ships, tried after the operator's.
const SHIPPED_RULES: &str = include_str!("rules.toml");
/// Rules an operator's file may hold: a guard against a file that is not
/// a rules file at all.
pub const RULES_MAX: usize = 10_000;
/// The longest text a rule's expression is matched against: replies are
/// at most a few lines; the rest says nothing more.
const TEXT_BYTES_MAX: usize = 2048;
/// How large a compiled expression may grow (regex's own limit, made
/// explicit): an operator's pathological pattern is refused at load.
const REGEX_BYTES_MAX: usize = 1 << 22;

/// What kind of failure a reply says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// No such mailbox, or it is disabled: do not send again.
    InvalidRecipient,
    /// No such domain, or it takes no mail (null MX).
    BadDomain,
    MailboxFull,
    MessageTooLarge,
    /// The content was judged spam, malicious, or not allowed.
    ContentBlock,
    /// The sending IP or domain: a blocklist, a poor reputation.
    ReputationBlock,
    /// SPF, DKIM, DMARC, reverse DNS.
    AuthFailure,
    /// Too much, too fast: slow down.
    RateLimited,
    /// The receiver's rules: relaying, allow lists, header syntax.
    Policy,
    TlsRequired,
    /// Try again: busy, greylisting, a timeout, a lost connection.
    Transient,
    Other,
}

impl Category {
    pub const ALL: [Category; 12] = [
        Category::InvalidRecipient,
        Category::BadDomain,
        Category::MailboxFull,
        Category::MessageTooLarge,
        Category::ContentBlock,
        Category::ReputationBlock,
        Category::AuthFailure,
        Category::RateLimited,
        Category::Policy,
        Category::TlsRequired,
        Category::Transient,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::BadDomain => "bad_domain",
            Category::MailboxFull => "mailbox_full",
            Category::MessageTooLarge => "message_too_large",
            Category::ContentBlock => "content_block",
            Category::ReputationBlock => "reputation_block",
            Category::AuthFailure => "auth_failure",
            Category::RateLimited => "rate_limited",
            Category::Policy => "policy",
            Category::TlsRequired => "tls_required",
            Category::Transient => "transient",
            Category::Other => "other",
        }
    }

    /// Its index in [`Category::ALL`], for counters.
    pub fn index(self) -> usize {
        Category::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every category is in ALL")
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A permanent failure that means the address will never take mail: what
/// the suppression list takes from bounces.
pub fn is_hard_bounce(reply: &Reply, category: Category) -> bool {
    reply.class() == 5 && matches!(category, Category::InvalidRecipient | Category::BadDomain)
}

/// `[[rule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    category: String,
    code: Option<String>,
    enhanced: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

/// A reply code: exact, or a class (`5xx`).
#[derive(Clone, Copy, Debug)]
enum CodeMatch {
    Exact(u16),
    Class(u16),
}

/// What one rule asks of a reply: any of a code, an enhanced-code
/// pattern and an expression on the text.
struct Pattern {
    code: Option<CodeMatch>,
    enhanced: Option<Regex>,
    /// Index of its text in the set, if it has one.
    text: Option<usize>,
}

/// Reply patterns in order, their texts in one `RegexSet`: what both the
/// classification rules and the shaping rules (`crate::shaping`) match
/// replies with.
pub struct Patterns {
    patterns: Vec<Pattern>,
    texts: RegexSet,
}

impl Patterns {
    /// Compiles `(code, enhanced, text)` triples; an error gives the
    /// index of the one at fault. A pattern with none of the three
    /// matches every reply.
    pub fn compile<'a>(
        entries: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>)>,
    ) -> Result<Patterns, (usize, String)> {
        let mut patterns = Vec::new();
        let mut texts = Vec::new();
        for (i, (code, enhanced, text)) in entries.into_iter().enumerate() {
            let code = code.map(parse_code).transpose().map_err(|e| (i, e))?;
            let enhanced = enhanced
                .map(enhanced_pattern)
                .transpose()
                .map_err(|e| (i, e))?;
            let text = match text {
                Some(text) => {
                    // Checked alone first, so an error names its rule.
                    regex::RegexBuilder::new(text)
                        .case_insensitive(true)
                        .size_limit(REGEX_BYTES_MAX)
                        .build()
                        .map_err(|e| (i, format!("text: {e}")))?;
                    texts.push(text.to_owned());
                    Some(texts.len() - 1)
                }
                None => None,
            };
            patterns.push(Pattern {
                code,
                enhanced,
                text,
            });
        }
        let texts = RegexSetBuilder::new(&texts)
            .case_insensitive(true)
            .size_limit(REGEX_BYTES_MAX * 4)
            .build()
            .map_err(|e| (0, format!("the rules' texts together: {e}")))?;
        Ok(Patterns { patterns, texts })
    }

    /// The indexes of the patterns `reply` matches, in order (lazily: the
    /// text is scanned once, up front).
    pub fn matching<'p>(&'p self, reply: &'p Reply) -> impl Iterator<Item = usize> + 'p {
        let matched = self.texts.matches(&reply_text(reply));
        let enhanced = reply
            .enhanced
            .map(|(class, subject, detail)| format!("{class}.{subject}.{detail}"));
        self.patterns
            .iter()
            .enumerate()
            .filter(move |(_, p)| {
                p.text.is_none_or(|i| matched.matched(i))
                    && p.code.is_none_or(|code| match code {
                        CodeMatch::Exact(c) => reply.code == c,
                        CodeMatch::Class(c) => reply.code / 100 == c,
                    })
                    && p.enhanced
                        .as_ref()
                        .is_none_or(|re| enhanced.as_deref().is_some_and(|e| re.is_match(e)))
            })
            .map(|(i, _)| i)
    }
}

/// The rules, compiled.
pub struct Classifier {
    categories: Vec<Category>,
    patterns: Patterns,
}

impl Classifier {
    /// The shipped rules, after `extra` (an operator's file), if any.
    /// Errors name the file and the rule.
    pub fn load(extra: Option<&Path>) -> Result<Classifier, String> {
        let mut entries = Vec::new();
        if let Some(path) = extra {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("classify_rules {}: {e}", path.display()))?;
            let file: RulesFile = toml::from_str(&text)
                .map_err(|e| format!("classify_rules {}: {e}", path.display()))?;
            if file.rule.len() > RULES_MAX {
                return Err(format!(
                    "classify_rules {}: more than {RULES_MAX} rules",
                    path.display()
                ));
            }
            entries.extend(
                file.rule
                    .into_iter()
                    .map(|r| (path.display().to_string(), r)),
            );
        }
        let shipped: RulesFile = toml::from_str(SHIPPED_RULES).expect("the shipped rules parse");
        entries.extend(shipped.rule.into_iter().map(|r| ("shipped".to_owned(), r)));
        let at = |i: usize, why: String| format!("{}: rule {}: {why}", entries[i].0, i + 1);
        let mut categories = Vec::with_capacity(entries.len());
        for (i, (_, entry)) in entries.iter().enumerate() {
            let category = Category::parse(&entry.category)
                .ok_or_else(|| at(i, format!("unknown category {:?}", entry.category)))?;
            if entry.code.is_none() && entry.enhanced.is_none() && entry.text.is_none() {
                return Err(at(i, "a rule needs code, enhanced or text".into()));
            }
            categories.push(category);
        }
        let patterns = Patterns::compile(
            entries
                .iter()
                .map(|(_, e)| (e.code.as_deref(), e.enhanced.as_deref(), e.text.as_deref())),
        )
        .map_err(|(i, why)| at(i, why))?;
        Ok(Classifier {
            categories,
            patterns,
        })
    }

    /// The shipped rules alone.
    pub fn shipped() -> Classifier {
        Classifier::load(None).expect("the shipped rules compile")
    }

    /// The category of a reply that is not a success.
    pub fn classify(&self, reply: &Reply) -> Category {
        match self.patterns.matching(reply).next() {
            Some(i) => self.categories[i],
            None if reply.class() == 4 => Category::Transient,
            None => Category::Other,
        }
    }
}

/// The reply's lines as one text, for the expressions. An enhanced code
/// that the parser did not take (one written without the leading class,
/// or inside the text) stays in it.
fn reply_text(reply: &Reply) -> String {
    let mut text = reply.lines.join(" ");
    if text.len() > TEXT_BYTES_MAX {
        let mut cut = TEXT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn parse_code(text: &str) -> Result<CodeMatch, String> {
    let bad = || format!("code {text:?}: a reply code (\"550\") or class (\"5xx\")");
    match text.as_bytes() {
        [c @ b'2'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(CodeMatch::Class(u16::from(c - b'0'))),
        [b'2'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
            text.parse().map(CodeMatch::Exact).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// `5.1.1`, `*.7.1`, `5.7.6[0-4][0-9]`: three groups of digits, `*` or
/// bracketed classes, as an anchored expression.
fn enhanced_pattern(text: &str) -> Result<Regex, String> {
    let groups: Vec<&str> = text.split('.').collect();
    let ok = groups.len() == 3
        && groups.iter().all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || b"*[]-".contains(&b))
        });
    if !ok {
        return Err(format!(
            "enhanced {text:?}: three groups such as \"5.1.1\", \"*.7.1\" or \"5.7.6[0-4][0-9]\""
        ));
    }
    let pattern: Vec<String> = groups.iter().map(|g| g.replace('*', r"\d+")).collect();
    Regex::new(&format!("^{}$", pattern.join(r"\."))).map_err(|e| format!("enhanced {text:?}: {e}"))
}

#[cfg(test)]
mod tests;
