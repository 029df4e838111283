//! Message content, sans IO: the DATA reader and the BDAT dot-stuffer.
//!
//! Both produce the *wire form* that baton stores and relays: CRLF line
//! ends, dot-stuffed (RFC 5321 §4.5.2), without the terminating `.` line.
//! The next hop gets exactly those bytes followed by `.` CRLF, so the form
//! must be unambiguous: it never contains CRLF `.` CRLF, never begins with
//! `.` CRLF, and every line ends in CRLF.
//!
//! # SMTP smuggling
//!
//! End of data is exactly CRLF `.` CRLF (§4.1.1.4); at the very start of
//! the data, `.` CRLF alone ends it, the preceding CRLF being the DATA
//! command's own. Servers that also end data on LF `.` LF, LF `.` CRLF or
//! CR `.` CR let a sender hide a second message inside the first when
//! relaying through a server that does not (CVE-2023-51764/51765/51766).
//! Bare LF and bare CR (§2.3.8) are therefore either refused
//! ([`BareLineEndings::Reject`], the default: the violation is remembered,
//! the real end is still found, then the message is refused) or turned
//! into CRLF ([`BareLineEndings::Normalize`]) without ever ending the data;
//! and since normalising `\n.\r\n` naively would *store* CRLF `.` CRLF, a
//! line that starts with `.` after a normalised line end gets one more `.`.
//!
//! # Limits
//!
//! A text line longer than `text_line_bytes_max` (1000 with its CRLF, not
//! counting the stuffing dot, §4.5.3.1.6) and a message larger than
//! `message_bytes_max` are violations too. Storing stops at the first
//! violation that will refuse the message, so memory stays bounded by
//! `message_bytes_max`, while scanning goes on to the end of the data.
//!
//! Results never depend on how the input is split into chunks: the
//! scanners keep their state between calls, including a CR waiting for
//! its LF.

use thiserror::Error;

/// What to do with a CR not followed by LF, or an LF not preceded by CR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse the message (RFC 5321 §2.3.8 forbids them).
    #[default]
    Reject,
    /// Turn each into CRLF, for legacy senders.
    Normalize,
}

/// Bounds for one message's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// One line, CRLF included, the stuffing dot not (RFC 5321 §4.5.3.1.6).
    pub text_line_bytes_max: usize,
    /// The wire form, without the terminating `.` line.
    pub message_bytes_max: u64,
    pub bare_line_endings: BareLineEndings,
}

impl BodyLimits {
    /// No limits, bare line ends normalised: for a client formatting its
    /// own content.
    pub const UNLIMITED: BodyLimits = BodyLimits {
        text_line_bytes_max: usize::MAX,
        message_bytes_max: u64::MAX,
        bare_line_endings: BareLineEndings::Normalize,
    };
}

/// Why a message is refused. When several occur, the first in this order
/// is reported: smuggling first, as it is the one that matters most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Error)]
pub enum BodyViolation {
    #[error("bare CR or LF in message")]
    BareLineEnding,
    #[error("message larger than the maximum size")]
    MessageTooBig,
    #[error("text line longer than the maximum")]
    LineTooLong,
}

/// A finished message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    /// The prefix given at the start, then the wire form (nothing more
    /// when refused).
    pub wire: Vec<u8>,
    /// Wire-form octets, counted even after storing stopped.
    pub message_bytes: u64,
    pub violation: Option<BodyViolation>,
    /// The content was dropped on the caller's word (`discard`): `wire`
    /// is empty.
    pub discarded: bool,
}

/// Appends wire form to a buffer, enforcing the limits.
#[derive(Debug)]
struct WireWriter {
    wire: Vec<u8>,
    /// The caller's prefix at the start of `wire`.
    prefix_bytes: usize,
    limits: BodyLimits,
    message_bytes: u64,
    /// Octets of the current line received so far, without line end.
    line_bytes: usize,
    bare: bool,
    too_big: bool,
    long_line: bool,
    /// The caller dropped the stored content (no memory for it): scanning
    /// goes on, storing does not.
    discarded: bool,
}

impl WireWriter {
    fn new(limits: BodyLimits, wire: Vec<u8>) -> WireWriter {
        WireWriter {
            prefix_bytes: wire.len(),
            wire,
            limits,
            message_bytes: 0,
            line_bytes: 0,
            bare: false,
            too_big: false,
            long_line: false,
            discarded: false,
        }
    }

    fn discard(&mut self) {
        self.discarded = true;
        self.wire = Vec::new();
    }

    fn violation(&self) -> Option<BodyViolation> {
        if self.bare && self.limits.bare_line_endings == BareLineEndings::Reject {
            Some(BodyViolation::BareLineEnding)
        } else if self.too_big {
            Some(BodyViolation::MessageTooBig)
        } else if self.long_line {
            Some(BodyViolation::LineTooLong)
        } else {
            None
        }
    }

    /// Received line content: counted against the line limit, stored.
    fn text(&mut self, bytes: &[u8]) {
        self.line_bytes = self.line_bytes.saturating_add(bytes.len());
        if self.line_bytes > self.limits.text_line_bytes_max.saturating_sub(2) {
            self.long_line = true;
        }
        self.store(bytes);
    }

    /// Stored as is (stuffing dots, line ends): counted in the size only.
    fn store(&mut self, bytes: &[u8]) {
        self.message_bytes = self.message_bytes.saturating_add(bytes.len() as u64);
        if self.message_bytes > self.limits.message_bytes_max {
            self.too_big = true;
        }
        if self.discarded {
            return;
        }
        if self.violation().is_none() {
            self.wire.extend_from_slice(bytes);
        } else if self.wire.len() > self.prefix_bytes {
            // Refused: what was stored is of no use; free it now rather
            // than at the end of the data.
            self.wire.truncate(self.prefix_bytes);
            self.wire.shrink_to_fit();
        }
    }

    fn line_end(&mut self) {
        self.store(b"\r\n");
        self.line_bytes = 0;
    }

    /// A bare CR or LF ended the line: remembered, stored as CRLF.
    fn bare_line_end(&mut self) {
        self.bare = true;
        self.line_end();
    }

    fn finish(self) -> Body {
        Body {
            violation: self.violation(),
            wire: self.wire,
            message_bytes: self.message_bytes,
            discarded: self.discarded,
        }
    }
}

/// Where the DATA reader stands. `after_crlf`: the previous line ended in
/// a real CRLF (or this is the start of the data), so a `.` CRLF line here
/// is the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    LineStart {
        after_crlf: bool,
    },
    /// A line began with `.`, not yet stored.
    Dot {
        after_crlf: bool,
    },
    /// A line began with `.` CR.
    DotCr {
        after_crlf: bool,
    },
    Text,
    /// A CR inside a line, waiting for its LF.
    Cr,
    Done,
}

/// Reads DATA content (already dot-stuffed by the client) up to and
/// including the final `.` CRLF.
#[derive(Debug)]
pub struct DataReader {
    out: WireWriter,
    scan: Scan,
}

impl DataReader {
    /// `wire` is a prefix the message is appended to (baton's `Received:`
    /// header); it does not count against the limits.
    pub fn new(limits: BodyLimits, wire: Vec<u8>) -> DataReader {
        DataReader {
            out: WireWriter::new(limits, wire),
            scan: Scan::LineStart { after_crlf: true },
        }
    }

    /// Scans `input`; returns how many bytes belong to the data. Fewer
    /// than `input.len()` only once the end is found: the rest is what the
    /// client sent after the data.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        while let Some(&byte) = input.get(pos) {
            match self.scan {
                Scan::Done => break,
                Scan::Text => pos += self.text(&input[pos..]),
                Scan::Cr => {
                    if byte == b'\n' {
                        self.out.line_end();
                        self.scan = Scan::LineStart { after_crlf: true };
                        pos += 1;
                    } else {
                        // The byte after a bare CR starts the next line.
                        self.out.bare_line_end();
                        self.scan = Scan::LineStart { after_crlf: false };
                    }
                }
                Scan::LineStart { after_crlf } => {
                    if byte == b'.' {
                        self.scan = Scan::Dot { after_crlf };
                        pos += 1;
                    } else {
                        self.scan = Scan::Text;
                    }
                }
                Scan::Dot { after_crlf } => pos += self.dot(after_crlf, byte),
                Scan::DotCr { after_crlf } => pos += self.dot_cr(after_crlf, byte),
            }
        }
        pos
    }

    /// Inside a line: stores up to the next CR or LF and handles it.
    fn text(&mut self, input: &[u8]) -> usize {
        // memchr2 scans with SIMD: this loop is where a relay spends its
        // time on message bodies.
        let run = memchr::memchr2(b'\r', b'\n', input).unwrap_or(input.len());
        self.out.text(&input[..run]);
        match input.get(run) {
            None => run,
            Some(b'\r') => {
                self.scan = Scan::Cr;
                run + 1
            }
            Some(_) => {
                self.out.bare_line_end();
                self.scan = Scan::LineStart { after_crlf: false };
                run + 1
            }
        }
    }

    /// After a line's leading `.`; returns the bytes consumed.
    fn dot(&mut self, after_crlf: bool, byte: u8) -> usize {
        match byte {
            b'\r' => {
                self.scan = Scan::DotCr { after_crlf };
                1
            }
            b'\n' => {
                // `.` LF is never an end. Stored as `..`: a stored line
                // must never be `.` alone.
                self.out.store(b"..");
                self.out.bare_line_end();
                self.scan = Scan::LineStart { after_crlf: false };
                1
            }
            _ => {
                // After a real CRLF the client's dot is its stuffing, kept
                // as is; after a normalised line end the client did not
                // see a line start, so baton stuffs.
                self.out.store(if after_crlf { b"." } else { b".." });
                self.scan = Scan::Text;
                0
            }
        }
    }

    /// After a line's leading `.` CR; returns the bytes consumed.
    fn dot_cr(&mut self, after_crlf: bool, byte: u8) -> usize {
        if byte == b'\n' {
            if after_crlf {
                self.scan = Scan::Done;
            } else {
                // LF `.` CRLF or CR `.` CRLF: the smuggling case. Stored as
                // the text line `.`, stuffed.
                self.out.store(b"..");
                self.out.line_end();
                self.scan = Scan::LineStart { after_crlf: true };
            }
            1
        } else {
            // `.` CR then something else: the CR is bare.
            self.out.store(b"..");
            self.out.bare_line_end();
            self.scan = Scan::LineStart { after_crlf: false };
            0
        }
    }

    /// Whether the final `.` CRLF has been read.
    pub fn is_done(&self) -> bool {
        self.scan == Scan::Done
    }

    /// Bytes of memory the stored content takes (the buffer's capacity).
    pub fn held_bytes(&self) -> usize {
        self.out.wire.capacity()
    }

    /// Drops what was stored and stores nothing more, while the input is
    /// still scanned to its end: the caller has no memory for it.
    pub fn discard(&mut self) {
        self.out.discard();
    }

    /// Whether [`discard`](Self::discard) was called.
    pub fn is_discarded(&self) -> bool {
        self.out.discarded
    }

    /// The violation that will refuse the message, if one occurred so far.
    pub fn violation(&self) -> Option<BodyViolation> {
        self.out.violation()
    }

    /// The message, meaningful once [`is_done`](Self::is_done).
    pub fn finish(self) -> Body {
        self.out.finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StuffScan {
    LineStart,
    Text,
    Cr,
}

/// Turns raw content (BDAT chunks, RFC 3030, or a client's message) into
/// wire form: dot-stuffs, checks line ends and limits like [`DataReader`].
#[derive(Debug)]
pub struct DotStuffer {
    out: WireWriter,
    scan: StuffScan,
}

impl DotStuffer {
    /// `wire` is a prefix that does not count against the limits.
    pub fn new(limits: BodyLimits, wire: Vec<u8>) -> DotStuffer {
        DotStuffer {
            out: WireWriter::new(limits, wire),
            scan: StuffScan::LineStart,
        }
    }

    /// Takes all of `raw`.
    pub fn feed(&mut self, raw: &[u8]) {
        let mut pos = 0;
        while let Some(&byte) = raw.get(pos) {
            match self.scan {
                StuffScan::LineStart => {
                    if byte == b'.' {
                        self.out.store(b".");
                    }
                    self.scan = StuffScan::Text;
                }
                StuffScan::Text => {
                    let run = memchr::memchr2(b'\r', b'\n', &raw[pos..]).unwrap_or(raw.len() - pos);
                    self.out.text(&raw[pos..pos + run]);
                    pos += run;
                    match raw.get(pos) {
                        None => {}
                        Some(b'\r') => self.scan = StuffScan::Cr,
                        Some(_) => {
                            self.out.bare_line_end();
                            self.scan = StuffScan::LineStart;
                        }
                    }
                    pos += usize::from(pos < raw.len());
                }
                StuffScan::Cr => {
                    if byte == b'\n' {
                        self.out.line_end();
                        pos += 1;
                    } else {
                        self.out.bare_line_end();
                    }
                    self.scan = StuffScan::LineStart;
                }
            }
        }
    }

    /// Wire-form octets so far.
    pub fn message_bytes(&self) -> u64 {
        self.out.message_bytes
    }

    /// Bytes of memory the stored content takes (the buffer's capacity).
    pub fn held_bytes(&self) -> usize {
        self.out.wire.capacity()
    }

    /// Drops what was stored and stores nothing more, while the input is
    /// still scanned to its end: the caller has no memory for it.
    pub fn discard(&mut self) {
        self.out.discard();
    }

    /// Whether [`discard`](Self::discard) was called.
    pub fn is_discarded(&self) -> bool {
        self.out.discarded
    }

    /// The violation that will refuse the message, if one occurred so far.
    /// (A CR at the very end of what was fed is judged by the next byte.)
    pub fn violation(&self) -> Option<BodyViolation> {
        self.out.violation()
    }

    /// Ends the content: a CR left waiting is bare, and an unterminated
    /// last line gets its CRLF, so the wire form ends in CRLF like DATA's.
    pub fn finish(mut self) -> Body {
        match self.scan {
            StuffScan::LineStart => {}
            StuffScan::Text => self.out.line_end(),
            StuffScan::Cr => self.out.bare_line_end(),
        }
        self.out.finish()
    }
}

/// Raw content to wire form, bare line ends normalised, no limits: for a
/// client about to send `DATA`. Append `.` CRLF to end it.
pub fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    if is_wire_form(raw) {
        // Nothing to stuff or mend, the common case: one copy.
        return raw.to_vec();
    }
    let mut stuffer = DotStuffer::new(BodyLimits::UNLIMITED, Vec::with_capacity(raw.len() + 2));
    stuffer.feed(raw);
    stuffer.finish().wire
}

/// Whether `raw` is already its own wire form: every line ends in CRLF,
/// and none starts with a dot.
fn is_wire_form(raw: &[u8]) -> bool {
    if !raw.ends_with(b"\r\n") || raw.first() == Some(&b'.') {
        return false;
    }
    memchr::memchr2_iter(b'\r', b'\n', raw).all(|at| match raw[at] {
        b'\r' => raw.get(at + 1) == Some(&b'\n'),
        _ => at > 0 && raw[at - 1] == b'\r' && raw.get(at + 1) != Some(&b'.'),
    })
}

/// Wire form back to content: removes the first `.` of each line that
/// starts with one (RFC 5321 §4.5.2).
pub fn dot_unstuff(wire: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(wire.len());
    let mut line_start = true;
    for &byte in wire {
        if !(line_start && byte == b'.') {
            raw.push(byte);
        }
        line_start = byte == b'\n';
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REJECT: BodyLimits = BodyLimits {
        text_line_bytes_max: 1000,
        message_bytes_max: 10_000,
        bare_line_endings: BareLineEndings::Reject,
    };
    const NORMALIZE: BodyLimits = BodyLimits {
        bare_line_endings: BareLineEndings::Normalize,
        ..REJECT
    };

    /// (bytes consumed, done, body) after feeding `chunks` in turn.
    fn read_chunks(limits: BodyLimits, chunks: &[&[u8]]) -> (usize, bool, Body) {
        let mut reader = DataReader::new(limits, Vec::new());
        let mut used = 0;
        for chunk in chunks {
            if reader.is_done() {
                break;
            }
            used += reader.feed(chunk);
        }
        let done = reader.is_done();
        (used, done, reader.finish())
    }

    fn read(limits: BodyLimits, input: &[u8]) -> (usize, bool, Body) {
        read_chunks(limits, &[input])
    }

    fn stuff_chunks(limits: BodyLimits, chunks: &[&[u8]]) -> Body {
        let mut stuffer = DotStuffer::new(limits, Vec::new());
        for chunk in chunks {
            stuffer.feed(chunk);
        }
        stuffer.finish()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// Every CR is followed by LF and every LF preceded by CR.
    fn only_crlf(wire: &[u8]) -> bool {
        wire.iter().enumerate().all(|(i, &byte)| match byte {
            b'\r' => wire.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && wire[i - 1] == b'\r',
            _ => true,
        })
    }

    /// What a strict reader stores: no bare line end can make a stored
    /// line `.` alone, nor a dot-led line that unstuffs differently.
    fn unambiguous(wire: &[u8]) -> bool {
        !contains(wire, b"\r\n.\r\n") && !wire.starts_with(b".\r\n") && only_crlf(wire)
    }

    #[test]
    fn reads_to_the_end_and_keeps_the_rest() {
        let input = b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (used, done, body) = read(REJECT, input);
        assert!(done);
        assert_eq!(used, input.len() - 6);
        assert_eq!(body.wire, b"Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(body.violation, None);
        assert_eq!(body.message_bytes, 22);
    }

    #[test]
    fn dot_alone_at_the_start_ends_an_empty_message() {
        let (used, done, body) = read(REJECT, b".\r\nNOOP\r\n");
        assert!(done);
        assert_eq!(used, 3);
        assert_eq!(body.wire, b"");
    }

    #[test]
    fn keeps_the_wire_form() {
        let (_, done, body) = read(REJECT, b"..hidden\r\n.x\r\n\r\n.\r\n");
        assert!(done);
        assert_eq!(body.wire, b"..hidden\r\n.x\r\n\r\n");
    }

    #[test]
    fn waits_for_the_end() {
        let (used, done, _) = read(REJECT, b"abc\r\n.");
        assert!(!done);
        assert_eq!(used, 6);
        let (_, done, _) = read_chunks(REJECT, &[b"abc\r", b"\n", b".", b"\r", b"\n"]);
        assert!(done);
    }

    #[test]
    fn prefix_is_kept_and_not_counted() {
        let limits = BodyLimits {
            message_bytes_max: 5,
            ..REJECT
        };
        let mut reader = DataReader::new(limits, b"Received: x\r\n".to_vec());
        reader.feed(b"abc\r\n.\r\n");
        let body = reader.finish();
        assert_eq!(body.violation, None);
        assert_eq!(body.wire, b"Received: x\r\nabc\r\n");
    }

    /// Each smuggling variant from the SEC Consult write-up: none ends the
    /// data, so the "second message" stays content.
    const SMUGGLING: [&[u8]; 6] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
    ];

    fn smuggled(variant: &[u8]) -> Vec<u8> {
        let mut input = b"Subject: first\r\n\r\nfirst".to_vec();
        input.extend_from_slice(variant);
        input.extend_from_slice(b"MAIL FROM:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n");
        input.extend_from_slice(b"Subject: second\r\n\r\n.\r\n");
        input
    }

    #[test]
    fn smuggling_is_refused_under_reject() {
        for variant in SMUGGLING {
            let input = smuggled(variant);
            let (used, done, body) = read(REJECT, &input);
            assert!(done, "{variant:?}");
            assert_eq!(used, input.len(), "{variant:?}");
            assert_eq!(
                body.violation,
                Some(BodyViolation::BareLineEnding),
                "{variant:?}"
            );
        }
    }

    #[test]
    fn smuggling_is_defused_under_normalize() {
        for variant in SMUGGLING {
            let input = smuggled(variant);
            let (used, done, body) = read(NORMALIZE, &input);
            assert!(done, "{variant:?}");
            assert_eq!(used, input.len(), "{variant:?}");
            assert_eq!(body.violation, None, "{variant:?}");
            assert!(unambiguous(&body.wire), "{variant:?}: {:?}", body.wire);
        }
        let (_, _, body) = read(NORMALIZE, b"a\n.\nb\r.\r\n.c\n.d\r\n.\r\n");
        assert_eq!(body.wire, b"a\r\n..\r\nb\r\n..\r\n.c\r\n..d\r\n");
    }

    #[test]
    fn line_length() {
        let line = |len: usize| [vec![b'x'; len], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(read(REJECT, &line(998)).2.violation, None);
        assert_eq!(
            read(REJECT, &line(999)).2.violation,
            Some(BodyViolation::LineTooLong)
        );
        // The stuffing dot does not count.
        let dotted = [b".".to_vec(), line(998)].concat();
        assert_eq!(read(REJECT, &dotted).2.violation, None);
        let split: Vec<&[u8]> = vec![b"xxxxx"; 200];
        let (_, _, body) = read_chunks(REJECT, &split);
        assert_eq!(body.violation, Some(BodyViolation::LineTooLong));
    }

    #[test]
    fn size_limit_stops_storing() {
        let limits = BodyLimits {
            message_bytes_max: 10,
            ..REJECT
        };
        let (used, done, body) = read(limits, b"0123456789\r\nmore\r\n.\r\nNOOP");
        assert!(done);
        assert_eq!(used, 21);
        assert_eq!(body.violation, Some(BodyViolation::MessageTooBig));
        assert_eq!(body.wire, b"");
        assert_eq!(body.message_bytes, 18);
        let (_, _, body) = read(limits, b"012345678\r\n.\r\n");
        assert_eq!(body.violation, Some(BodyViolation::MessageTooBig));
        let (_, _, body) = read(limits, b"01234567\r\n.\r\n");
        assert_eq!(body.violation, None);
    }

    #[test]
    fn smuggling_is_reported_before_size() {
        let limits = BodyLimits {
            message_bytes_max: 3,
            ..REJECT
        };
        let (_, _, body) = read(limits, b"0123456789\n\r\n.\r\n");
        assert_eq!(body.violation, Some(BodyViolation::BareLineEnding));
    }

    #[test]
    fn stuffer_stuffs_and_terminates() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n.\r\n"), b"a\r\n..b\r\n..\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n");
        assert_eq!(dot_stuff(b"abc"), b"abc\r\n");
        assert_eq!(dot_stuff(b""), b"");
        assert_eq!(dot_stuff(b"a\nb\rc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(dot_unstuff(b"a\r\n..b\r\n..\r\n"), b"a\r\n.b\r\n.\r\n");
    }

    #[test]
    fn stuffer_checks_like_data() {
        let body = stuff_chunks(REJECT, &[b"a\nb\r\n"]);
        assert_eq!(body.violation, Some(BodyViolation::BareLineEnding));
        // A CR at a chunk's end waits for the next chunk.
        let body = stuff_chunks(REJECT, &[b"a\r", b"\nb\r\n"]);
        assert_eq!(body.violation, None);
        assert_eq!(body.wire, b"a\r\nb\r\n");
        let body = stuff_chunks(REJECT, &[b"a\r"]);
        assert_eq!(body.violation, Some(BodyViolation::BareLineEnding));
        let body = stuff_chunks(REJECT, &[&[b'x'; 999], b"\r\n"]);
        assert_eq!(body.violation, Some(BodyViolation::LineTooLong));
        let limits = BodyLimits {
            message_bytes_max: 4,
            ..REJECT
        };
        assert_eq!(stuff_chunks(limits, &[b"ab\r\n"]).violation, None);
        let body = stuff_chunks(limits, &[b".b\r\n"]);
        assert_eq!(body.violation, Some(BodyViolation::MessageTooBig));
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => Just(b'a'),
            3 => Just(b'.'),
            3 => Just(b'\r'),
            3 => Just(b'\n'),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..120)
    }

    /// Cuts `input` at the given points.
    fn split<'a>(input: &'a [u8], cuts: &[proptest::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&input[start..point]);
            start = point;
        }
        chunks.push(&input[start..]);
        chunks
    }

    fn limits(normalize: bool, line: usize, size: u64) -> BodyLimits {
        BodyLimits {
            text_line_bytes_max: line,
            message_bytes_max: size,
            bare_line_endings: if normalize {
                BareLineEndings::Normalize
            } else {
                BareLineEndings::Reject
            },
        }
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(
            input in bytes(),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
            normalize: bool,
            line in 3usize..40,
            size in 0u64..150,
        ) {
            let limits = limits(normalize, line, size);
            let whole = read(limits, &input);
            prop_assert_eq!(&read_chunks(limits, &split(&input, &cuts)), &whole);
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&read_chunks(limits, &bytewise), &whole);
            let stuffed = stuff_chunks(limits, &[&input]);
            prop_assert_eq!(&stuff_chunks(limits, &split(&input, &cuts)), &stuffed);
            prop_assert_eq!(&stuff_chunks(limits, &bytewise), &stuffed);
        }

        #[test]
        fn ends_exactly_at_the_first_crlf_dot_crlf(input in bytes(), normalize: bool) {
            let framed = [b"\r\n".as_slice(), &input].concat();
            let expected = framed
                .windows(5)
                .position(|window| window == b"\r\n.\r\n")
                .map(|at| at + 5 - 2);
            let (used, done, _) = read(limits(normalize, 1000, 10_000), &input);
            prop_assert_eq!(done, expected.is_some());
            prop_assert_eq!(used, expected.unwrap_or(input.len()));
        }

        #[test]
        fn normalized_wire_is_unambiguous(input in bytes(), tail in bytes()) {
            let (_, _, body) = read(NORMALIZE, &[input.as_slice(), b"\r\n.\r\n", &tail].concat());
            prop_assert!(unambiguous(&body.wire), "{:?}", body.wire);
            let stuffed = stuff_chunks(NORMALIZE, &[&input]);
            prop_assert!(unambiguous(&stuffed.wire), "{:?}", stuffed.wire);
        }

        #[test]
        fn dot_stuff_takes_its_shortcut_only_when_the_stuffer_agrees(input in bytes()) {
            let mut stuffer = DotStuffer::new(BodyLimits::UNLIMITED, Vec::new());
            stuffer.feed(&input);
            prop_assert_eq!(dot_stuff(&input), stuffer.finish().wire);
        }

        #[test]
        fn clean_input_is_stored_as_sent(lines in proptest::collection::vec("[a-z. ]{0,20}", 0..10)) {
            let raw: Vec<u8> = lines.iter().flat_map(|line| [line.as_bytes(), b"\r\n"].concat()).collect();
            let wire = dot_stuff(&raw);
            prop_assert_eq!(dot_unstuff(&wire), raw.clone());
            for limits in [REJECT, NORMALIZE] {
                let (used, done, body) = read(limits, &[wire.as_slice(), b".\r\n"].concat());
                prop_assert!(done);
                prop_assert_eq!(used, wire.len() + 3);
                prop_assert_eq!(&body.wire, &wire);
                prop_assert_eq!(body.violation, None);
                prop_assert_eq!(&stuff_chunks(limits, &[&raw]).wire, &wire);
            }
        }
    }
}
