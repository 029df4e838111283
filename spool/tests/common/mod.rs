//! Helpers shared by the spool's integration tests: message, recipient,
//! outcome and config builders, a fake clock, seeded PRNGs, the status
//! merge the spool promises, and read-back checks.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use baton_spool::{
    Clock, MessageView, NewMessage, NewRecipient, Outcome, QueueId, Recovered, SpoolConfig, Status,
};

/// Time for the spool, moved by hand.
#[derive(Clone, Default)]
pub struct FakeClock(pub Arc<AtomicU64>);

impl FakeClock {
    /// A clock that reads `ms` until moved.
    pub fn at(ms: u64) -> FakeClock {
        let clock = FakeClock::default();
        clock.0.store(ms, Ordering::SeqCst);
        clock
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// SplitMix64: small, seeded, the same run after run.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next() % (hi - lo)
    }

    /// A byte to XOR with: never zero, so every flip changes the byte.
    pub fn flip(&mut self) -> u8 {
        self.range(1, 256) as u8
    }
}

/// xorshift64*: small, seeded, reproducible.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A spool config on `dir` with segments of `segment_bytes`.
pub fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir);
    config.segment_bytes = segment_bytes;
    config
}

/// A message from `sender@example.com` with no parameters, from
/// `127.0.0.1:1`; tests that need other envelope fields override them.
pub fn message<'a>(
    id: u64,
    arrival_ms: u64,
    rcpts: &'a [NewRecipient<'a>],
    body: &'a [u8],
) -> NewMessage<'a> {
    NewMessage {
        queue_id: QueueId(id),
        arrival_ms,
        reverse_path: b"sender@example.com",
        mail_params: b"",
        identity: b"",
        peer: b"127.0.0.1:1",
        transport: b"",
        recipients: rcpts,
        body,
    }
}

/// A pending recipient without parameters.
pub fn recipient(address: &[u8]) -> NewRecipient<'_> {
    NewRecipient {
        address,
        params: b"",
        status: Status::Pending,
    }
}

/// A pending recipient without parameters for each address.
pub fn pending_recipients(addresses: &[Vec<u8>]) -> Vec<NewRecipient<'_>> {
    addresses.iter().map(|a| recipient(a)).collect()
}

/// `r0@example.org`, `r1@example.org`, ...
pub fn addresses(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("r{i}@example.org").into_bytes())
        .collect()
}

/// `rcpt0.<id>@<domain>`, `rcpt1.<id>@<domain>`, ...
pub fn numbered_addresses(id: u64, count: u32, domain: &str) -> Vec<Vec<u8>> {
    (0..count)
        .map(|r| format!("rcpt{r}.{id}@{domain}").into_bytes())
        .collect()
}

pub fn outcome<'a>(
    id: u64,
    rcpt: u32,
    status: Status,
    time_ms: u64,
    reply: &'a [u8],
) -> Outcome<'a> {
    Outcome {
        queue_id: QueueId(id),
        recipient: rcpt,
        status,
        time_ms,
        reply,
    }
}

/// A body of `len` bytes drawn from the queue id.
pub fn patterned_body(queue_id: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((queue_id * 131 + i) % 251) as u8)
        .collect()
}

/// The order in which statuses win; mirrors `Status::merge`.
pub fn rank(status: Status) -> (u8, u32, u64) {
    match status {
        Status::Pending => (0, 0, 0),
        Status::Deferred {
            attempts,
            next_attempt_ms,
        } => (1, attempts, next_attempt_ms),
        Status::Delivered { .. } | Status::Failed { .. } | Status::Removed => (2, 0, 0),
    }
}

pub fn merge(old: Status, new: Status) -> Status {
    if rank(new) > rank(old) {
        new
    } else {
        old
    }
}

/// The recipients not final, by queue id and recipient index.
pub fn unfinished<'a>(
    messages: impl IntoIterator<Item = (u64, &'a [Status])>,
) -> BTreeMap<(u64, u32), Status> {
    messages
        .into_iter()
        .flat_map(|(id, statuses)| {
            statuses
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_final())
                .map(move |(i, &s)| ((id, i as u32), s))
        })
        .collect()
}

/// What recovery found pending, by queue id and recipient index; fails
/// with `twice` if a recipient is listed twice.
pub fn pending_statuses(recovered: &Recovered, twice: &str) -> BTreeMap<(u64, u32), Status> {
    let got: BTreeMap<(u64, u32), Status> = recovered
        .pending
        .iter()
        .map(|p| ((p.queue_id.0, p.recipient), p.status))
        .collect();
    assert_eq!(got.len(), recovered.pending.len(), "{twice}");
    got
}

/// A message record is message `id` with exactly this body and these
/// recipient addresses.
pub fn assert_message(view: &MessageView<'_>, id: u64, body: &[u8], addresses: &[Vec<u8>]) {
    assert_eq!(view.queue_id, QueueId(id));
    assert!(view.body == body, "message {id}: the body differs");
    let got: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
    let expected: Vec<&[u8]> = addresses.iter().map(Vec::as_slice).collect();
    assert_eq!(got, expected, "message {id}");
}

/// Segment files by the id in their header (bytes 16..24); spares and
/// temporary files left out.
pub fn segment_paths(dir: &Path) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".seg") || name.starts_with("spare-") || name.starts_with("tmp-") {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        out.insert(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), path);
    }
    out
}
