//! Scripted server transcripts against the client.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const EHLO_PIPELINING: &[u8] =
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PLAIN: &[u8] = b"250-mx.example\r\n250 SIZE\r\n";

fn config() -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        helo_name: "relay.example".into(),
        limits: ClientLimits::default(),
    })
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        reverse_path: b"a@x.example".to_vec(),
        mail_params: Vec::new(),
        recipients: recipients.iter().map(|r| r.as_bytes().to_vec()).collect(),
        size: 10,
    }
}

/// Takes the output as text.
fn sent(client: &mut Client) -> String {
    let text = String::from_utf8(client.output().to_vec()).unwrap();
    client.consume_output(text.len());
    text
}

fn take_events(client: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

/// A client past greeting and EHLO with `ehlo` as the reply.
fn ready(ehlo: &[u8]) -> Client {
    let mut client = Client::new(config(), TlsMode::Off);
    assert_eq!(client.awaiting(), Some(Awaiting::Greeting));
    client.receive(b"220 mx.example ESMTP\r\n");
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    client.receive(ehlo);
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert!(client.is_idle());
    client
}

fn codes(outcomes: &[Outcome]) -> Vec<(char, u16)> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Delivered(reply) => ('d', reply.code),
            Outcome::Deferred(reply) => ('t', reply.code),
            Outcome::Failed(reply) => ('f', reply.code),
        })
        .collect()
}

/// The outcomes of the one TransactionDone among `events`.
fn done(events: &[Event]) -> Vec<(char, u16)> {
    let mut found = events.iter().filter_map(|event| match event {
        Event::TransactionDone { per_recipient } => Some(codes(per_recipient)),
        _ => None,
    });
    let outcomes = found.next().expect("a TransactionDone");
    assert!(found.next().is_none());
    outcomes
}

fn closed(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|event| match event {
        Event::Closed { reason } => Some(reason),
        _ => None,
    })
}

#[test]
fn ehlo_extensions_are_read() {
    let client = ready(b"250-mx.example hi\r\n250-pipelining\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 X-UNKNOWN 1\r\n");
    let extensions = client.extensions();
    assert!(extensions.pipelining && extensions.size && extensions.eight_bit_mime);
    assert!(extensions.smtputf8 && extensions.chunking && extensions.starttls);
    assert_eq!(extensions.size_max, Some(52_428_800));
    let client = ready(EHLO_PLAIN);
    assert!(client.extensions().size && client.extensions().size_max.is_none());
    assert!(!client.extensions().pipelining);
}

#[test]
fn pipelined_transaction_sends_one_batch() {
    let mut client = ready(EHLO_PIPELINING);
    client
        .send_message(envelope(&["b@y.example", "c@y.example"]))
        .unwrap();
    assert_eq!(
        sent(&mut client),
        "MAIL FROM:<a@x.example> SIZE=10\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"
    );
    assert_eq!(
        client.send_message(envelope(&["b@y.example"])),
        Err(SendError::NotReady)
    );
    client.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n");
    assert!(client.body_needed());
    assert_eq!(client.awaiting(), None);
    assert_eq!(sent(&mut client), "");
    client.body_sent();
    assert!(!client.body_needed());
    assert_eq!(sent(&mut client), ".\r\n");
    assert_eq!(client.awaiting(), Some(Awaiting::Dot));
    client.receive(b"250 2.0.0 queued as X\r\n");
    let events = take_events(&mut client);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(events[0], Event::RecipientResult { index: 0, .. }));
    assert_eq!(done(&events), vec![('d', 250), ('d', 250)]);
    assert!(client.is_idle());
}

#[test]
fn unpipelined_transaction_waits_for_each_reply() {
    let mut client = ready(EHLO_PLAIN);
    client
        .send_message(envelope(&["b@y.example", "c@y.example"]))
        .unwrap();
    assert_eq!(sent(&mut client), "MAIL FROM:<a@x.example> SIZE=10\r\n");
    client.receive(b"250 ok\r\n");
    assert_eq!(sent(&mut client), "RCPT TO:<b@y.example>\r\n");
    client.receive(b"250 ok\r\n");
    assert_eq!(sent(&mut client), "RCPT TO:<c@y.example>\r\n");
    client.receive(b"550 5.1.1 no such user\r\n");
    assert_eq!(sent(&mut client), "DATA\r\n");
    client.receive(b"354 go\r\n");
    client.body_sent();
    assert_eq!(sent(&mut client), ".\r\n");
    client.receive(b"250 ok\r\n");
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('d', 250), ('f', 550)]
    );
}

#[test]
fn mixed_recipient_results() {
    let mut client = ready(EHLO_PIPELINING);
    client
        .send_message(envelope(&["b@y", "c@y", "d@y"]))
        .unwrap();
    sent(&mut client);
    client.receive(b"250 ok\r\n250 ok\r\n450 4.2.1 later\r\n550 5.1.1 unknown\r\n354 go\r\n");
    client.body_sent();
    client.receive(b"250 ok\r\n");
    let events = take_events(&mut client);
    let results: Vec<(usize, u16)> = events
        .iter()
        .filter_map(|event| match event {
            Event::RecipientResult { index, reply } => Some((*index, reply.code)),
            _ => None,
        })
        .collect();
    assert_eq!(results, vec![(0, 250), (1, 450), (2, 550)]);
    assert_eq!(done(&events), vec![('d', 250), ('t', 450), ('f', 550)]);
}

#[test]
fn all_refused_pipelined_data_refused_then_rset() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y", "c@y"])).unwrap();
    sent(&mut client);
    client.receive(b"250 ok\r\n550 no\r\n451 later\r\n554 5.5.1 no valid recipients\r\n");
    assert!(!client.body_needed());
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('f', 550), ('t', 451)]
    );
    assert_eq!(sent(&mut client), "");
    client.send_message(envelope(&["d@y"])).unwrap();
    assert!(sent(&mut client).starts_with("RSET\r\nMAIL FROM:"));
}

#[test]
fn all_refused_pipelined_data_accepted_sends_a_lone_dot() {
    // RFC 2920 §3.1: a 354 after all RCPTs failed gets a single dot.
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y"])).unwrap();
    sent(&mut client);
    client.receive(b"250 ok\r\n550 no\r\n354 go\r\n");
    assert!(!client.body_needed());
    assert_eq!(sent(&mut client), ".\r\n");
    client.receive(b"554 no valid recipients\r\n");
    assert_eq!(done(&take_events(&mut client)), vec![('f', 550)]);
    client.send_message(envelope(&["d@y"])).unwrap();
    assert!(
        sent(&mut client).starts_with("MAIL FROM:"),
        "no RSET needed"
    );
}

#[test]
fn all_refused_unpipelined_sends_no_data_then_rset_alone() {
    let mut client = ready(EHLO_PLAIN);
    client.send_message(envelope(&["b@y"])).unwrap();
    sent(&mut client);
    client.receive(b"250 ok\r\n");
    sent(&mut client);
    client.receive(b"550 no\r\n");
    assert_eq!(sent(&mut client), "");
    assert_eq!(done(&take_events(&mut client)), vec![('f', 550)]);
    client.send_message(envelope(&["d@y"])).unwrap();
    assert_eq!(sent(&mut client), "RSET\r\n");
    client.receive(b"250 flushed\r\n");
    assert!(sent(&mut client).starts_with("MAIL FROM:"));
}

#[test]
fn mail_refused_applies_to_everyone() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y", "c@y"])).unwrap();
    sent(&mut client);
    client.receive(b"451 4.7.1 greylisted\r\n503 no MAIL\r\n503 no MAIL\r\n503 no MAIL\r\n");
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('t', 451), ('t', 451)]
    );
    let mut client = ready(EHLO_PLAIN);
    client.send_message(envelope(&["b@y"])).unwrap();
    sent(&mut client);
    client.receive(b"550 5.7.1 sender refused\r\n");
    assert_eq!(sent(&mut client), "");
    assert_eq!(done(&take_events(&mut client)), vec![('f', 550)]);
}

#[test]
fn data_and_dot_replies_apply_to_accepted_recipients() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y", "c@y"])).unwrap();
    client.receive(b"250 ok\r\n250 ok\r\n550 no\r\n452 4.3.1 out of storage\r\n");
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('t', 452), ('f', 550)]
    );
    sent(&mut client);
    client.send_message(envelope(&["b@y", "c@y"])).unwrap();
    assert!(sent(&mut client).starts_with("RSET\r\n"));
    client.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    client.body_sent();
    client.receive(b"554 5.6.0 content refused\r\n");
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('f', 554), ('f', 554)]
    );
}

#[test]
fn greeting_refused_closes() {
    let mut client = Client::new(config(), TlsMode::Off);
    client.receive(b"421 4.3.2 busy\r\n");
    let events = take_events(&mut client);
    assert!(matches!(closed(&events), Some(CloseReason::GreetingRefused(r)) if r.code == 421));
    assert_eq!(sent(&mut client), "");
    assert!(client.is_closed());
    client.receive(b"220 too late\r\n");
    assert_eq!(client.poll_event(), None);

    let mut client = Client::new(config(), TlsMode::Off);
    client.receive(b"554 go away\r\n");
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::GreetingRefused(_))
    ));
    assert_eq!(sent(&mut client), "QUIT\r\n");
}

#[test]
fn service_closing_mid_transaction_defers_the_rest() {
    let mut client = ready(EHLO_PIPELINING);
    client
        .send_message(envelope(&["b@y", "c@y", "d@y"]))
        .unwrap();
    sent(&mut client);
    client.receive(b"250 ok\r\n550 no\r\n250 ok\r\n421 4.4.2 shutting down\r\n");
    let events = take_events(&mut client);
    assert_eq!(done(&events), vec![('f', 550), ('t', 421), ('t', 421)]);
    assert!(matches!(
        closed(&events),
        Some(CloseReason::ServiceClosing(_))
    ));
    assert!(!client.is_idle());
    assert_eq!(
        client.send_message(envelope(&["b@y"])),
        Err(SendError::NotReady)
    );
}

#[test]
fn service_closing_after_the_body() {
    let mut client = ready(EHLO_PLAIN);
    client.send_message(envelope(&["b@y"])).unwrap();
    client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    client.body_sent();
    client.receive(b"421 bye\r\n");
    assert_eq!(done(&take_events(&mut client)), vec![('t', 421)]);
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut client = Client::new(config(), TlsMode::Off);
    client.receive(b"220 old.example\r\n");
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    client.receive(b"502 command not implemented\r\n");
    assert_eq!(sent(&mut client), "HELO relay.example\r\n");
    client.receive(b"250 old.example\r\n");
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert_eq!(client.extensions(), &Extensions::default());
    client.send_message(envelope(&["b@y"])).unwrap();
    assert_eq!(sent(&mut client), "MAIL FROM:<a@x.example>\r\n");
}

#[test]
fn helo_refused_too_closes() {
    let mut client = Client::new(config(), TlsMode::Off);
    client.receive(b"220 x\r\n500 what\r\n550 no\r\n");
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::HelloRefused(_))
    ));
}

#[test]
fn size_over_the_server_maximum_fails_locally() {
    let mut client = ready(EHLO_PIPELINING);
    let mut message = envelope(&["b@y", "c@y"]);
    message.size = 1001;
    client.send_message(message).unwrap();
    assert_eq!(sent(&mut client), "");
    let events = take_events(&mut client);
    assert_eq!(done(&events), vec![('f', 552), ('f', 552)]);
    let Event::TransactionDone { per_recipient } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(per_recipient[0].reply().enhanced, Some((5, 3, 4)));
    assert!(client.is_idle());
}

#[test]
fn smtputf8_required_but_not_offered_fails_locally() {
    let mut client = ready(EHLO_PIPELINING);
    let mut message = envelope(&["b@y"]);
    message.mail_params = b"SMTPUTF8".to_vec();
    client.send_message(message).unwrap();
    assert_eq!(sent(&mut client), "");
    assert_eq!(done(&take_events(&mut client)), vec![('f', 553)]);
}

#[test]
fn an_invalid_recipient_fails_alone() {
    let mut client = ready(EHLO_PIPELINING);
    client
        .send_message(envelope(&["b@y", "bad address\r\nRSET", "c@y"]))
        .unwrap();
    assert_eq!(
        sent(&mut client),
        "MAIL FROM:<a@x.example> SIZE=10\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    );
    client.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    client.body_sent();
    client.receive(b"250 ok\r\n");
    assert_eq!(
        done(&take_events(&mut client)),
        vec![('d', 250), ('f', 553), ('d', 250)]
    );
}

#[test]
fn send_message_refusals() {
    let mut client = Client::new(config(), TlsMode::Off);
    assert_eq!(
        client.send_message(envelope(&["b@y"])),
        Err(SendError::NotReady)
    );
    let mut client = ready(EHLO_PLAIN);
    assert_eq!(
        client.send_message(envelope(&[])),
        Err(SendError::NoRecipients)
    );
    let many: Vec<String> = (0..101).map(|n| format!("r{n}@y")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        client.send_message(envelope(&many)),
        Err(SendError::TooManyRecipients)
    );
}

#[test]
fn connection_reused_for_a_second_message_then_quit() {
    let mut client = ready(EHLO_PIPELINING);
    for round in 0..2 {
        client.send_message(envelope(&["b@y"])).unwrap();
        assert!(sent(&mut client).starts_with("MAIL FROM:"), "round {round}");
        client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
        client.body_sent();
        assert_eq!(sent(&mut client), ".\r\n");
        client.receive(b"250 ok\r\n");
        assert_eq!(done(&take_events(&mut client)), vec![('d', 250)]);
    }
    client.quit();
    assert_eq!(sent(&mut client), "QUIT\r\n");
    client.receive(b"221 bye\r\n");
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::Quit)
    ));
}

#[test]
fn quit_during_a_transaction_waits_for_its_end() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y"])).unwrap();
    sent(&mut client);
    client.quit();
    assert_eq!(sent(&mut client), "");
    client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    client.body_sent();
    client.receive(b"250 ok\r\n");
    assert_eq!(sent(&mut client), ".\r\nQUIT\r\n");
    client.connection_lost();
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::Quit)
    ));
}

#[test]
fn connection_lost_during_the_body_defers() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y", "c@y"])).unwrap();
    client.receive(b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
    client.connection_lost();
    let events = take_events(&mut client);
    assert_eq!(done(&events), vec![('t', 421), ('f', 550)]);
    assert!(matches!(closed(&events), Some(CloseReason::ConnectionLost)));
}

#[test]
fn unexpected_and_malformed_replies_close() {
    let mut client = ready(EHLO_PIPELINING);
    client.receive(b"250 unsolicited\r\n");
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::UnexpectedReply(_))
    ));

    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y"])).unwrap();
    client.receive(b"250 ok\r\n354 not for RCPT\r\n");
    let events = take_events(&mut client);
    assert_eq!(done(&events), vec![('t', 451)]);
    assert!(matches!(
        closed(&events),
        Some(CloseReason::UnexpectedReply(_))
    ));

    let mut client = ready(EHLO_PIPELINING);
    client.receive(b"hello there\r\n");
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::Malformed(_))
    ));

    let mut client = ready(EHLO_PIPELINING);
    client.receive(&vec![b'2'; 10_000]);
    assert!(matches!(
        closed(&take_events(&mut client)),
        Some(CloseReason::Malformed(_))
    ));
}

/// One pipelined session: each turn of `SESSION` is fed once the client
/// has sent what it answers, cut at `cuts` (offsets into the whole
/// transcript). Returns what the client sent and reported; the body is
/// written when the client wants it.
fn run_chunked(cuts: &[usize]) -> (String, Vec<Event>) {
    let mut client = Client::new(config(), TlsMode::Off);
    let mut log = String::new();
    let mut events = Vec::new();
    let mut turn_start = 0;
    for turn in SESSION {
        let turn_end = turn_start + turn.len();
        let mut pieces: Vec<usize> = cuts
            .iter()
            .filter(|&&cut| cut > turn_start && cut < turn_end)
            .map(|&cut| cut - turn_start)
            .collect();
        pieces.sort_unstable();
        pieces.push(turn.len());
        let mut start = 0;
        for end in pieces {
            client.receive(&turn[start..end]);
            start = end;
            act(&mut client, &mut log, &mut events);
        }
        turn_start = turn_end;
    }
    (log, events)
}

/// What a shard does between reads: send, react to events, write the body.
fn act(client: &mut Client, log: &mut String, events: &mut Vec<Event>) {
    while let Some(event) = client.poll_event() {
        if event == Event::Ready {
            client.send_message(envelope(&["b@y", "c@y"])).unwrap();
        } else if matches!(event, Event::TransactionDone { .. }) {
            client.quit();
        }
        events.push(event);
    }
    if client.body_needed() {
        log.push_str(&sent(client));
        log.push_str("<body>");
        client.body_sent();
    }
    log.push_str(&sent(client));
}

const SESSION: &[&[u8]] = &[
    b"220-mx.example\r\n220 ESMTP\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
    b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n",
    b"250 2.0.0 queued\r\n",
    b"221 bye\r\n",
];
const SESSION_BYTES: usize = 139;

#[test]
fn replies_split_at_every_byte_boundary() {
    assert_eq!(SESSION.concat().len(), SESSION_BYTES);
    let whole = run_chunked(&[]);
    assert_eq!(done(&whole.1), vec![('d', 250), ('f', 550)]);
    assert!(matches!(closed(&whole.1), Some(CloseReason::Quit)));
    assert!(whole.0.ends_with("<body>.\r\nQUIT\r\n"), "{}", whole.0);
    for cut in 0..=SESSION_BYTES {
        assert_eq!(run_chunked(&[cut]), whole, "cut at {cut}");
    }
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_session(cuts in prop::collection::vec(0..SESSION_BYTES, 0..40)) {
        prop_assert_eq!(run_chunked(&cuts), run_chunked(&[]));
    }

    #[test]
    fn garbage_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
        drive(&chunks);
    }

    #[test]
    fn random_replies_never_panic(
        replies in prop::collection::vec((prop::sample::select(vec![
            0u16, 99, 199, 220, 221, 250, 354, 421, 450, 451, 500, 502, 503, 550, 554, 999,
        ]), any::<bool>(), "[ -~]{0,20}"), 0..40),
        split in 1usize..7,
    ) {
        let mut bytes = Vec::new();
        for (code, more, text) in &replies {
            let separator = if *more { '-' } else { ' ' };
            bytes.extend_from_slice(format!("{code:03}{separator}{text}\r\n").as_bytes());
        }
        let chunks: Vec<Vec<u8>> = bytes.chunks(split).map(<[u8]>::to_vec).collect();
        drive(&chunks);
    }
}

/// Feeds `chunks`, acting like a shard, and checks the invariants: one
/// outcome per recipient, nothing after Closed, bounded buffers.
fn drive(chunks: &[Vec<u8>]) {
    let limits = ClientLimits::default();
    let mut client = Client::new(config(), TlsMode::Off);
    let mut is_closed = false;
    for chunk in chunks {
        client.receive(chunk);
        if client.is_idle() {
            let _ = client.send_message(envelope(&["b@y", "c@y", "d@y"]));
        }
        if client.body_needed() {
            client.body_sent();
        }
        assert!(client.output().len() < 4096);
        client.consume_output(usize::MAX);
        while let Some(event) = client.poll_event() {
            assert!(!is_closed, "event after Closed: {event:?}");
            match event {
                Event::TransactionDone { per_recipient } => assert_eq!(per_recipient.len(), 3),
                Event::Closed { .. } => is_closed = true,
                _ => {}
            }
        }
        assert!(client.input_len() < limits.reply_line_bytes_max * limits.reply_lines_max);
    }
    client.connection_lost();
    client.connection_lost();
    let closes = std::iter::from_fn(|| client.poll_event())
        .filter(|event| matches!(event, Event::Closed { .. }))
        .count();
    assert_eq!(closes, usize::from(!is_closed));
}

/// Every TransactionDone among `events`, in order.
fn all_done(events: &[Event]) -> Vec<Vec<(char, u16)>> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::TransactionDone { per_recipient } => Some(codes(per_recipient)),
            _ => None,
        })
        .collect()
}

/// A pipelining client with one transaction's body and dot out.
fn body_out() -> Client {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y.example"])).unwrap();
    sent(&mut client);
    client.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n");
    take_events(&mut client);
    assert!(client.body_needed());
    client.body_sent();
    assert_eq!(sent(&mut client), ".\r\n");
    client
}

#[test]
fn the_next_envelope_follows_the_dot_in_the_same_group() {
    let mut client = body_out();
    assert!(client.takes_next());
    client
        .send_message(envelope(&["c@y.example", "d@y.example"]))
        .unwrap();
    assert!(!client.takes_next(), "one transaction queued at most");
    assert_eq!(
        sent(&mut client),
        "MAIL FROM:<a@x.example> SIZE=10\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\n"
    );
    // The dot's reply ends the first; the second's replies follow.
    client.receive(b"250 2.0.0 first\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
    let events = take_events(&mut client);
    assert_eq!(all_done(&events), vec![vec![('d', 250)]]);
    assert!(
        client.body_needed(),
        "the second transaction wants its body"
    );
    client.body_sent();
    assert_eq!(sent(&mut client), ".\r\n");
    client.receive(b"250 2.0.0 second\r\n");
    let events = take_events(&mut client);
    assert_eq!(all_done(&events), vec![vec![('d', 250), ('f', 550)]]);
    assert!(client.is_idle());
}

#[test]
fn a_421_after_the_dot_defers_both_transactions_in_order() {
    let mut client = body_out();
    client.send_message(envelope(&["c@y.example"])).unwrap();
    sent(&mut client);
    client.receive(b"421 4.3.2 going away\r\n");
    let events = take_events(&mut client);
    assert_eq!(all_done(&events), vec![vec![('t', 421)], vec![('t', 421)]]);
    assert!(closed(&events).is_some());
}

#[test]
fn a_next_envelope_refused_locally_is_reported_after_the_current_one() {
    let mut client = body_out();
    let mut big = envelope(&["c@y.example"]);
    big.size = 5000; // the server's SIZE is 1000
    client.send_message(big).unwrap();
    assert_eq!(sent(&mut client), "", "nothing sent for a refused envelope");
    assert!(
        take_events(&mut client).is_empty(),
        "not before the current one"
    );
    client.receive(b"250 2.0.0 first\r\n");
    let events = take_events(&mut client);
    assert_eq!(all_done(&events), vec![vec![('d', 250)], vec![('f', 552)]]);
    assert!(client.is_idle());
}

#[test]
fn no_next_envelope_without_pipelining_or_before_the_dot() {
    let mut client = ready(EHLO_PLAIN);
    client.send_message(envelope(&["b@y.example"])).unwrap();
    assert!(!client.takes_next());
    sent(&mut client);
    client.receive(b"250 ok\r\n");
    sent(&mut client);
    client.receive(b"250 ok\r\n");
    sent(&mut client);
    client.receive(b"354 go\r\n");
    client.body_sent();
    assert!(!client.takes_next(), "the server does not pipeline");
    assert_eq!(
        client.send_message(envelope(&["c@y.example"])),
        Err(SendError::NotReady)
    );
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y.example"])).unwrap();
    assert!(!client.takes_next(), "the body is not out yet");
}

#[test]
fn a_timeout_defers_with_a_reply_that_says_what_was_awaited() {
    let mut client = ready(EHLO_PIPELINING);
    client.send_message(envelope(&["b@y.example"])).unwrap();
    sent(&mut client);
    client.timed_out();
    let events = take_events(&mut client);
    assert_eq!(done(&events), vec![('t', 421)]);
    let Some(Event::TransactionDone { per_recipient }) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!(
        per_recipient[0].reply().lines,
        ["timed out waiting for the reply to MAIL"]
    );
    assert_eq!(
        closed(&events),
        Some(&CloseReason::TimedOut(Awaiting::Mail))
    );
    assert!(client.is_closed());
}

const EHLO_STARTTLS: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n";

/// A client past the greeting, its EHLO answered with `ehlo`.
fn greeted(mode: TlsMode, ehlo: &[u8]) -> Client {
    let mut client = Client::new(config(), mode);
    client.receive(b"220 mx.example ESMTP\r\n");
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    client.receive(ehlo);
    client
}

#[test]
fn starttls_when_offered_then_ehlo_again() {
    let mut client = greeted(TlsMode::Opportunistic, EHLO_STARTTLS);
    assert_eq!(sent(&mut client), "STARTTLS\r\n");
    assert_eq!(client.awaiting(), Some(Awaiting::StartTls));
    // Response injection: a hostile server puts a reply behind the 220 in
    // the same packet; it must not be taken as the reply to anything.
    client.receive(b"220 2.0.0 Ready to start TLS\r\n250-mx.example\r\n250 PIPELINING\r\n");
    assert_eq!(take_events(&mut client), vec![Event::StartTls]);
    assert!(client.in_handshake());
    assert_eq!(client.input_len(), 0);
    assert_eq!(sent(&mut client), "");
    client.tls_established();
    assert!(client.tls_active());
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    // Over TLS the offer of STARTTLS is not taken up again.
    client.receive(EHLO_STARTTLS);
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert_eq!(sent(&mut client), "");
    assert!(client.extensions().pipelining);
}

#[test]
fn opportunistic_goes_plain_when_not_offered_or_refused() {
    let mut client = greeted(TlsMode::Opportunistic, EHLO_PIPELINING);
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert!(!client.tls_active());

    let mut client = greeted(TlsMode::Opportunistic, EHLO_STARTTLS);
    assert_eq!(sent(&mut client), "STARTTLS\r\n");
    client.receive(b"454 4.7.0 TLS not available due to local problem\r\n");
    assert_eq!(take_events(&mut client), vec![Event::Ready]);

    let mut client = greeted(TlsMode::Off, EHLO_STARTTLS);
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert_eq!(sent(&mut client), "");
}

#[test]
fn required_tls_refuses_a_plain_server() {
    let mut client = greeted(TlsMode::Required, EHLO_PIPELINING);
    let events = take_events(&mut client);
    assert_eq!(
        events,
        vec![Event::Closed {
            reason: CloseReason::TlsUnavailable("did not offer STARTTLS".into())
        }]
    );
    assert_eq!(sent(&mut client), "QUIT\r\n");

    let mut client = greeted(TlsMode::Required, EHLO_STARTTLS);
    sent(&mut client);
    client.receive(b"454 4.7.0 TLS not available\r\n");
    let Some(Event::Closed {
        reason: CloseReason::TlsUnavailable(why),
    }) = client.poll_event()
    else {
        panic!("closed for want of TLS");
    };
    assert_eq!(why, "refused STARTTLS: 454 4.7.0 TLS not available");

    let mut client = greeted(TlsMode::Required, EHLO_STARTTLS);
    sent(&mut client);
    client.receive(b"220 go ahead\r\n");
    assert_eq!(take_events(&mut client), vec![Event::StartTls]);
    client.tls_failed("invalid peer certificate: UnknownIssuer".into());
    let events = take_events(&mut client);
    assert!(
        matches!(
            &events[..],
            [Event::Closed {
                reason: CloseReason::TlsFailed(_)
            }]
        ),
        "{events:?}"
    );
}

fn credentials(plaintext: bool) -> Option<Arc<Credentials>> {
    Some(Arc::new(Credentials::new("user", "pass", plaintext)))
}

/// A client with credentials, over TLS: STARTTLS done, its second EHLO
/// answered with `ehlo`.
fn authenticating(ehlo: &[u8]) -> Client {
    let mut client = Client::new(config(), TlsMode::Required).with_auth(credentials(false));
    client.receive(b"220 mx.example ESMTP\r\n");
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    client.receive(EHLO_STARTTLS);
    assert_eq!(sent(&mut client), "STARTTLS\r\n");
    client.receive(b"220 go ahead\r\n");
    assert_eq!(take_events(&mut client), vec![Event::StartTls]);
    client.tls_established();
    assert_eq!(sent(&mut client), "EHLO relay.example\r\n");
    client.receive(ehlo);
    client
}

#[test]
fn auth_plain_goes_with_its_initial_response_after_starttls() {
    let mut client =
        authenticating(b"250-mx.example\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n");
    // base64("\0user\0pass"), RFC 4616 §2: no authorization identity.
    assert_eq!(sent(&mut client), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    assert_eq!(client.awaiting(), Some(Awaiting::Auth));
    assert_eq!(client.auth_mechanism(), Some(Mechanism::Plain));
    assert!(take_events(&mut client).is_empty(), "not ready before 235");
    assert!(!client.is_idle());
    client.receive(b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
    assert!(client.is_idle());
    client.send_message(envelope(&["b@y.example"])).unwrap();
    assert!(sent(&mut client).starts_with("MAIL FROM:<a@x.example>"));
}

#[test]
fn auth_login_when_only_login_is_offered() {
    // The old `AUTH=` form of the keyword counts too.
    let mut client = authenticating(b"250-mx.example\r\n250 AUTH=LOGIN\r\n");
    assert_eq!(sent(&mut client), "AUTH LOGIN\r\n");
    assert_eq!(client.auth_mechanism(), Some(Mechanism::Login));
    client.receive(b"334 VXNlcm5hbWU6\r\n");
    assert_eq!(sent(&mut client), "dXNlcg==\r\n");
    client.receive(b"334 UGFzc3dvcmQ6\r\n");
    assert_eq!(sent(&mut client), "cGFzcw==\r\n");
    assert!(take_events(&mut client).is_empty());
    client.receive(b"235 2.7.0 ok\r\n");
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
}

#[test]
fn auth_refused_closes_for_a_deferral_never_a_bounce() {
    for refusal in [
        &b"535 5.7.8 Authentication credentials invalid\r\n"[..],
        b"454 4.7.0 Temporary authentication failure\r\n",
    ] {
        let mut client = authenticating(b"250-mx.example\r\n250 AUTH PLAIN\r\n");
        sent(&mut client);
        client.receive(refusal);
        let events = take_events(&mut client);
        let Some(CloseReason::AuthRefused(reply)) = closed(&events) else {
            panic!("closed on the refusal: {events:?}");
        };
        let deferral = CloseReason::AuthRefused(reply.clone()).deferral_reply();
        assert_eq!(deferral.class(), 4, "{deferral:?}");
        assert_eq!(deferral.enhanced, Some((4, 7, 8)));
        let text = &deferral.lines[0];
        assert!(
            text.contains(&reply.code.to_string()),
            "quotes the reply: {text}"
        );
        assert_eq!(sent(&mut client), "QUIT\r\n");
        assert!(client.is_closed());
    }
    // LOGIN refused after the password.
    let mut client = authenticating(b"250-mx.example\r\n250 AUTH LOGIN\r\n");
    client.receive(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 no\r\n");
    let events = take_events(&mut client);
    assert!(matches!(closed(&events), Some(CloseReason::AuthRefused(r)) if r.code == 535));
}

#[test]
fn auth_not_offered_closes_without_sending_credentials() {
    for (ehlo, why) in [
        (
            &b"250-mx.example\r\n250 PIPELINING\r\n"[..],
            "does not offer AUTH",
        ),
        (
            b"250-mx.example\r\n250 AUTH CRAM-MD5 GSSAPI\r\n",
            "neither AUTH PLAIN nor AUTH LOGIN",
        ),
    ] {
        let mut client = authenticating(ehlo);
        let events = take_events(&mut client);
        let Some(CloseReason::AuthUnavailable(text)) = closed(&events) else {
            panic!("closed: {events:?}");
        };
        assert!(text.contains(why), "{text}");
        assert_eq!(sent(&mut client), "QUIT\r\n");
        let deferral = CloseReason::AuthUnavailable(text.clone()).deferral_reply();
        assert_eq!(deferral.class(), 4);
    }
}

#[test]
fn credentials_are_withheld_without_tls_unless_plaintext_is_allowed() {
    let ehlo: &[u8] = b"250-mx.example\r\n250 AUTH PLAIN LOGIN\r\n";
    // No STARTTLS offered (opportunistic), or TLS off for the connection.
    for (mode, ehlo_reply, why) in [
        (
            TlsMode::Opportunistic,
            ehlo,
            "the server did not offer STARTTLS",
        ),
        (
            TlsMode::Off,
            b"250-mx.example\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
            "TLS is off",
        ),
    ] {
        let mut client = Client::new(config(), mode).with_auth(credentials(false));
        client.receive(b"220 mx.example ESMTP\r\n");
        sent(&mut client);
        client.receive(ehlo_reply);
        let events = take_events(&mut client);
        let Some(CloseReason::AuthUnavailable(text)) = closed(&events) else {
            panic!("closed: {events:?}");
        };
        assert!(text.starts_with("credentials withheld"), "{text}");
        assert!(text.contains(why), "{text}");
        assert!(text.contains("auth_plaintext"), "{text}");
        let out = sent(&mut client);
        assert_eq!(out, "QUIT\r\n", "no AUTH in plain text");
        assert!(!out.contains("AUTH") && !out.contains("AHVzZXIAcGFzcw=="));
    }
    // auth_plaintext: the same server gets them.
    let mut client = Client::new(config(), TlsMode::Opportunistic).with_auth(credentials(true));
    client.receive(b"220 mx.example ESMTP\r\n");
    sent(&mut client);
    client.receive(ehlo);
    assert_eq!(sent(&mut client), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    client.receive(b"235 ok\r\n");
    assert_eq!(take_events(&mut client), vec![Event::Ready]);
}

#[test]
fn auth_timeouts_and_strange_replies_close_the_connection() {
    let mut client = authenticating(b"250-mx.example\r\n250 AUTH PLAIN\r\n");
    sent(&mut client);
    client.timed_out();
    let events = take_events(&mut client);
    assert_eq!(
        closed(&events),
        Some(&CloseReason::TimedOut(Awaiting::Auth))
    );
    // A challenge after the whole PLAIN response: cancelled, not guessed.
    let mut client = authenticating(b"250-mx.example\r\n250 AUTH PLAIN\r\n");
    sent(&mut client);
    client.receive(b"334 \r\n");
    let events = take_events(&mut client);
    assert!(matches!(
        closed(&events),
        Some(CloseReason::UnexpectedReply(_))
    ));
    assert_eq!(sent(&mut client), "*\r\n");
}

#[test]
fn credentials_do_not_show_in_debug_output() {
    let credentials = Credentials::new("user", "hunter2", false);
    let shown = format!("{credentials:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("user"));
}
