//! Replies: RFC 5321 §4.2, with enhanced status codes (RFC 3463, RFC 2034).
//!
//! ```text
//! Reply-line = *( Reply-code "-" [ textstring ] CRLF )
//!                 Reply-code [ SP textstring ] CRLF
//! ```
//!
//! [`Reply::write_to`] formats for the server side; [`parse_reply`] reads
//! for the client side, bounded by [`ReplyLimits`] so that a peer cannot
//! make a client buffer without end. The parser is liberal (RFC 5321 §4.5
//! robustness): a bare LF ends a line too.

use std::fmt::Write as _;

use thiserror::Error;

/// RFC 5321 §4.5.3.1.5 sets 512 octets for a reply line; real servers
/// send longer ones, so a client accepts more before giving up.
pub const REPLY_LINE_BYTES_MAX_DEFAULT: usize = 2048;
/// Lines in one multi-line reply (an EHLO reply has a dozen or so).
pub const REPLY_LINES_MAX_DEFAULT: usize = 128;

/// `class.subject.detail`, e.g. `(2, 1, 0)` for `2.1.0` (RFC 3463).
pub type EnhancedCode = (u8, u16, u16);

/// Bounds for [`parse_reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// One line, CRLF included.
    pub line_bytes_max: usize,
    pub lines_max: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            line_bytes_max: REPLY_LINE_BYTES_MAX_DEFAULT,
            lines_max: REPLY_LINES_MAX_DEFAULT,
        }
    }
}

/// Why a reply could not be read. Each is fatal for the connection: the
/// client cannot find where the next reply starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply line longer than the limit")]
    LineTooLong,
    #[error("more reply lines than the limit")]
    TooManyLines,
    #[error("malformed reply line")]
    Syntax,
    #[error("lines of one reply carry different codes")]
    CodeMismatch,
}

/// One reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three digits, 200..=599 in practice.
    pub code: u16,
    /// Written at the start of every line's text when present.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, separator or enhanced code.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// 2 (success), 3 (intermediate), 4 (transient) or 5 (permanent).
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// Appends the reply in wire form. CR and LF inside a text become
    /// spaces: a line break in the text must never forge another line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines = if self.lines.is_empty() {
            &empty[..]
        } else {
            &self.lines[..]
        };
        let mut buffer = String::new();
        for (index, text) in lines.iter().enumerate() {
            let separator = if index + 1 == lines.len() { ' ' } else { '-' };
            buffer.clear();
            let _ = write!(buffer, "{:03}{separator}", self.code);
            if let Some((class, subject, detail)) = self.enhanced {
                let _ = write!(buffer, "{class}.{subject}.{detail}");
                if !text.is_empty() {
                    buffer.push(' ');
                }
            }
            buffer.extend(
                text.chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
            );
            buffer.push_str("\r\n");
            out.extend_from_slice(buffer.as_bytes());
        }
    }

    /// The reply in wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// A reply written on one line (`550 5.1.1 text`, as the spool and the
/// event log keep replies), parsed back; `None` if it is not one.
pub fn parse_reply_text(text: &str) -> Option<Reply> {
    let line = format!("{text}\r\n");
    let limits = ReplyLimits {
        line_bytes_max: line.len() + 1,
        lines_max: 1,
    };
    match parse_reply(line.as_bytes(), &limits) {
        Ok(Some((reply, _))) => Some(reply),
        _ => None,
    }
}

/// Reads one reply from the start of `input`.
///
/// Returns the reply and the bytes it took, `Ok(None)` if `input` does not
/// yet hold a whole reply (call again with more), or an error if it breaks
/// a limit or the grammar. Every line must carry the first line's code.
/// The enhanced code is taken from the first line (when its class matches
/// the reply's) and stripped from every line that repeats it.
pub fn parse_reply(
    input: &[u8],
    limits: &ReplyLimits,
) -> Result<Option<(Reply, usize)>, ReplyError> {
    // The lines are checked and the reply's end found first, copying
    // nothing: a reply that arrives in pieces is looked at once per piece,
    // and only a whole one is worth its strings.
    let Some((code, enhanced, used, count)) = scan_reply(input, limits)? else {
        return Ok(None);
    };
    let token = enhanced.map(|(_, token)| token);
    let mut lines = Vec::with_capacity(count);
    for raw in input[..used].split_inclusive(|&byte| byte == b'\n') {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (_, _, text) = parse_line(raw)?;
        lines.push(String::from_utf8_lossy(strip_token(text, token)).into_owned());
    }
    Ok(Some((
        Reply {
            code,
            enhanced: enhanced.map(|(code, _)| code),
            lines,
        },
        used,
    )))
}

/// One reply's code, enhanced code, length and line count, if `input`
/// holds all of it.
#[allow(clippy::type_complexity)]
fn scan_reply<'a>(
    input: &'a [u8],
    limits: &ReplyLimits,
) -> Result<Option<(u16, Option<(EnhancedCode, &'a [u8])>, usize, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = 0;
    let mut enhanced = None;
    let mut count = 0;
    loop {
        let rest = &input[pos..];
        let window = &rest[..rest.len().min(limits.line_bytes_max)];
        let Some(lf) = memchr::memchr(b'\n', window) else {
            return if rest.len() >= limits.line_bytes_max {
                Err(ReplyError::LineTooLong)
            } else {
                Ok(None)
            };
        };
        let raw = &rest[..lf];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += lf + 1;
        let (line_code, last, text) = parse_line(raw)?;
        if count == 0 {
            code = line_code;
            enhanced = parse_enhanced(line_code, text);
        } else if line_code != code {
            return Err(ReplyError::CodeMismatch);
        }
        count += 1;
        if last {
            return Ok(Some((code, enhanced, pos, count)));
        }
        if count >= limits.lines_max {
            return Err(ReplyError::TooManyLines);
        }
    }
}

/// A line's text without the enhanced code it repeats.
fn strip_token<'a>(text: &'a [u8], token: Option<&[u8]>) -> &'a [u8] {
    match token.and_then(|token| text.strip_prefix(token)) {
        Some([]) => &[],
        Some([b' ', after @ ..]) => after,
        _ => text,
    }
}

/// `Reply-code ( "-" / SP / end ) text`: (code, is last line, text).
fn parse_line(raw: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    // RFC 5321 §4.2: first digit 2-5, second 0-5, third 0-9.
    let (digits, rest) = match raw {
        [a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9', rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(ReplyError::Syntax),
    };
    let code = digits
        .iter()
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    match rest {
        [] => Ok((code, true, rest)),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(ReplyError::Syntax),
    }
}

/// An enhanced code `class.subject.detail` at the start of `text`, whose
/// class agrees with the reply code (RFC 2034 §4); returns the code and
/// its token as written.
fn parse_enhanced(code: u16, text: &[u8]) -> Option<(EnhancedCode, &[u8])> {
    let end = text
        .iter()
        .position(|&byte| byte == b' ')
        .unwrap_or(text.len());
    let token = &text[..end];
    let mut parts = token.split(|&byte| byte == b'.');
    let mut number = |digits_max: usize| -> Option<u16> {
        let part = parts.next()?;
        let ok = (1..=digits_max).contains(&part.len()) && part.iter().all(u8::is_ascii_digit);
        ok.then(|| part.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
    };
    let class = number(1)?;
    let subject = number(3)?;
    let detail = number(3)?;
    let class_ok = matches!(class, 2 | 4 | 5) && class == code / 100;
    if !class_ok || parts.next().is_some() {
        return None;
    }
    Some(((class as u8, subject, detail), token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        parse_reply(input, &ReplyLimits::default())
    }

    #[test]
    fn formats_one_line() {
        let reply = Reply::new(250, Some((2, 1, 0)), "Ok");
        assert_eq!(reply.to_bytes(), b"250 2.1.0 Ok\r\n");
        assert_eq!(
            Reply::new(220, None, "mx ESMTP").to_bytes(),
            b"220 mx ESMTP\r\n"
        );
        assert_eq!(
            Reply::new(250, Some((2, 0, 0)), "").to_bytes(),
            b"250 2.0.0\r\n"
        );
    }

    #[test]
    fn formats_multi_line() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "SIZE 10".into()],
        };
        assert_eq!(
            reply.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn text_cannot_forge_lines() {
        let reply = Reply::new(550, None, "a\r\n250 b");
        assert_eq!(reply.to_bytes(), b"550 a  250 b\r\n");
    }

    #[test]
    fn parses_multi_line_with_enhanced_codes() {
        let input = b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\nextra";
        let (reply, used) = parse(input).unwrap().unwrap();
        assert_eq!(used, input.len() - 5);
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, Some((2, 0, 0)));
        assert_eq!(reply.lines, ["first", "second", "third"]);
    }

    #[test]
    fn parses_liberally() {
        let (reply, _) = parse(b"220\n").unwrap().unwrap();
        assert_eq!(reply.lines, [""]);
        // The class of an enhanced code must agree with the reply.
        let (reply, _) = parse(b"250 5.0.0 not enhanced\r\n").unwrap().unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, ["5.0.0 not enhanced"]);
    }

    #[test]
    fn incomplete_input() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"250-first\r\n250 sec"), Ok(None));
        assert_eq!(parse(b"250 2.0.0 Ok\r"), Ok(None));
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"25 short\r\n"), Err(ReplyError::Syntax));
        assert_eq!(parse(b"650 bad class\r\n"), Err(ReplyError::Syntax));
        assert_eq!(parse(b"250_x\r\n"), Err(ReplyError::Syntax));
        assert_eq!(parse(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeMismatch));
        let limits = ReplyLimits {
            line_bytes_max: 10,
            lines_max: 2,
        };
        assert_eq!(
            parse_reply(b"250 0123456789", &limits),
            Err(ReplyError::LineTooLong)
        );
        assert_eq!(
            parse_reply(b"250 012345\r\n", &limits),
            Err(ReplyError::LineTooLong)
        );
        assert!(parse_reply(b"250 0123\r\n", &limits).unwrap().is_some());
        assert_eq!(
            parse_reply(b"250-a\r\n250-b\r\n", &limits),
            Err(ReplyError::TooManyLines)
        );
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let code = (2u16..=5, 0u16..=5, 0u16..=9).prop_map(|(a, b, c)| a * 100 + b * 10 + c);
        let enhanced = proptest::option::of((0u16..=999, 0u16..=999));
        let lines = proptest::collection::vec("[a-zA-Z <>@.,:;-]{0,40}", 1..6);
        (code, enhanced, lines).prop_map(|(code, enhanced, lines)| {
            let class = (code / 100) as u8;
            let enhanced = enhanced.filter(|_| class != 3).map(|(s, d)| (class, s, d));
            Reply {
                code,
                enhanced,
                lines,
            }
        })
    }

    proptest! {
        #[test]
        fn round_trips(reply in reply_strategy(), next in reply_strategy()) {
            let mut wire = reply.to_bytes();
            let first_len = wire.len();
            next.write_to(&mut wire);
            let (parsed, used) = parse(&wire).unwrap().unwrap();
            prop_assert_eq!(used, first_len);
            prop_assert_eq!(&parsed, &reply);
            let (parsed_next, used_next) = parse(&wire[used..]).unwrap().unwrap();
            prop_assert_eq!(used_next, wire.len() - first_len);
            prop_assert_eq!(parsed_next, next);
            // Any strict prefix is incomplete.
            for cut in 0..first_len {
                prop_assert_eq!(parse(&wire[..cut]), Ok(None));
            }
        }

        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300), line in 1usize..50, lines in 1usize..5) {
            let limits = ReplyLimits { line_bytes_max: line, lines_max: lines };
            if let Ok(Some((_, used))) = parse_reply(&input, &limits) {
                prop_assert!(used <= input.len());
            }
        }
    }
}
