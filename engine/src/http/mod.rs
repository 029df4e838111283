//! What baton serves over HTTP, on hyper, each listener on a small tokio
//! runtime of its own on a thread of its own, off the shards; requests
//! that need a shard reach it through its inbox.
//!
//! - [`serve`]: the accept loop every listener shares: a bound on
//!   connections, TLS when asked, timeouts, HTTP/1.1 by hyper.
//! - [`unsubscribe`]: the HTTPS listener for one-click unsubscribe links
//!   (RFC 8058).
//! - [`inject`]: HTTP injection, `POST /api/inject/v1`, in the shape of
//!   KumoMTA's API of that name.
//!
//! The admin API (`crate::admin`) is served by [`serve`] too.

#![forbid(unsafe_code)]

pub mod inject;
pub mod unsubscribe;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::log_limit::LogLimit;

/// How one listener serves its connections.
pub struct Serving {
    /// The listener's name in log lines ("admin", "unsubscribe", "inject").
    pub name: &'static str,
    /// Connections served at once; past this, new ones are closed at once.
    pub connections_max: usize,
    /// The TLS handshake and each request's header must arrive within this.
    pub io_timeout: Duration,
    /// The longest a connection may live, whatever it does.
    pub connection_time_max: Duration,
    /// TLS first, when set.
    pub tls: Option<TlsAcceptor>,
}

/// Starts `serving` on a current-thread tokio runtime on a thread named
/// `name`, until the process ends. The runtime is built here, so that a
/// failure to build it fails the caller's start.
pub fn spawn<F>(name: &str, serving: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(serving))?;
    Ok(())
}

/// Serves `listener` (bound by the caller, so a bad address fails the
/// start) with `answer`, which is given each request and its client's
/// address, until the process ends.
pub async fn serve<A, R>(listener: std::net::TcpListener, serving: Serving, answer: A)
where
    A: Fn(Request<Incoming>, SocketAddr) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let name = serving.name;
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%err, "{name} listener");
            return;
        }
    };
    let serving = Arc::new(serving);
    let permits = Arc::new(Semaphore::new(serving.connections_max));
    let failures = Arc::new(Mutex::new(LogLimit::default()));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let serving = serving.clone();
        let answer = answer.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            match &serving.tls {
                None => connection(stream, peer, &serving, answer).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(serving.io_timeout, handshake).await {
                        Ok(Ok(stream)) => connection(stream, peer, &serving, answer).await,
                        Ok(Err(err)) => {
                            let count = failures.lock().ok().and_then(|mut limit| limit.hit());
                            if let Some(count) = count {
                                tracing::info!(%peer, %err, count, "{name} listener: TLS handshake failed");
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Serves one connection's requests, for at most the connection's time.
async fn connection<I, A, R>(io: I, peer: SocketAddr, serving: &Serving, answer: A)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<Incoming>, SocketAddr) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answered = answer(request, peer);
        async move { Ok::<_, Infallible>(answered.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.io_timeout)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(serving.connection_time_max, connection).await;
}

/// A TLS acceptor for an HTTP listener from the server's certificates
/// (whose resolver follows reloads), offering HTTP/1.1 by ALPN.
pub fn tls_acceptor(tls: &crate::tls::ServerTls) -> TlsAcceptor {
    let mut config = (*tls.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
