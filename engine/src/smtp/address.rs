//! Paths: RFC 5321 §4.1.2, with the RFC 6531 (SMTPUTF8) extensions.
//!
//! ```text
//! Reverse-path = Path / "<>"
//! Forward-path = Path                     ; and "<Postmaster>", §4.1.1.3
//! Path         = "<" [ A-d-l ":" ] Mailbox ">"
//! Mailbox      = Local-part "@" ( Domain / address-literal )
//! ```
//!
//! A path is kept *as written* (a quoted local part keeps its quotes and
//! quoted pairs, a domain keeps its case) because those are the bytes baton
//! relays to the next hop. Only [`Path::routing_domain`] folds case: domain
//! names are case-insensitive, local parts are not (§2.4).
//!
//! UTF-8 (RFC 6531 §3.3: `atext`, `qtextSMTP` and `sub-domain` gain
//! `UTF8-non-ascii`) is parsed always but accepted only when the caller says
//! the transaction declared SMTPUTF8; otherwise the distinct
//! [`PathError::Utf8NotDeclared`] lets the server answer `553 5.6.7`
//! (RFC 6531 §3.5) instead of a syntax error.

use std::fmt;
use std::net::Ipv6Addr;

use thiserror::Error;

/// RFC 5321 §4.5.3.1.1.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// RFC 5321 §4.5.3.1.2.
pub const DOMAIN_BYTES_MAX: usize = 255;
/// RFC 5321 §4.5.3.1.3, "including the punctuation and element separators"
/// (so the brackets and any source route count).
pub const PATH_BYTES_MAX: usize = 256;
/// RFC 1035 §2.3.4.
pub const LABEL_BYTES_MAX: usize = 63;

/// Why a path was refused. Each maps to one reply in the server session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("syntax error in path")]
    Syntax,
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    #[error("path longer than 256 octets")]
    PathTooLong,
    #[error("null path <> not allowed here")]
    NullPath,
    #[error("non-ASCII address without SMTPUTF8")]
    Utf8NotDeclared,
}

/// A mailbox `local@domain`, as written on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Path {
    /// A dot-string, or a quoted string with its quotes and quoted pairs.
    pub local: String,
    /// A domain name, or an address literal with its brackets.
    pub domain: String,
}

impl Path {
    /// `local@domain`, without brackets: what the envelope stores.
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// The domain in lower case, the key for routing (RFC 5321 §2.4:
    /// domain names are case-insensitive).
    pub fn routing_domain(&self) -> String {
        if self.domain.is_ascii() {
            self.domain.to_ascii_lowercase()
        } else {
            self.domain.to_lowercase()
        }
    }

    /// Whether the domain is an address literal (`[192.0.2.1]`,
    /// `[IPv6:2001:db8::1]`), which routes to that address, not by MX.
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// False when the path needs SMTPUTF8 (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The argument of `MAIL FROM:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications (RFC 5321 §4.5.5).
    Null,
    Path(Path),
}

impl ReversePath {
    /// False when the path needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            ReversePath::Null => true,
            ReversePath::Path(path) => path.is_ascii(),
        }
    }

    /// `local@domain`, or the empty string for `<>`.
    pub fn address(&self) -> String {
        match self {
            ReversePath::Null => String::new(),
            ReversePath::Path(path) => path.address(),
        }
    }
}

impl fmt::Display for ReversePath {
    /// With brackets, as sent after `MAIL FROM:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path(path) => write!(f, "<{path}>"),
        }
    }
}

/// The argument of `RCPT TO:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept
    /// (RFC 5321 §4.1.1.3, §4.5.1).
    Postmaster,
    Path(Path),
}

impl ForwardPath {
    /// False when the path needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Postmaster => true,
            ForwardPath::Path(path) => path.is_ascii(),
        }
    }
}

impl fmt::Display for ForwardPath {
    /// With brackets, as sent after `RCPT TO:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Path(path) => write!(f, "<{path}>"),
        }
    }
}

/// Parses a reverse-path at the start of `input` (which begins with `<`);
/// returns it and the number of bytes it took.
///
/// `smtputf8`: whether the transaction declared SMTPUTF8.
pub fn parse_reverse_path(input: &[u8], smtputf8: bool) -> Result<(ReversePath, usize), PathError> {
    let (path, used) = match bracketed(input)? {
        (None, used) => (ReversePath::Null, used),
        (Some(path), used) => (ReversePath::Path(path), used),
    };
    if !smtputf8 && !path.is_ascii() {
        return Err(PathError::Utf8NotDeclared);
    }
    Ok((path, used))
}

/// Parses a forward-path at the start of `input` (which begins with `<`);
/// returns it and the number of bytes it took. `<>` is refused with
/// [`PathError::NullPath`].
pub fn parse_forward_path(input: &[u8], smtputf8: bool) -> Result<(ForwardPath, usize), PathError> {
    const POSTMASTER: &[u8] = b"<postmaster>";
    if let Some(head) = input.get(..POSTMASTER.len()) {
        if head.eq_ignore_ascii_case(POSTMASTER) {
            return Ok((ForwardPath::Postmaster, POSTMASTER.len()));
        }
    }
    let path = match bracketed(input)? {
        (None, _) => return Err(PathError::NullPath),
        (Some(path), used) => (ForwardPath::Path(path), used),
    };
    if !smtputf8 && !path.0.is_ascii() {
        return Err(PathError::Utf8NotDeclared);
    }
    Ok(path)
}

/// Checks that all of `input` is an ASCII domain or address literal: the
/// argument of EHLO/HELO (RFC 5321 §4.1.1.1; RFC 6531 §3.7.1 keeps it
/// ASCII, A-labels only).
pub fn parse_host(input: &[u8]) -> Result<(), PathError> {
    let mut cursor = Cursor {
        bytes: input,
        pos: 0,
    };
    host(&mut cursor, Charset::Ascii)?;
    if cursor.pos == input.len() {
        Ok(())
    } else {
        Err(PathError::Syntax)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Charset {
    Ascii,
    /// RFC 6531: non-ASCII bytes are allowed where text is, checked to be
    /// UTF-8 once the whole path is known.
    Utf8,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Result<(), PathError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(PathError::Syntax)
        }
    }

    /// Advances over bytes matching `accept`; returns the span.
    fn take_while(&mut self, accept: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.pos;
        while self.peek().is_some_and(&accept) {
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }
}

/// `"<" [ A-d-l ":" ] Mailbox ">"` or `"<>"` (None).
fn bracketed(input: &[u8]) -> Result<(Option<Path>, usize), PathError> {
    let mut cursor = Cursor {
        bytes: input,
        pos: 0,
    };
    cursor.expect(b'<')?;
    if cursor.eat(b'>') {
        return Ok((None, cursor.pos));
    }
    if cursor.peek() == Some(b'@') {
        // RFC 5321 §4.1.1.3 and appendix C: source routes are accepted and
        // ignored; the mail goes to the mailbox's domain.
        source_route(&mut cursor)?;
    }
    let local_start = cursor.pos;
    local_part(&mut cursor)?;
    let local = &input[local_start..cursor.pos];
    cursor.expect(b'@')?;
    let domain_start = cursor.pos;
    host(&mut cursor, Charset::Utf8)?;
    let domain = &input[domain_start..cursor.pos];
    cursor.expect(b'>')?;

    if local.len() > LOCAL_PART_BYTES_MAX {
        return Err(PathError::LocalPartTooLong);
    }
    if cursor.pos > PATH_BYTES_MAX {
        return Err(PathError::PathTooLong);
    }
    let local = std::str::from_utf8(local).map_err(|_| PathError::Syntax)?;
    let domain = std::str::from_utf8(domain).map_err(|_| PathError::Syntax)?;
    let path = Path {
        local: local.to_owned(),
        domain: domain.to_owned(),
    };
    Ok((Some(path), cursor.pos))
}

/// `A-d-l ":"`, where `A-d-l = At-domain *( "," At-domain )`.
fn source_route(cursor: &mut Cursor) -> Result<(), PathError> {
    loop {
        cursor.expect(b'@')?;
        domain(cursor, Charset::Utf8)?;
        if !cursor.eat(b',') {
            break;
        }
    }
    cursor.expect(b':')
}

/// `Dot-string / Quoted-string`.
fn local_part(cursor: &mut Cursor) -> Result<(), PathError> {
    if cursor.eat(b'"') {
        return quoted_string_rest(cursor);
    }
    loop {
        if cursor.take_while(is_atext).is_empty() {
            return Err(PathError::Syntax);
        }
        if !cursor.eat(b'.') {
            return Ok(());
        }
    }
}

/// After the opening DQUOTE: `*QcontentSMTP DQUOTE`.
fn quoted_string_rest(cursor: &mut Cursor) -> Result<(), PathError> {
    loop {
        let byte = cursor.peek().ok_or(PathError::Syntax)?;
        cursor.pos += 1;
        match byte {
            b'"' => return Ok(()),
            // quoted-pairSMTP = %d92 %d32-126
            b'\\' => match cursor.peek() {
                Some(32..=126) => cursor.pos += 1,
                _ => return Err(PathError::Syntax),
            },
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531)
            32 | 33 | 35..=91 | 93..=126 | 0x80..=0xFF => {}
            _ => return Err(PathError::Syntax),
        }
    }
}

/// RFC 5322 §3.2.3 `atext`, plus UTF-8 (RFC 6531 §3.3).
fn is_atext(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte) || byte >= 0x80
}

/// `Domain / address-literal`, at most [`DOMAIN_BYTES_MAX`] octets.
fn host(cursor: &mut Cursor, charset: Charset) -> Result<(), PathError> {
    if cursor.peek() == Some(b'[') {
        let start = cursor.pos;
        address_literal(cursor)?;
        if cursor.pos - start > DOMAIN_BYTES_MAX {
            return Err(PathError::DomainTooLong);
        }
        Ok(())
    } else {
        domain(cursor, charset)
    }
}

/// `sub-domain *("." sub-domain)`; no empty labels, no trailing dot.
fn domain(cursor: &mut Cursor, charset: Charset) -> Result<(), PathError> {
    let start = cursor.pos;
    loop {
        label(cursor, charset)?;
        if !cursor.eat(b'.') {
            break;
        }
    }
    if cursor.pos - start > DOMAIN_BYTES_MAX {
        return Err(PathError::DomainTooLong);
    }
    Ok(())
}

/// `sub-domain = Let-dig [Ldh-str]`: letters, digits and inner hyphens
/// (or a U-label's UTF-8, RFC 6531), at most 63 octets.
fn label(cursor: &mut Cursor, charset: Charset) -> Result<(), PathError> {
    let label = cursor.take_while(|byte| {
        byte.is_ascii_alphanumeric() || byte == b'-' || (charset == Charset::Utf8 && byte >= 0x80)
    });
    match (label.first(), label.last()) {
        (Some(&first), Some(&last))
            if first != b'-' && last != b'-' && label.len() <= LABEL_BYTES_MAX =>
        {
            Ok(())
        }
        _ => Err(PathError::Syntax),
    }
}

/// `"[" ( IPv4-address-literal / IPv6-address-literal /
/// General-address-literal ) "]"` (RFC 5321 §4.1.3).
fn address_literal(cursor: &mut Cursor) -> Result<(), PathError> {
    cursor.expect(b'[')?;
    // dcontent = %d33-90 / %d94-126
    let content = cursor.take_while(|byte| matches!(byte, 33..=90 | 94..=126));
    let valid = literal_content(content);
    cursor.expect(b']')?;
    if valid {
        Ok(())
    } else {
        Err(PathError::Syntax)
    }
}

fn literal_content(content: &[u8]) -> bool {
    const IPV6_TAG: &[u8] = b"IPv6:";
    if let Some(tag) = content.get(..IPV6_TAG.len()) {
        if tag.eq_ignore_ascii_case(IPV6_TAG) {
            return std::str::from_utf8(&content[IPV6_TAG.len()..])
                .is_ok_and(|text| text.parse::<Ipv6Addr>().is_ok());
        }
    }
    match content.iter().position(|&byte| byte == b':') {
        // General-address-literal = Standardized-tag ":" 1*dcontent
        Some(colon) => is_ldh_str(&content[..colon]) && colon + 1 < content.len(),
        None => is_ipv4(content),
    }
}

/// `Let-dig [Ldh-str]`: a label without the length limit.
fn is_ldh_str(text: &[u8]) -> bool {
    match (text.first(), text.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && text.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `Snum 3("." Snum)`, `Snum = 1*3DIGIT` with a value up to 255. Leading
/// zeros are allowed, as the grammar allows them.
fn is_ipv4(text: &[u8]) -> bool {
    let mut parts = 0;
    for part in text.split(|&byte| byte == b'.') {
        parts += 1;
        let digits_ok = (1..=3).contains(&part.len()) && part.iter().all(u8::is_ascii_digit);
        if !digits_ok || part.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) > 255 {
            return false;
        }
    }
    parts == 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reverse(input: &str) -> Result<ReversePath, PathError> {
        parse_reverse_path(input.as_bytes(), false).map(|(path, _)| path)
    }

    fn forward(input: &str, smtputf8: bool) -> Result<ForwardPath, PathError> {
        parse_forward_path(input.as_bytes(), smtputf8).map(|(path, _)| path)
    }

    fn path(local: &str, domain: &str) -> Path {
        Path {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn null_path() {
        assert_eq!(reverse("<>"), Ok(ReversePath::Null));
        assert_eq!(forward("<>", false), Err(PathError::NullPath));
    }

    #[test]
    fn plain_mailbox() {
        let parsed = reverse("<John.Doe+tag@Example.COM>").unwrap();
        assert_eq!(
            parsed,
            ReversePath::Path(path("John.Doe+tag", "Example.COM"))
        );
        let ReversePath::Path(p) = parsed else {
            unreachable!()
        };
        assert_eq!(p.routing_domain(), "example.com");
        assert_eq!(p.address(), "John.Doe+tag@Example.COM");
    }

    #[test]
    fn returns_the_length_it_took() {
        let input = b"<a@b.example> SIZE=10";
        let (_, used) = parse_reverse_path(input, false).unwrap();
        assert_eq!(used, 13);
    }

    #[test]
    fn source_route_is_ignored() {
        assert_eq!(
            forward("<@relay.example,@other.example:user@dest.example>", false),
            Ok(ForwardPath::Path(path("user", "dest.example")))
        );
        assert_eq!(
            forward("<@relay.example user@d.example>", false),
            Err(PathError::Syntax)
        );
        assert_eq!(forward("<@:user@d.example>", false), Err(PathError::Syntax));
    }

    #[test]
    fn quoted_local_part_keeps_its_quotes() {
        assert_eq!(
            forward(r#"<"john doe"@example.com>"#, false),
            Ok(ForwardPath::Path(path(r#""john doe""#, "example.com")))
        );
        assert_eq!(
            forward(r#"<"a\"b\\c@d"@example.com>"#, false),
            Ok(ForwardPath::Path(path(r#""a\"b\\c@d""#, "example.com")))
        );
        assert_eq!(
            forward(r#"<"unterminated@example.com>"#, false),
            Err(PathError::Syntax)
        );
        assert_eq!(
            forward("<\"tab\there\"@example.com>", false),
            Err(PathError::Syntax)
        );
    }

    #[test]
    fn address_literals() {
        for ok in [
            "<u@[127.0.0.1]>",
            "<u@[IPv6:::1]>",
            "<u@[ipv6:2001:db8::1]>",
            "<u@[IPv6:::ffff:192.0.2.1]>",
            "<u@[x-tag:anything]>",
            "<u@[001.02.3.255]>",
        ] {
            assert!(forward(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "<u@[256.0.0.1]>",
            "<u@[1.2.3]>",
            "<u@[1.2.3.4.5]>",
            "<u@[IPv6:1.2.3.4]>",
            "<u@[IPv6:::1%eth0]>",
            "<u@[]>",
            "<u@[tag:]>",
            "<u@[127.0.0.1>",
        ] {
            assert_eq!(forward(bad, false), Err(PathError::Syntax), "{bad}");
        }
        let ForwardPath::Path(p) = forward("<u@[IPv6:::1]>", false).unwrap() else {
            unreachable!()
        };
        assert!(p.is_address_literal());
    }

    #[test]
    fn domain_syntax() {
        for bad in [
            "<u@>",
            "<u@example..com>",
            "<u@.example.com>",
            "<u@example.com.>",
            "<u@-example.com>",
            "<u@example-.com>",
            "<u@exa_mple.com>",
            "<u@exa mple.com>",
            "<@example.com>",
            "<u.@example.com>",
            "<.u@example.com>",
            "<u..v@example.com>",
            "<u@example.com",
            "u@example.com",
            "<u>",
        ] {
            assert_eq!(forward(bad, false), Err(PathError::Syntax), "{bad}");
        }
        assert!(forward("<u@localhost>", false).is_ok());
        assert!(forward("<u@3com.example>", false).is_ok());
    }

    #[test]
    fn postmaster_without_domain() {
        assert_eq!(forward("<Postmaster>", false), Ok(ForwardPath::Postmaster));
        assert_eq!(forward("<POSTMASTER>", false), Ok(ForwardPath::Postmaster));
        assert_eq!(reverse("<Postmaster>"), Err(PathError::Syntax));
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(LOCAL_PART_BYTES_MAX);
        assert!(forward(&format!("<{local}@example.com>"), false).is_ok());
        let local = "a".repeat(LOCAL_PART_BYTES_MAX + 1);
        assert_eq!(
            forward(&format!("<{local}@example.com>"), false),
            Err(PathError::LocalPartTooLong)
        );
        // Four labels of 63 = 255 octets: the longest domain.
        let label = "d".repeat(LABEL_BYTES_MAX);
        let domain = [label.as_str(); 4].join(".");
        assert_eq!(domain.len(), DOMAIN_BYTES_MAX);
        assert!(parse_host(domain.as_bytes()).is_ok());
        assert_eq!(
            parse_host(format!("{domain}x").as_bytes()),
            Err(PathError::Syntax)
        );
        assert_eq!(
            parse_host(format!("a.{domain}").as_bytes()),
            Err(PathError::DomainTooLong)
        );
        // In a path, "<a@" and ">" leave 252 octets for the domain.
        let domain = format!("{}.{}", [label.as_str(); 3].join("."), "d".repeat(60));
        let longest = format!("<a@{domain}>");
        assert_eq!(longest.len(), PATH_BYTES_MAX);
        assert!(forward(&longest, false).is_ok());
        assert_eq!(
            forward(&format!("<ab@{domain}>"), false),
            Err(PathError::PathTooLong)
        );
        let too_long_label = "d".repeat(LABEL_BYTES_MAX + 1);
        assert_eq!(
            parse_host(too_long_label.as_bytes()),
            Err(PathError::Syntax)
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        let input = "<用户@例子.广告>";
        assert_eq!(forward(input, false), Err(PathError::Utf8NotDeclared));
        assert_eq!(
            forward(input, true),
            Ok(ForwardPath::Path(path("用户", "例子.广告")))
        );
        assert_eq!(
            parse_reverse_path("<jösé@example.com>".as_bytes(), false),
            Err(PathError::Utf8NotDeclared)
        );
        // Bytes that are not UTF-8 are a syntax error either way.
        assert_eq!(
            parse_forward_path(b"<\xff@example.com>", true),
            Err(PathError::Syntax)
        );
        assert_eq!(parse_host("例子.广告".as_bytes()), Err(PathError::Syntax));
    }

    #[test]
    fn unicode_routing_domain_is_lowercased() {
        let ForwardPath::Path(p) = forward("<u@ÉCOLE.Example>", true).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.routing_domain(), "école.example");
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(ReversePath::Null.to_string(), "<>");
        assert_eq!(ForwardPath::Postmaster.to_string(), "<Postmaster>");
        let p = ForwardPath::Path(path("a", "b.example"));
        assert_eq!(p.to_string(), "<a@b.example>");
    }

    fn local_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-zA-Z0-9_+-]{1,10}){0,3}",
            "\"([ !#-\\[\\]-~]|\\\\[ -~]){0,20}\"",
            "[a-zé用]{1,5}",
        ]
    }

    fn domain_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?){0,4}",
            "\\[(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})(\\.(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})){3}\\]",
            Just("[IPv6:2001:db8::1]".to_string()),
            "[a-zé例]{1,6}\\.[a-z]{2,4}",
        ]
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300), utf8: bool) {
            let _ = parse_reverse_path(&input, utf8);
            let _ = parse_forward_path(&input, utf8);
            let _ = parse_host(&input);
        }

        #[test]
        fn never_panics_near_valid(prefix in "<[@a-z.,:\"\\\\\\[\\]<>]{0,30}", utf8: bool) {
            let _ = parse_reverse_path(prefix.as_bytes(), utf8);
            let _ = parse_forward_path(prefix.as_bytes(), utf8);
        }

        #[test]
        fn round_trips(local in local_strategy(), domain in domain_strategy(), tail in "( [A-Z=0-9]{0,8})?") {
            let original = Path { local, domain };
            let text = format!("<{original}>{tail}");
            let (parsed, used) = parse_forward_path(text.as_bytes(), true).unwrap();
            prop_assert_eq!(used, text.len() - tail.len());
            prop_assert_eq!(&parsed, &ForwardPath::Path(original.clone()));
            prop_assert_eq!(parsed.to_string(), format!("<{original}>"));
            let ascii = original.is_ascii();
            let strict = parse_reverse_path(text.as_bytes(), false);
            prop_assert_eq!(strict.is_ok(), ascii);
            prop_assert_eq!(original.routing_domain(), original.domain.to_lowercase());
        }
    }
}
