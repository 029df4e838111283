//! Tokens: what a completion belongs to, packed into io_uring's user data.
//!
//! `kind (8 bits) | slot (24 bits) | generation (32 bits)` for connection
//! operations; `kind | index` for the others. The generation makes a late
//! completion for a reused slot recognisable.

/// What a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Accept(usize),
    Wake,
    Recv(ConnKey),
    Send(ConnKey),
    /// A cancel's own completion; nothing to do.
    Cancel,
    /// A spool write or datasync, by the shard's own sequence number.
    Spool(u64),
    /// An outbound connection's connect, receive and send.
    Connect(ConnKey),
    OutRecv(ConnKey),
    OutSend(ConnKey),
}

/// A connection slot and its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub slot: u32,
    pub generation: u32,
}

const KIND_SHIFT: u32 = 56;
const SLOT_MASK: u64 = (1 << 24) - 1;
const LOW_MASK: u64 = (1 << KIND_SHIFT) - 1;
/// Most connection slots a shard can have (24 bits).
pub(crate) const SLOTS_MAX: usize = 1 << 24;

impl Token {
    pub fn encode(self) -> u64 {
        let (kind, low) = match self {
            Token::Accept(i) => (1u64, i as u64),
            Token::Wake => (2, 0),
            Token::Recv(k) => (3, conn(k)),
            Token::Send(k) => (4, conn(k)),
            Token::Cancel => (5, 0),
            Token::Spool(seq) => (6, seq & LOW_MASK),
            Token::Connect(k) => (7, conn(k)),
            Token::OutRecv(k) => (8, conn(k)),
            Token::OutSend(k) => (9, conn(k)),
        };
        (kind << KIND_SHIFT) | low
    }

    pub fn decode(raw: u64) -> Option<Token> {
        let low = raw & LOW_MASK;
        let key = ConnKey {
            slot: ((low >> 32) & SLOT_MASK) as u32,
            generation: low as u32,
        };
        Some(match raw >> KIND_SHIFT {
            1 => Token::Accept(low as usize),
            2 => Token::Wake,
            3 => Token::Recv(key),
            4 => Token::Send(key),
            5 => Token::Cancel,
            6 => Token::Spool(low),
            7 => Token::Connect(key),
            8 => Token::OutRecv(key),
            9 => Token::OutSend(key),
            _ => return None,
        })
    }
}

fn conn(key: ConnKey) -> u64 {
    (u64::from(key.slot) << 32) | u64::from(key.generation)
}

impl ConnKey {
    /// The key as one number, for the queue's idle-connection list.
    pub fn to_u64(self) -> u64 {
        conn(self)
    }

    pub fn from_u64(raw: u64) -> ConnKey {
        ConnKey {
            slot: ((raw >> 32) & SLOT_MASK) as u32,
            generation: raw as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let key = ConnKey {
            slot: (SLOTS_MAX - 1) as u32,
            generation: u32::MAX,
        };
        for token in [
            Token::Accept(3),
            Token::Wake,
            Token::Recv(key),
            Token::Send(key),
            Token::Cancel,
            Token::Spool(12345),
            Token::Connect(key),
            Token::OutRecv(key),
            Token::OutSend(key),
        ] {
            assert_eq!(Token::decode(token.encode()), Some(token));
        }
    }
}
