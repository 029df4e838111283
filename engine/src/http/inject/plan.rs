//! What an injection request becomes before a shard finishes it: the
//! envelope checked with the SMTP grammar, suppressed recipients and the
//! user's policy applied as at `RCPT` and at the end of `DATA`, and the
//! messages made (`build.rs`), within the data in flight. Run on tokio's
//! blocking pool: templating, MIME and suppression lookups take time.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use super::build::{self, Draft, Limits};
use super::request::{BadRequest, Request};
use super::{problem, Injected};
use crate::auth::verify::Identity;
use crate::inbound::{from_domains, received_headers, AcceptedRecipient, Held};
use crate::server::Server;
use crate::smtp::address::{parse_forward_path, parse_reverse_path, ForwardPath};

/// The messages to store, and the recipients refused before any was made.
pub(super) struct Planned {
    pub request: Request,
    /// Each message, and its recipients as indexes into the request's.
    pub messages: Vec<(Injected, Vec<usize>)>,
    /// Recipients refused, by index, and why.
    pub failed: Vec<(usize, String)>,
    /// The messages' share of the data in flight, until they are stored.
    pub held: Held,
}

/// An answer other than `200`.
type Refusal = Response<Full<Bytes>>;

/// Checks the envelope and makes the messages, as an SMTP session with a
/// trusted client would take them.
pub(super) fn plan(
    server: &Server,
    request: Request,
    identity: Option<&Arc<Identity>>,
) -> Result<Planned, Refusal> {
    let sender = envelope_sender(&request, identity)?;
    let recipients = recipients(server, &request, &sender, identity);
    let limits = limits(server, identity);
    let drafts = build::drafts(&request, &recipients.accepted, &limits)
        .map_err(|BadRequest(why)| problem(StatusCode::BAD_REQUEST, why))?;
    // The messages wait in memory until the spool has them: they count
    // against the data in flight, as SMTP sessions' messages do.
    let mut held = Held::new(&server.data_budget);
    let mut held_bytes = 0;
    let mut messages = Vec::new();
    let mut failed = recipients.failed;
    for Draft {
        recipients: group,
        wire,
    } in drafts
    {
        held_bytes += wire.as_ref().map_or(0, |wire| wire.capacity() as u64);
        if !held.resize(held_bytes) {
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "too much message data in flight (limits.data_in_flight_max): nothing was queued; \
                 try again later, or with fewer recipients"
                    .into(),
            ));
        }
        match wire.and_then(|wire| check(server, &wire, identity).map(|()| wire)) {
            Ok(wire) => {
                let injected = injected(&sender, &recipients.addresses, &group, wire);
                messages.push((injected, group));
            }
            Err(why) => failed.extend(group.iter().map(|&index| (index, why.clone()))),
        }
    }
    Ok(Planned {
        request,
        messages,
        failed,
        held,
    })
}

/// The envelope sender, checked as MAIL's.
struct Sender {
    reverse_path: Vec<u8>,
    /// Whether it needs SMTPUTF8.
    utf8: bool,
}

impl Sender {
    /// The domain, for suppression scopes; empty for `<>`.
    fn domain(&self) -> &[u8] {
        let path = &self.reverse_path;
        path.iter()
            .rposition(|&b| b == b'@')
            .map_or(&[][..], |at| &path[at + 1..])
    }
}

/// `envelope_sender` in MAIL's grammar, and one the user may send from.
fn envelope_sender(request: &Request, identity: Option<&Arc<Identity>>) -> Result<Sender, Refusal> {
    let (reverse_path, utf8) = sender(&request.envelope_sender)
        .map_err(|why| problem(StatusCode::BAD_REQUEST, format!("envelope_sender: {why}")))?;
    let sender = Sender { reverse_path, utf8 };
    if let Some(identity) = identity {
        let domain = String::from_utf8_lossy(sender.domain());
        if !domain.is_empty() && !identity.policy.allows_sender_domain(&domain) {
            let why = format!(
                "envelope_sender: user {} may not send from {domain}",
                identity.name
            );
            return Err(problem(StatusCode::FORBIDDEN, why));
        }
    }
    Ok(sender)
}

/// The request's recipients, checked as at `RCPT`.
struct Recipients {
    /// Indexes of those that passed.
    accepted: Vec<usize>,
    /// By index: the recipient and whether it needs SMTPUTF8, if it passed.
    addresses: Vec<Option<(AcceptedRecipient, bool)>>,
    failed: Vec<(usize, String)>,
}

/// Each recipient in RCPT's grammar and not suppressed for this sender
/// and user (a reader of the list's latest commit, as a shard's).
fn recipients(
    server: &Server,
    request: &Request,
    sender: &Sender,
    identity: Option<&Arc<Identity>>,
) -> Recipients {
    let user = identity.map(|identity| identity.name.as_str());
    let mut suppression = server.suppression.as_ref().map(|list| list.reader());
    let mut checked = Recipients {
        accepted: Vec::new(),
        addresses: Vec::with_capacity(request.recipients.len()),
        failed: Vec::new(),
    };
    for (index, recipient) in request.recipients.iter().enumerate() {
        let parsed = self::recipient(&recipient.email).and_then(|parsed| {
            let hit = suppression
                .as_mut()
                .and_then(|reader| reader.lookup(&parsed.0.address, sender.domain(), user))
                .map(|hit| format!("suppressed ({}): {}", hit.scope(), hit.reason()));
            match hit {
                Some(why) => {
                    let metrics = &server.metrics;
                    metrics
                        .recipients_suppressed
                        .fetch_add(1, Ordering::Relaxed);
                    Err(why)
                }
                None => Ok(parsed),
            }
        });
        match parsed {
            Ok(parsed) => {
                checked.accepted.push(index);
                checked.addresses.push(Some(parsed));
            }
            Err(why) => {
                checked.failed.push((index, why));
                checked.addresses.push(None);
            }
        }
    }
    checked
}

/// The SMTP listener's limits, and the user's recipients per message.
fn limits(server: &Server, identity: Option<&Arc<Identity>>) -> Limits {
    let limits = &server.config.limits;
    let user_max = identity.and_then(|identity| identity.policy.recipients_per_message_max);
    Limits {
        text_line_bytes_max: limits.text_line_bytes_max,
        message_bytes_max: limits.message_bytes_max,
        recipients_per_message_max: user_max
            .map_or(limits.recipients_per_message_max, |max| max as usize)
            .min(limits.recipients_per_message_max),
    }
}

/// A message for `group` of the recipients, with MAIL's parameters as a
/// client would have had to give them.
fn injected(
    sender: &Sender,
    addresses: &[Option<(AcceptedRecipient, bool)>],
    group: &[usize],
    wire: Vec<u8>,
) -> Injected {
    let recipients: Vec<&(AcceptedRecipient, bool)> = group
        .iter()
        .filter_map(|&index| addresses[index].as_ref())
        .collect();
    let mut params = Vec::new();
    if !wire.is_ascii() {
        params.push("BODY=8BITMIME");
    }
    if sender.utf8 || recipients.iter().any(|(_, utf8)| *utf8) {
        params.push("SMTPUTF8");
    }
    Injected {
        reverse_path: sender.reverse_path.clone(),
        mail_params: params.join(" ").into_bytes(),
        recipients: recipients.into_iter().map(|(r, _)| r.clone()).collect(),
        wire,
    }
}

/// What SMTP's end of data checks of a trusted client's message: a mail
/// loop, the user's `From:` domains, the user's hourly allowance.
fn check(server: &Server, wire: &[u8], identity: Option<&Arc<Identity>>) -> Result<(), String> {
    // baton's own Received: comes on top.
    if received_headers(wire) + 1 > server.config.limits.received_headers_max {
        return Err("too many Received: fields: a mail loop (RFC 5321 §6.3)".into());
    }
    let Some(identity) = identity else {
        return Ok(());
    };
    if let Some(domain) = from_domains(wire)
        .into_iter()
        .find(|domain| !identity.policy.allows_sender_domain(domain))
    {
        return Err(format!(
            "user {} may not send as From: {domain}",
            identity.name
        ));
    }
    let allowed = server
        .verifier
        .as_ref()
        .is_none_or(|verifier| verifier.take_message(identity));
    if !allowed {
        return Err(format!(
            "user {} has sent its messages_per_hour",
            identity.name
        ));
    }
    Ok(())
}

/// The envelope sender: an address with or without its brackets, or
/// empty for the null reverse path; and whether it needs SMTPUTF8.
fn sender(text: &str) -> Result<(Vec<u8>, bool), String> {
    let bracketed = format!(
        "<{}>",
        text.trim().trim_start_matches('<').trim_end_matches('>')
    );
    match parse_reverse_path(bracketed.as_bytes(), true) {
        Ok((path, used)) if used == bracketed.len() => {
            Ok((path.address().into_bytes(), !path.is_ascii()))
        }
        _ => Err(format!("{text:?} is not an address")),
    }
}

/// A recipient checked with RCPT's grammar, and whether it needs SMTPUTF8.
fn recipient(text: &str) -> Result<(AcceptedRecipient, bool), String> {
    let bracketed = format!(
        "<{}>",
        text.trim().trim_start_matches('<').trim_end_matches('>')
    );
    match parse_forward_path(bracketed.as_bytes(), true) {
        Ok((ForwardPath::Path(path), used)) if used == bracketed.len() => {
            let utf8 = !path.is_ascii();
            let recipient = AcceptedRecipient {
                address: path.address().into_bytes(),
                domain: path.routing_domain(),
                params: Vec::new(),
            };
            Ok((recipient, utf8))
        }
        _ => Err(format!("{text:?} is not an address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_addresses_use_the_smtp_grammar() {
        assert_eq!(sender("a@example.com").unwrap().0, b"a@example.com");
        assert_eq!(sender("<a@example.com>").unwrap().0, b"a@example.com");
        assert_eq!(sender("").unwrap().0, b"");
        assert!(sender("not an address").is_err());
        assert!(sender("a@example.com> junk").is_err());
        let (r, utf8) = recipient("B@Example.NET").unwrap();
        assert_eq!(
            (r.address.as_slice(), r.domain.as_str(), utf8),
            (&b"B@Example.NET"[..], "example.net", false)
        );
        assert!(recipient("üser@example.net").unwrap().1);
        assert!(recipient("").is_err());
        assert!(recipient("postmaster").is_err());
        assert!(recipient("a@@b").is_err());
    }
}
