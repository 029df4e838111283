//! [`ConfigError`], and finding where in the file a key is written.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::validate::Invalid;

/// What is wrong with a configuration, and where: displayed as
/// `<origin>:<line>:<column>: <key>: <message>`, e.g.
/// `baton.toml:12:21: limits.message_bytes_max: must be more than 0`.
/// Line and column are left out when the problem has no place in the file
/// (it cannot be read, or a rule fails on a default the file did not set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    position: Option<Position>,
    key: String,
    message: String,
}

/// A place in the file, both counted from 1; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    /// The file (or other source) the configuration came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Where the problem is, if it has a place in the file.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The line of the problem, counted from 1.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|p| p.line)
    }

    /// The dotted key path, e.g. `limits.message_bytes_max` or
    /// `listener[1].address`; empty when no key is at fault (unreadable
    /// file, TOML syntax).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file could not be read.
    pub(super) fn unreadable(origin: &str, error: &std::io::Error) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: None,
            key: String::new(),
            message: format!("cannot read: {error}"),
        }
    }

    /// The text is not TOML.
    pub(super) fn syntax(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: error.span().map(|span| position(text, span.start)),
            key: String::new(),
            message: format!("invalid TOML: {}", error.message().trim_end()),
        }
    }

    /// Deserialization failed: an unknown key, a wrong type, a bad value.
    /// The error's span points into `text`; the key is whichever key of
    /// `file` is written there.
    pub(super) fn deserialize(
        origin: &str,
        text: &str,
        file: &DeTable<'_>,
        error: &toml::de::Error,
    ) -> ConfigError {
        let span = error.span();
        let key = span
            .as_ref()
            .and_then(|span| key_at(file, span.start))
            .unwrap_or_default();
        // serde says "field"; the file says "key".
        let message = error
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1)
            .replacen("missing field", "missing key", 1);
        ConfigError {
            origin: origin.to_owned(),
            position: span.map(|span| position(text, span.start)),
            key,
            message,
        }
    }

    /// A rule failed on a key after deserialization; the position is where
    /// the file writes that key's value, if it does. A rule between two keys
    /// (`pause <= pause_max`) names the one the file writes, so the error
    /// points at the line that broke it.
    pub(super) fn invalid(
        origin: &str,
        text: &str,
        file: &DeTable<'_>,
        invalid: Invalid,
    ) -> ConfigError {
        let Invalid { key, message, also } = invalid;
        let written = std::iter::once(key.clone())
            .chain(also)
            .find_map(|key| span_of(file, &key).map(|span| (key, span)));
        let (key, position) = match written {
            Some((key, span)) => (key, Some(position(text, span.start))),
            None => (key, None),
        };
        ConfigError {
            origin: origin.to_owned(),
            position,
            key,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Line and column (from 1, in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// The path of the innermost key whose name or value is written at byte
/// `offset`, e.g. `server.shards` or `listener[0].address`.
fn key_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (key, value) in table {
        let name: &str = key.get_ref();
        if let Some(inner) = inner_key_at(value.get_ref(), offset) {
            return Some(join(name, &inner));
        }
        if covers(&key.span(), offset) || covers(&value.span(), offset) {
            return Some(name.to_owned());
        }
    }
    None
}

/// The rest of the path, for an offset inside a table or array value.
fn inner_key_at(value: &DeValue<'_>, offset: usize) -> Option<String> {
    match value {
        DeValue::Table(table) => key_at(table, offset),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| match inner_key_at(item.get_ref(), offset) {
                Some(inner) => Some(join(&format!("[{i}]"), &inner)),
                None => covers(&item.span(), offset).then(|| format!("[{i}]")),
            }),
        _ => None,
    }
}

fn join(outer: &str, inner: &str) -> String {
    if inner.starts_with('[') {
        format!("{outer}{inner}")
    } else {
        format!("{outer}.{inner}")
    }
}

/// Where the file writes the value of `path` (`limits.message_bytes_max`,
/// `listener[1].address`), if it does.
fn span_of(file: &DeTable<'_>, path: &str) -> Option<Range<usize>> {
    let mut segments = path.split('.');
    let mut value = lookup(file, segments.next()?)?;
    for segment in segments {
        let DeValue::Table(table) = value.get_ref() else {
            return None;
        };
        value = lookup(table, segment)?;
    }
    Some(value.span())
}

/// The value at one path segment: a key, then any indexes (`listener[1]`).
fn lookup<'t, 'i>(table: &'t DeTable<'i>, segment: &str) -> Option<&'t Spanned<DeValue<'i>>> {
    let (name, indexes) = segment.split_once('[').unwrap_or((segment, ""));
    let mut value = table.get(name)?;
    for index in indexes.split(']').map(|s| s.trim_start_matches('[')) {
        if index.is_empty() {
            continue;
        }
        let DeValue::Array(items) = value.get_ref() else {
            return None;
        };
        value = items.get(index.parse::<usize>().ok()?)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(position(text, 0), Position { line: 1, column: 1 });
        assert_eq!(position(text, 6), Position { line: 2, column: 1 });
        // "bé = " is 6 bytes, 5 characters.
        assert_eq!(position(text, 12), Position { line: 2, column: 6 });
        assert_eq!(position(text, 999), Position { line: 3, column: 1 });
    }

    #[test]
    fn keys_are_found_by_offset_and_by_path() {
        let text = "[a]\nx = 1\n[[l]]\nv = 1\n[[l]]\nv = 22\n";
        let table = DeTable::parse(text).unwrap().into_inner();
        let x = text.find("1").unwrap();
        let v2 = text.find("22").unwrap();
        assert_eq!(key_at(&table, x).as_deref(), Some("a.x"));
        assert_eq!(key_at(&table, v2).as_deref(), Some("l[1].v"));
        assert_eq!(span_of(&table, "a.x").map(|s| s.start), Some(x));
        assert_eq!(span_of(&table, "l[1].v").map(|s| s.start), Some(v2));
        assert_eq!(span_of(&table, "a.y"), None);
        assert_eq!(span_of(&table, "l[2].v"), None);
    }
}
