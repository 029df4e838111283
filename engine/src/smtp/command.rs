//! Command lines: RFC 5321 §4.1.1, with the verbs and parameters of the
//! extensions baton speaks (SIZE RFC 1870, 8BITMIME RFC 6152, SMTPUTF8
//! RFC 6531, CHUNKING RFC 3030, STARTTLS RFC 3207, AUTH RFC 4954).
//!
//! A line is handled without its CRLF. Verbs are case-insensitive (§2.4).
//! The server session splits the verb off with [`split_verb`] and parses
//! the arguments in the verb's own handler (so that "bad sequence" can be
//! answered before "bad syntax", as usual); [`Command::parse`] does the
//! whole line at once for clients and test sinks, and [`Command`]'s
//! `Display` formats a line for the client side.
//!
//! Tolerances, each because common clients need it: spaces after the
//! colon of `MAIL FROM:`/`RCPT TO:`, several spaces between arguments, and
//! trailing spaces.

use std::fmt;

use thiserror::Error;

use super::address::{parse_forward_path, parse_reverse_path};
use super::address::{ForwardPath, Path, PathError, ReversePath};

/// Why a command's arguments were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum CommandError {
    /// NUL, CR or LF in a line, or non-ASCII where it is not allowed.
    #[error("invalid byte in command line")]
    InvalidByte,
    /// The arguments do not fit the verb's grammar.
    #[error("syntax error in arguments")]
    Syntax,
    /// The path of MAIL or RCPT.
    #[error("bad path: {0}")]
    Path(#[from] PathError),
    /// An ESMTP parameter (`keyword[=value]`) is malformed or repeated.
    #[error("syntax error in parameters")]
    ParamSyntax,
}

/// The verbs baton knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
}

impl Verb {
    const ALL: [Verb; 14] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Quit,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::StartTls,
        Verb::Auth,
    ];

    /// The verb in upper case, as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
        }
    }

    /// Recognises a verb, in any case.
    pub fn from_word(word: &[u8]) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|verb| verb.as_str().as_bytes().eq_ignore_ascii_case(word))
    }

    /// MAIL and RCPT carry paths, whose non-ASCII bytes earn their own
    /// reply (RFC 6531 §3.5); elsewhere non-ASCII needs SMTPUTF8.
    pub fn takes_path(self) -> bool {
        matches!(self, Verb::Mail | Verb::Rcpt)
    }
}

/// One ESMTP parameter, `keyword[=value]` (RFC 5321 §4.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    /// In upper case: keywords are case-insensitive.
    pub keyword: String,
    pub value: Option<String>,
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={}", self.keyword, value),
            None => f.write_str(&self.keyword),
        }
    }
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The client's domain or address literal.
    Ehlo(String),
    Helo(String),
    Mail {
        path: ReversePath,
        params: Vec<Param>,
    },
    Rcpt {
        path: ForwardPath,
        params: Vec<Param>,
    },
    Data,
    /// RFC 3030: `size` octets of raw (not dot-stuffed) content follow.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
    /// A verb baton does not know, as sent.
    Unknown(String),
}

impl Command {
    /// Parses one command line, without its CRLF.
    ///
    /// `smtputf8`: whether the transaction declared SMTPUTF8, which allows
    /// UTF-8 in RCPT paths and in other arguments. (MAIL declares it for
    /// itself, with its own parameter.)
    pub fn parse(line: &[u8], smtputf8: bool) -> Result<Command, CommandError> {
        check_line(line)?;
        let (word, args) = split_verb(line);
        let Some(verb) = Verb::from_word(word) else {
            return Ok(Command::Unknown(String::from_utf8_lossy(word).into_owned()));
        };
        if !verb.takes_path() && !smtputf8 && !line.is_ascii() {
            return Err(CommandError::InvalidByte);
        }
        let text = || text_arg(args);
        Ok(match verb {
            Verb::Ehlo => Command::Ehlo(parse_hello(args)?),
            Verb::Helo => Command::Helo(parse_hello(args)?),
            Verb::Mail => {
                let (path, params) = parse_mail(args)?;
                Command::Mail { path, params }
            }
            Verb::Rcpt => {
                let (path, params) = parse_rcpt(args, smtputf8)?;
                Command::Rcpt { path, params }
            }
            Verb::Data => no_args(args).map(|()| Command::Data)?,
            Verb::Bdat => {
                let (size, last) = parse_bdat(args)?;
                Command::Bdat { size, last }
            }
            Verb::Rset => no_args(args).map(|()| Command::Rset)?,
            // RFC 5321 §4.1.1.9: NOOP's argument is ignored.
            Verb::Noop => Command::Noop,
            Verb::Quit => no_args(args).map(|()| Command::Quit)?,
            Verb::Vrfy => Command::Vrfy(text()?.ok_or(CommandError::Syntax)?),
            Verb::Expn => Command::Expn(text()?.ok_or(CommandError::Syntax)?),
            Verb::Help => Command::Help(text()?),
            Verb::StartTls => no_args(args).map(|()| Command::StartTls)?,
            Verb::Auth => {
                let (mechanism, initial_response) = parse_auth(args)?;
                Command::Auth {
                    mechanism,
                    initial_response,
                }
            }
        })
    }

    /// The line with its CRLF, ready to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        // MAIL and RCPT go out once per recipient, so they are written
        // by hand (through `Display` they took a tenth of a delivery's
        // client work); the rest, and any parameters, through `Display`.
        let mut line = match self {
            Command::Mail { path, params } if params.is_empty() => {
                let mut line = Vec::with_capacity(16 + path_len(path));
                line.extend_from_slice(b"MAIL FROM:");
                match path {
                    ReversePath::Null => line.extend_from_slice(b"<>"),
                    ReversePath::Path(path) => push_path(&mut line, path),
                }
                line
            }
            Command::Rcpt { path, params } if params.is_empty() => {
                let mut line = Vec::with_capacity(16 + 64);
                line.extend_from_slice(b"RCPT TO:");
                match path {
                    ForwardPath::Postmaster => line.extend_from_slice(b"<Postmaster>"),
                    ForwardPath::Path(path) => push_path(&mut line, path),
                }
                line
            }
            _ => self.to_string().into_bytes(),
        };
        line.extend_from_slice(b"\r\n");
        line
    }
}

/// `<local@domain>`, as `Display` writes it.
fn push_path(line: &mut Vec<u8>, path: &Path) {
    line.push(b'<');
    line.extend_from_slice(path.local.as_bytes());
    line.push(b'@');
    line.extend_from_slice(path.domain.as_bytes());
    line.push(b'>');
}

fn path_len(path: &ReversePath) -> usize {
    match path {
        ReversePath::Null => 2,
        ReversePath::Path(path) => path.local.len() + path.domain.len() + 3,
    }
}

impl fmt::Display for Command {
    /// The command line without its CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(domain) => write!(f, "EHLO {domain}"),
            Command::Helo(domain) => write!(f, "HELO {domain}"),
            Command::Mail { path, params } => {
                write!(f, "MAIL FROM:{path}")?;
                params.iter().try_for_each(|param| write!(f, " {param}"))
            }
            Command::Rcpt { path, params } => {
                write!(f, "RCPT TO:{path}")?;
                params.iter().try_for_each(|param| write!(f, " {param}"))
            }
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy(text) => write!(f, "VRFY {text}"),
            Command::Expn(text) => write!(f, "EXPN {text}"),
            Command::Help(None) => f.write_str("HELP"),
            Command::Help(Some(text)) => write!(f, "HELP {text}"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth {
                mechanism,
                initial_response: None,
            } => write!(f, "AUTH {mechanism}"),
            Command::Auth {
                mechanism,
                initial_response: Some(response),
            } => write!(f, "AUTH {mechanism} {response}"),
            Command::Unknown(text) => f.write_str(text),
        }
    }
}

/// Refuses NUL, CR and LF inside a line (without its CRLF): none has a
/// place in a command (RFC 5321 §2.3.8, §4.1.1), and a CR or LF here is
/// what line-ending confusion attacks use.
pub fn check_line(line: &[u8]) -> Result<(), CommandError> {
    if line.iter().any(|&byte| matches!(byte, 0 | b'\r' | b'\n')) {
        Err(CommandError::InvalidByte)
    } else {
        Ok(())
    }
}

/// Splits a line (without CRLF) into its verb word and its arguments,
/// with surrounding spaces trimmed.
pub fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    let line = trim_spaces(line);
    match line.iter().position(|&byte| byte == b' ') {
        Some(space) => (&line[..space], trim_spaces(&line[space + 1..])),
        None => (line, &[]),
    }
}

/// EHLO/HELO argument: a domain or an address literal (RFC 5321 §4.1.1.1).
/// The longest EHLO/HELO name taken (RFC 5321 §4.5.3.1.2: 255 octets).
pub const HELLO_NAME_BYTES_MAX: usize = 255;

pub fn parse_hello(args: &[u8]) -> Result<String, CommandError> {
    // RFC 5321 asks for a domain or an address literal, but applications,
    // printers and Windows hosts send names like `MY_PC` or `localhost`,
    // and refusing them refuses their mail: like Postfix by default, take
    // any one printable word and leave judging it to policy.
    let name = args
        .split(|&b| b == b' ')
        .find(|w| !w.is_empty())
        .ok_or(CommandError::Syntax)?;
    // RFC 5321 §4.5.3.1.2: a domain is at most 255 octets; longer names
    // would make `Received:` lines no header should have (RFC 5322 §2.1.1).
    if name.len() > HELLO_NAME_BYTES_MAX || !name.iter().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::Syntax);
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// MAIL arguments: `FROM:<reverse-path> [params]`.
///
/// The path is checked against the line's own SMTPUTF8 parameter
/// (RFC 6531 §3.4): it is parsed first with UTF-8 allowed, to find where
/// the parameters start, and refused afterwards if they do not declare it.
pub fn parse_mail(args: &[u8]) -> Result<(ReversePath, Vec<Param>), CommandError> {
    let rest = strip_prefix_ignore_case(args, b"FROM:").ok_or(CommandError::Syntax)?;
    let rest = bracket_bare_path(trim_spaces(rest))?;
    let rest = &rest[..];
    let (path, used) = parse_reverse_path(rest, true)?;
    let params = params_after_path(&rest[used..])?;
    let smtputf8 = params.iter().any(|param| param.keyword == "SMTPUTF8");
    if !smtputf8 && !path.is_ascii() {
        return Err(PathError::Utf8NotDeclared.into());
    }
    Ok((path, params))
}

/// RCPT arguments: `TO:<forward-path> [params]`.
pub fn parse_rcpt(args: &[u8], smtputf8: bool) -> Result<(ForwardPath, Vec<Param>), CommandError> {
    let rest = strip_prefix_ignore_case(args, b"TO:").ok_or(CommandError::Syntax)?;
    let rest = bracket_bare_path(trim_spaces(rest))?;
    let rest = &rest[..];
    let (path, used) = parse_forward_path(rest, smtputf8)?;
    let params = params_after_path(&rest[used..])?;
    Ok((path, params))
}

/// RFC 5321 wants `<path>`, but printers, old scripts and some libraries
/// write `MAIL FROM:user@example.com`. Like Postfix by default
/// (`strict_rfc821_envelopes = no`), one bare address is taken as if it
/// were bracketed; anything with a stray bracket is still refused.
fn bracket_bare_path(rest: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, CommandError> {
    if rest.starts_with(b"<") {
        return Ok(std::borrow::Cow::Borrowed(rest));
    }
    let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let (token, after) = rest.split_at(end);
    if token.is_empty() || token.iter().any(|&b| b == b'<' || b == b'>') {
        return Err(PathError::Syntax.into());
    }
    let mut bracketed = Vec::with_capacity(rest.len() + 2);
    bracketed.push(b'<');
    bracketed.extend_from_slice(token);
    bracketed.push(b'>');
    bracketed.extend_from_slice(after);
    Ok(std::borrow::Cow::Owned(bracketed))
}

/// What follows a path: nothing, or a space and parameters. Anything else
/// (`<a@b.example>junk`) belongs to a malformed path.
fn params_after_path(rest: &[u8]) -> Result<Vec<Param>, CommandError> {
    match rest.first() {
        None => Ok(Vec::new()),
        Some(b' ') => parse_params(rest),
        Some(_) => Err(PathError::Syntax.into()),
    }
}

/// Space-separated `keyword[=value]` parameters (RFC 5321 §4.1.2):
/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`,
/// `esmtp-value = 1*(%d33-60 / %d62-126)`, plus UTF-8 (RFC 6531 §3.3).
/// A keyword given twice is refused.
pub fn parse_params(input: &[u8]) -> Result<Vec<Param>, CommandError> {
    let mut params: Vec<Param> = Vec::new();
    for word in input
        .split(|&byte| byte == b' ')
        .filter(|word| !word.is_empty())
    {
        let param = parse_param(word)?;
        if params.iter().any(|seen| seen.keyword == param.keyword) {
            return Err(CommandError::ParamSyntax);
        }
        params.push(param);
    }
    Ok(params)
}

fn parse_param(word: &[u8]) -> Result<Param, CommandError> {
    let (keyword, value) = match word.iter().position(|&byte| byte == b'=') {
        Some(equals) => (&word[..equals], Some(&word[equals + 1..])),
        None => (word, None),
    };
    let keyword_ok = keyword.first().is_some_and(u8::is_ascii_alphanumeric)
        && keyword
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if !keyword_ok {
        return Err(CommandError::ParamSyntax);
    }
    let value = match value {
        None => None,
        Some(value) => {
            let bytes_ok = !value.is_empty()
                && value
                    .iter()
                    .all(|&b| matches!(b, 33..=60 | 62..=126 | 0x80..=0xFF));
            let text = std::str::from_utf8(value).map_err(|_| CommandError::ParamSyntax)?;
            if !bytes_ok {
                return Err(CommandError::ParamSyntax);
            }
            Some(text.to_owned())
        }
    };
    Ok(Param {
        keyword: String::from_utf8_lossy(keyword).to_ascii_uppercase(),
        value,
    })
}

/// Parameters in their canonical form: `KEYWORD[=value]`, space-separated.
pub fn format_params(params: &[Param]) -> String {
    let words: Vec<String> = params.iter().map(Param::to_string).collect();
    words.join(" ")
}

/// BDAT arguments: `chunk-size [SP "LAST"]` (RFC 3030 §2).
pub fn parse_bdat(args: &[u8]) -> Result<(u64, bool), CommandError> {
    let mut words = args
        .split(|&byte| byte == b' ')
        .filter(|word| !word.is_empty());
    let size = words
        .next()
        .and_then(parse_decimal)
        .ok_or(CommandError::Syntax)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(CommandError::Syntax),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok((size, last))
}

/// `1*DIGIT` as a u64; None for anything else, or on overflow.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, digit| {
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// AUTH arguments: `mechanism [initial-response]` (RFC 4954 §4): a SASL
/// mechanism name (RFC 4422 §3.1: 1 to 20 of A-Z, 0-9, `-`, `_`) and a
/// base64 response or `=`.
pub fn parse_auth(args: &[u8]) -> Result<(String, Option<String>), CommandError> {
    let mut words = args
        .split(|&byte| byte == b' ')
        .filter(|word| !word.is_empty());
    let mechanism = words.next().ok_or(CommandError::Syntax)?;
    let mechanism_ok = mechanism.len() <= 20
        && mechanism
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !mechanism_ok {
        return Err(CommandError::Syntax);
    }
    let response = words.next();
    let response_ok = response.is_none_or(|r| {
        r.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    });
    if !response_ok || words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok((
        String::from_utf8_lossy(mechanism).to_ascii_uppercase(),
        response.map(|r| String::from_utf8_lossy(r).into_owned()),
    ))
}

/// Verbs that take no argument (DATA, RSET, QUIT, STARTTLS: §4.1.1).
pub fn no_args(args: &[u8]) -> Result<(), CommandError> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Syntax)
    }
}

/// An optional free-text argument (VRFY, EXPN, HELP).
fn text_arg(args: &[u8]) -> Result<Option<String>, CommandError> {
    if args.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(args).map_err(|_| CommandError::InvalidByte)?;
    Ok(Some(text.to_owned()))
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &bytes[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Path;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes(), false)
    }

    fn path(local: &str, domain: &str) -> Path {
        Path {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn param(keyword: &str, value: Option<&str>) -> Param {
        Param {
            keyword: keyword.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("DaTa"), Ok(Command::Data));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(parse("QUIT  "), Ok(Command::Quit));
        assert_eq!(parse("NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse("XYZZY plugh"), Ok(Command::Unknown("XYZZY".into())));
        assert_eq!(parse(""), Ok(Command::Unknown(String::new())));
    }

    #[test]
    fn mail_with_parameters() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=123 body=8BITMIME SMTPUTF8"),
            Ok(Command::Mail {
                path: ReversePath::Path(path("a", "b.example")),
                params: vec![
                    param("SIZE", Some("123")),
                    param("BODY", Some("8BITMIME")),
                    param("SMTPUTF8", None),
                ],
            })
        );
        assert_eq!(
            parse("mail from: <>"),
            Ok(Command::Mail {
                path: ReversePath::Null,
                params: vec![]
            })
        );
    }

    #[test]
    fn mail_errors() {
        assert_eq!(parse("MAIL <a@b.example>"), Err(CommandError::Syntax));
        assert_eq!(parse("MAIL FROM"), Err(CommandError::Syntax));
        assert_eq!(
            parse("MAIL FROM:a@b.example>"),
            Err(PathError::Syntax.into())
        );
        assert!(
            parse("MAIL FROM:a@b.example").is_ok(),
            "bare paths are bracketed"
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example>x"),
            Err(PathError::Syntax.into())
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example> =1"),
            Err(CommandError::ParamSyntax)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE="),
            Err(CommandError::ParamSyntax)
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example> A=1 a=2"),
            Err(CommandError::ParamSyntax)
        );
        assert_eq!(
            Command::parse("MAIL FROM:<jö@b.example>".as_bytes(), false),
            Err(PathError::Utf8NotDeclared.into())
        );
        assert!(Command::parse("MAIL FROM:<jö@b.example> SMTPUTF8".as_bytes(), false).is_ok());
    }

    #[test]
    fn rcpt() {
        assert_eq!(
            parse("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                path: ForwardPath::Postmaster,
                params: vec![]
            })
        );
        assert_eq!(parse("RCPT TO:<>"), Err(PathError::NullPath.into()));
        assert_eq!(
            Command::parse("RCPT TO:<jö@b.example>".as_bytes(), false),
            Err(PathError::Utf8NotDeclared.into())
        );
        assert!(Command::parse("RCPT TO:<jö@b.example>".as_bytes(), true).is_ok());
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 1000 last"),
            Ok(Command::Bdat {
                size: 1000,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 18446744073709551615"),
            Ok(Command::Bdat {
                size: u64::MAX,
                last: false
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 18446744073709551616",
        ] {
            assert_eq!(parse(bad), Err(CommandError::Syntax), "{bad}");
        }
    }

    #[test]
    fn invalid_bytes() {
        assert_eq!(parse("NOOP \0"), Err(CommandError::InvalidByte));
        assert_eq!(parse("NOOP a\rb"), Err(CommandError::InvalidByte));
        assert_eq!(
            Command::parse("VRFY jö".as_bytes(), false),
            Err(CommandError::InvalidByte)
        );
        assert_eq!(
            Command::parse("VRFY jö".as_bytes(), true),
            Ok(Command::Vrfy("jö".into()))
        );
    }

    #[test]
    fn hello_argument() {
        assert_eq!(
            parse("EHLO [192.0.2.1]"),
            Ok(Command::Ehlo("[192.0.2.1]".into()))
        );
        assert_eq!(parse("EHLO"), Err(CommandError::Syntax));
        assert_eq!(parse("EHLO two words"), Ok(Command::Ehlo("two".into())));
        assert_eq!(parse("HELO bad_name"), Ok(Command::Helo("bad_name".into())));
    }

    #[test]
    fn no_argument_verbs() {
        assert_eq!(parse("DATA now"), Err(CommandError::Syntax));
        assert_eq!(parse("RSET x"), Err(CommandError::Syntax));
        assert_eq!(parse("VRFY"), Err(CommandError::Syntax));
        assert_eq!(parse("HELP"), Ok(Command::Help(None)));
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse("AUTH plain AHVzZXIAcGFzcw=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AHVzZXIAcGFzcw==".into())
            })
        );
        assert_eq!(parse("AUTH"), Err(CommandError::Syntax));
        assert_eq!(parse("AUTH PLAIN a b"), Err(CommandError::Syntax));
    }

    #[test]
    fn formats_for_the_client() {
        let mail = Command::Mail {
            path: ReversePath::Path(path("a", "b.example")),
            params: vec![param("SIZE", Some("10")), param("SMTPUTF8", None)],
        };
        assert_eq!(
            mail.to_bytes(),
            b"MAIL FROM:<a@b.example> SIZE=10 SMTPUTF8\r\n"
        );
        assert_eq!(
            Command::Bdat {
                size: 5,
                last: true
            }
            .to_bytes(),
            b"BDAT 5 LAST\r\n"
        );
        assert_eq!(
            format_params(&[param("A", None), param("B", Some("c"))]),
            "A B=c"
        );
    }

    fn path_strategy() -> impl Strategy<Value = Path> {
        (
            "[a-z0-9+_-]{1,6}(\\.[a-z0-9+_-]{1,6}){0,2}",
            "[a-z0-9]{1,8}(\\.[a-z]{2,5}){0,2}",
        )
            .prop_map(|(local, domain)| path(&local, &domain))
    }

    fn params_strategy() -> impl Strategy<Value = Vec<Param>> {
        proptest::collection::btree_map(
            "[A-Z][A-Z0-9-]{0,8}",
            proptest::option::of("[!-<>-~]{1,10}"),
            0..4,
        )
        .prop_map(|map| {
            map.into_iter()
                .map(|(keyword, value)| Param { keyword, value })
                .collect()
        })
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        prop_oneof![
            "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}".prop_map(Command::Ehlo),
            "[a-z]{1,8}".prop_map(Command::Helo),
            (proptest::option::of(path_strategy()), params_strategy()).prop_map(|(p, params)| {
                Command::Mail {
                    path: p.map_or(ReversePath::Null, ReversePath::Path),
                    params,
                }
            }),
            (path_strategy(), params_strategy()).prop_map(|(p, params)| Command::Rcpt {
                path: ForwardPath::Path(p),
                params
            }),
            Just(Command::Data),
            (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
            Just(Command::Rset),
            Just(Command::Noop),
            Just(Command::Quit),
            "[!-~]([ -~]{0,10}[!-~])?".prop_map(Command::Vrfy),
            "[!-~]{1,10}".prop_map(Command::Expn),
            proptest::option::of("[!-~]{1,10}").prop_map(Command::Help),
            Just(Command::StartTls),
            (
                "[A-Z0-9_-]{1,20}",
                proptest::option::of("[A-Za-z0-9+/=]{1,20}")
            )
                .prop_map(|(mechanism, initial_response)| Command::Auth {
                    mechanism,
                    initial_response
                }),
            "x[a-z]{0,6}".prop_map(|verb| Command::Unknown(verb.to_uppercase())),
        ]
    }

    proptest! {
        /// MAIL and RCPT are written by hand; they must say what
        /// `Display` says.
        #[test]
        fn to_bytes_is_display_and_crlf(command in command_strategy(), postmaster: bool) {
            let command = match command {
                Command::Rcpt { params, .. } if postmaster => Command::Rcpt {
                    path: ForwardPath::Postmaster,
                    params,
                },
                other => other,
            };
            prop_assert_eq!(command.to_bytes(), format!("{command}\r\n").into_bytes());
        }

        #[test]
        fn round_trips(command in command_strategy()) {
            let bytes = command.to_bytes();
            let line = bytes.strip_suffix(b"\r\n").unwrap();
            prop_assert_eq!(Command::parse(line, false), Ok(command));
        }

        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..200), utf8: bool) {
            let _ = Command::parse(&line, utf8);
        }

        #[test]
        fn never_panics_on_likely_lines(
            verb in "(MAIL FROM:|RCPT TO:|BDAT |EHLO |AUTH |mail from: )",
            rest in "[<>@a-z0-9 =:.,\"\\\\\\[\\]-]{0,40}",
        ) {
            let line = format!("{verb}{rest}");
            let _ = Command::parse(line.as_bytes(), false);
        }
    }
}
