//! Connection slots.
//!
//! A slot owns a client connection: its socket, its SMTP session, and the
//! buffers that receive and send operations borrow. A slot is freed only
//! once no operation on it is in flight (see `ring.rs`); its generation
//! changes when it is reused.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crate::inbound::Session;

use super::token::{ConnKey, SLOTS_MAX};

/// Bytes one receive can bring in.
pub(crate) const RECV_BUFFER_BYTES: usize = 64 << 10;

pub(crate) struct Conn {
    pub key: ConnKey,
    fd: OwnedFd,
    /// The client's address as text, for the spool record and the log line
    /// of each message it sends.
    pub peer_text: Arc<str>,
    pub session: Session,
    /// Borrowed by the kernel while `recv_in_flight`.
    pub recv_buf: Box<[u8]>,
    pub recv_in_flight: bool,
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
            recv_buf: vec![0; RECV_BUFFER_BYTES].into_boxed_slice(),
            recv_in_flight: false,
            send_buf: Vec::new(),
            send_done: 0,
            send_in_flight: false,
            dead: false,
            cancels_sent: false,
            counted_ip: None,
            deadline,
            timed_out: false,
        }
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
