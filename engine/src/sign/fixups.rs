//! Header fix-ups for mail from trusted clients (authenticated users and
//! `[relay] networks`, as Postfix's `local_header_rewrite_clients`):
//! mailbox providers want a valid `Message-ID` and `Date` (RFC 5322 §3.6:
//! `Date` is required, `Message-ID` should be there), and a signature
//! must cover them, so they are added before signing. Mail from other
//! clients is never touched.

use baton_spool::QueueId;

use crate::smtp::date::rfc5322_date;

/// Adds `Message-ID` and `Date` to the message in wire form when its
/// header section has none, right after baton's own `Received:` field
/// (the first field). Returns the names of the fields it added.
pub fn fix_up(
    wire: &mut Vec<u8>,
    queue_id: QueueId,
    now_unix_secs: u64,
    hostname: &str,
) -> Vec<&'static str> {
    let (has_id, has_date) = present(wire);
    let mut added = Vec::new();
    let mut fields = Vec::new();
    if !has_date {
        fields.extend_from_slice(b"Date: ");
        fields.extend_from_slice(rfc5322_date(now_unix_secs).as_bytes());
        fields.extend_from_slice(b"\r\n");
        added.push("Date");
    }
    if !has_id {
        // Unique: the queue id is never handed out twice by this server.
        fields.extend_from_slice(b"Message-ID: <");
        fields.extend_from_slice(&queue_id.hex());
        fields.push(b'.');
        fields.extend_from_slice(now_unix_secs.to_string().as_bytes());
        fields.push(b'@');
        fields.extend_from_slice(hostname.as_bytes());
        fields.extend_from_slice(b">\r\n");
        added.push("Message-ID");
    }
    if !fields.is_empty() {
        insert(wire, end_of_first_field(wire), &fields);
    }
    added
}

/// Puts `bytes` into `wire` at `at`: one move of what follows (a
/// `splice` took thousands of instructions a message, byte by byte).
fn insert(wire: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let len = wire.len();
    wire.extend_from_slice(bytes);
    wire.copy_within(at..len, at + bytes.len());
    wire[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Whether the header section has a `Message-ID` and a `Date` field.
fn present(wire: &[u8]) -> (bool, bool) {
    (has_field(wire, b"message-id:"), has_field(wire, b"date:"))
}

/// Whether the header section has a field named `name` (lowercase, with
/// its colon).
pub fn has_field(wire: &[u8], name: &[u8]) -> bool {
    let mut rest = wire;
    loop {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], Some(&rest[lf + 1..])),
            None => (rest, None),
        };
        if line == b"\r" || line.is_empty() {
            return false;
        }
        if line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            return true;
        }
        let Some(next) = next else {
            return false;
        };
        rest = next;
    }
}

/// Adds one-click unsubscribe fields (RFC 8058, made by
/// `crate::policy::unsubscribe`) after baton's `Received:` field, unless
/// the message has a `List-Unsubscribe` of its own: the sender's link
/// wins. Whether they were added.
pub fn add_unsubscribe(wire: &mut Vec<u8>, fields: &str) -> bool {
    if has_field(wire, b"list-unsubscribe:") || has_field(wire, b"list-unsubscribe-post:") {
        return false;
    }
    insert(wire, end_of_first_field(wire), fields.as_bytes());
    true
}

/// Where the first field (and its folded lines) ends.
fn end_of_first_field(wire: &[u8]) -> usize {
    let mut at = 0;
    let mut first = true;
    while let Some(lf) = memchr::memchr(b'\n', &wire[at..]) {
        let next = at + lf + 1;
        if !first && !matches!(wire.get(at), Some(b' ' | b'\t')) {
            return at;
        }
        first = false;
        at = next;
        if !matches!(wire.get(at), Some(b' ' | b'\t')) {
            return at;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED: &str = "Received: from c (x)\r\n\tby mx (baton) id 1;\r\n\tdate\r\n";

    #[test]
    fn missing_fields_go_after_the_received_field() {
        let mut wire = format!("{RECEIVED}Subject: hi\r\n\r\nbody\r\n").into_bytes();
        let added = fix_up(&mut wire, QueueId(7), 1_795_370_400, "mx.example");
        assert_eq!(added, ["Date", "Message-ID"]);
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with(&format!("{RECEIVED}Date: ")), "{text}");
        assert!(
            text.contains(
                "\r\nMessage-ID: <0000000000000007.1795370400@mx.example>\r\nSubject: hi\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn unsubscribe_fields_are_added_unless_the_sender_has_its_own() {
        let fields = "List-Unsubscribe: <https://u/x>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
        let mut wire = format!("{RECEIVED}Subject: s\r\n\r\nbody\r\n").into_bytes();
        assert!(add_unsubscribe(&mut wire, fields));
        let text = String::from_utf8(wire).unwrap();
        assert!(
            text.starts_with(&format!("{RECEIVED}{fields}Subject: s\r\n")),
            "{text}"
        );
        let own = format!("{RECEIVED}list-unsubscribe: <mailto:a@b>\r\n\r\nbody\r\n");
        let mut wire = own.clone().into_bytes();
        assert!(!add_unsubscribe(&mut wire, fields));
        assert_eq!(wire, own.as_bytes());
    }

    #[test]
    fn present_fields_are_left_alone_and_the_body_does_not_count() {
        let original = format!("{RECEIVED}date: x\r\nMESSAGE-ID: <a@b>\r\n\r\nDate: y\r\n");
        let mut wire = original.clone().into_bytes();
        assert!(fix_up(&mut wire, QueueId(1), 0, "h").is_empty());
        assert_eq!(wire, original.as_bytes());
        let mut wire =
            format!("{RECEIVED}Subject: s\r\n\r\nMessage-ID: <in@body>\r\n").into_bytes();
        assert_eq!(
            fix_up(&mut wire, QueueId(1), 0, "h"),
            ["Date", "Message-ID"]
        );
    }
}
