//! The admin API's HTTP server: hyper (HTTP/1.1) on a current-thread tokio
//! runtime of its own, off the shards. Requests are served concurrently;
//! each is answered by [`super::route`] on tokio's blocking pool, since an
//! operator's request waits for a shard (up to [`super::SHARD_REPLY_TIMEOUT`]).
//!
//! Who may ask: the listener is loopback by default, and a browser on the
//! same host must not be able to drive it (issue 10: a cross-origin POST
//! could flush or bounce the queue). So a request must name the admin
//! address in `Host` by IP literal or `localhost` (a DNS name there is a
//! rebinding attack), and a request with an `Origin` (a browser's) must
//! come from that same origin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::{route, Response, IO_TIMEOUT, SHARD_REPLY_TIMEOUT};
use crate::server::Server;

/// Connections served at once; past this, new ones are closed at once.
const ADMIN_CONNECTIONS_MAX: usize = 64;
/// The longest a connection may live, whatever it does.
const ADMIN_CONNECTION_TIME_MAX: Duration = Duration::from_secs(60);

/// Serves `listener` (bound by the caller, so that a bad address fails
/// the start) until the process ends.
pub(super) async fn serve(listener: std::net::TcpListener, server: Arc<Server>) {
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(_) => return,
    };
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%err, "admin listener");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(answer(request, server, address).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(ADMIN_CONNECTION_TIME_MAX, connection).await;
            drop(permit);
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    server: Arc<Server>,
    address: SocketAddr,
) -> HttpResponse<Full<Bytes>> {
    if let Err(why) = allowed(&request, address) {
        return into_http(Response::text(403, format!("{why}\n")));
    }
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let routed = tokio::task::spawn_blocking(move || route(&method, &path, &server));
    let response = match tokio::time::timeout(SHARD_REPLY_TIMEOUT + IO_TIMEOUT, routed).await {
        Ok(Ok(response)) => response,
        _ => Response::text(503, "no answer in time\n"),
    };
    into_http(response)
}

/// The `Host` and `Origin` rules of the module docs.
fn allowed<B>(request: &Request<B>, address: SocketAddr) -> Result<(), &'static str> {
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|value| value.to_str().ok())
        .ok_or("a Host header is required")?;
    if !host_is_admin(host, address) {
        return Err("the Host header must name the admin address by IP or localhost");
    }
    if let Some(origin) = request.headers().get(hyper::header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.strip_prefix("http://"))
            .is_some_and(|origin| origin.eq_ignore_ascii_case(host));
        if !same {
            return Err("cross-origin requests are refused");
        }
    }
    Ok(())
}

/// `127.0.0.1:8025`, `[::1]:8025`, `localhost:8025`: an IP literal or
/// localhost, and the admin port.
fn host_is_admin(host: &str, address: SocketAddr) -> bool {
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(address.port()) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn into_http(response: Response) -> HttpResponse<Full<Bytes>> {
    let mut builder = HttpResponse::builder()
        .status(StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, response.content_type);
    if let Some(allow) = response.allow {
        builder = builder.header(hyper::header::ALLOW, allow);
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| HttpResponse::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, origin: Option<&str>) -> Request<()> {
        let mut builder = Request::post("/queue/flush");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_admin_address_and_its_own_origin_are_served() {
        let address: SocketAddr = "127.0.0.1:8025".parse().unwrap();
        assert!(allowed(&request(Some("127.0.0.1:8025"), None), address).is_ok());
        assert!(allowed(&request(Some("localhost:8025"), None), address).is_ok());
        assert!(allowed(&request(Some("[::1]:8025"), None), address).is_ok());
        assert!(allowed(
            &request(Some("127.0.0.1:8025"), Some("http://127.0.0.1:8025")),
            address
        )
        .is_ok());
        // DNS rebinding: a name that resolves to 127.0.0.1 for the browser.
        assert!(allowed(&request(Some("evil.example:8025"), None), address).is_err());
        assert!(allowed(&request(Some("127.0.0.1:9999"), None), address).is_err());
        assert!(allowed(&request(None, None), address).is_err());
        // A page elsewhere posting to the API.
        assert!(allowed(
            &request(Some("127.0.0.1:8025"), Some("http://evil.example")),
            address
        )
        .is_err());
        assert!(allowed(&request(Some("127.0.0.1:8025"), Some("null")), address).is_err());
    }
}
