//! Messages injected over HTTP (`crate::http::inject`), finished and
//! stored on a shard as an SMTP session's are: a queue id from the
//! shard's generator, baton's `Received:` field, the trusted client's
//! fix-ups and unsubscribe links ([`Trusted`]), DKIM signing (off the
//! shard when it is costly), the spool append, and the `received` event
//! once the datasync covers the message. The injector's answer goes back
//! when every message of its request is durable (or refused).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use baton_spool::QueueId;

use crate::auth::verify::Identity;
use crate::http::inject::{Injected, Injection, Stored};
use crate::inbound::{address_literal, ReceivedMessage, StoreError, Trusted};
use crate::server::unix_ms;
use crate::sign::Cost as SignCost;
use crate::smtp::date::rfc5322_date;

use super::event_loop::{Ctx, Shard, Waiter};
use super::ShardMsg;

/// The injections a shard is storing, by batch number.
#[derive(Default)]
pub(super) struct Injections {
    next: u64,
    waiting: HashMap<u64, Waiting>,
}

impl Injections {
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// One injection's messages on their way to the spool.
struct Waiting {
    /// Each message's outcome, in the request's order, once known.
    stored: Vec<Option<Stored>>,
    left: usize,
    reply: tokio::sync::oneshot::Sender<Vec<Stored>>,
    /// The injector's address, for the spool record and the event.
    peer: Arc<str>,
}

impl Shard {
    /// Finishes and appends an injection's messages.
    pub(super) fn inject(&mut self, injection: Injection) {
        let Injection {
            messages,
            peer,
            tls,
            identity,
            reply,
        } = injection;
        let batch = self.injections.next;
        self.injections.next += 1;
        let count = messages.len();
        if count == 0 {
            let _ = reply.send(Vec::new());
            return;
        }
        let waiting = Waiting {
            stored: vec![None; count],
            left: count,
            reply,
            peer: peer.to_string().into(),
        };
        self.injections.waiting.insert(batch, waiting);
        for (index, injected) in messages.into_iter().enumerate() {
            let message = self.finish_injected(injected, peer, tls, identity.clone());
            let Some(domain) = message.sign_domain.clone() else {
                self.inject_store(batch, index, message);
                continue;
            };
            match self.server.signing.cost(&domain) {
                SignCost::NoKey => {
                    let message = ReceivedMessage {
                        dkim: Some(format!("none: no key for {domain}")),
                        ..message
                    };
                    self.inject_store(batch, index, message);
                }
                SignCost::Cheap => {
                    let message = self.server.signing.sign_now(message, &domain);
                    self.inject_store(batch, index, message);
                }
                SignCost::Costly => {
                    // Signed off the shard; appended when it comes back.
                    let server = self.server.clone();
                    let shard = self.id;
                    self.server.signing.sign(message, domain, move |message| {
                        server.links[shard].send(ShardMsg::InjectSigned {
                            batch,
                            index,
                            message: Box::new(message),
                        });
                    });
                }
            }
        }
    }

    /// A message as a session would hand it over: queue id, `Received:`,
    /// and what baton does to mail from clients it trusts.
    fn finish_injected(
        &mut self,
        injected: Injected,
        peer: SocketAddr,
        tls: bool,
        identity: Option<Arc<Identity>>,
    ) -> ReceivedMessage {
        let now_ms = unix_ms();
        let queue_id = self.queue_ids.next(now_ms);
        let hostname = &self.server.config.server.hostname;
        let mut wire = received_header(peer, tls, hostname, queue_id, now_ms / 1000);
        wire.extend_from_slice(&injected.wire);
        let trusted = Trusted {
            queue_id,
            reverse_path: &injected.reverse_path,
            recipients: &injected.recipients,
            identity: identity.as_deref(),
            hostname,
        };
        let mut ctx = Ctx {
            queue_ids: &mut self.queue_ids,
            server: &self.server,
            suppression: &mut self.suppression,
        };
        let (sign_domain, dkim) = trusted.finish(&mut wire, &mut ctx);
        ReceivedMessage {
            queue_id,
            reverse_path: injected.reverse_path,
            mail_params: injected.mail_params,
            recipients: injected.recipients,
            body: wire,
            peer,
            helo: String::new(),
            tls: None,
            identity,
            sign_domain,
            dkim,
        }
    }

    /// Appends message `index` of injection `batch`; a refusal is its
    /// outcome at once.
    pub(super) fn inject_store(&mut self, batch: u64, index: usize, message: ReceivedMessage) {
        let Some(peer) = self.injections.waiting.get(&batch).map(|w| w.peer.clone()) else {
            return;
        };
        if let Err(err) = self.append(Waiter::Injection { batch, index }, peer, message) {
            self.injected(batch, index, Err(err));
        }
    }

    /// Message `index` of injection `batch` is durable (and queued), or
    /// was refused; the last one sends the answer.
    pub(super) fn injected(
        &mut self,
        batch: u64,
        index: usize,
        stored: Result<QueueId, StoreError>,
    ) {
        let Some(waiting) = self.injections.waiting.get_mut(&batch) else {
            return;
        };
        if let Some(slot) = waiting.stored.get_mut(index) {
            if slot.replace(stored).is_none() {
                waiting.left -= 1;
            }
        }
        if waiting.left > 0 {
            return;
        }
        let waiting = self.injections.waiting.remove(&batch).expect("seen above");
        let stored = waiting
            .stored
            .into_iter()
            .map(|slot| slot.unwrap_or(Err(StoreError::Failed)))
            .collect();
        // The injector may have given up waiting: the mail is queued all
        // the same, as for an SMTP client that left before its 250.
        let _ = waiting.reply.send(stored);
    }
}

/// baton's `Received:` field for injected mail (RFC 5321 §4.4): no HELO
/// name, the injector's address, and `HTTP` or `HTTPS` as the protocol
/// where SMTP has `ESMTP`.
fn received_header(
    peer: SocketAddr,
    tls: bool,
    hostname: &str,
    queue_id: QueueId,
    now_unix_secs: u64,
) -> Vec<u8> {
    let protocol = if tls { "HTTPS" } else { "HTTP" };
    format!(
        "Received: from {peer} by {hostname} (baton) with {protocol} id {queue_id};\r\n\t{date}\r\n",
        peer = address_literal(peer.ip()),
        date = rfc5322_date(now_unix_secs),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_received_field_names_the_injector_and_http() {
        let header = received_header(
            "192.0.2.7:40000".parse().unwrap(),
            true,
            "mx.example.net",
            QueueId(0x1234),
            0,
        );
        let text = String::from_utf8(header).unwrap();
        assert!(
            text.starts_with(
                "Received: from [192.0.2.7] by mx.example.net (baton) with HTTPS id 0000000000001234;\r\n\t"
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\n"));
    }
}
