//! The admin API's `/suppression` endpoints, and the types `baton
//! suppression` reads back. Every change goes through the list's writer
//! and is answered once committed.

use serde::{Deserialize, Serialize};

use super::{AdminReply, Endpoint, Response};
use crate::policy::suppression::{self, Entry, Source, SuppressionList};
use crate::server::unix_ms;

/// Entries per page of `GET /suppression` unless `limit` says otherwise.
pub const PAGE_LIMIT_DEFAULT: usize = 1000;
/// The most a page holds: one answer stays a few MiB.
pub const PAGE_LIMIT_MAX: usize = 10_000;

/// `POST /suppression`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddRequest {
    pub address: String,
    /// `global` (the default), `domain:<sender domain>`, `user:<name>`.
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /suppression/remove`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub address: String,
    /// `None`: every scope the address is listed in.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A page of `GET /suppression`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// `after=` for the next page; `None` on the last.
    pub next: Option<String>,
}

pub(super) fn route(
    endpoint: &Endpoint<'_>,
    method: &str,
    query: &str,
    body: &[u8],
    list: &SuppressionList,
) -> Response {
    match (endpoint, method) {
        (Endpoint::Suppression, "GET") => match param(query, "address") {
            Some(address) => show(list, &address),
            None => page(list, query),
        },
        (Endpoint::Suppression, _) => add(list, body),
        (Endpoint::SuppressionRemove, _) => remove(list, body),
        (Endpoint::SuppressionExport, _) => export(list),
        _ => import(list, body),
    }
}

fn show(list: &SuppressionList, address: &str) -> Response {
    match list.show(address) {
        Ok(entries) if entries.is_empty() => {
            Response::text(404, format!("{address} is not on the suppression list\n"))
        }
        Ok(entries) => Response::json(200, &entries),
        Err(err) => Response::text(400, format!("{err}\n")),
    }
}

fn page(list: &SuppressionList, query: &str) -> Response {
    let limit = match param(query, "limit").map(|l| l.parse::<usize>()) {
        None => PAGE_LIMIT_DEFAULT,
        Some(Ok(limit)) if (1..=PAGE_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => {
            return Response::text(
                400,
                format!("limit is a number from 1 to {PAGE_LIMIT_MAX}\n"),
            )
        }
    };
    let after = param(query, "after");
    let cursor = after.as_deref().map(|after| {
        // The cursor is `address scope`; neither holds a space.
        after.split_once(' ').unwrap_or((after, ""))
    });
    match list.page(cursor, limit) {
        Ok((entries, more)) => {
            let next = more
                .then(|| entries.last())
                .flatten()
                .map(|e| format!("{} {}", e.address, e.scope));
            Response::json(200, &Page { entries, next })
        }
        Err(err) => Response::text(500, format!("{err}\n")),
    }
}

fn add(list: &SuppressionList, body: &[u8]) -> Response {
    let request: AddRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return Response::refused(
                400,
                format!("expected {{\"address\", \"scope\", \"reason\"}}: {err}"),
            )
        }
    };
    let entry = match Entry::new(
        &request.address,
        request.scope.as_deref().unwrap_or(suppression::GLOBAL),
        request.reason.as_deref().unwrap_or("added by an operator"),
        unix_ms(),
        Source::Operator,
    ) {
        Ok(entry) => entry,
        Err(err) => return Response::refused(400, err),
    };
    tracing::info!(address = %entry.address, scope = %entry.scope, "admin request: suppression add");
    let message = format!("{} suppressed ({})", entry.address, entry.scope);
    match list.add(vec![entry]) {
        Ok(count) => done(count, message),
        Err(err) => Response::refused(500, err),
    }
}

fn remove(list: &SuppressionList, body: &[u8]) -> Response {
    let request: RemoveRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return Response::refused(400, format!("expected {{\"address\", \"scope\"}}: {err}"))
        }
    };
    tracing::info!(address = %request.address, scope = ?request.scope, "admin request: suppression remove");
    match list.remove(&request.address, request.scope.as_deref()) {
        Ok(removed) if removed.is_empty() => Response::refused(
            404,
            format!("{} is not on the suppression list", request.address),
        ),
        Ok(removed) => {
            let scopes: Vec<&str> = removed.iter().map(|e| e.scope.as_str()).collect();
            let message = format!("{} removed ({})", removed[0].address, scopes.join(", "));
            done(removed.len(), message)
        }
        Err(err) => Response::refused(400, err),
    }
}

fn export(list: &SuppressionList) -> Response {
    let mut csv = Vec::new();
    match list.export(&mut csv) {
        Ok(_) => Response {
            content_type: "text/csv",
            ..Response::text(200, String::from_utf8_lossy(&csv).into_owned())
        },
        Err(err) => Response::text(500, format!("{err}\n")),
    }
}

fn import(list: &SuppressionList, body: &[u8]) -> Response {
    let Ok(text) = std::str::from_utf8(body) else {
        return Response::refused(400, "the CSV is not UTF-8".into());
    };
    // All rows are checked before any is written: a bad file changes
    // nothing.
    let entries = match suppression::parse_csv(text, unix_ms()) {
        Ok(entries) => entries,
        Err(err) => return Response::refused(400, err),
    };
    tracing::info!(rows = entries.len(), "admin request: suppression import");
    let mut written = 0;
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let chunk: Vec<Entry> = entries
            .by_ref()
            .take(suppression::IMPORT_ROWS_PER_COMMIT)
            .collect();
        match list.add(chunk) {
            Ok(count) => written += count,
            Err(err) => {
                return Response::refused(500, format!("{err} (after {written} rows were written)"))
            }
        }
    }
    done(written, format!("{written} imported"))
}

fn done(count: usize, message: String) -> Response {
    let reply = AdminReply {
        ok: true,
        recipients: count,
        message,
    };
    Response::json(200, &reply)
}

/// The value of `name` in a query string, percent-decoded (`+` a space).
pub(super) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` percent-encoded for a query string: all but unreserved
/// characters (RFC 3986 §2.3).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let query = "address=a%2Bb%40example.org&after=x+y&limit=5&odd=%zz%4";
        assert_eq!(param(query, "address").as_deref(), Some("a+b@example.org"));
        assert_eq!(param(query, "after").as_deref(), Some("x y"));
        assert_eq!(param(query, "limit").as_deref(), Some("5"));
        assert_eq!(param(query, "odd").as_deref(), Some("%zz%4"));
        assert_eq!(param(query, "none"), None);
        let text = "jös+1@example.org global";
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }
}
