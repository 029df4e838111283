//! Delivery status notifications: the bounce (RFC 3464, RFC 3461, RFC 6522).
//!
//! [`build`] writes the notification for the recipients of one message
//! that failed, in wire form, ready to be spooled as a new message with
//! the null reverse path (RFC 5321 §4.5.5: a notification never earns a
//! notification) and the original sender as its one recipient.
//! [`wants_notification`] says whether a recipient gets one at all.
//!
//! ```text
//! multipart/report; report-type=delivery-status
//! ├── text/plain                   what happened, for a human
//! ├── message/delivery-status      the same, for a program (RFC 3464 §2)
//! └── text/rfc822-headers          the original's header section, or
//!     message/rfc822               the whole original with RET=FULL
//! ```
//!
//! The content is composed raw (CRLF lines, no stuffing): the original is
//! un-stuffed line by line as it is copied, and the whole notification is
//! stuffed once at the end, so that no line is stuffed twice. Everything
//! that comes from outside (the original, addresses, reply texts) is
//! bounded by a named limit, and every line is kept within the 998 octets
//! of RFC 5322 §2.1.1: header fields fold at spaces, longer runs are cut.

#![forbid(unsafe_code)]

use memchr::memmem;

use super::events::reply_line;
use crate::smtp::data::dot_stuff;
use crate::smtp::date::rfc5322_date;
use crate::smtp::reply::{EnhancedCode, Reply};

/// RFC 5322 §2.1.1: a line is at most 998 octets without its CRLF.
pub const LINE_BYTES_MAX: usize = 998;
/// RFC 5322 §2.1.1 asks for 78: where header fields and the human text
/// fold when they can.
const LINE_BYTES_FOLD: usize = 78;
/// The original's header section in a notification without RET=FULL:
/// real header sections are a few KiB; one larger than this is cut at a
/// line boundary so that a hostile message cannot make a huge bounce.
pub const ORIGINAL_HEADERS_BYTES_MAX: usize = 64 * 1024;
/// The whole original with RET=FULL (RFC 3461 §4.3), cut at a line
/// boundary past this: a bounce goes back to a sender who has the message
/// anyway, and should not cost the queue another full-sized message.
pub const ORIGINAL_FULL_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Characters of the caller's unique token in the MIME boundary, which
/// RFC 2046 §5.1.1 limits to 70 characters in all.
const BOUNDARY_TOKEN_CHARS_MAX: usize = 40;
/// A boundary starts with `=_`, which no quoted-printable or base64 text
/// contains (RFC 2045 §6.7 needs `=` to be followed by hex digits).
const BOUNDARY_PREFIX: &str = "=_baton-dsn-";

/// One recipient the notification reports on.
#[derive(Clone, Copy, Debug)]
pub struct FailedRecipient<'a> {
    /// The recipient address as given in RCPT (no angle brackets).
    pub address: &'a [u8],
    /// The RCPT parameters as stored (`KEYWORD=value`, space-separated):
    /// `ORCPT` becomes `Original-Recipient` (RFC 3461 §4.2).
    pub params: &'a [u8],
    /// The reply that failed it: a remote one (`550 5.1.1 user unknown`)
    /// or baton's own (`550 5.4.4 null MX`, `421 4.4.2 expired`).
    pub reply: &'a Reply,
    /// The host that gave the reply (`mx1.example.org [192.0.2.1]`), if a
    /// remote one did: its name goes into `Remote-MTA`.
    pub remote_host: Option<&'a str>,
}

/// What a notification is built from.
#[derive(Clone, Copy, Debug)]
pub struct Bounce<'a> {
    /// Our hostname: `MAILER-DAEMON@hostname`, `Reporting-MTA`, and the
    /// `Message-ID` domain.
    pub hostname: &'a str,
    /// The original message's queue id, for `X-Baton-Queue-ID` and the
    /// human text.
    pub queue_id: &'a str,
    /// The original envelope sender (no brackets): the notification's `To`.
    pub original_sender: &'a [u8],
    /// The original MAIL parameters: `ENVID` becomes
    /// `Original-Envelope-Id`; `RET=FULL` returns the whole message,
    /// anything else only its header section (RFC 3461 §4.3).
    pub original_mail_params: &'a [u8],
    pub arrival_unix_secs: u64,
    /// The notification's `Date` and each recipient's `Last-Attempt-Date`.
    pub now_unix_secs: u64,
    /// The stored original, in wire form (CRLF, dot-stuffed, no
    /// terminating dot), starting with baton's `Received:` header.
    pub original: &'a [u8],
    pub failed: &'a [FailedRecipient<'a>],
    /// A token unique to this notification (e.g. its own queue id), for
    /// the `Message-ID` and the MIME boundary.
    pub unique: &'a str,
}

/// Whether the sender of a message with this reverse path should hear
/// about the failure of a recipient with these RCPT parameters.
///
/// Never for the null reverse path (RFC 5321 §6.1, RFC 3464 §1: a
/// notification is not answered by another). With `NOTIFY` (RFC 3461
/// §4.1), only when it lists `FAILURE`: `NEVER`, `SUCCESS` or `DELAY`
/// alone ask for no failure notification. Without `NOTIFY`, always.
pub fn wants_notification(reverse_path: &[u8], rcpt_params: &[u8]) -> bool {
    if reverse_path.is_empty() || reverse_path == b"<>" {
        return false;
    }
    match param_value(rcpt_params, "NOTIFY") {
        None => true,
        Some(list) => list
            .split(|&byte| byte == b',')
            .any(|item| item.eq_ignore_ascii_case(b"FAILURE")),
    }
}

/// The notification in wire form (CRLF, dot-stuffed, no terminating dot).
pub fn build(bounce: &Bounce<'_>) -> Vec<u8> {
    let ret_full = param_value(bounce.original_mail_params, "RET")
        .is_some_and(|value| value.eq_ignore_ascii_case(b"FULL"));
    let original = if ret_full {
        copy_original(bounce.original, ORIGINAL_FULL_BYTES_MAX, false)
    } else {
        copy_original(bounce.original, ORIGINAL_HEADERS_BYTES_MAX, true)
    };
    let human = human_text(bounce, ret_full, original.truncated);
    let status = delivery_status(bounce);
    let boundary = boundary(bounce.unique, &[&human, &status, &original.content]);
    let (original_type, original_description): (&[u8], &[u8]) = if ret_full {
        (b"message/rfc822", b"Undelivered message")
    } else {
        (b"text/rfc822-headers", b"Undelivered message headers")
    };
    let parts: [(&[u8], &[u8], &[u8]); 3] = [
        (b"text/plain; charset=utf-8", b"Notification", &human),
        (b"message/delivery-status", b"Delivery report", &status),
        (original_type, original_description, &original.content),
    ];
    let eight_bit = parts.iter().any(|(_, _, content)| !content.is_ascii());

    let mut raw = Vec::with_capacity(4096 + human.len() + status.len() + original.content.len());
    let token = boundary_token(bounce.unique);
    let mut to = b"<".to_vec();
    to.extend_from_slice(bounce.original_sender);
    to.push(b'>');
    push_field(
        &mut raw,
        "From",
        format!("Mail Delivery System <MAILER-DAEMON@{}>", bounce.hostname).as_bytes(),
    );
    push_field(&mut raw, "To", &to);
    push_field(&mut raw, "Subject", b"Undelivered Mail Returned to Sender");
    push_field(
        &mut raw,
        "Date",
        rfc5322_date(bounce.now_unix_secs).as_bytes(),
    );
    push_field(
        &mut raw,
        "Message-ID",
        format!("<dsn.{token}@{}>", bounce.hostname).as_bytes(),
    );
    // RFC 3834 §5: automatic responders leave this message alone.
    push_field(&mut raw, "Auto-Submitted", b"auto-replied");
    push_field(&mut raw, "MIME-Version", b"1.0");
    push_field(
        &mut raw,
        "Content-Type",
        format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\"")
            .as_bytes(),
    );
    if eight_bit {
        // RFC 2045 §6.4: a multipart is labelled with its widest part.
        push_field(&mut raw, "Content-Transfer-Encoding", b"8bit");
    }
    raw.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n");
    for (content_type, description, content) in parts {
        raw.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        push_field(&mut raw, "Content-Type", content_type);
        push_field(&mut raw, "Content-Description", description);
        if !content.is_ascii() {
            push_field(&mut raw, "Content-Transfer-Encoding", b"8bit");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(content);
    }
    raw.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    dot_stuff(&raw)
}

/// The original's content as it goes into the third part.
struct Original {
    /// Raw CRLF lines, un-stuffed.
    content: Vec<u8>,
    /// Cut short at the byte limit.
    truncated: bool,
}

/// Copies the original's lines, un-stuffed, up to `bytes_max`, stopping
/// at the empty line that ends the header section when `headers_only`.
/// A line over [`LINE_BYTES_MAX`] is cut into several; in the header
/// section the pieces after the first start with a space, so they stay
/// continuations of the same field (RFC 5322 §2.2.3).
fn copy_original(wire: &[u8], bytes_max: usize, headers_only: bool) -> Original {
    let mut content = Vec::with_capacity(wire.len().min(bytes_max));
    let mut in_header = true;
    let mut rest = wire;
    while !rest.is_empty() {
        let (line, next) = match memmem::find(rest, b"\r\n") {
            Some(end) => (&rest[..end], &rest[end + 2..]),
            None => (rest, &rest[rest.len()..]),
        };
        // RFC 5321 §4.5.2: the first dot of a line that starts with one
        // is the stuffing's.
        let line = line.strip_prefix(b".").unwrap_or(line);
        if in_header && line.is_empty() {
            if headers_only {
                break;
            }
            in_header = false;
        }
        let before = content.len();
        if before + line.len() + 2 > bytes_max {
            return Original {
                content,
                truncated: true,
            };
        }
        push_cut(&mut content, line, if in_header { b" " } else { b"" });
        if content.len() > bytes_max {
            // The cuts' own CRLFs went over.
            content.truncate(before);
            return Original {
                content,
                truncated: true,
            };
        }
        rest = next;
    }
    Original {
        content,
        truncated: false,
    }
}

/// Appends `line` and CRLF, cut every [`LINE_BYTES_MAX`] octets; each
/// piece after the first starts with `continuation`.
fn push_cut(out: &mut Vec<u8>, line: &[u8], continuation: &[u8]) {
    debug_assert!(continuation.len() < LINE_BYTES_MAX);
    let mut room = LINE_BYTES_MAX;
    let mut rest = line;
    loop {
        let take = rest.len().min(room);
        out.extend_from_slice(&rest[..take]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[take..];
        if rest.is_empty() {
            return;
        }
        out.extend_from_slice(continuation);
        room = LINE_BYTES_MAX - continuation.len();
    }
}

/// The first part: what happened, for the sender to read.
fn human_text(bounce: &Bounce<'_>, ret_full: bool, truncated: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + bounce.failed.len() * 256);
    let intro = format!(
        "This is the mail delivery system at {}. Your message could not be \
         delivered to one or more of its recipients. It was received on {} \
         with queue id {}.",
        bounce.hostname,
        rfc5322_date(bounce.arrival_unix_secs),
        bounce.queue_id,
    );
    push_folded(&mut out, b"", intro.as_bytes(), b"");
    out.extend_from_slice(b"\r\n");
    let attached = match (ret_full, truncated) {
        (false, false) => "Its header section is attached below.".to_owned(),
        (true, false) => "It is attached below.".to_owned(),
        (false, true) => format!(
            "The first {ORIGINAL_HEADERS_BYTES_MAX} bytes of its header section are attached below."
        ),
        (true, true) => format!("Its first {ORIGINAL_FULL_BYTES_MAX} bytes are attached below."),
    };
    push_folded(&mut out, b"", attached.as_bytes(), b"");
    for recipient in bounce.failed {
        out.extend_from_slice(b"\r\n");
        let mut who = b"<".to_vec();
        who.extend_from_slice(recipient.address);
        who.extend_from_slice(b">:");
        if let Some(host) = recipient.remote_host {
            who.extend_from_slice(format!(" host {host} said:").as_bytes());
        }
        push_folded(&mut out, b"", &who, b"    ");
        push_folded(
            &mut out,
            b"    ",
            reply_line(recipient.reply).as_bytes(),
            b"    ",
        );
    }
    out
}

/// The second part, `message/delivery-status` (RFC 3464 §2), its fields
/// in the order of the RFC's grammar.
fn delivery_status(bounce: &Bounce<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + bounce.failed.len() * 512);
    if let Some(envid) = param_value(bounce.original_mail_params, "ENVID") {
        push_field(&mut out, "Original-Envelope-Id", &xtext_or_raw(envid));
    }
    push_field(
        &mut out,
        "Reporting-MTA",
        format!("dns; {}", bounce.hostname).as_bytes(),
    );
    push_field(
        &mut out,
        "Arrival-Date",
        rfc5322_date(bounce.arrival_unix_secs).as_bytes(),
    );
    push_field(&mut out, "X-Baton-Queue-ID", bounce.queue_id.as_bytes());
    let last_attempt = rfc5322_date(bounce.now_unix_secs);
    for recipient in bounce.failed {
        out.extend_from_slice(b"\r\n");
        // RFC 3461 §4.2: `ORCPT=addr-type;xtext`.
        let orcpt = param_value(recipient.params, "ORCPT").and_then(|value| {
            value
                .iter()
                .position(|&b| b == b';')
                .map(|at| value.split_at(at))
        });
        if let Some((address_type, address)) = orcpt {
            let mut value = address_type.to_vec();
            value.extend_from_slice(b"; ");
            value.extend_from_slice(&xtext_or_raw(&address[1..]));
            push_field(&mut out, "Original-Recipient", &value);
        }
        let mut final_recipient = b"rfc822; ".to_vec();
        final_recipient.extend_from_slice(recipient.address);
        push_field(&mut out, "Final-Recipient", &final_recipient);
        push_field(&mut out, "Action", b"failed");
        let (class, subject, detail) = status(recipient.reply);
        push_field(
            &mut out,
            "Status",
            format!("{class}.{subject}.{detail}").as_bytes(),
        );
        if let Some(host) = recipient.remote_host {
            // `name [address]`: the MTA's name is the first word.
            let name = host.split_whitespace().next().unwrap_or(host);
            push_field(&mut out, "Remote-MTA", format!("dns; {name}").as_bytes());
        }
        push_field(
            &mut out,
            "Diagnostic-Code",
            format!("smtp; {}", reply_line(recipient.reply)).as_bytes(),
        );
        push_field(&mut out, "Last-Attempt-Date", last_attempt.as_bytes());
    }
    out
}

/// The `Status` of a failed recipient (RFC 3464 §2.3.4): the reply's
/// enhanced code when it has one of its class, else the class's generic
/// code (RFC 3463 §3.1: `X.0.0`). Only 4 and 5 make sense for a failure.
fn status(reply: &Reply) -> EnhancedCode {
    let class = if reply.class() == 4 { 4 } else { 5 };
    match reply.enhanced {
        Some(code) if u16::from(code.0) == reply.class() && (code.0 == 4 || code.0 == 5) => code,
        _ => (class, 0, 0),
    }
}

/// An xtext value (RFC 3461 §4: `+XX` for each octet outside `!`..`~`
/// and for `+` and `=`) decoded; as given if it is malformed or decodes
/// to control characters, which have no place in a header field.
fn xtext_or_raw(value: &[u8]) -> Vec<u8> {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|d| d as u8)
    }
    let mut decoded = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&byte, after)) = rest.split_first() {
        let byte = if byte == b'+' {
            let [high, low, ..] = after else {
                return value.to_vec();
            };
            let (Some(high), Some(low)) = (hex(*high), hex(*low)) else {
                return value.to_vec();
            };
            rest = &after[2..];
            (high << 4) | low
        } else {
            rest = after;
            byte
        };
        if byte < 0x20 || byte == 0x7f {
            return value.to_vec();
        }
        decoded.push(byte);
    }
    decoded
}

/// The value of `keyword` in space-separated `KEYWORD=value` parameters,
/// the keyword compared without case (RFC 5321 §4.1.2).
fn param_value<'p>(params: &'p [u8], keyword: &str) -> Option<&'p [u8]> {
    params.split(|&byte| byte == b' ').find_map(|word| {
        let equals = word.iter().position(|&byte| byte == b'=')?;
        let (key, value) = word.split_at(equals);
        key.eq_ignore_ascii_case(keyword.as_bytes())
            .then_some(&value[1..])
    })
}

/// The caller's unique token, restricted to characters that are safe in
/// both a boundary and a `Message-ID`, and bounded.
fn boundary_token(unique: &str) -> String {
    let token: String = unique
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(BOUNDARY_TOKEN_CHARS_MAX)
        .collect();
    if token.is_empty() {
        "0".to_owned()
    } else {
        token
    }
}

/// A boundary whose delimiter (`--boundary`) occurs in none of `parts`
/// (RFC 2046 §5.1.1).
///
/// Usually the prefix and the token. If a part contains that already (a
/// sender can guess the token), `.` and a fixed-width number follow: `k`
/// occurrences can each rule out at most one of `k + 1` such numbers, so
/// one of them is free, and a single scan finds it.
fn boundary(unique: &str, parts: &[&[u8]]) -> String {
    let base = format!("{BOUNDARY_PREFIX}{}", boundary_token(unique));
    let needle = format!("--{base}");
    let finder = memmem::Finder::new(needle.as_bytes());
    let occurrences: usize = parts
        .iter()
        .map(|part| finder.find_iter(part).count())
        .sum();
    if occurrences == 0 {
        return base;
    }
    let width = occurrences.to_string().len();
    let mut taken = vec![false; occurrences + 1];
    for part in parts {
        for at in finder.find_iter(part) {
            let after = &part[at + needle.len()..];
            let Some(digits) = after.strip_prefix(b".").and_then(|d| d.get(..width)) else {
                continue;
            };
            let number = std::str::from_utf8(digits)
                .ok()
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok());
            if let Some(slot) = number.and_then(|n| taken.get_mut(n)) {
                *slot = true;
            }
        }
    }
    let free = taken
        .iter()
        .position(|taken| !taken)
        .expect("k occurrences take at most k of k + 1 numbers");
    format!("{base}.{free:0width$}")
}

/// Appends the header field `name: value`, folded.
fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    push_folded_after(out, name.len(), b": ", value, b" ");
}

/// Appends `first` and the words of `value`, folded before a word that
/// would take the line past [`LINE_BYTES_FOLD`], each further line
/// starting with `indent`; a word too long for one line is cut at
/// [`LINE_BYTES_MAX`]. Control characters count as spaces, so nothing
/// from outside can end a line, or a header section, on its own.
fn push_folded(out: &mut Vec<u8>, first: &[u8], value: &[u8], indent: &[u8]) {
    push_folded_after(out, 0, first, value, indent);
}

/// [`push_folded`] on a line that already holds `line_bytes` octets.
fn push_folded_after(
    out: &mut Vec<u8>,
    line_bytes: usize,
    first: &[u8],
    value: &[u8],
    indent: &[u8],
) {
    debug_assert!(line_bytes + first.len() < LINE_BYTES_MAX && indent.len() < LINE_BYTES_MAX);
    out.extend_from_slice(first);
    let mut line_bytes = line_bytes + first.len();
    let mut line_has_word = false;
    let words = value
        .split(|&byte| byte <= b' ' || byte == 0x7f)
        .filter(|word| !word.is_empty());
    for word in words {
        if line_has_word {
            if line_bytes + 1 + word.len() > LINE_BYTES_FOLD {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(indent);
                line_bytes = indent.len();
            } else {
                out.push(b' ');
                line_bytes += 1;
            }
        }
        let mut rest = word;
        loop {
            let take = rest.len().min(LINE_BYTES_MAX - line_bytes);
            out.extend_from_slice(&rest[..take]);
            line_bytes += take;
            rest = &rest[take..];
            if rest.is_empty() {
                break;
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(indent);
            line_bytes = indent.len();
        }
        line_has_word = true;
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
