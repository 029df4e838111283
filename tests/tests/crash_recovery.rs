//! `kill -9` under load loses nothing acknowledged: baton answers `250`
//! only once a message is durable (RFC 5321 §6.1), so every message a
//! client saw `250 ... queued as <id>` for is in the queue after a restart,
//! with all its recipients. Several pipelining connections send a burst;
//! the process is killed right after the burst's last `250`, while the
//! other connections are in the middle of messages; restart, check, and
//! again, each round on top of the last.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use baton_tests::{queued_id, Baton, Smtp, REPLY_TIMEOUT};

const ROUNDS: usize = 3;
/// Acknowledged messages that end a round with `kill -9`.
const MESSAGES_PER_ROUND: usize = 300;
const CONNECTIONS: usize = 6;
/// One message in this many acknowledged is looked at with `queue show`,
/// besides each connection's last.
const SAMPLE_EVERY: usize = 25;
/// Recipients per message go 1, 2, 3, 1, ...
const RECIPIENTS_MAX: usize = 3;

/// A message the server acknowledged.
#[derive(Clone, Debug)]
struct Acked {
    connection: usize,
    id: String,
    sender: String,
    recipients: Vec<String>,
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let mut baton = Baton::start();
    let mut acked: Vec<Acked> = Vec::new();
    let mut sample: Vec<Acked> = Vec::new();
    for round in 0..ROUNDS {
        let burst = burst_then_kill(&mut baton, round);
        for (i, message) in burst.iter().enumerate() {
            let last_of_connection = !burst[i + 1..]
                .iter()
                .any(|later| later.connection == message.connection);
            if i % SAMPLE_EVERY == 0 || last_of_connection {
                sample.push(message.clone());
            }
        }
        acked.extend(burst);
        baton.spawn();
        check(&baton, &acked, &sample, round + 1);
    }
}

/// Runs the burst of one round and kills baton right after its
/// `MESSAGES_PER_ROUND`-th acknowledgement. Returns every message
/// acknowledged, including those acknowledged after that one but before
/// the kill took effect.
fn burst_then_kill(baton: &mut Baton, round: usize) -> Vec<Acked> {
    let (acks, received) = mpsc::channel();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let acks = acks.clone();
            let address = baton.smtp;
            thread::spawn(move || send_until_gone(address, round, connection, acks))
        })
        .collect();
    drop(acks);
    let mut burst = wait_for_acks(&received, MESSAGES_PER_ROUND);
    baton.kill9();
    for sender in senders {
        sender.join().expect("a sender thread failed");
    }
    burst.extend(received.try_iter());
    assert!(burst.len() >= MESSAGES_PER_ROUND);
    burst
}

#[track_caller]
fn wait_for_acks(received: &Receiver<Acked>, count: usize) -> Vec<Acked> {
    (0..count)
        .map(|i| {
            received
                .recv_timeout(REPLY_TIMEOUT)
                .unwrap_or_else(|err| panic!("acknowledgement {i} of {count}: {err}"))
        })
        .collect()
}

/// Sends pipelined messages on one connection until the server goes away
/// (or, as a bound, `MESSAGES_PER_ROUND` are sent), reporting each `250`.
fn send_until_gone(address: SocketAddr, round: usize, connection: usize, acks: Sender<Acked>) {
    // Late starters may find the server already killed.
    let Ok(stream) = TcpStream::connect(address) else {
        return;
    };
    let mut smtp = Smtp::from_stream(stream);
    if smtp.try_reply().is_none() || smtp.try_send(b"EHLO crash.test\r\n").is_err() {
        return;
    }
    let Some(ehlo) = smtp.try_reply() else { return };
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    for n in 0..MESSAGES_PER_ROUND {
        let sender = format!("r{round}c{connection}m{n}@sender.example");
        let recipients: Vec<String> = (0..=n % RECIPIENTS_MAX)
            .map(|r| format!("r{round}c{connection}m{n}.{r}@d{}.example", (n + r) % 5))
            .collect();
        let Some(id) = send_one(&mut smtp, &sender, &recipients, round, connection, n) else {
            return;
        };
        let ack = Acked {
            connection,
            id,
            sender,
            recipients,
        };
        if acks.send(ack).is_err() {
            return;
        }
    }
}

/// One message: envelope and DATA in one write, then the content. `None`
/// once the server is gone.
fn send_one(
    smtp: &mut Smtp,
    sender: &str,
    recipients: &[String],
    round: usize,
    connection: usize,
    n: usize,
) -> Option<String> {
    let mut envelope = format!("MAIL FROM:<{sender}>\r\n");
    for recipient in recipients {
        envelope.push_str(&format!("RCPT TO:<{recipient}>\r\n"));
    }
    envelope.push_str("DATA\r\n");
    smtp.try_send(envelope.as_bytes()).ok()?;
    for _ in 0..=recipients.len() {
        let reply = smtp.try_reply()?;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let reply = smtp.try_reply()?;
    assert_eq!(reply.code, 354, "{reply:?}");
    // About 3 KB, so that the spool's 1 MiB segments fill up and roll over.
    let filler = format!("round {round} connection {connection} message {n}\r\n").repeat(80);
    let content = format!("Subject: crash test {n}\r\n\r\n{filler}.\r\n");
    smtp.try_send(content.as_bytes()).ok()?;
    let reply = smtp.try_reply()?;
    Some(queued_id(&reply))
}

/// After restart: the queue holds at least everything acknowledged (and at
/// most one unacknowledged message per connection and round, which may
/// have become durable just before the kill), and the sample reads back.
fn check(baton: &Baton, acked: &[Acked], sample: &[Acked], rounds: usize) {
    let ids: BTreeMap<&str, &Acked> = acked.iter().map(|a| (a.id.as_str(), a)).collect();
    assert_eq!(ids.len(), acked.len(), "queue ids are unique");
    let recipients: usize = acked.iter().map(|a| a.recipients.len()).sum();
    let in_flight = CONNECTIONS * rounds;
    let queue = baton.queue();
    let messages = queue["messages"].as_u64().expect("messages") as usize;
    let queued_recipients = queue["recipients"].as_u64().expect("recipients") as usize;
    assert!(
        (acked.len()..=acked.len() + in_flight).contains(&messages),
        "{} acknowledged, {messages} queued",
        acked.len()
    );
    assert!(
        (recipients..=recipients + in_flight * RECIPIENTS_MAX).contains(&queued_recipients),
        "{recipients} acknowledged recipients, {queued_recipients} queued"
    );
    // The per-destination queues, rebuilt from the spool, agree with it.
    let per_destination: u64 = queue["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| d["ready"].as_u64().expect("ready") + d["scheduled"].as_u64().expect("scheduled"))
        .sum();
    assert_eq!(per_destination as usize, queued_recipients, "{queue}");
    for expected in sample {
        let message = baton.show(&expected.id);
        assert_eq!(message["queue_id"], expected.id, "{message}");
        assert_eq!(message["sender"], expected.sender, "{message}");
        assert_eq!(Baton::shown_recipients(&message), expected.recipients);
        for recipient in message["recipients"].as_array().expect("recipients") {
            assert_eq!(recipient["status"], "pending", "{message}");
        }
    }
}
