//! TLS on delivery connections: rustls' sans-IO `ClientConnection` beside
//! the SMTP client, started when the client reports `220` to STARTTLS.
//!
//! The ring moves ciphertext; the client sees plaintext. Message bodies go
//! from the spool mapping into rustls in bounded pieces
//! ([`TLS_SEND_CHUNK_BYTES`] per send), so a large message is never copied
//! whole into a staging buffer: each piece is encrypted once, into the
//! slot's send buffer, and sent.
//!
//! A failed handshake ends the attempt on that address. Opportunistic
//! TLS then remembers the address as broken (`delivery.remember_broken_tls`)
//! and retries it at once in plain text (KumoMTA's `remember_broken_tls`,
//! Postfix's plain-text fallback); a required TLS moves on to the next
//! address and, when none is left, defers with `4.7.5` naming the error.

use std::io::{BufRead as _, IoSlice, Write as _};
use std::sync::atomic::Ordering;

use rustls::pki_types::ServerName;

use super::{OutConn, Shard};
use crate::config::TlsPolicy;
use crate::server::unix_ms;
use crate::shard::token::ConnKey;
use crate::tls::{TlsInfo, TLS_BUFFER_BYTES_MAX};

/// Plaintext put into rustls per send: one send carries at most this much
/// (plus record overhead), so the copy into the send buffer stays bounded.
const TLS_SEND_CHUNK_BYTES: usize = 64 << 10;

impl Shard {
    /// The server said `220` to STARTTLS: start the handshake.
    pub(super) fn out_start_tls(&mut self, key: ConnKey) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let Some(hop) = conn.hop.clone() else {
            return;
        };
        let verify = conn.tls_policy == TlsPolicy::RequiredVerified;
        let client_tls = &self.server.client_tls;
        let config = if verify {
            client_tls.verified.clone()
        } else {
            client_tls.unverified.clone()
        };
        // The name the certificate must carry: the MX or route host; a
        // literal next hop is checked against its address.
        let literal = hop.name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(literal.to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(hop.addr.ip().into()));
        match rustls::ClientConnection::new(config, name) {
            Ok(mut tls) => {
                tls.set_buffer_limit(Some(TLS_BUFFER_BYTES_MAX));
                conn.tls = Some(Box::new(tls));
                conn.tls_verify = verify;
            }
            Err(err) => self.out_tls_failed(key, err.to_string()),
        }
    }

    /// Ciphertext arrived (rustls copies what it keeps).
    pub(super) fn out_received_tls(&mut self, key: ConnKey, mut input: &[u8]) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let OutConn {
            tls,
            client,
            tls_info,
            tls_verify,
            last_error,
            ..
        } = conn;
        let (Some(tls), Some(client)) = (tls.as_mut(), client.as_mut()) else {
            return;
        };
        let mut failure = None;
        'input: while !input.is_empty() {
            match tls.read_tls(&mut input) {
                Ok(0) => break, // rustls takes no more: what is left is dropped
                Ok(_) => {}
                Err(err) => {
                    failure = Some(err.to_string());
                    break;
                }
            }
            if let Err(err) = tls.process_new_packets() {
                failure = Some(err.to_string());
                break;
            }
            if tls_info.is_none() && !tls.is_handshaking() {
                *tls_info = TlsInfo::of(tls, *tls_verify);
                self.server
                    .metrics
                    .tls_handshakes_out
                    .fetch_add(1, Ordering::Relaxed);
                client.tls_established();
            }
            loop {
                let mut reader = tls.reader();
                match reader.fill_buf() {
                    Ok([]) => {
                        // close_notify: the server ended the session.
                        client.connection_lost();
                        break 'input;
                    }
                    Ok(plain) => {
                        let len = plain.len();
                        client.receive(plain);
                        reader.consume(len);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        *last_error = format!("TLS: {err}");
                        client.connection_lost();
                        break 'input;
                    }
                }
            }
        }
        if let Some(why) = failure {
            if tls_info.is_none() {
                return self.out_tls_failed(key, why);
            }
            // After the handshake a TLS error ends the connection like a
            // reset: what is not final is deferred.
            *last_error = format!("TLS: {why}");
            client.connection_lost();
        }
        self.out_progress(key);
    }

    /// The handshake failed (an error, the server hung up, a timeout).
    pub(super) fn out_tls_failed(&mut self, key: ConnKey, why: String) {
        let now_ms = unix_ms();
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let Some(hop) = conn.hop.clone() else {
            return;
        };
        self.server
            .metrics
            .tls_handshake_failures_out
            .fetch_add(1, Ordering::Relaxed);
        conn.last_error = format!("TLS handshake with {hop} failed: {why}");
        if conn.tls_policy == TlsPolicy::Opportunistic {
            self.server.tls_broken(hop.addr, now_ms);
            conn.plain_retry = true;
            tracing::info!(
                destination = %conn.destination,
                host = %hop,
                error = %why,
                "TLS handshake failed; retrying in plain text, and remembering the host"
            );
        } else {
            conn.tls_error = true;
            tracing::info!(
                destination = %conn.destination,
                host = %hop,
                error = %why,
                policy = conn.tls_policy.as_str(),
                "TLS handshake failed; trying the next host"
            );
        }
        let message = conn.last_error.clone();
        if let Some(client) = conn.client.as_mut() {
            client.tls_failed(message);
        }
        self.out_progress(key);
    }
}

impl OutConn {
    /// Once the last send is done: puts the next plaintext (handshake
    /// records, the body piece due, then the client's commands) through
    /// rustls into `send_buf`.
    pub(super) fn fill_tls(&mut self) {
        if self.send_done < self.send_buf.len() {
            return;
        }
        self.send_buf.clear();
        self.send_done = 0;
        let (Some(tls), Some(client)) = (self.tls.as_mut(), self.client.as_mut()) else {
            return;
        };
        if !tls.is_handshaking() {
            let budget = TLS_SEND_CHUNK_BYTES;
            let body = self
                .current
                .as_mut()
                .filter(|c| c.body_due && c.body_done < c.body_len);
            match body {
                Some(current) => {
                    let start = current.body_start + current.body_done;
                    let end = current.body_start + current.body_len;
                    let piece = &current.record.payload()[start..end.min(start + budget)];
                    let last = start + piece.len() == end;
                    let output = client.output();
                    // The body's last piece and the commands behind it (the
                    // dot, the next envelope) in one write: one TLS record
                    // instead of two for a small message.
                    let n = if last && !output.is_empty() {
                        let parts = [IoSlice::new(piece), IoSlice::new(output)];
                        tls.writer().write_vectored(&parts).unwrap_or(0)
                    } else {
                        tls.writer().write(piece).unwrap_or(0)
                    };
                    let body_n = n.min(piece.len());
                    current.body_done += body_n;
                    client.consume_output(n - body_n);
                }
                None => {
                    let output = client.output();
                    if !output.is_empty() {
                        let n = tls.writer().write(output).unwrap_or(0);
                        client.consume_output(n);
                    }
                }
            }
        }
        while tls.wants_write() {
            if tls.write_tls(&mut self.send_buf).is_err() {
                break;
            }
        }
    }
}
