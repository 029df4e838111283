//! Whole-session behaviour: pipelining, command lines, limits, closing,
//! and the property that input chunking never changes anything.

use std::sync::Arc;

use proptest::prelude::*;

use crate::inbound::testing::{
    transcript, transcript_with, Driver, ENVELOPE, ENVELOPE_REPLIES, HOSTNAME,
};
use crate::inbound::{
    BareLineEndings, Phase, Session, SessionConfig, PENDING_OUTPUT_BYTES_MAX,
    PIPELINED_INPUT_BYTES_MAX,
};

#[test]
fn greeting() {
    let driver = Driver::new(true);
    assert_eq!(driver.output(), "220 mx.example.net ESMTP baton\r\n");
    assert_eq!(driver.session.phase(), Phase::Command);
    assert!(driver.session.wants_input());
}

#[test]
fn refused_at_connect() {
    let config = Arc::new(SessionConfig::new(HOSTNAME));
    let session = Session::refused(config, "Error: too many\r\nconnections");
    assert_eq!(
        session.output(),
        b"421 4.7.0 mx.example.net Error: too many  connections\r\n"
    );
    assert!(session.is_closing());
    assert!(!session.wants_input());
    assert_eq!(session.phase(), Phase::Closing);
}

#[test]
fn pipelined_transactions_are_answered_in_order() {
    let mut driver = Driver::new(true);
    driver.feed(
        format!(
            "{ENVELOPE}RCPT TO:<f@g.example>\r\nDATA\r\none\r\n.\r\n\
             MAIL FROM:<>\r\nRCPT TO:<h@i.example>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(
        driver.output(),
        format!(
            "220 mx.example.net ESMTP baton\r\n{ENVELOPE_REPLIES}250 2.1.5 Ok\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 0000000000000001\r\n\
             250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
             250 2.0.0 Ok: queued as 0000000000000002\r\n221 2.0.0 Bye\r\n"
        )
    );
    assert_eq!(driver.messages.len(), 2);
    assert_eq!(driver.messages[0].recipients.len(), 2);
}

#[test]
fn nothing_is_answered_while_the_spool_has_the_message() {
    let mut driver = Driver::new(true);
    driver.auto_store = false;
    driver.feed(format!("{ENVELOPE}DATA\r\n.\r\nNOOP\r\nNOOP\r\n").as_bytes());
    let before = driver.out.len();
    driver.feed(b"NOOP\r\n");
    driver.session.timed_out();
    driver.collect();
    assert_eq!(driver.out.len(), before);
    let message = driver.session.take_message().unwrap();
    driver.session.stored(Ok(message.queue_id), &mut driver.ctx);
    driver.collect();
    assert!(driver.output().ends_with(
        "250 2.0.0 Ok: queued as 0000000000000001\r\n421 4.4.2 mx.example.net Error: timeout exceeded\r\n"
    ));
}

#[test]
fn command_line_errors() {
    assert_eq!(
        transcript(b"FOO\r\n\r\n"),
        "500 5.5.2 Error: command not recognized\r\n".repeat(2)
    );
    assert_eq!(
        transcript(b"NOOP\n"),
        "500 5.5.2 Error: command must end with <CR><LF>\r\n"
    );
    assert_eq!(
        transcript(b"NOOP\0\r\n"),
        "500 5.5.2 Error: invalid character in command\r\n"
    );
    assert_eq!(
        transcript(b"NO\rOP\r\n"),
        "500 5.5.2 Error: invalid character in command\r\n"
    );
    assert_eq!(
        transcript("VRFY jös\r\n".as_bytes()),
        "500 5.5.2 Error: invalid character in command\r\n"
    );
    // Inside an SMTPUTF8 transaction, UTF-8 is fine.
    let out =
        transcript("EHLO c.example\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nVRFY jös\r\n".as_bytes());
    assert!(out.ends_with("252 2.0.0 Cannot VRFY user, but will accept message\r\n"));
    assert_eq!(
        transcript(b"STARTTLS\r\n"),
        "502 5.5.1 Error: command not implemented\r\n"
    );
}

#[test]
fn overlong_command_line_is_refused_and_skipped() {
    let mut config = SessionConfig::new(HOSTNAME);
    config.limits.command_line_bytes_max = 16;
    // 14 octets and CRLF fit; 15 do not.
    let fits = format!("VRFY {}\r\n", "a".repeat(9));
    assert_eq!(fits.len(), 16);
    let out = transcript_with(config.clone(), fits.as_bytes());
    assert_eq!(
        out,
        "252 2.0.0 Cannot VRFY user, but will accept message\r\n"
    );
    let mut driver = Driver::with_config(config, true);
    driver.feed(format!("VRFY {}", "a".repeat(10)).as_bytes());
    assert!(driver.output().ends_with("ESMTP baton\r\n"));
    driver.feed(b"a");
    assert!(driver
        .output()
        .ends_with("500 5.5.2 Error: line too long\r\n"));
    for _ in 0..100 {
        driver.feed(&[b'a'; 1000]);
    }
    assert!(driver.session.wants_input());
    driver.feed(b"aaa\r\nNOOP\r\n");
    assert!(driver
        .output()
        .ends_with("500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"));
}

#[test]
fn too_many_errors() {
    let mut config = SessionConfig::new(HOSTNAME);
    config.limits.errors_per_session_max = 3;
    let mut driver = Driver::with_config(config, true);
    driver.feed(b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(
        driver.output(),
        "220 mx.example.net ESMTP baton\r\n500 5.5.2 Error: command not recognized\r\n\
         500 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n\
         500 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.example.net Error: too many errors\r\n"
    );
    assert!(driver.session.is_closing());
}

#[test]
fn transactions_do_not_count_as_commands() {
    // A persistent injector: one EHLO, then message after message.
    let mut config = SessionConfig::new(HOSTNAME);
    config.limits.commands_per_session_max = 2;
    let mut driver = Driver::with_config(config, true);
    driver.feed(b"EHLO c.example\r\n");
    for _ in 0..5 {
        driver.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<d@e.example>\r\nDATA\r\n");
        driver.feed(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    }
    // EHLO and one NOOP are two commands; the next is one too many.
    driver.feed(b"NOOP\r\nNOOP\r\n");
    driver.collect();
    let out = driver.output();
    assert_eq!(out.matches("354 ").count(), 5, "{out}");
    assert!(
        out.ends_with("250 2.0.0 Ok\r\n421 4.7.0 mx.example.net Error: too many commands\r\n"),
        "{out}"
    );
}

#[test]
fn too_many_commands() {
    let mut config = SessionConfig::new(HOSTNAME);
    config.limits.commands_per_session_max = 2;
    let out = transcript_with(config, b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n421 4.7.0 mx.example.net Error: too many commands\r\n"
    );
}

#[test]
fn timeout_and_shutdown() {
    let mut driver = Driver::new(true);
    driver.session.timed_out();
    driver.session.shut_down();
    driver.collect();
    assert!(driver
        .output()
        .ends_with("421 4.4.2 mx.example.net Error: timeout exceeded\r\n"));
    let mut driver = Driver::new(true);
    driver.feed(format!("{ENVELOPE}DATA\r\npartial").as_bytes());
    driver.session.shut_down();
    driver.collect();
    assert!(driver.output().ends_with(
        "421 4.3.2 mx.example.net Service shutting down, closing transmission channel\r\n"
    ));
    assert!(driver.messages.is_empty());
}

#[test]
fn pipelined_input_is_bounded_while_awaiting_the_spool() {
    let mut driver = Driver::new(true);
    driver.auto_store = false;
    driver.feed(format!("{ENVELOPE}DATA\r\n.\r\n").as_bytes());
    let noops = "NOOP\r\n".repeat(PIPELINED_INPUT_BYTES_MAX / 6 + 1);
    driver.feed(noops.as_bytes());
    assert!(!driver.session.wants_input());
    let message = driver.session.take_message().unwrap();
    driver.session.stored(Ok(message.queue_id), &mut driver.ctx);
    driver.collect();
    assert!(driver.output().ends_with(
        "250 2.0.0 Ok: queued as 0000000000000001\r\n500 5.5.2 Error: too much pipelined input\r\n"
    ));
    assert!(driver.session.is_closing());
}

#[test]
fn unsent_replies_stop_reading() {
    let config = Arc::new(SessionConfig::new(HOSTNAME));
    let local = "192.0.2.1:25".parse().unwrap();
    let mut session = Session::new(config, local, local, true);
    let mut ctx = crate::inbound::testing::TestContext { last_id: 0 };
    let noops = "NOOP\r\n".repeat(PENDING_OUTPUT_BYTES_MAX / 14 + 1);
    session.receive(noops.as_bytes(), &mut ctx);
    assert!(!session.wants_input());
    let n = session.output().len();
    session.consume_output(n);
    assert!(session.wants_input());
}

#[test]
fn consume_output_in_parts() {
    let mut driver = Driver::new(true);
    driver.session.consume_output(5);
    assert_eq!(driver.session.output(), b"");
    let config = Arc::new(SessionConfig::new(HOSTNAME));
    let local = "192.0.2.1:25".parse().unwrap();
    let mut session = Session::new(config, local, local, true);
    session.consume_output(4);
    assert_eq!(session.output(), b"mx.example.net ESMTP baton\r\n");
    session.consume_output(1000);
    assert_eq!(session.output(), b"");
}

/// Pieces of plausible and implausible client input.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"EHLO c.example\r\n",
        b"HELO c.example\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SIZE=10\r\n",
        b"RCPT TO:<d@e.example>\r\n",
        b"RCPT TO:<bad\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
        b"..dots\r\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\r\n.\r\n",
        b"BDAT 5\r\nab\r\nc",
        b"BDAT 3 LAST\r\nxyz",
        b"BDAT 0 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"bogus\r\n",
        b"NOOP\n",
        b"QUIT\r\n",
    ];
    prop_oneof![
        8 => proptest::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
        1 => Just([vec![b'a'; 70], b"\r\n".to_vec()].concat()),
    ]
}

/// Feeds `input` in the given chunks; returns everything sent and every
/// message stored.
fn run(
    config: &SessionConfig,
    chunks: &[&[u8]],
) -> (String, Vec<crate::inbound::ReceivedMessage>, bool) {
    let mut driver = Driver::with_config(config.clone(), true);
    for chunk in chunks {
        driver.feed(chunk);
    }
    let closing = driver.session.is_closing();
    (driver.output(), driver.messages, closing)
}

fn small_config(normalize: bool) -> SessionConfig {
    let mut config = SessionConfig::new(HOSTNAME);
    config.limits.command_line_bytes_max = 64;
    config.limits.text_line_bytes_max = 40;
    config.limits.message_bytes_max = 200;
    config.limits.errors_per_session_max = 30;
    if normalize {
        config.bare_line_endings = BareLineEndings::Normalize;
    }
    config
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Feeding a transcript whole, byte by byte or in random pieces gives
    /// the same replies and the same messages.
    #[test]
    fn chunking_never_changes_the_outcome(
        pieces in proptest::collection::vec(piece(), 0..30),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        normalize: bool,
    ) {
        let config = small_config(normalize);
        let input = pieces.concat();
        let whole = run(&config, &[&input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run(&config, &bytewise), &whole);
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&input[start..point]);
            start = point;
        }
        chunks.push(&input[start..]);
        prop_assert_eq!(&run(&config, &chunks), &whole);
        // Whatever came in, every stored body is unambiguous wire form.
        for message in &whole.1 {
            prop_assert!(!message.body.windows(5).any(|w| w == b"\r\n.\r\n"));
        }
    }

    /// Arbitrary bytes never panic, and the output is always whole reply
    /// lines.
    #[test]
    fn arbitrary_input_gets_replies(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (out, _, _) = run(&small_config(false), &[&input]);
        prop_assert!(out.ends_with("\r\n"));
        for line in out.split_terminator("\r\n") {
            prop_assert!(line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit), "{}", line);
        }
    }
}
