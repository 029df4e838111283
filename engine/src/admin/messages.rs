//! `GET /queue/messages`: the messages still queued, a page at a time,
//! filtered as an operator asks (`baton queue messages`, Postfix's
//! `mailq`): by a recipient's domain, the sender, age and status.

use serde::{Deserialize, Serialize};

use baton_spool::{QueueId, Status};

use super::suppression::param;
use super::{parse_queue_id, Response};
use crate::config::parse_duration;
use crate::server::{unix_ms, Server};

/// Messages in a page unless the request asks for fewer.
pub const PAGE_DEFAULT: usize = 100;
/// The most a page holds.
pub const PAGE_MAX: usize = 1000;
/// Queue ids read from the spool's index at a time while filtering.
const SCAN_BATCH: usize = 10_000;

/// A page of messages, and where the next one starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<MessageLine>,
    /// The `after` of the next page; none: this was the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One queued message and its recipients still to settle.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageLine {
    pub queue_id: String,
    pub arrival_ms: u64,
    pub sender: String,
    pub size: usize,
    pub recipients: Vec<OpenRecipient>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OpenRecipient {
    pub address: String,
    /// `pending` or `deferred`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
}

/// What a request asks for.
struct Filter {
    domain: Option<String>,
    sender: Option<String>,
    arrived_before_ms: Option<u64>,
    status: Option<&'static str>,
}

impl Filter {
    fn sender_matches(&self, sender: &str) -> bool {
        let Some(wanted) = &self.sender else {
            return true;
        };
        let sender = sender.to_ascii_lowercase();
        // An address, or every address of a domain.
        sender == *wanted || sender.rsplit_once('@').is_some_and(|(_, d)| d == wanted)
    }

    fn recipient_matches(&self, address: &str, status: &str) -> bool {
        let domain_ok = self.domain.as_ref().is_none_or(|d| {
            address
                .rsplit_once('@')
                .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(d))
        });
        domain_ok && self.status.is_none_or(|s| s == status)
    }
}

/// The filter a query asks for, or the refusal naming the bad field.
fn parse_filter(query: &str, now: u64) -> Result<Filter, Response> {
    let arrived_before_ms = match param(query, "older_than").map(|t| parse_duration(&t)) {
        None => None,
        Some(Ok(age)) => Some(now.saturating_sub(age.as_millis() as u64)),
        Some(Err(err)) => return Err(Response::refused(400, format!("older_than: {err}"))),
    };
    let status = match param(query, "status").as_deref() {
        None => None,
        Some("pending") => Some("pending"),
        Some("deferred") => Some("deferred"),
        Some(other) => {
            return Err(Response::refused(
                400,
                format!("status: {other:?}: \"pending\" or \"deferred\""),
            ))
        }
    };
    Ok(Filter {
        domain: param(query, "domain").map(|d| d.trim().to_ascii_lowercase()),
        sender: param(query, "sender").map(|s| s.trim().to_ascii_lowercase()),
        arrived_before_ms,
        status,
    })
}

/// Every queued message the query's filter matches, for a bulk action,
/// and the domain it names (the action is for those recipients alone); a
/// filter is required (`domain` or `sender`): "everything" is not a slip
/// of the keyboard away.
pub(super) fn matching(
    server: &Server,
    query: &str,
) -> Result<(Vec<QueueId>, Option<String>), Response> {
    let filter = parse_filter(query, unix_ms())?;
    if filter.domain.is_none() && filter.sender.is_none() {
        return Err(Response::refused(
            400,
            "name the messages: domain or sender (or both)".into(),
        ));
    }
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let batch = server.spool.open_messages(after, SCAN_BATCH);
        let Some(&last) = batch.last() else {
            return Ok((ids, filter.domain));
        };
        ids.extend(
            batch
                .into_iter()
                .filter(|&id| line(server, id, &filter).is_some()),
        );
        after = Some(last);
    }
}

pub(super) fn list(server: &Server, query: &str) -> Response {
    let now = unix_ms();
    let limit = match param(query, "limit").map(|l| l.parse::<usize>()) {
        None => PAGE_DEFAULT,
        Some(Ok(n)) if (1..=PAGE_MAX).contains(&n) => n,
        Some(_) => return Response::refused(400, format!("limit: 1 to {PAGE_MAX}")),
    };
    let mut after: Option<QueueId> = match param(query, "after") {
        None => None,
        Some(id) => match parse_queue_id(&id) {
            Some(id) => Some(id),
            None => return Response::refused(400, format!("after: {id:?} is not a queue id")),
        },
    };
    let filter = match parse_filter(query, now) {
        Ok(filter) => filter,
        Err(refused) => return refused,
    };
    let mut messages = Vec::new();
    let mut next = None;
    'scan: loop {
        let ids = server.spool.open_messages(after, SCAN_BATCH);
        let Some(&last) = ids.last() else {
            break;
        };
        for id in ids {
            if messages.len() == limit {
                next = Some(id);
                break 'scan;
            }
            if let Some(line) = line(server, id, &filter) {
                messages.push(line);
            }
        }
        after = Some(last);
    }
    // The next page starts after the last message of this one.
    let next = next.and(messages.last().map(|m: &MessageLine| m.queue_id.clone()));
    Response::json(200, &MessagePage { messages, next })
}

/// The message `id` as a line, if it passes the filter.
fn line(server: &Server, id: QueueId, filter: &Filter) -> Option<MessageLine> {
    let state = server.spool.message(id)?;
    let record = server.spool.read(state.body).ok()?;
    let message = record.message().ok()?;
    if filter
        .arrived_before_ms
        .is_some_and(|t| message.arrival_ms > t)
    {
        return None;
    }
    let sender = String::from_utf8_lossy(message.reverse_path).into_owned();
    if !filter.sender_matches(&sender) {
        return None;
    }
    let recipients: Vec<OpenRecipient> = message
        .recipients()
        .zip(&state.statuses)
        .filter_map(|(r, status)| {
            let (name, attempts, next) = match *status {
                Status::Pending => ("pending", None, None),
                Status::Deferred {
                    attempts,
                    next_attempt_ms,
                } => ("deferred", Some(attempts), Some(next_attempt_ms)),
                _ => return None,
            };
            Some(OpenRecipient {
                address: String::from_utf8_lossy(r.address).into_owned(),
                status: name.into(),
                attempts,
                next_attempt_ms: next,
            })
        })
        .collect();
    if !recipients
        .iter()
        .any(|r| filter.recipient_matches(&r.address, &r.status))
    {
        return None;
    }
    Some(MessageLine {
        queue_id: id.to_string(),
        arrival_ms: message.arrival_ms,
        sender,
        size: message.body.len(),
        recipients,
    })
}
