//! Record framing and payloads.
//!
//! Every record on disk is a frame:
//!
//! ```text
//! 0      4      8            16           24   25  26    28      32
//! | magic | crc | segment id |   seq      |type| 0 |  0  |  len  | payload (len bytes) | pad to 8
//! ```
//!
//! The CRC32C covers bytes 8..32 of the header and the payload. The segment
//! id ties a frame to the segment it was written for: a recycled segment
//! file still holds frames of its previous life, and those must read as
//! garbage, not as records. `seq` counts frames within a segment from 1, so a
//! scan that resynchronises after damage can tell a frame that belongs after
//! the last good one from a stray copy.
//!
//! Payloads are little-endian with `u32` length prefixes. The message body is
//! last in a message record so that it can be handed out as one slice of the
//! mapping, in wire form (CRLF, dot-stuffed), ready to send.

use crate::error::{Error, Result};
use crate::segment::SegmentId;
use crate::QueueId;

/// `b"BtR1"`, little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"BtR1");
/// Size of a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: usize = 8;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A message as the first version wrote it: envelope, per-recipient
    /// state, body. Still read; no longer written.
    Message = 1,
    /// The outcome of one delivery attempt for one recipient.
    Outcome = 2,
    /// A message with the `transport` field (how it arrived, e.g. over
    /// which TLS): what [`NewMessage`] writes.
    MessageV2 = 3,
    /// The first frame of a writer's segment: which segment the writer
    /// filled before this one, and how many frames that one holds. It is
    /// what tells a torn tail (only at the end of a writer's newest
    /// segment) from a sealed segment that lost its end. See [`Link`].
    Link = 4,
}

impl RecordType {
    fn from_u8(byte: u8) -> Option<RecordType> {
        match byte {
            1 => Some(RecordType::Message),
            2 => Some(RecordType::Outcome),
            3 => Some(RecordType::MessageV2),
            4 => Some(RecordType::Link),
            _ => None,
        }
    }

    /// Either version of a message record.
    pub fn is_message(self) -> bool {
        matches!(self, RecordType::Message | RecordType::MessageV2)
    }
}

/// What a [`RecordType::Link`] frame says: the writer's previous segment
/// ended with the frame numbered `last_seq` (frames are numbered from 1,
/// so it held that many).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub previous: SegmentId,
    /// The previous segment's creation time from its header: segment ids
    /// are unique only among files that exist, so an id alone could name a
    /// later segment that reused it.
    pub previous_created_ms: u64,
    pub last_seq: u64,
}

impl Link {
    /// Payload bytes of a link.
    pub const PAYLOAD_BYTES: usize = 24;

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.previous.0.to_le_bytes());
        out.extend_from_slice(&self.previous_created_ms.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
    }

    /// Decodes a link payload.
    pub fn decode(payload: &[u8]) -> Result<Link> {
        let bad = Error::Malformed {
            what: "link",
            why: "a link payload is 24 bytes",
        };
        if payload.len() != Link::PAYLOAD_BYTES {
            return Err(bad);
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
        Ok(Link {
            previous: SegmentId(u64_at(0)),
            previous_created_ms: u64_at(8),
            last_seq: u64_at(16),
        })
    }
}

/// Bytes a frame with `payload_len` bytes of payload occupies, padding included.
pub fn frame_len(payload_len: usize) -> usize {
    (FRAME_HEADER_BYTES + payload_len).next_multiple_of(FRAME_ALIGN)
}

/// Appends a frame around the payload that `write_payload` appends to `out`.
/// Returns the frame's length (padding included).
pub fn encode_frame(
    out: &mut Vec<u8>,
    segment: SegmentId,
    seq: u64,
    kind: RecordType,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    write_payload(out);
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    let header = &mut out[start..start + FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    header[8..16].copy_from_slice(&segment.0.to_le_bytes());
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24] = kind as u8;
    header[28..32].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let framed = frame_len(payload_len);
    out.resize(start + framed, 0);
    // Check before writing (TigerBeetle): what we hand to the disk must decode.
    debug_assert!(decode_frame(&out[start..], segment).is_ok());
    framed
}

/// A frame that passed every check.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub seq: u64,
    pub kind: RecordType,
    pub payload: &'a [u8],
    /// Bytes the frame occupies, padding included.
    pub len: usize,
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// All zeroes: the unwritten part of a preallocated segment.
    Zero,
    /// Fewer bytes than the header or the payload needs.
    Short,
    /// Wrong magic, segment id, type, or CRC.
    Bad,
}

/// Decodes the frame at the start of `bytes`, verifying its CRC.
pub fn decode_frame(bytes: &[u8], segment: SegmentId) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Short);
    }
    let header = &bytes[..FRAME_HEADER_BYTES];
    let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    if magic != FRAME_MAGIC {
        if header.iter().all(|&b| b == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Bad);
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let segment_on_disk = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let seq = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes")) as usize;
    let Some(kind) = RecordType::from_u8(header[24]) else {
        return Err(FrameError::Bad);
    };
    if segment_on_disk != segment.0 {
        return Err(FrameError::Bad);
    }
    // The padding must be there too: a frame cut inside its padding is a
    // torn tail. Accepted, it would put recovery's scan past the end of the
    // file (a panic) and hand out a reference that does not resolve
    // (regression test: `tests/corruption.rs`, truncation at record edges).
    let Some(end) = FRAME_HEADER_BYTES
        .checked_add(len)
        .filter(|&end| end.next_multiple_of(FRAME_ALIGN) <= bytes.len())
    else {
        return Err(FrameError::Short);
    };
    if crc32c::crc32c(&bytes[8..end]) != crc {
        return Err(FrameError::Bad);
    }
    Ok(Frame {
        seq,
        kind,
        payload: &bytes[FRAME_HEADER_BYTES..end],
        len: frame_len(len),
    })
}

/// Where a recipient stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not tried yet.
    Pending,
    /// Tried `attempts` times; try again at `next_attempt_ms` (Unix ms).
    Deferred { attempts: u32, next_attempt_ms: u64 },
    /// Accepted by the next hop on attempt `attempts`. Final.
    Delivered { attempts: u32 },
    /// Refused permanently on attempt `attempts`, or expired. Final.
    /// (Records written before the count was kept read as attempt 0.)
    Failed { attempts: u32 },
    /// Removed by the operator without a notification. Final.
    Removed,
}

impl Status {
    /// Whether nothing more will happen to the recipient.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Delivered { .. } | Status::Failed { .. } | Status::Removed
        )
    }

    /// Outcomes are merged by rank, so that applying them in any order, and
    /// more than once, gives the same state: a final status beats a
    /// deferral, a later attempt beats an earlier one. This is what lets
    /// recovery read segments in any order and lets a compacted copy of a
    /// message coexist with the outcome records it already folded in.
    pub(crate) fn rank(self) -> (u8, u32, u64) {
        match self {
            Status::Pending => (0, 0, 0),
            Status::Deferred {
                attempts,
                next_attempt_ms,
            } => (1, attempts, next_attempt_ms),
            Status::Delivered { .. } | Status::Failed { .. } | Status::Removed => (2, 0, 0),
        }
    }

    /// The status that wins when `self` meets `other`.
    pub(crate) fn merge(self, other: Status) -> Status {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    fn encode(self, out: &mut Vec<u8>) {
        let (code, attempts, next) = match self {
            Status::Pending => (0u8, 0u32, 0u64),
            Status::Deferred {
                attempts,
                next_attempt_ms,
            } => (1, attempts, next_attempt_ms),
            Status::Delivered { attempts } => (2, attempts, 0),
            Status::Failed { attempts } => (3, attempts, 0),
            Status::Removed => (4, 0, 0),
        };
        out.push(code);
        out.extend_from_slice(&attempts.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Status> {
        let code = r.u8()?;
        let attempts = r.u32()?;
        let next_attempt_ms = r.u64()?;
        Ok(match code {
            0 => Status::Pending,
            1 => Status::Deferred {
                attempts,
                next_attempt_ms,
            },
            2 => Status::Delivered { attempts },
            3 => Status::Failed { attempts },
            4 => Status::Removed,
            _ => return Err(malformed("status", "unknown status code")),
        })
    }
}

/// One recipient of a message to append.
#[derive(Clone, Debug)]
pub struct NewRecipient<'a> {
    /// The forward path, without angle brackets.
    pub address: &'a [u8],
    /// RCPT parameters as received (e.g. `NOTIFY=FAILURE ORCPT=...`).
    pub params: &'a [u8],
    /// Normally [`Status::Pending`]; compaction copies carry the current state.
    pub status: Status,
}

/// A message to append.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub queue_id: QueueId,
    /// Unix ms.
    pub arrival_ms: u64,
    /// The reverse path without angle brackets; empty for the null path `<>`.
    pub reverse_path: &'a [u8],
    /// MAIL parameters as received (e.g. `SIZE=1234 BODY=8BITMIME`).
    pub mail_params: &'a [u8],
    /// The authenticated identity, empty when the client did not authenticate.
    pub identity: &'a [u8],
    /// The client's address, e.g. `127.0.0.1:50122`.
    pub peer: &'a [u8],
    /// How the message arrived, as the engine describes it (the TLS
    /// protocol and cipher); empty in plain text. Opaque to the spool.
    pub transport: &'a [u8],
    pub recipients: &'a [NewRecipient<'a>],
    /// The message in wire form: CRLF line ends, dot-stuffed, without the
    /// final `.` line.
    pub body: &'a [u8],
}

impl NewMessage<'_> {
    /// Payload bytes this message encodes to.
    pub fn payload_len(&self) -> usize {
        let rcpts: usize = self
            .recipients
            .iter()
            .map(|r| 8 + r.address.len() + r.params.len() + STATUS_BYTES)
            .sum();
        MESSAGE_FIXED_BYTES
            + self.reverse_path.len()
            + self.mail_params.len()
            + self.identity.len()
            + self.peer.len()
            + 4
            + self.transport.len()
            + rcpts
            + self.body.len()
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.payload_len());
        out.extend_from_slice(&self.queue_id.0.to_le_bytes());
        out.extend_from_slice(&self.arrival_ms.to_le_bytes());
        out.extend_from_slice(&(self.recipients.len() as u32).to_le_bytes());
        put_bytes(out, self.reverse_path);
        put_bytes(out, self.mail_params);
        put_bytes(out, self.identity);
        put_bytes(out, self.peer);
        put_bytes(out, self.transport);
        for rcpt in self.recipients {
            put_bytes(out, rcpt.address);
            put_bytes(out, rcpt.params);
            rcpt.status.encode(out);
        }
        out.extend_from_slice(&(self.body.len() as u64).to_le_bytes());
        out.extend_from_slice(self.body);
    }
}

const STATUS_BYTES: usize = 1 + 4 + 8;
// queue id, arrival, rcpt count, four length prefixes, body length.
const MESSAGE_FIXED_BYTES: usize = 8 + 8 + 4 + 4 * 4 + 8;

/// A message record, read in place from the mapping.
#[derive(Clone, Debug)]
pub struct MessageView<'a> {
    pub queue_id: QueueId,
    pub arrival_ms: u64,
    pub reverse_path: &'a [u8],
    pub mail_params: &'a [u8],
    pub identity: &'a [u8],
    pub peer: &'a [u8],
    /// Empty in plain text, and in records of the first version.
    pub transport: &'a [u8],
    recipient_count: u32,
    recipients: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Decodes a message payload of the first version (no `transport`).
    pub fn decode(payload: &'a [u8]) -> Result<MessageView<'a>> {
        MessageView::decode_kind(RecordType::Message, payload)
    }

    /// Decodes the payload of a message record of either version.
    pub fn decode_kind(kind: RecordType, payload: &'a [u8]) -> Result<MessageView<'a>> {
        let mut r = Reader(payload);
        let queue_id = QueueId(r.u64()?);
        let arrival_ms = r.u64()?;
        let recipient_count = r.u32()?;
        let reverse_path = r.bytes()?;
        let mail_params = r.bytes()?;
        let identity = r.bytes()?;
        let peer = r.bytes()?;
        let transport = match kind {
            RecordType::MessageV2 => r.bytes()?,
            _ => &[],
        };
        let recipients_start = r.0;
        for _ in 0..recipient_count {
            r.bytes()?;
            r.bytes()?;
            Status::decode(&mut r)?;
        }
        let recipients = &recipients_start[..recipients_start.len() - r.0.len()];
        let body_len = r.u64()?;
        if body_len != r.0.len() as u64 {
            return Err(malformed(
                "message",
                "body length does not match the record",
            ));
        }
        Ok(MessageView {
            queue_id,
            arrival_ms,
            reverse_path,
            mail_params,
            identity,
            peer,
            transport,
            recipient_count,
            recipients,
            body: r.0,
        })
    }

    /// How many recipients the message has.
    pub fn recipient_count(&self) -> u32 {
        self.recipient_count
    }

    /// The recipients in RCPT order, with the state stored in this record.
    pub fn recipients(&self) -> impl Iterator<Item = RecipientView<'a>> + 'a {
        let mut r = Reader(self.recipients);
        (0..self.recipient_count).map(move |_| {
            // Validated in `decode`.
            let address = r.bytes().expect("validated");
            let params = r.bytes().expect("validated");
            let status = Status::decode(&mut r).expect("validated");
            RecipientView {
                address,
                params,
                status,
            }
        })
    }
}

/// One recipient of a [`MessageView`].
#[derive(Clone, Copy, Debug)]
pub struct RecipientView<'a> {
    pub address: &'a [u8],
    pub params: &'a [u8],
    pub status: Status,
}

/// The outcome of one attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<'a> {
    pub queue_id: QueueId,
    /// Index of the recipient in the message's RCPT order.
    pub recipient: u32,
    pub status: Status,
    /// Unix ms.
    pub time_ms: u64,
    /// The remote reply (or the local reason), for logs and notifications.
    pub reply: &'a [u8],
}

impl<'a> Outcome<'a> {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.queue_id.0.to_le_bytes());
        out.extend_from_slice(&self.recipient.to_le_bytes());
        self.status.encode(out);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        put_bytes(out, self.reply);
    }

    /// Payload bytes this outcome encodes to.
    pub fn payload_len(&self) -> usize {
        8 + 4 + STATUS_BYTES + 8 + 4 + self.reply.len()
    }

    /// Decodes an outcome payload.
    pub fn decode(payload: &'a [u8]) -> Result<Outcome<'a>> {
        let mut r = Reader(payload);
        let outcome = Outcome {
            queue_id: QueueId(r.u64()?),
            recipient: r.u32()?,
            status: Status::decode(&mut r)?,
            time_ms: r.u64()?,
            reply: r.bytes()?,
        };
        if !r.0.is_empty() {
            return Err(malformed("outcome", "trailing bytes"));
        }
        if outcome.status == Status::Pending {
            return Err(malformed("outcome", "an outcome cannot be pending"));
        }
        Ok(outcome)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn malformed(what: &'static str, why: &'static str) -> Error {
    Error::Malformed { what, why }
}

/// A bounds-checked cursor: bad lengths become errors, never panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed("record", "field runs past the end"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(rcpts: &'a [NewRecipient<'a>]) -> NewMessage<'a> {
        NewMessage {
            queue_id: QueueId(42),
            arrival_ms: 1_700_000_000_000,
            reverse_path: b"sender@example.com",
            mail_params: b"SIZE=10",
            identity: b"",
            peer: b"127.0.0.1:4000",
            transport: b"",
            recipients: rcpts,
            body: b"Subject: hi\r\n\r\nhello\r\n",
        }
    }

    #[test]
    fn message_round_trips_through_a_frame() {
        let rcpts = [
            NewRecipient {
                address: b"a@example.org",
                params: b"",
                status: Status::Pending,
            },
            NewRecipient {
                address: b"b@example.org",
                params: b"NOTIFY=NEVER",
                status: Status::Deferred {
                    attempts: 3,
                    next_attempt_ms: 99,
                },
            },
        ];
        let msg = sample(&rcpts);
        let mut out = Vec::new();
        let len = encode_frame(&mut out, SegmentId(7), 1, RecordType::MessageV2, |o| {
            msg.encode(o)
        });
        assert_eq!(len, out.len());
        assert_eq!(len % FRAME_ALIGN, 0);
        assert_eq!(len, frame_len(msg.payload_len()));
        let frame = decode_frame(&out, SegmentId(7)).unwrap();
        assert_eq!(frame.kind, RecordType::MessageV2);
        let view = MessageView::decode_kind(frame.kind, frame.payload).unwrap();
        assert_eq!(view.queue_id, QueueId(42));
        assert_eq!(view.body, msg.body);
        let got: Vec<_> = view.recipients().collect();
        assert_eq!(got[1].params, b"NOTIFY=NEVER");
        assert_eq!(got[1].status, rcpts[1].status);
    }

    #[test]
    fn a_frame_of_another_segment_is_rejected() {
        let mut out = Vec::new();
        let outcome = Outcome {
            queue_id: QueueId(1),
            recipient: 0,
            status: Status::Delivered { attempts: 1 },
            time_ms: 5,
            reply: b"250 ok",
        };
        encode_frame(&mut out, SegmentId(1), 1, RecordType::Outcome, |o| {
            outcome.encode(o)
        });
        assert_eq!(
            decode_frame(&out, SegmentId(2)).unwrap_err(),
            FrameError::Bad
        );
        let frame = decode_frame(&out, SegmentId(1)).unwrap();
        assert_eq!(Outcome::decode(frame.payload).unwrap(), outcome);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        let outcome = Outcome {
            queue_id: QueueId(1),
            recipient: 0,
            status: Status::Failed { attempts: 1 },
            time_ms: 5,
            reply: b"550 no such user",
        };
        let len = encode_frame(&mut out, SegmentId(1), 1, RecordType::Outcome, |o| {
            outcome.encode(o)
        });
        let payload_end = FRAME_HEADER_BYTES + outcome.payload_len();
        for byte in 0..payload_end {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_frame(&bad[..len], SegmentId(1)).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let rcpts = [NewRecipient {
            address: b"a@example.org",
            params: b"",
            status: Status::Pending,
        }];
        let mut payload = Vec::new();
        sample(&rcpts).encode(&mut payload);
        for cut in 0..payload.len() {
            let cut = &payload[..cut];
            assert!(MessageView::decode_kind(RecordType::MessageV2, cut).is_err());
        }
    }

    /// Spools written before the `transport` field still load: a message
    /// record of the first version decodes, with no transport.
    #[test]
    fn first_version_messages_still_decode() {
        let rcpts = [NewRecipient {
            address: b"b@example.org",
            params: b"",
            status: Status::Pending,
        }];
        let message = sample(&rcpts);
        assert!(message.transport.is_empty());
        let mut v2 = Vec::new();
        message.encode(&mut v2);
        // The first version is the same without the transport's (empty)
        // length prefix, which follows the peer.
        let at = 8
            + 8
            + 4
            + 4
            + message.reverse_path.len()
            + 4
            + message.mail_params.len()
            + 4
            + message.identity.len()
            + 4
            + message.peer.len();
        assert_eq!(&v2[at..at + 4], &[0, 0, 0, 0]);
        let mut v1 = v2.clone();
        v1.drain(at..at + 4);
        let old = MessageView::decode(&v1).unwrap();
        let new = MessageView::decode_kind(RecordType::MessageV2, &v2).unwrap();
        assert_eq!(old.body, new.body);
        assert_eq!(old.peer, new.peer);
        assert!(old.transport.is_empty());
        assert_eq!(
            old.recipients().map(|r| r.address).collect::<Vec<_>>(),
            new.recipients().map(|r| r.address).collect::<Vec<_>>()
        );
        let with_tls = NewMessage {
            transport: b"TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
            ..sample(&rcpts)
        };
        let mut payload = Vec::new();
        with_tls.encode(&mut payload);
        let view = MessageView::decode_kind(RecordType::MessageV2, &payload).unwrap();
        assert_eq!(view.transport, with_tls.transport);
    }

    #[test]
    fn merge_is_order_independent() {
        let states = [
            Status::Pending,
            Status::Deferred {
                attempts: 1,
                next_attempt_ms: 10,
            },
            Status::Deferred {
                attempts: 2,
                next_attempt_ms: 5,
            },
            Status::Delivered { attempts: 1 },
        ];
        for a in states {
            for b in states {
                assert_eq!(a.merge(b).rank(), b.merge(a).rank());
            }
        }
        assert!(Status::Pending
            .merge(Status::Failed { attempts: 1 })
            .is_final());
    }

    proptest::proptest! {
        /// Decoders take bytes from disk: whatever they hold, the answer is
        /// a value or an error, never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_frame(&bytes, SegmentId(1));
            let _ = MessageView::decode(&bytes).map(|m| m.recipients().count());
            let _ = Outcome::decode(&bytes);
        }

        /// Any message survives encoding and decoding unchanged.
        #[test]
        fn messages_round_trip(
            reverse_path in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            addresses in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..64), 1..8),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            attempts in 0u32..100,
        ) {
            let rcpts: Vec<_> = addresses
                .iter()
                .map(|a| NewRecipient {
                    address: a,
                    params: b"",
                    status: Status::Deferred { attempts, next_attempt_ms: 7 },
                })
                .collect();
            let msg = NewMessage { reverse_path: &reverse_path, recipients: &rcpts, body: &body, ..sample(&rcpts) };
            let mut out = Vec::new();
            encode_frame(&mut out, SegmentId(3), 9, RecordType::MessageV2, |o| msg.encode(o));
            let frame = decode_frame(&out, SegmentId(3)).unwrap();
            let view = MessageView::decode_kind(frame.kind, frame.payload).unwrap();
            proptest::prop_assert_eq!(view.reverse_path, &reverse_path[..]);
            proptest::prop_assert_eq!(view.body, &body[..]);
            let got: Vec<_> = view.recipients().map(|r| r.address.to_vec()).collect();
            proptest::prop_assert_eq!(got, addresses);
        }
    }
}
