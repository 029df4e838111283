//! The SMTP client against an arbitrary server: the input is split into
//! chunks of server bytes interleaved with the client's own actions (send
//! an envelope, the body written, QUIT, connection lost, a STARTTLS
//! handshake done or failed, under each TLS mode). Never panics, and
//! every envelope it takes ends in exactly one `TransactionDone` with one
//! outcome per recipient, in order, by the time the connection is over.

#![no_main]

use std::sync::Arc;

use baton::outbound::{Client, ClientConfig, ClientLimits, Envelope, Event, TlsMode};
use libfuzzer_sys::fuzz_target;

fn envelope(recipients: usize) -> Envelope {
    Envelope {
        reverse_path: b"a@x.example".to_vec(),
        mail_params: Vec::new(),
        recipients: (0..recipients)
            .map(|i| format!("r{i}@y.example").into_bytes())
            .collect(),
        size: 100,
    }
}

fuzz_target!(|data: &[u8]| {
    let config = Arc::new(ClientConfig {
        helo_name: "relay.example".into(),
        limits: ClientLimits::default(),
    });
    let [mode, data @ ..] = data else {
        return;
    };
    let mode = match mode % 3 {
        0 => TlsMode::Off,
        1 => TlsMode::Opportunistic,
        _ => TlsMode::Required,
    };
    let mut client = Client::new(config, mode);
    // Recipient counts of the envelopes taken, oldest first.
    let mut taken: std::collections::VecDeque<usize> = Default::default();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, after) = tail.split_at(n);
        rest = after;
        match op % 8 {
            0 | 1 => client.receive(chunk),
            // The shard's report of a STARTTLS handshake.
            6 => client.tls_established(),
            7 => client.tls_failed("handshake failed".into()),
            2 => {
                let count = usize::from(*len % 4) + 1;
                if client.send_message(envelope(count)).is_ok() {
                    taken.push_back(count);
                }
            }
            3 => {
                if client.body_needed() {
                    client.body_sent();
                }
            }
            4 => client.quit(),
            5 => client.connection_lost(),
            _ => unreachable!(),
        }
        let output = client.output().len();
        client.consume_output(output);
        while let Some(event) = client.poll_event() {
            if let Event::TransactionDone { per_recipient } = event {
                let expected = taken
                    .pop_front()
                    .expect("a TransactionDone without an envelope");
                assert_eq!(per_recipient.len(), expected);
            }
        }
    }
    client.connection_lost();
    while let Some(event) = client.poll_event() {
        if let Event::TransactionDone { per_recipient } = event {
            let expected = taken
                .pop_front()
                .expect("a TransactionDone without an envelope");
            assert_eq!(per_recipient.len(), expected);
        }
    }
    assert!(taken.is_empty(), "envelopes without an outcome: {taken:?}");
});
