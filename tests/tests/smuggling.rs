//! SMTP smuggling (CVE-2023-51764/51765/51766): a sender hides a second
//! message after a fake end of data made of bare LF or bare CR. Data ends
//! only at CRLF `.` CRLF (RFC 5321 §4.1.1.4); by default a message with a
//! bare line ending is refused once its real end arrives, and with
//! `bare_line_endings = "normalize"` it is accepted as ONE message, the
//! smuggled part being content.

use baton_tests::{queued_id, Baton, TestConfig};

/// Fake ends of data, each followed by a smuggled transaction.
const FAKE_ENDS: [&str; 5] = ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r"];

/// The content of a message whose first part ends with `fake_end`,
/// through the real end of data.
fn smuggling_content(fake_end: &str) -> String {
    format!(
        "Subject: innocent\r\n\r\nfirst{fake_end}\
         MAIL FROM:<ceo@bank.example>\r\n\
         RCPT TO:<victim@smuggled.example>\r\n\
         DATA\r\n\
         Subject: forged\r\n\r\nsmuggled\r\n.\r\n"
    )
}

/// Every way in: the fake ends, and a plain bare LF inside a line.
fn contents() -> Vec<(String, String)> {
    let mut contents: Vec<_> = FAKE_ENDS
        .iter()
        .map(|end| (format!("{end:?}"), smuggling_content(end)))
        .collect();
    contents.push((
        "bare LF in a line".into(),
        "Subject: bare\r\n\r\nline one\nline two\r\n.\r\n".into(),
    ));
    contents
}

#[test]
fn bare_line_endings_are_refused_after_the_real_end_and_nothing_is_queued() {
    let baton = Baton::start();
    for (name, content) in contents() {
        let mut smtp = baton.connect();
        smtp.ehlo("client.test");
        smtp.cmd("MAIL FROM:<alice@example.com>")
            .assert_is(250, "2.1.0");
        smtp.cmd("RCPT TO:<bob@example.org>")
            .assert_is(250, "2.1.5");
        assert_eq!(smtp.cmd("DATA").code, 354);
        smtp.send(content.as_bytes());
        // Exactly one reply for the whole content: had the server seen a
        // fake end, the smuggled commands would have earned their own.
        let reply = smtp.reply();
        assert!(
            reply.code == 550 && reply.enhanced() == Some("5.6.11"),
            "{name}: {reply:?}"
        );
        let noop = smtp.cmd("NOOP");
        assert_eq!(noop.code, 250, "{name}: the next reply is NOOP's: {noop:?}");
        smtp.cmd("QUIT").assert_is(221, "2.0.0");
    }
    let queue = baton.queue();
    assert_eq!(queue["messages"], 0, "{queue}");
    assert_eq!(queue["recipients"], 0, "{queue}");
}

#[test]
fn normalize_accepts_one_message_and_the_smuggled_one_is_content() {
    let baton = Baton::start_with(TestConfig {
        smtp: vec!["bare_line_endings = \"normalize\"".into()],
        ..TestConfig::default()
    });
    let mut ids = Vec::new();
    for (name, content) in contents() {
        let mut smtp = baton.connect();
        smtp.ehlo("client.test");
        smtp.cmd("MAIL FROM:<alice@example.com>")
            .assert_is(250, "2.1.0");
        smtp.cmd("RCPT TO:<bob@example.org>")
            .assert_is(250, "2.1.5");
        assert_eq!(smtp.cmd("DATA").code, 354);
        smtp.send(content.as_bytes());
        let reply = smtp.reply();
        assert!(
            reply.code == 250 && reply.enhanced() == Some("2.0.0"),
            "{name}: {reply:?}"
        );
        ids.push((name.clone(), queued_id(&reply)));
        let noop = smtp.cmd("NOOP");
        assert_eq!(noop.code, 250, "{name}: the next reply is NOOP's: {noop:?}");
        smtp.cmd("QUIT").assert_is(221, "2.0.0");
    }
    let queue = baton.queue();
    assert_eq!(queue["messages"], ids.len(), "{queue}");
    assert_eq!(queue["recipients"], ids.len(), "{queue}");
    let destinations: Vec<_> = queue["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| d["destination"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(destinations, ["example.org"], "no mail for the victim");
    for (name, id) in &ids {
        let message = baton.show(id);
        assert_eq!(message["sender"], "alice@example.com", "{name}: {message}");
        assert_eq!(
            Baton::shown_recipients(&message),
            ["bob@example.org"],
            "{name}: {message}"
        );
    }
}
