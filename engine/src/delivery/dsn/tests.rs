//! Unit tests of the notification: each one reads its output back.

use super::*;
use crate::smtp::data::dot_unstuff;
use proptest::prelude::*;

const HOSTNAME: &str = "relay.example.net";
const ARRIVAL: u64 = 1_795_370_400;
const NOW: u64 = ARRIVAL + 3600;

/// A stored original: baton's `Received:`, headers, a body with a
/// line that starts with a dot.
fn original() -> Vec<u8> {
    dot_stuff(
        b"Received: from c.example ([192.0.2.7])\r\n\tby relay.example.net (baton) with ESMTP id q1;\r\n\tSun, 22 Nov 2026 18:00:00 +0000\r\n\
          From: <sender@example.com>\r\n\
          .Dotted-Header: x\r\n\
          Subject: hello\r\n\
          \r\n\
          secret body line\r\n\
          .\r\n\
          .hidden\r\n",
    )
}

fn bounce<'a>(
    original: &'a [u8],
    mail_params: &'a [u8],
    failed: &'a [FailedRecipient<'a>],
) -> Bounce<'a> {
    Bounce {
        hostname: HOSTNAME,
        queue_id: "q1",
        original_sender: b"sender@example.com",
        original_mail_params: mail_params,
        arrival_unix_secs: ARRIVAL,
        now_unix_secs: NOW,
        original,
        failed,
        unique: "q2",
    }
}

/// Header fields as (name, value), the value unfolded.
type Fields = Vec<(String, String)>;

/// A notification read back: its header fields, and each part's
/// header fields and content.
struct Parsed {
    headers: Fields,
    parts: Vec<(Fields, Vec<u8>)>,
}

impl Parsed {
    fn field(fields: &[(String, String)], name: &str) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn header(&self, name: &str) -> Option<String> {
        Parsed::field(&self.headers, name)
    }

    fn part_type(&self, index: usize) -> String {
        Parsed::field(&self.parts[index].0, "Content-Type").unwrap()
    }

    fn content(&self, index: usize) -> &[u8] {
        &self.parts[index].1
    }

    /// The delivery-status part's groups of fields: the per-message
    /// ones first, then one per recipient.
    fn status_groups(&self) -> Vec<Fields> {
        let text = std::str::from_utf8(self.content(1)).unwrap();
        text.trim_end_matches("\r\n")
            .split("\r\n\r\n")
            .map(|group| fields(group.as_bytes()))
            .collect()
    }
}

/// Header fields, continuation lines joined to their field.
fn fields(section: &[u8]) -> Fields {
    let text = String::from_utf8_lossy(section);
    let mut fields: Fields = Vec::new();
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        if line.starts_with([' ', '\t']) {
            fields.last_mut().unwrap().1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap();
            fields.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    fields
}

fn split_once<'a>(haystack: &'a [u8], needle: &[u8]) -> (&'a [u8], &'a [u8]) {
    let at = memmem::find(haystack, needle).unwrap();
    (&haystack[..at], &haystack[at + needle.len()..])
}

/// Checks the wire form, then takes the MIME structure apart.
fn parse(wire: &[u8]) -> Parsed {
    assert_wire_form(wire);
    let raw = dot_unstuff(wire);
    let (head, _) = split_once(&raw, b"\r\n\r\n");
    let headers = fields(head);
    let content_type = Parsed::field(&headers, "Content-Type").unwrap();
    let boundary = content_type
        .split_once("boundary=\"")
        .unwrap()
        .1
        .trim_end_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    let pieces: Vec<&[u8]> = memmem::find_iter(&raw, delimiter.as_bytes())
        .chain([raw.len()])
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| &raw[w[0] + delimiter.len()..w[1]])
        .collect();
    assert_eq!(pieces.len(), 4, "three parts and the close");
    assert_eq!(pieces[3], b"--\r\n");
    let parts = pieces[..3]
        .iter()
        .map(|piece| {
            let piece = piece.strip_prefix(b"\r\n").unwrap();
            let (part_head, content) = split_once(piece, b"\r\n\r\n");
            (fields(part_head), content.to_vec())
        })
        .collect();
    Parsed { headers, parts }
}

/// What wire form promises (see `smtp::data`), and RFC 5322's line
/// length, counted without the stuffing dot (RFC 5321 §4.5.3.1.6).
fn assert_wire_form(wire: &[u8]) {
    assert!(wire.ends_with(b"\r\n"));
    assert!(!wire.starts_with(b".\r\n"));
    assert!(memmem::find(wire, b"\r\n.\r\n").is_none());
    for (at, &byte) in wire.iter().enumerate() {
        match byte {
            b'\r' => assert_eq!(wire.get(at + 1), Some(&b'\n'), "bare CR at {at}"),
            b'\n' => assert!(at > 0 && wire[at - 1] == b'\r', "bare LF at {at}"),
            _ => {}
        }
    }
    for line in wire[..wire.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(b".").unwrap_or(line);
        assert!(line.len() <= LINE_BYTES_MAX, "line of {}", line.len());
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    memmem::find(haystack, needle.as_bytes()).is_some()
}

/// One local failure of a@example.org with `reply`: what most tests need.
fn one_failure(reply: &Reply) -> [FailedRecipient<'_>; 1] {
    [FailedRecipient {
        address: b"a@example.org",
        params: b"",
        reply,
        remote_host: None,
    }]
}

#[test]
fn three_parts_in_order_with_the_headers() {
    let reply = Reply::new(550, Some((5, 1, 1)), "user unknown");
    let failed = [FailedRecipient {
        address: b"nobody@example.org",
        params: b"",
        reply: &reply,
        remote_host: Some("mx1.example.org [192.0.2.1]"),
    }];
    let original = original();
    let parsed = parse(&build(&bounce(&original, b"", &failed)));
    assert_eq!(
        parsed.header("From").unwrap(),
        "Mail Delivery System <MAILER-DAEMON@relay.example.net>"
    );
    assert_eq!(parsed.header("To").unwrap(), "<sender@example.com>");
    assert_eq!(
        parsed.header("Subject").unwrap(),
        "Undelivered Mail Returned to Sender"
    );
    assert_eq!(
        parsed.header("Date").unwrap(),
        "Sun, 22 Nov 2026 19:00:00 +0000"
    );
    assert_eq!(
        parsed.header("Message-ID").unwrap(),
        "<dsn.q2@relay.example.net>"
    );
    assert_eq!(parsed.header("Auto-Submitted").unwrap(), "auto-replied");
    assert_eq!(parsed.header("MIME-Version").unwrap(), "1.0");
    assert!(parsed
        .header("Content-Type")
        .unwrap()
        .starts_with("multipart/report; report-type=delivery-status;"));
    assert_eq!(parsed.header("Content-Transfer-Encoding"), None);

    assert_eq!(parsed.part_type(0), "text/plain; charset=utf-8");
    assert_eq!(parsed.part_type(1), "message/delivery-status");
    assert_eq!(parsed.part_type(2), "text/rfc822-headers");
    let human = String::from_utf8_lossy(parsed.content(0)).replace("\r\n", " ");
    assert!(human.contains("<nobody@example.org>: host mx1.example.org [192.0.2.1] said:"));
    assert!(human.contains("550 5.1.1 user unknown"));
    assert!(human.contains("queue id q1"));
}

#[test]
fn headers_only_by_default_and_stuffed_once() {
    let reply = Reply::new(550, None, "no");
    let failed = one_failure(&reply);
    let original = original();
    for params in [&b""[..], b"RET=HDRS", b"BODY=8BITMIME"] {
        let wire = build(&bounce(&original, params, &failed));
        let parsed = parse(&wire);
        let headers = parsed.content(2);
        let unstuffed = dot_unstuff(&original);
        let (expected, _) = split_once(&unstuffed, b"\r\n\r\n");
        assert_eq!(headers, [expected, b"\r\n"].concat());
        assert!(contains(headers, "\r\n.Dotted-Header: x\r\n"));
        assert!(contains(&wire, "\r\n..Dotted-Header: x\r\n"));
        assert!(!contains(&wire, "...Dotted"));
        assert!(!contains(&wire, "secret body line"));
        assert!(!contains(&wire, "hidden"));
    }
}

#[test]
fn ret_full_returns_the_whole_message() {
    let reply = Reply::new(550, None, "no");
    let failed = one_failure(&reply);
    let original = original();
    let wire = build(&bounce(&original, b"ret=full ENVID=x", &failed));
    let parsed = parse(&wire);
    assert_eq!(parsed.part_type(2), "message/rfc822");
    assert_eq!(parsed.content(2), dot_unstuff(&original));
    assert!(contains(
        &wire,
        "\r\nsecret body line\r\n..\r\n..hidden\r\n"
    ));
    assert!(!contains(&wire, "...hidden"));
    let human = String::from_utf8_lossy(parsed.content(0)).replace("\r\n", " ");
    assert!(human.contains("It is attached below."));
}

#[test]
fn delivery_status_per_recipient() {
    let remote = Reply {
        code: 550,
        enhanced: Some((5, 1, 1)),
        lines: vec!["The account does not exist.".into(), "Learn more".into()],
    };
    let expired = Reply::new(421, Some((4, 4, 2)), "expired after 5 days");
    let bare = Reply::new(554, None, "rejected");
    let failed = [
        FailedRecipient {
            address: b"nobody@example.org",
            params: b"NOTIFY=FAILURE ORCPT=rfc822;Nobody+2Balias@example.org",
            reply: &remote,
            remote_host: Some("mx1.example.org [192.0.2.1]"),
        },
        FailedRecipient {
            address: b"late@example.net",
            params: b"",
            reply: &expired,
            remote_host: None,
        },
        FailedRecipient {
            address: "ünï@example.net".as_bytes(),
            params: b"",
            reply: &bare,
            remote_host: Some("[192.0.2.9]"),
        },
    ];
    let original = original();
    let params = b"BODY=8BITMIME ENVID=QQ314159+2B1";
    let parsed = parse(&build(&bounce(&original, params, &failed)));
    let groups = parsed.status_groups();
    assert_eq!(groups.len(), 4);
    let message = &groups[0];
    assert_eq!(
        Parsed::field(message, "Reporting-MTA").unwrap(),
        "dns; relay.example.net"
    );
    assert_eq!(
        Parsed::field(message, "Original-Envelope-Id").unwrap(),
        "QQ314159+1"
    );
    assert_eq!(Parsed::field(message, "X-Baton-Queue-ID").unwrap(), "q1");
    assert_eq!(
        Parsed::field(message, "Arrival-Date").unwrap(),
        "Sun, 22 Nov 2026 18:00:00 +0000"
    );

    let expected = [
        (
            "rfc822; nobody@example.org",
            Some("rfc822; Nobody+alias@example.org"),
            "5.1.1",
            Some("dns; mx1.example.org"),
            "smtp; 550 5.1.1 The account does not exist. Learn more",
        ),
        (
            "rfc822; late@example.net",
            None,
            "4.4.2",
            None,
            "smtp; 421 4.4.2 expired after 5 days",
        ),
        (
            "rfc822; ünï@example.net",
            None,
            "5.0.0",
            Some("dns; [192.0.2.9]"),
            "smtp; 554 rejected",
        ),
    ];
    for (group, (final_recipient, original_recipient, status, remote_mta, diagnostic)) in
        groups[1..].iter().zip(expected)
    {
        let field = |name| Parsed::field(group, name);
        assert_eq!(field("Final-Recipient").unwrap(), final_recipient);
        assert_eq!(field("Original-Recipient").as_deref(), original_recipient);
        assert_eq!(field("Action").unwrap(), "failed");
        assert_eq!(field("Status").unwrap(), status);
        assert_eq!(field("Remote-MTA").as_deref(), remote_mta);
        assert_eq!(field("Diagnostic-Code").unwrap(), diagnostic);
        assert_eq!(
            field("Last-Attempt-Date").unwrap(),
            "Sun, 22 Nov 2026 19:00:00 +0000"
        );
    }
    // A non-ASCII address makes the report 8bit.
    assert_eq!(parsed.header("Content-Transfer-Encoding").unwrap(), "8bit");
}

#[test]
fn xtext_decoding() {
    assert_eq!(xtext_or_raw(b"a+2Bb+3Dc"), b"a+b=c");
    assert_eq!(xtext_or_raw(b"a+2bb"), b"a+b", "lower-case hex is read");
    assert_eq!(xtext_or_raw(b"a+2"), b"a+2", "malformed: as given");
    assert_eq!(xtext_or_raw(b"a+ZZ"), b"a+ZZ");
    assert_eq!(xtext_or_raw(b"a+0D+0Ab"), b"a+0D+0Ab", "no line breaks");
}

#[test]
fn who_gets_a_notification() {
    assert!(wants_notification(b"s@example.com", b""));
    assert!(wants_notification(b"s@example.com", b"ORCPT=rfc822;x@y"));
    assert!(wants_notification(
        b"s@example.com",
        b"NOTIFY=SUCCESS,FAILURE"
    ));
    assert!(wants_notification(b"s@example.com", b"notify=failure"));
    assert!(!wants_notification(b"", b""));
    assert!(!wants_notification(b"<>", b"NOTIFY=FAILURE"));
    assert!(!wants_notification(b"s@example.com", b"NOTIFY=NEVER"));
    assert!(!wants_notification(
        b"s@example.com",
        b"NOTIFY=SUCCESS,DELAY"
    ));
}

#[test]
fn long_lines_are_cut_and_folded() {
    let long_word = Reply::new(550, Some((5, 7, 1)), "x".repeat(3000));
    let long_text = Reply::new(550, None, "word ".repeat(600));
    let failed = [
        FailedRecipient {
            address: b"a@example.org",
            params: b"",
            reply: &long_word,
            remote_host: Some("mx1.example.org [192.0.2.1]"),
        },
        FailedRecipient {
            address: b"b@example.org",
            params: b"",
            reply: &long_text,
            remote_host: None,
        },
    ];
    let mut raw = b"Received: by x\r\nX-Long: ".to_vec();
    raw.extend(std::iter::repeat_n(b'h', 3000));
    raw.extend_from_slice(b"\r\n\r\n");
    raw.extend(std::iter::repeat_n(b'.', 3000));
    raw.extend_from_slice(b"\r\n");
    let original = dot_stuff(&raw);
    for params in [&b""[..], b"RET=FULL"] {
        let parsed = parse(&build(&bounce(&original, params, &failed)));
        let content = parsed.content(2);
        let section = memmem::find(content, b"\r\n\r\n").map_or(content, |at| &content[..at]);
        let headers = fields(section);
        let long = Parsed::field(&headers, "X-Long").unwrap();
        assert_eq!(long.bytes().filter(|&b| b == b'h').count(), 3000);
        let groups = parsed.status_groups();
        let diagnostic = Parsed::field(&groups[1], "Diagnostic-Code").unwrap();
        assert_eq!(diagnostic.bytes().filter(|&b| b == b'x').count(), 3000);
    }
}

#[test]
fn a_huge_original_is_cut_at_a_line() {
    let reply = Reply::new(550, None, "no");
    let failed = one_failure(&reply);
    let mut raw = Vec::new();
    for n in 0..10_000 {
        raw.extend_from_slice(format!("X-Header-{n}: some value here\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nbody\r\n");
    let original = dot_stuff(&raw);
    let parsed = parse(&build(&bounce(&original, b"", &failed)));
    let headers = parsed.content(2);
    assert!(headers.len() <= ORIGINAL_HEADERS_BYTES_MAX);
    assert!(headers.len() > ORIGINAL_HEADERS_BYTES_MAX - 100);
    assert!(raw.starts_with(headers), "whole lines from the start");
    let human = String::from_utf8_lossy(parsed.content(0)).replace("\r\n", " ");
    assert!(human.contains("The first 65536 bytes of its header section"));
}

#[test]
fn boundary_avoids_the_content() {
    let reply = Reply::new(550, None, "no");
    let failed = one_failure(&reply);
    let raw = b"Subject: x\r\n\r\n--=_baton-dsn-q2\r\n--=_baton-dsn-q2.0--\r\n";
    let original = dot_stuff(raw);
    let parsed = parse(&build(&bounce(&original, b"RET=FULL", &failed)));
    assert_eq!(parsed.content(2), raw);
    assert!(parsed
        .header("Content-Type")
        .unwrap()
        .ends_with("boundary=\"=_baton-dsn-q2.1\""));

    assert_eq!(boundary("q2", &[b"nothing"]), "=_baton-dsn-q2");
    assert_eq!(boundary("", &[b""]), "=_baton-dsn-0");
    let crowded: Vec<u8> = (0..10)
        .flat_map(|n| format!("--=_baton-dsn-q2.{n:02}\r\n").into_bytes())
        .collect();
    assert_eq!(boundary("q2", &[&crowded]), "=_baton-dsn-q2.10");
}

/// Lines of raw content: empty, dots, or any octets but CR and LF.
fn raw_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let line = prop_oneof![
        Just(Vec::new()),
        Just(b".".to_vec()),
        Just(b"..x".to_vec()),
        proptest::collection::vec(
            any::<u8>().prop_filter("no CR, LF", |b| *b != b'\r' && *b != b'\n'),
            0..1200
        ),
    ];
    proptest::collection::vec(line, 0..24)
}

proptest! {
    #[test]
    fn structure_holds_for_any_original(lines in raw_lines(), full in any::<bool>()) {
        let raw: Vec<u8> = lines.iter().flat_map(|line| [&line[..], b"\r\n"].concat()).collect();
        let original = dot_stuff(&raw);
        let reply = Reply::new(550, Some((5, 1, 1)), "user unknown");
        let failed = [FailedRecipient {
            address: b"a@example.org",
            params: b"",
            reply: &reply,
            remote_host: Some("mx1.example.org [192.0.2.1]"),
        }];
        let params: &[u8] = if full { b"RET=FULL" } else { b"" };
        let parsed = parse(&build(&bounce(&original, params, &failed)));
        prop_assert_eq!(parsed.status_groups().len(), 2);
        // With no line to cut, the part is exactly the original's
        // (header section), un-stuffed once.
        if lines.iter().all(|line| line.len() <= LINE_BYTES_MAX) {
            let expected = if full {
                &raw[..]
            } else if raw.starts_with(b"\r\n") {
                &raw[..0]
            } else {
                memmem::find(&raw, b"\r\n\r\n").map_or(&raw[..], |at| &raw[..at + 2])
            };
            prop_assert_eq!(parsed.content(2), expected);
        }
    }
}
