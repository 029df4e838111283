//! The admin API: HTTP/1.1 (hyper, [`http`]) on a loopback listener, on a
//! thread of its own, off the shards' hot path. Requests must name the
//! admin address in `Host` and come from no other origin (see [`http`]).
//!
//! - `GET /health`: `ok`.
//! - `GET /queue`: per destination counts of ready and scheduled
//!   recipients, as JSON.
//! - `GET /queue/<id>`: one message: envelope, size, each recipient's state.
//! - `GET /metrics`: counters and gauges in the Prometheus text format.
//! - `POST /queue/flush`, `POST /queue/flush/<domain>`: retry scheduled
//!   recipients now, of every destination or of one.
//! - `POST /queue/<id>/delete`: drop a message's undelivered recipients.
//! - `POST /queue/<id>/bounce`: fail them, with a notification.
//! - `GET /suppression?address=A`: the address's suppression entries;
//!   `GET /suppression?after=CURSOR&limit=N`: a page of the list, in
//!   address order, with the cursor of the next; `POST /suppression`
//!   (`{"address", "scope", "reason"}`): add; `POST /suppression/remove`
//!   (`{"address", "scope"}`, no scope: every scope): remove;
//!   `GET /suppression/export`: the list as CSV; `POST /suppression/import`
//!   (a CSV body): add its rows. See [`suppression`].
//! - `POST /reload`: reread the configuration file (AUTH users, TLS
//!   certificates), as SIGHUP does; 422 with the reason when it is refused.
//!
//! The POSTs answer an [`AdminReply`] as JSON: 200 when done, 404 when the
//! message is not in the queue, 400 for a malformed id or domain, 503 when
//! the shard that carries them out does not answer in time. A known path
//! with the other method answers 405.
//!
//! With `[admin] token_file`, every request but `GET /health` needs
//! `Authorization: Bearer <token>` ([`token`]); without one, the address
//! must be loopback.
//!
//! `baton queue ...` is a client of this API ([`get`], [`post`], with ureq).

#![forbid(unsafe_code)]

mod http;
pub mod messages;
pub mod sites;
pub mod suppression;
mod token;

pub use token::{load_token, permission_warning, AdminToken, TOKEN_CHARS_MIN};

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_spool::{QueueId, Status};
use crossbeam_channel::RecvTimeoutError;
use serde::{Deserialize, Serialize};

use crate::queue::DestinationSummary;
use crate::server::Server;
use crate::shard::ShardMsg;

/// A client that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the admin API waits for a shard to carry out an operator's
/// request before it answers 503.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest domain (RFC 5321 §4.5.3.1.2).
const DOMAIN_BYTES_MAX: usize = 255;

/// The queue summary.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueSummary {
    pub destinations: Vec<DestinationSummary>,
    pub messages: u64,
    pub recipients: u64,
}

/// One message.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageReport {
    pub queue_id: String,
    pub arrival_ms: u64,
    pub sender: String,
    pub mail_params: String,
    pub peer: String,
    /// How it arrived over TLS ("TLSv1.3 with cipher ... (256/256
    /// bits)"); absent in plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    pub size: usize,
    pub recipients: Vec<RecipientReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecipientReport {
    pub address: String,
    pub status: String,
    /// Attempts so far; for a final recipient, the attempt that decided
    /// it. `None` when removed by the operator (or unknown).
    pub attempts: Option<u32>,
    pub next_attempt_ms: Option<u64>,
    /// The reply of its latest attempt ("451 4.4.1 no host answered: ..."),
    /// when the spool still has that outcome record.
    #[serde(default)]
    pub last_reply: Option<String>,
    /// The category of that reply, for a deferred or failed recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// An operator's request that changes the queue. The admin thread hands it
/// to a shard, which owns a spool writer for the outcomes it records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Retry now: scheduled recipients of one destination, or of all.
    Flush(Option<String>),
    /// Remove a message's undelivered recipients (those at the domain, if
    /// one is named), without notification.
    Delete(QueueId, Option<String>),
    /// Fail a message's undelivered recipients (those at the domain, if
    /// one is named), with a notification.
    Bounce(QueueId, Option<String>),
}

/// What became of an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub ok: bool,
    /// Recipients the request acted on.
    pub recipients: usize,
    pub message: String,
}

/// Starts the admin listener: bound here (a bad address fails the start),
/// served by hyper on a thread of its own ([`http`]). With `token`, every
/// request but `GET /health` must carry it.
pub fn start(
    address: SocketAddr,
    server: Arc<Server>,
    token: Option<AdminToken>,
) -> io::Result<()> {
    let listener = TcpListener::bind(address)?;
    crate::http::spawn("admin", http::serve(listener, server, token))
}

/// An HTTP response, before it is written.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
    /// The `WWW-Authenticate` header of a 401.
    authenticate: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into(),
            allow: None,
            authenticate: None,
        }
    }

    fn json<T: Serialize>(status: u16, value: &T) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: to_json(value),
            allow: None,
            authenticate: None,
        }
    }

    /// An operator's request that did not happen, as an [`AdminReply`].
    fn refused(status: u16, message: String) -> Response {
        let reply = AdminReply {
            ok: false,
            recipients: 0,
            message,
        };
        Response::json(status, &reply)
    }
}

/// What a path names; the method is checked apart, so that a known path
/// with the wrong method earns 405 rather than 404.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Health,
    Metrics,
    Queue,
    /// `/queue/messages`: a page of queued messages.
    Messages,
    /// `/queue/<id>`, the id as it came.
    Message(&'a str),
    /// `/queue/flush` or `/queue/flush/<domain>`.
    Flush(Option<&'a str>),
    /// `/queue/<id>/delete`.
    Delete(&'a str),
    /// `/queue/<id>/bounce`.
    Bounce(&'a str),
    /// `/queue/delete?domain=&sender=`, `/queue/bounce?...`: every
    /// message the filter matches.
    DeleteMatching,
    BounceMatching,
    /// `/reload`: reread the configuration file, as SIGHUP does.
    Reload,
    /// `/suppression`: GET shows an address or lists a page, POST adds.
    Suppression,
    /// `/suppression/remove`.
    SuppressionRemove,
    /// `/suppression/export`: the list as CSV.
    SuppressionExport,
    /// `/suppression/import`: CSV rows to add.
    SuppressionImport,
    /// `/sites`: every site's shaping state.
    Sites,
    /// `/sites/suspend`, `/sites/resume`.
    SiteSuspend,
    SiteResume,
    /// `/cluster`: the nodes sharing limits through Redis, as this one
    /// last saw them.
    Cluster,
    /// `/drain`: take no more mail and send the queue to another node.
    Drain,
}

impl Endpoint<'_> {
    fn parse(path: &str) -> Option<Endpoint<'_>> {
        Some(match path {
            "/health" => Endpoint::Health,
            "/metrics" => Endpoint::Metrics,
            "/queue" => Endpoint::Queue,
            "/queue/messages" => Endpoint::Messages,
            "/queue/delete" => Endpoint::DeleteMatching,
            "/queue/bounce" => Endpoint::BounceMatching,
            "/queue/flush" => Endpoint::Flush(None),
            "/reload" => Endpoint::Reload,
            "/suppression" => Endpoint::Suppression,
            "/suppression/remove" => Endpoint::SuppressionRemove,
            "/suppression/export" => Endpoint::SuppressionExport,
            "/suppression/import" => Endpoint::SuppressionImport,
            "/sites" => Endpoint::Sites,
            "/sites/suspend" => Endpoint::SiteSuspend,
            "/sites/resume" => Endpoint::SiteResume,
            "/cluster" => Endpoint::Cluster,
            "/drain" => Endpoint::Drain,
            _ => {
                let rest = path.strip_prefix("/queue/")?;
                if let Some(domain) = rest.strip_prefix("flush/") {
                    return Some(Endpoint::Flush(Some(domain)));
                }
                match rest.split_once('/') {
                    None => Endpoint::Message(rest),
                    Some((id, "delete")) => Endpoint::Delete(id),
                    Some((id, "bounce")) => Endpoint::Bounce(id),
                    Some(_) => return None,
                }
            }
        })
    }

    /// Reads are GETs; whatever changes the queue is a POST. The methods
    /// allowed, as an `Allow` header says them.
    fn method(&self) -> &'static str {
        match self {
            Endpoint::Health
            | Endpoint::Metrics
            | Endpoint::Queue
            | Endpoint::Messages
            | Endpoint::Message(_)
            | Endpoint::Sites
            | Endpoint::Cluster
            | Endpoint::SuppressionExport => "GET",
            Endpoint::Flush(_)
            | Endpoint::Delete(_)
            | Endpoint::Bounce(_)
            | Endpoint::DeleteMatching
            | Endpoint::BounceMatching
            | Endpoint::Reload
            | Endpoint::SuppressionRemove
            | Endpoint::SuppressionImport
            | Endpoint::SiteSuspend
            | Endpoint::SiteResume
            | Endpoint::Drain => "POST",
            Endpoint::Suppression => "GET, POST",
        }
    }
}

fn route(method: &str, path: &str, query: &str, body: &[u8], server: &Server) -> Response {
    let Some(endpoint) = Endpoint::parse(path) else {
        return Response::text(404, "not found\n");
    };
    let allowed = endpoint.method();
    if !allowed.split(", ").any(|m| m == method) {
        return Response {
            allow: Some(allowed),
            ..Response::text(405, format!("{path}: only {allowed}\n"))
        };
    }
    match endpoint {
        Endpoint::Health => Response::text(200, "ok\n"),
        Endpoint::Metrics => Response {
            content_type: "text/plain; version=0.0.4",
            ..Response::text(200, metrics(server))
        },
        Endpoint::Queue => Response::json(200, &queue_summary(server)),
        Endpoint::Messages => messages::list(server, query),
        Endpoint::Sites => Response::json(200, &sites::list(server)),
        Endpoint::SiteSuspend => sites::suspend(server, body),
        Endpoint::SiteResume => sites::resume(server, body),
        Endpoint::Drain => {
            let target: crate::server::DrainTarget = match serde_json::from_slice(body) {
                Ok(target) => target,
                Err(err) => {
                    return Response::refused(
                        400,
                        format!("expected {{\"to\": \"host:port\"}}: {err}"),
                    )
                }
            };
            match server.drain(&target) {
                Ok(flushed) => Response::json(
                    200,
                    &AdminReply {
                        ok: true,
                        recipients: flushed,
                        message: format!(
                            "draining to {}: no mail is taken; the queue goes there",
                            target.to
                        ),
                    },
                ),
                Err(err) => Response::refused(400, err.to_string()),
            }
        }
        Endpoint::Cluster => match &server.cluster {
            Some(cluster) => Response::json(200, &*cluster.status()),
            None => Response::text(404, "no [cluster]: this node runs alone\n"),
        },
        Endpoint::Message(id) => match parse_queue_id(id) {
            Some(id) => match message_report(server, id) {
                Some(report) => Response::json(200, &report),
                None => Response::text(404, format!("no message {id} in the queue\n")),
            },
            None => Response::text(404, "not found\n"),
        },
        Endpoint::Flush(None) => act(server, path, AdminRequest::Flush(None)),
        Endpoint::Flush(Some(domain)) if is_destination(domain) => {
            act(server, path, AdminRequest::Flush(Some(domain.to_string())))
        }
        Endpoint::Flush(Some(domain)) => {
            Response::refused(400, format!("{domain:?} is not a domain"))
        }
        Endpoint::Delete(id) => {
            act_on_message(server, path, id, |id| AdminRequest::Delete(id, None))
        }
        Endpoint::Bounce(id) => {
            act_on_message(server, path, id, |id| AdminRequest::Bounce(id, None))
        }
        Endpoint::DeleteMatching => act_on_matching(server, path, query, AdminRequest::Delete),
        Endpoint::BounceMatching => act_on_matching(server, path, query, AdminRequest::Bounce),
        Endpoint::Reload => {
            tracing::info!(path, "admin request");
            let result = match server.reload_hook.get() {
                Some(reload) => reload(),
                None => Err("this server cannot reload".to_owned()),
            };
            let ok = result.is_ok();
            let reply = AdminReply {
                ok,
                recipients: 0,
                message: result.unwrap_or_else(|err| err),
            };
            Response::json(if ok { 200 } else { 422 }, &reply)
        }
        Endpoint::Suppression
        | Endpoint::SuppressionRemove
        | Endpoint::SuppressionExport
        | Endpoint::SuppressionImport => match &server.suppression {
            Some(list) => suppression::route(&endpoint, method, query, body, list),
            None => Response::refused(
                404,
                "the suppression list is off (suppression.enabled = false)".into(),
            ),
        },
    }
}

/// [`act`] on the message `id` names: 400 if it names none.
fn act_on_message(
    server: &Server,
    path: &str,
    id: &str,
    request: fn(QueueId) -> AdminRequest,
) -> Response {
    match parse_queue_id(id) {
        Some(queue_id) => act(server, path, request(queue_id)),
        None => Response::refused(400, format!("{id:?} is not a queue id (16 hex digits)")),
    }
}

/// [`act`] on every message the query matches (`messages::matching`),
/// one after another: the reply counts messages and recipients. With a
/// `domain`, only the recipients at that domain: the others of the same
/// message are left as they are.
fn act_on_matching(
    server: &Server,
    path: &str,
    query: &str,
    request: fn(QueueId, Option<String>) -> AdminRequest,
) -> Response {
    let (ids, domain) = match messages::matching(server, query) {
        Ok(matched) => matched,
        Err(refused) => return refused,
    };
    tracing::info!(path, query, messages = ids.len(), "admin request");
    let (mut messages, mut recipients) = (0, 0);
    for id in ids {
        match ask_shard(server, request(id, domain.clone())) {
            Ok(reply) if reply.ok => {
                messages += 1;
                recipients += reply.recipients;
            }
            // Settled meanwhile: nothing left to act on.
            Ok(_) => {}
            Err(message) => return Response::refused(503, message),
        }
    }
    let verb = if path.ends_with("bounce") {
        "bounced"
    } else {
        "deleted"
    };
    Response::json(
        200,
        &AdminReply {
            ok: true,
            recipients,
            message: format!("{verb} {recipients} recipients of {messages} messages"),
        },
    )
}

/// Has a shard carry out `request` and answers with its [`AdminReply`]:
/// 200 when it was done, 404 when the message was not in the queue, 503
/// when no shard answered in time.
fn act(server: &Server, path: &str, request: AdminRequest) -> Response {
    tracing::info!(path, "admin request");
    match ask_shard(server, request) {
        Ok(reply) => Response::json(if reply.ok { 200 } else { 404 }, &reply),
        Err(message) => Response::refused(503, message),
    }
}

/// The first shard runs every request: the queues and the spool are
/// shared, and one shard in charge keeps the requests in order.
fn ask_shard(server: &Server, request: AdminRequest) -> Result<AdminReply, String> {
    let link = server.links.first().ok_or("no shard is running")?;
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    link.send(ShardMsg::Admin(request, reply_tx));
    reply_rx
        .recv_timeout(SHARD_REPLY_TIMEOUT)
        .map_err(|err| match err {
            RecvTimeoutError::Timeout => format!(
                "the shard did not answer within {}s; the request may still take effect",
                SHARD_REPLY_TIMEOUT.as_secs()
            ),
            RecvTimeoutError::Disconnected => {
                "the shard stopped before answering (shutting down?)".to_string()
            }
        })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serialises") + "\n"
}

/// Queue ids print as 16 hex digits.
pub fn parse_queue_id(text: &str) -> Option<QueueId> {
    u64::from_str_radix(text.trim(), 16).ok().map(QueueId)
}

/// Whether `text` can name a destination: a domain, or an address literal
/// such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`; in particular nothing
/// that would need escaping in a URL path.
pub fn is_destination(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= DOMAIN_BYTES_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
}

fn queue_summary(server: &Server) -> QueueSummary {
    let counts = server.spool.stats().counts;
    QueueSummary {
        destinations: server.queues.summary(),
        messages: counts.live_messages,
        recipients: counts.live_recipients,
    }
}

fn message_report(server: &Server, id: QueueId) -> Option<MessageReport> {
    let state = server.spool.message(id)?;
    let record = server.spool.read(state.body).ok()?;
    let message = record.message().ok()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let outcomes = server.spool.latest_outcomes(id).unwrap_or_default();
    let last_reply = |index: usize| {
        let at = outcomes.get(index).copied().flatten()?;
        let record = server.spool.read(at).ok()?;
        let outcome = record.outcome().ok()?;
        // A reference may outlive its segment's reuse: only this message's
        // and this recipient's outcome counts.
        (outcome.queue_id == id && outcome.recipient as usize == index).then(|| text(outcome.reply))
    };
    let recipients = message
        .recipients()
        .zip(&state.statuses)
        .enumerate()
        .map(|(index, (r, status))| {
            // Records from before the spool kept the count on final
            // outcomes say 0: shown as unknown.
            let known = |attempts: u32| (attempts > 0).then_some(attempts);
            let (name, attempts, next) = match *status {
                Status::Pending => ("pending", Some(0), None),
                Status::Deferred {
                    attempts,
                    next_attempt_ms,
                } => ("deferred", Some(attempts), Some(next_attempt_ms)),
                Status::Delivered { attempts } => ("delivered", known(attempts), None),
                Status::Failed { attempts } => ("failed", known(attempts), None),
                Status::Removed => ("removed", None, None),
            };
            let last_reply = last_reply(index);
            let category = last_reply
                .as_deref()
                .filter(|_| matches!(name, "deferred" | "failed"))
                .and_then(crate::smtp::reply::parse_reply_text)
                .map(|reply| {
                    server
                        .live()
                        .classifier
                        .classify(&reply)
                        .as_str()
                        .to_owned()
                });
            RecipientReport {
                address: text(r.address),
                status: name.into(),
                attempts,
                next_attempt_ms: next,
                last_reply,
                category,
            }
        })
        .collect();
    Some(MessageReport {
        queue_id: id.to_string(),
        arrival_ms: message.arrival_ms,
        sender: text(message.reverse_path),
        mail_params: text(message.mail_params),
        peer: text(message.peer),
        tls: (!message.transport.is_empty()).then(|| text(message.transport)),
        size: message.body.len(),
        recipients,
    })
}

fn metrics(server: &Server) -> String {
    let m = &server.metrics;
    let stats = server.spool.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let counters = [
        (
            "baton_connections_accepted_total",
            "SMTP connections accepted.",
            load(&m.connections_accepted),
        ),
        (
            "baton_connections_refused_total",
            "SMTP connections refused by a connection limit.",
            load(&m.connections_refused),
        ),
        (
            "baton_messages_accepted_total",
            "Messages acknowledged with 250 after a durable commit.",
            load(&m.messages_accepted),
        ),
        (
            "baton_recipients_accepted_total",
            "Recipients of accepted messages.",
            load(&m.recipients_accepted),
        ),
        (
            "baton_bytes_accepted_total",
            "Bytes of accepted messages, as stored.",
            load(&m.bytes_accepted),
        ),
        (
            "baton_store_failures_total",
            "Messages refused because the spool failed or was full.",
            load(&m.store_failures),
        ),
        (
            "baton_auth_successes_total",
            "SMTP AUTH exchanges that succeeded.",
            load(&m.auth_successes),
        ),
        (
            "baton_auth_failures_total",
            "SMTP AUTH exchanges that failed: wrong credentials, throttled or cut off.",
            load(&m.auth_failures),
        ),
        (
            "baton_recipients_suppressed_total",
            "Recipients refused or dropped at RCPT as on the suppression list.",
            load(&m.recipients_suppressed),
        ),
        (
            "baton_events_dropped_total",
            "Delivery events lost: the event log's writer fell behind or the file refused them.",
            server.events.dropped(),
        ),
        (
            "baton_unsubscribes_total",
            "One-click unsubscribes honoured (RFC 8058 POSTs with a valid link).",
            load(&m.unsubscribes),
        ),
        (
            "baton_suppression_bounces_dropped_total",
            "Hard bounces not added to the suppression list: its writer was too far behind.",
            server.suppression.as_ref().map_or(0, |list| list.dropped()),
        ),
        (
            "baton_data_in_flight_refusals_total",
            "Messages refused because limits.data_in_flight_max was reached.",
            server.data_budget.refused(),
        ),
        (
            "baton_connections_opened_total",
            "Delivery connections started to a destination.",
            load(&m.connections_opened),
        ),
        (
            "baton_connections_failed_total",
            "Delivery connections that reached no host of their destination.",
            load(&m.connections_failed),
        ),
        (
            "baton_recipients_delivered_total",
            "Recipients the next hop accepted.",
            load(&m.recipients_delivered),
        ),
        (
            "baton_recipients_deferred_total",
            "Delivery attempts that failed temporarily, per recipient.",
            load(&m.recipients_deferred),
        ),
        (
            "baton_recipients_failed_total",
            "Recipients that failed for good.",
            load(&m.recipients_failed),
        ),
        (
            "baton_bounces_generated_total",
            "Delivery status notifications generated.",
            load(&m.bounces_generated),
        ),
        (
            "baton_tls_handshakes_inbound_total",
            "TLS handshakes completed with clients (STARTTLS or implicit).",
            load(&m.tls_handshakes_in),
        ),
        (
            "baton_tls_handshake_failures_inbound_total",
            "TLS handshakes with clients that failed or timed out.",
            load(&m.tls_handshake_failures_in),
        ),
        (
            "baton_tls_handshakes_outbound_total",
            "TLS handshakes completed with next hops.",
            load(&m.tls_handshakes_out),
        ),
        (
            "baton_tls_handshake_failures_outbound_total",
            "TLS handshakes with next hops that failed or timed out.",
            load(&m.tls_handshake_failures_out),
        ),
        (
            "baton_config_reload_failures_total",
            "Reloads refused: the file did not load or check, or a file it names did not load.",
            load(&m.config_reload_failures),
        ),
        (
            "baton_log_lines_dropped_total",
            "Log lines lost: the log writer fell behind (stderr slow or blocked).",
            crate::metrics::log_lines_dropped(),
        ),
        (
            "baton_cluster_redis_calls_total",
            "Calls to the cluster's Redis (scripts, stream reads and appends), each one round trip.",
            server
                .cluster
                .as_ref()
                .map_or(0, |c| c.redis_calls.load(Ordering::Relaxed)),
        ),
        (
            "baton_cluster_fallbacks_total",
            "Times Redis went out of reach and this node fell back to its share of each limit.",
            server
                .cluster
                .as_ref()
                .map_or(0, |c| c.fallbacks.load(Ordering::Relaxed)),
        ),
        (
            "baton_cluster_changes_dropped_total",
            "Actions or suppression changes never shared: more waited for Redis than the outbox holds.",
            server
                .cluster
                .as_ref()
                .map_or(0, |c| c.dropped.load(Ordering::Relaxed)),
        ),
        (
            "baton_dns_failures_total",
            "MX or address lookups that failed for now (SERVFAIL, timeout): the destination waits.",
            load(&m.dns_failures),
        ),
    ];
    let gauges = [
        (
            "baton_queue_messages",
            "Messages with recipients still to deliver.",
            stats.counts.live_messages,
        ),
        (
            "baton_queue_recipients",
            "Recipients still to deliver.",
            stats.counts.live_recipients,
        ),
        (
            "baton_data_in_flight_bytes",
            "Bytes of message data sessions hold in memory, not yet in the spool.",
            server.data_budget.held(),
        ),
        (
            "baton_suppression_entries",
            "Entries on the suppression list (address and scope).",
            server
                .suppression
                .as_ref()
                .and_then(|list| list.len().ok())
                .unwrap_or(0),
        ),
        (
            "baton_cluster_shared",
            "1: limits are shared through the cluster's Redis; 0: alone, or this node's fallback share.",
            server
                .cluster
                .as_ref()
                .map_or(0, |c| u64::from(c.connected.load(Ordering::Relaxed))),
        ),
        (
            "baton_cluster_live_nodes",
            "Nodes the last heartbeat saw alive (this one included); 0 without [cluster].",
            server
                .cluster
                .as_ref()
                .map_or(0, |c| c.live_nodes.load(Ordering::Relaxed) as u64),
        ),
        (
            "baton_config_generation",
            "The configuration in force: 1 at start, one more for each reload that took effect.",
            server.live().generation,
        ),
        (
            "baton_spool_segments",
            "Spool segment files in use.",
            stats.segments,
        ),
        (
            "baton_spool_used_bytes",
            "Bytes of messages still to deliver in the spool (their records).",
            stats.counts.live_bytes,
        ),
        (
            "baton_spool_capacity_bytes",
            "Bytes of spool segments on disk, preallocated: what the spool takes of the disk.",
            stats.used_bytes,
        ),
        (
            "baton_queue_oldest_message_age_seconds",
            "Age of the oldest message with a recipient still to deliver; 0 with none.",
            stats.counts.oldest_live.map_or(0, |id| {
                crate::server::unix_ms().saturating_sub(crate::shard::queue_id::queue_id_ms(id))
                    / 1000
            }),
        ),
    ];
    let mut out = String::new();
    let series = counters
        .iter()
        .map(|c| ("counter", c))
        .chain(gauges.iter().map(|g| ("gauge", g)));
    for (kind, (name, help, value)) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "baton_recipients_classified_total";
    let _ = writeln!(
        out,
        "# HELP {name} Deferred and failed recipients by the category of their reply.\n# TYPE {name} counter"
    );
    for category in crate::shaping::classify::Category::ALL {
        let count = m.recipients_by_category[category.index()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{category=\"{}\"}} {count}", category.as_str());
    }
    let _ = writeln!(
        out,
        "# HELP baton_build_info The running build.\n# TYPE baton_build_info gauge\nbaton_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    m.histograms.latency.write(
        &mut out,
        "baton_delivery_latency_seconds",
        "Delivery transactions, MAIL FROM to the reply that decided them.",
    );
    m.histograms.queue_time.write(
        &mut out,
        "baton_queue_time_seconds",
        "Delivered recipients' time from arrival to delivery.",
    );
    m.outcomes.by_site.write(&mut out);
    m.outcomes.by_domain.write(&mut out);
    destination_gauges(&mut out, &server.queues.summary());
    webhook_series(&mut out, &server.webhooks);
    out
}

/// Per `[[webhook]]`, by name: events sent, posts failed, and how far
/// behind the event log it is.
fn webhook_series(out: &mut String, webhooks: &crate::delivery::webhook::Webhooks) {
    type Value = fn(&crate::delivery::webhook::Stats) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "baton_webhook_sent_total",
            "counter",
            "Events a webhook's endpoint acknowledged (2xx).",
            |s| s.sent.load(Ordering::Relaxed),
        ),
        (
            "baton_webhook_failed_total",
            "counter",
            "Posts to a webhook's endpoint that failed (no answer, or not 2xx); each is retried.",
            |s| s.failed.load(Ordering::Relaxed),
        ),
        (
            "baton_webhook_lag_bytes",
            "gauge",
            "Bytes of the event log not yet acknowledged by a webhook's endpoint.",
            |s| s.lag_bytes.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (webhook, stats) in webhooks.stats() {
            let label = escape_label_value(webhook);
            let _ = writeln!(out, "{name}{{webhook=\"{label}\"}} {}", value(stats));
        }
    }
}

/// One column of the queue summary.
type Column = fn(&DestinationSummary) -> usize;

/// One gauge family per column of the queue summary, a series per
/// destination.
fn destination_gauges(out: &mut String, destinations: &[DestinationSummary]) {
    let families: [(&str, &str, Column); 3] = [
        (
            "baton_destination_ready",
            "Recipients due for delivery, per destination.",
            |d| d.ready,
        ),
        (
            "baton_destination_scheduled",
            "Recipients waiting for a retry, per destination.",
            |d| d.scheduled,
        ),
        (
            "baton_destination_connections",
            "Open delivery connections, per destination.",
            |d| d.connections,
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for d in destinations {
            let label = escape_label_value(&d.destination);
            let _ = writeln!(out, "{name}{{destination=\"{label}\"}} {}", value(d));
        }
    }
}

/// A label value in the Prometheus text format: backslash, double quote
/// and line feed escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A GET against a running server's admin API: `(status, body)`. With
/// `token`, it is sent as `Authorization: Bearer`.
pub fn get(
    address: SocketAddr,
    path: &str,
    token: Option<&AdminToken>,
) -> io::Result<(u16, String)> {
    call(address, "GET", path, token, None, IO_TIMEOUT)
}

/// A POST (without a body) against a running server's admin API:
/// `(status, body)`. It waits as long as the server may wait for a shard.
pub fn post(
    address: SocketAddr,
    path: &str,
    token: Option<&AdminToken>,
) -> io::Result<(u16, String)> {
    call(
        address,
        "POST",
        path,
        token,
        None,
        SHARD_REPLY_TIMEOUT + IO_TIMEOUT,
    )
}

/// How long the longest request may take (a suppression list import or
/// export): as long as the server keeps a connection.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One request with ureq, with a body (`content type`, bytes) if given;
/// every status is an answer, not an error.
pub fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&AdminToken>,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{address}{path}");
    let authorization = token.map(|token| format!("Bearer {}", token.as_str()));
    let response = match method {
        "POST" => {
            let mut request = agent.post(&url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            match body {
                Some((content_type, bytes)) => {
                    request.header("Content-Type", content_type).send(bytes)
                }
                None => request.send_empty(),
            }
        }
        _ => {
            let mut request = agent.get(&url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call()
        }
    };
    let mut response = response.map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .map_err(io::Error::other)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_endpoints_and_their_method() {
        let cases = [
            ("/health", Some(Endpoint::Health), "GET"),
            ("/queue", Some(Endpoint::Queue), "GET"),
            ("/queue/00AB", Some(Endpoint::Message("00AB")), "GET"),
            ("/queue/flush", Some(Endpoint::Flush(None)), "POST"),
            (
                "/queue/flush/example.org",
                Some(Endpoint::Flush(Some("example.org"))),
                "POST",
            ),
            ("/queue/00AB/delete", Some(Endpoint::Delete("00AB")), "POST"),
            ("/queue/00AB/bounce", Some(Endpoint::Bounce("00AB")), "POST"),
            ("/queue/00AB/requeue", None, ""),
            ("/queues", None, ""),
            ("/suppression", Some(Endpoint::Suppression), "GET, POST"),
            (
                "/suppression/remove",
                Some(Endpoint::SuppressionRemove),
                "POST",
            ),
            (
                "/suppression/export",
                Some(Endpoint::SuppressionExport),
                "GET",
            ),
            ("/", None, ""),
        ];
        for (path, endpoint, method) in cases {
            let parsed = Endpoint::parse(path);
            assert_eq!(parsed, endpoint, "{path}");
            if let Some(parsed) = parsed {
                assert_eq!(parsed.method(), method, "{path}");
            }
        }
    }

    #[test]
    fn destinations_are_domains_or_address_literals() {
        for ok in [
            "example.org",
            "mx-1.example.org",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert!(is_destination(ok), "{ok}");
        }
        let long = "a".repeat(DOMAIN_BYTES_MAX + 1);
        for bad in ["", "a/b", "a b", "a%2Fb", "a?b", "é.org", long.as_str()] {
            assert!(!is_destination(bad), "{bad}");
        }
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label_value("example.org"), "example.org");
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn destination_gauges_carry_a_labelled_series_per_destination() {
        let mut out = String::new();
        let destination = DestinationSummary {
            destination: "ex\"ample.org".into(),
            ready: 3,
            scheduled: 2,
            connections: 1,
            paused_until_ms: 0,
            suspended: None,
            connections_limit: 20,
            throttle: None,
            site: None,
        };
        destination_gauges(&mut out, &[destination]);
        for line in [
            "# TYPE baton_destination_ready gauge",
            "baton_destination_ready{destination=\"ex\\\"ample.org\"} 3",
            "baton_destination_scheduled{destination=\"ex\\\"ample.org\"} 2",
            "baton_destination_connections{destination=\"ex\\\"ample.org\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
        }
    }
}
