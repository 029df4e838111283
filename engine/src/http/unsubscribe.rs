//! The one-click unsubscribe listener (RFC 8058): HTTPS with the server's
//! `[tls]` certificate, served by hyper on a current-thread tokio runtime
//! of its own, off the shards.
//!
//! - `POST /u/TOKEN` with `List-Unsubscribe=One-Click` in the body (as a
//!   form, URL-encoded or multipart, RFC 8058 §3.1): the token's recipient
//!   goes on the suppression list in the token's scope, and the answer is
//!   `200`. Mailbox providers send this POST when the user clicks their
//!   "unsubscribe" button; it must work without cookies or redirects.
//! - `GET /u/TOKEN`: a small page with a button that sends that POST, and
//!   nothing else: link scanners and prefetchers follow GETs, and must not
//!   unsubscribe anyone (RFC 8058 §1).
//! - A token that is forged, altered or expired gets `400` and changes
//!   nothing. The path may carry a prefix (`/mail/u/TOKEN`), for a listener
//!   behind a proxy at a path.
//!
//! The list's writer commits the addition durably before the `200`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::Serving;
use crate::delivery::events::{Event, EventKind};
use crate::policy::suppression::{Entry, Source};
use crate::policy::unsubscribe::{Token, TokenError};
use crate::server::{unix_ms, Server};

/// Connections served at once; past this, new ones are closed at once. A
/// mailbox provider's POSTs come one per click.
pub const UNSUBSCRIBE_CONNECTIONS_MAX: usize = 256;
/// The largest request body: the form is one field.
pub const BODY_BYTES_MAX: usize = 4096;
/// The TLS handshake and each request's header must arrive within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may live, whatever it does.
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(30);
/// The suppression list's commit, at most.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` (bound by the caller, so a bad address fails the
/// start) on a thread of its own until the process ends.
pub fn start(listener: std::net::TcpListener, server: Arc<Server>) -> std::io::Result<()> {
    let Some(tls) = server.server_tls.as_ref() else {
        // Validation requires a certificate with the listener.
        return Err(std::io::Error::other(
            "the unsubscribe listener needs a certificate",
        ));
    };
    let serving = Serving {
        name: "unsubscribe",
        connections_max: UNSUBSCRIBE_CONNECTIONS_MAX,
        io_timeout: IO_TIMEOUT,
        connection_time_max: CONNECTION_TIME_MAX,
        tls: Some(super::tls_acceptor(tls)),
    };
    let answer = move |request, peer| {
        let server = server.clone();
        async move { answer(request, &server, peer).await }
    };
    super::spawn("unsubscribe", super::serve(listener, serving, answer))
}

async fn answer(
    request: Request<Incoming>,
    server: &Arc<Server>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(links) = server.unsubscribe.as_ref() else {
        return page(StatusCode::NOT_FOUND, "Not found", "");
    };
    // The token is the last path segment after `/u/`.
    let path = request.uri().path();
    let Some(token_text) = path.rfind("/u/").map(|at| path[at + 3..].to_owned()) else {
        return page(StatusCode::NOT_FOUND, "Not found", "There is nothing here.");
    };
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        let mut response = page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD, POST"),
        );
        return response;
    }
    let token = match links.verify(&token_text, unix_ms() / 1000) {
        Ok(token) => token,
        Err(why) => {
            let text = match why {
                TokenError::Invalid => "This unsubscribe link is not valid: it was altered or is not one of ours. Nothing was changed.",
                TokenError::Expired => "This unsubscribe link has expired. Nothing was changed; use the link in a more recent message.",
            };
            return page(StatusCode::BAD_REQUEST, "Link not valid", text);
        }
    };
    if method != Method::POST {
        return confirm_page(&token);
    }
    let body = match Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "The form is one field.",
            );
        }
    };
    if !one_click(&body) {
        return page(
            StatusCode::BAD_REQUEST,
            "Not a one-click request",
            "The request must carry List-Unsubscribe=One-Click (RFC 8058). Nothing was changed.",
        );
    }
    let server_for_commit = server.clone();
    let entry_token = token.clone();
    let committed =
        tokio::task::spawn_blocking(move || suppress(&server_for_commit, &entry_token, peer));
    match tokio::time::timeout(COMMIT_TIMEOUT, committed).await {
        Ok(Ok(Ok(()))) => page(
            StatusCode::OK,
            "Unsubscribed",
            &format!(
                "{} will not receive this mail again.",
                html_escape(&token.recipient)
            ),
        ),
        Ok(Ok(Err(err))) => {
            tracing::error!(%err, recipient = %token.recipient, "unsubscribe: the suppression list refused the addition");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The unsubscribe could not be recorded; please try again later.",
            )
        }
        _ => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The unsubscribe could not be recorded in time; please try again later.",
        ),
    }
}

/// Adds the token's recipient to the list, durably, and records the
/// `unsubscribed` event.
fn suppress(server: &Server, token: &Token, peer: SocketAddr) -> Result<(), String> {
    let list = server
        .suppression
        .as_ref()
        .ok_or("the suppression list is off")?;
    let queue_id = token.queue_id.to_string();
    let entry = Entry::new(
        &token.recipient,
        &token.scope,
        &format!("one-click unsubscribe from message {queue_id}"),
        unix_ms(),
        Source::Unsubscribe,
    )?;
    list.add(vec![entry])?;
    server.metrics.unsubscribes.fetch_add(1, Ordering::Relaxed);
    if server.events.is_enabled() {
        let host = peer.ip().to_string();
        let mut event = Event::new(EventKind::Unsubscribed, unix_ms(), &queue_id);
        event.recipient = Some(token.recipient.as_bytes());
        event.scope = Some(&token.scope);
        event.host = Some(&host);
        server.events.record_waiting(&event);
    }
    tracing::info!(recipient = %token.recipient, scope = %token.scope, queue_id = %queue_id, %peer, "unsubscribed");
    Ok(())
}

/// Whether a POST body is RFC 8058's form: `List-Unsubscribe=One-Click`,
/// URL-encoded, or the same field in `multipart/form-data`.
fn one_click(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let urlencoded = text
        .split('&')
        .any(|pair| pair.trim() == "List-Unsubscribe=One-Click");
    let multipart = text.contains("name=\"List-Unsubscribe\"") && text.contains("One-Click");
    urlencoded || multipart
}

/// GET's page: who would be unsubscribed, and a button that does it.
fn confirm_page(token: &Token) -> Response<Full<Bytes>> {
    let body = format!(
        "<p>Unsubscribe <b>{}</b> from this mail?</p>\n\
         <form method=\"post\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>",
        html_escape(&token.recipient)
    );
    html(StatusCode::OK, "Unsubscribe", &body)
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Full<Bytes>> {
    html(status, title, &format!("<p>{text}</p>"))
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let document = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(document)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page names an address: no cache keeps it, no frame shows it.
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        hyper::header::HeaderName::from_static("x-frame-options"),
        hyper::header::HeaderValue::from_static("DENY"),
    );
    response
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_click_form_is_recognised_in_both_encodings() {
        assert!(one_click(b"List-Unsubscribe=One-Click"));
        assert!(one_click(b"a=b&List-Unsubscribe=One-Click"));
        assert!(one_click(
            b"--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--\r\n"
        ));
        assert!(!one_click(b""));
        assert!(!one_click(b"List-Unsubscribe=No"));
    }

    #[test]
    fn pages_escape_the_address() {
        assert_eq!(html_escape("<a&\"b'>"), "&lt;a&amp;&quot;b&#39;&gt;");
    }
}
