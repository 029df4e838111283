//! Connection slots.
//!
//! A slot owns a client connection: its socket, its SMTP session, the TLS
//! connection beside it (rustls' sans-IO `ServerConnection`, once STARTTLS
//! or an implicit-TLS listener asks for it), and the buffers that receive
//! and send operations borrow. The ring moves ciphertext; the session sees
//! plaintext. A slot is freed only once no operation on it is in flight
//! (see `ring.rs`); its generation changes when it is reused.

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use rustls::ServerConnection;

use crate::inbound::{Session, SessionContext};
use crate::tls::TlsInfo;

use super::token::{ConnKey, SLOTS_MAX};

pub(crate) struct Conn {
    pub key: ConnKey,
    fd: OwnedFd,
    /// The client's address as text, for the spool record and the log line
    /// of each message it sends.
    pub peer_text: Arc<str>,
    pub session: Session,
    /// A receive is armed; its buffer comes from the shard's buffer ring
    /// when data arrives, so a connection holds none while it waits.
    pub recv_in_flight: bool,
    /// The last receive found the buffer ring empty: it is armed again
    /// once buffers have come back.
    pub recv_starved: bool,
    /// Borrowed by the kernel while `send_in_flight`: `send_buf[send_done..]`.
    pub send_buf: Vec<u8>,
    pub send_done: usize,
    pub send_in_flight: bool,
    /// Torn down: no new operations; freed once none is in flight.
    pub dead: bool,
    pub cancels_sent: bool,
    /// Counted against `connections_per_ip_max`.
    pub counted_ip: Option<IpAddr>,
    pub deadline: Instant,
    /// The session was told it timed out; the next sweep ends it hard.
    pub timed_out: bool,
    /// When the message being received started, and its bytes so far:
    /// the data rate `limits.data_rate_min` judges.
    pub data_since: Option<Instant>,
    pub data_bytes: u64,
    /// TLS, once started: every byte on the socket goes through it.
    pub tls: Option<Box<ServerConnection>>,
    /// The end of the handshake was reported to the session.
    pub tls_reported: bool,
    /// TLS failed: send what rustls queued (its alert), then close.
    pub tls_failed: bool,
    close_notify_sent: bool,
}

/// What feeding TLS bytes did.
#[derive(Debug)]
pub(crate) enum TlsStep {
    /// Bytes were taken; nothing new.
    Continue,
    /// The handshake completed.
    Established,
    /// The peer ended TLS (close_notify).
    Closed,
    /// A TLS error: the alert is queued; the connection closes.
    Failed(rustls::Error),
}

impl Conn {
    pub fn new(
        key: ConnKey,
        fd: OwnedFd,
        peer: SocketAddr,
        session: Session,
        deadline: Instant,
    ) -> Conn {
        Conn {
            key,
            fd,
            peer_text: peer.to_string().into(),
            session,
            recv_in_flight: false,
            recv_starved: false,
            send_buf: Vec::new(),
            send_done: 0,
            send_in_flight: false,
            dead: false,
            cancels_sent: false,
            counted_ip: None,
            deadline,
            timed_out: false,
            data_since: None,
            data_bytes: 0,
            tls: None,
            tls_reported: false,
            tls_failed: false,
            close_notify_sent: false,
        }
    }

    /// Whether a TLS handshake is under way.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Feeds received ciphertext to rustls (which copies what it needs)
    /// and the plaintext to the session; tells the session when the
    /// handshake completes.
    pub fn receive_tls(&mut self, mut input: &[u8], ctx: &mut dyn SessionContext) -> TlsStep {
        let Conn {
            tls,
            session,
            tls_reported,
            tls_failed,
            ..
        } = self;
        let tls = tls.as_mut().expect("a TLS connection");
        let mut step = TlsStep::Continue;
        while !input.is_empty() {
            match tls.read_tls(&mut input) {
                Ok(0) => break, // rustls takes no more: what is left is dropped
                Ok(_) => {}
                Err(err) => {
                    *tls_failed = true;
                    return TlsStep::Failed(rustls::Error::General(err.to_string()));
                }
            }
            if let Err(err) = tls.process_new_packets() {
                *tls_failed = true;
                return TlsStep::Failed(err);
            }
            if !*tls_reported && !tls.is_handshaking() {
                *tls_reported = true;
                let info = TlsInfo::of(tls, false).expect("the handshake is done");
                session.tls_established(info);
                step = TlsStep::Established;
            }
            loop {
                let mut reader = tls.reader();
                match reader.fill_buf() {
                    Ok([]) => return TlsStep::Closed,
                    Ok(plain) => {
                        let len = plain.len();
                        session.receive(plain, ctx);
                        reader.consume(len);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return TlsStep::Closed,
                }
            }
        }
        step
    }

    /// Moves the session's output into `send_buf` (once it is empty):
    /// through rustls when TLS is on, with a close_notify when the
    /// session closes.
    pub fn fill_send_buf(&mut self) {
        if !self.send_buf.is_empty() {
            return;
        }
        let Some(tls) = self.tls.as_mut() else {
            let output = self.session.output();
            if !output.is_empty() {
                self.send_buf.extend_from_slice(output);
                let n = output.len();
                self.session.consume_output(n);
            }
            return;
        };
        if !self.tls_failed {
            let output = self.session.output();
            if !output.is_empty() {
                // rustls takes up to its buffer limit; the rest waits for
                // the next send.
                let n = tls.writer().write(output).unwrap_or(0);
                self.session.consume_output(n);
            }
            if self.session.is_closing()
                && self.session.output().is_empty()
                && !self.close_notify_sent
            {
                self.close_notify_sent = true;
                tls.send_close_notify();
            }
        }
        while tls.wants_write() {
            if tls.write_tls(&mut self.send_buf).is_err() {
                break;
            }
        }
    }

    /// Whether the connection has nothing more to say once its output is
    /// sent.
    pub fn closing(&self) -> bool {
        self.tls_failed || self.session.is_closing()
    }

    /// Whether to keep a receive armed.
    pub fn wants_input(&self) -> bool {
        if self.tls_failed {
            return false;
        }
        self.handshaking() || self.session.wants_input()
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn in_flight(&self) -> bool {
        self.recv_in_flight || self.send_in_flight
    }
}

/// What a slot holds: something with a key whose buffers the kernel may
/// be borrowing.
pub(crate) trait Slotted {
    fn key(&self) -> ConnKey;
    /// Whether an operation on it is in flight (the slot must stay).
    fn in_flight(&self) -> bool;
}

impl Slotted for Conn {
    fn key(&self) -> ConnKey {
        self.key
    }

    fn in_flight(&self) -> bool {
        Conn::in_flight(self)
    }
}

/// Connection slots with generations.
pub(crate) struct Slots<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T: Slotted> Slots<T> {
    /// A key for the next connection, or `None` when every slot is taken.
    pub fn vacant(&mut self) -> Option<ConnKey> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < SLOTS_MAX => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let entry = &mut self.slots[slot as usize];
        entry.0 = entry.0.wrapping_add(1);
        Some(ConnKey {
            slot,
            generation: entry.0,
        })
    }

    pub fn insert(&mut self, conn: T) {
        let key = conn.key();
        let entry = &mut self.slots[key.slot as usize];
        assert_eq!(entry.0, key.generation, "insert with a stale key");
        assert!(entry.1.is_none(), "slot {} is taken", key.slot);
        entry.1 = Some(conn);
        self.live += 1;
    }

    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut T> {
        match self.slots.get_mut(key.slot as usize) {
            Some((generation, Some(conn))) if *generation == key.generation => Some(conn),
            _ => None,
        }
    }

    /// Frees a slot. The connection must have nothing in flight.
    pub fn remove(&mut self, key: ConnKey) -> Option<T> {
        let (generation, entry) = self.slots.get_mut(key.slot as usize)?;
        if *generation != key.generation {
            return None;
        }
        let conn = entry.take()?;
        assert!(!conn.in_flight(), "slot freed with an operation in flight");
        self.free.push(key.slot);
        self.live -= 1;
        Some(conn)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(|c| c.key()))
            .collect()
    }
}
