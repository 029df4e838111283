//! The suppression list: addresses baton must not mail, each in a scope
//! (everyone's mail, one sender domain's, or one authenticated user's),
//! with why and since when.
//!
//! # Storage
//!
//! One redb table in `<spool>/suppression.redb` (or `[suppression] path`).
//! redb keeps it as a copy-on-write B-tree in one file: tens of millions
//! of entries stay on disk, only the pages a lookup touches are cached,
//! and a commit is atomic and durable, so the list survives `kill -9`.
//!
//! - Key: `address NUL scope`. The address is lowercased whole, local part
//!   included: RFC 5321 lets a host tell `Bob@` from `bob@`, but mailbox
//!   providers do not, and the cost of the other choice is mailing an
//!   address known to bounce because a client capitalised it. The scope is
//!   `global`, `domain:<sender domain, lowercased>` or `user:<name>`.
//!   The address first means one B-tree descent finds every scope of a
//!   recipient, and a listing comes out sorted by address.
//! - Value: the time added (unix ms, 8 bytes little-endian), the source
//!   (one byte) and the reason (UTF-8).
//!
//! # Threads
//!
//! Lookups happen on the shards, at `RCPT`, through a [`Reader`] each: it
//! keeps one read transaction open and takes a fresh one only when the
//! writer has committed since (a generation counter), so a lookup is a
//! B-tree search and no lock. redb allows one write transaction at a
//! time, so every change goes through one writer thread, fed by a
//! channel: shards never wait on a write (a bounce's addition is dropped
//! when the channel is full, and comes back with the next bounce), and the
//! writer commits what queued up meanwhile in one transaction.
//!
//! In front of redb sits an in-memory Bloom filter of the listed
//! addresses ([`AddressFilter`]), built by the writer when the list opens
//! and kept up by it: a recipient the filter has never seen is answered
//! without touching redb, which is almost every recipient.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use arc_swap::ArcSwapOption;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::filter::AddressFilter;
use crate::log_limit::LogLimit;

/// The one table: `address NUL scope` to `time, source, reason`.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("suppression");
/// Changes waiting for the writer: bounces arrive in bursts when a list
/// is mailed, and this absorbs a few seconds of them at thousands a
/// second while a commit syncs.
pub const WRITES_QUEUED_MAX: usize = 16_384;
/// Changes committed in one transaction at most, so a burst does not make
/// one huge commit that keeps readers on an old snapshot for long.
const OPS_PER_COMMIT_MAX: usize = 1024;
/// Rows per write transaction in an import: bounds the memory redb holds
/// for an uncommitted transaction.
pub const IMPORT_ROWS_PER_COMMIT: usize = 100_000;
/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets.
const ADDRESS_BYTES_MAX: usize = 256;
/// Reasons are for operators; longer text is cut.
const REASON_BYTES_MAX: usize = 512;
/// Scopes name a domain (255 octets) or a user name, with a prefix.
const SCOPE_BYTES_MAX: usize = 300;

/// The scope that applies to every sender.
pub const GLOBAL: &str = "global";

/// Who put an address on the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A hard bounce: no such mailbox or domain.
    Bounce,
    /// `baton suppression add` or `POST /suppression`.
    Operator,
    /// A one-click unsubscribe (RFC 8058).
    Unsubscribe,
    /// `baton suppression import`.
    Import,
}

impl Source {
    fn byte(self) -> u8 {
        match self {
            Source::Bounce => 1,
            Source::Operator => 2,
            Source::Unsubscribe => 3,
            Source::Import => 4,
        }
    }

    fn from_byte(byte: u8) -> Source {
        match byte {
            1 => Source::Bounce,
            3 => Source::Unsubscribe,
            4 => Source::Import,
            _ => Source::Operator,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bounce => "bounce",
            Source::Operator => "operator",
            Source::Unsubscribe => "unsubscribe",
            Source::Import => "import",
        }
    }

    fn parse(text: &str) -> Option<Source> {
        Some(match text {
            "bounce" => Source::Bounce,
            "operator" => Source::Operator,
            "unsubscribe" => Source::Unsubscribe,
            "import" => Source::Import,
            _ => return None,
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One suppressed address in one scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Lowercased ([`normalize_address`]).
    pub address: String,
    /// `global`, `domain:<domain>` or `user:<name>` ([`normalize_scope`]).
    pub scope: String,
    pub reason: String,
    /// When it was added, unix milliseconds.
    pub time_ms: u64,
    pub source: Source,
}

impl Entry {
    /// An entry with its address and scope checked and normalised, and
    /// its reason made one line.
    pub fn new(
        address: &str,
        scope: &str,
        reason: &str,
        time_ms: u64,
        source: Source,
    ) -> Result<Entry, String> {
        Ok(Entry {
            address: normalize_address(address)?,
            scope: normalize_scope(scope)?,
            reason: clean_reason(reason),
            time_ms,
            source,
        })
    }
}

/// The address as the list keys it: lowercased whole (see the module's
/// notes), checked to look like `local@domain`.
pub fn normalize_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address);
    let ok = address.len() <= ADDRESS_BYTES_MAX
        && address
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(format!("{address:?} is not an address (local@domain)"));
    }
    let mut key = Vec::with_capacity(address.len());
    push_lowercase(&mut key, address.as_bytes());
    String::from_utf8(key).map_err(|_| format!("{address:?} is not UTF-8"))
}

/// `global`, `domain:<domain>` (lowercased) or `user:<name>`.
pub fn normalize_scope(scope: &str) -> Result<String, String> {
    let scope = scope.trim();
    let bad =
        || format!("{scope:?} is not a scope (global, domain:<sender domain> or user:<AUTH user>)");
    if scope.len() > SCOPE_BYTES_MAX || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    if scope.is_empty() || scope.eq_ignore_ascii_case(GLOBAL) {
        return Ok(GLOBAL.to_owned());
    }
    match scope.split_once(':') {
        Some((kind, domain)) if kind.eq_ignore_ascii_case("domain") && !domain.is_empty() => {
            Ok(format!("domain:{}", domain.to_lowercase()))
        }
        Some((kind, user)) if kind.eq_ignore_ascii_case("user") && !user.is_empty() => {
            Ok(format!("user:{user}"))
        }
        _ => Err(bad()),
    }
}

/// One line, bounded: reasons end up in CSV rows and log lines.
fn clean_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.trim().to_owned()
}

/// Appends `text` lowercased. ASCII (nearly every address) without an
/// allocation; UTF-8 (SMTPUTF8) with Unicode's lowercase, which agrees
/// with ASCII's on ASCII, so both paths key an address alike.
fn push_lowercase(out: &mut Vec<u8>, text: &[u8]) {
    if text.is_ascii() {
        out.extend(text.iter().map(u8::to_ascii_lowercase));
    } else {
        out.extend_from_slice(String::from_utf8_lossy(text).to_lowercase().as_bytes());
    }
}

fn key(address: &str, scope: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(address.len() + 1 + scope.len());
    key.extend_from_slice(address.as_bytes());
    key.push(0);
    key.extend_from_slice(scope.as_bytes());
    key
}

fn value(entry: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + entry.reason.len());
    value.extend_from_slice(&entry.time_ms.to_le_bytes());
    value.push(entry.source.byte());
    value.extend_from_slice(entry.reason.as_bytes());
    value
}

fn decode(key: &[u8], value: &[u8]) -> Option<Entry> {
    let nul = key.iter().position(|&b| b == 0)?;
    let (time, rest) = value.split_first_chunk::<8>()?;
    let (&source, reason) = rest.split_first()?;
    Some(Entry {
        address: String::from_utf8_lossy(&key[..nul]).into_owned(),
        scope: String::from_utf8_lossy(&key[nul + 1..]).into_owned(),
        reason: String::from_utf8_lossy(reason).into_owned(),
        time_ms: u64::from_le_bytes(*time),
        source: Source::from_byte(source),
    })
}

/// Told of every change once it is committed: `true` for an addition.
/// The server writes them to the event log.
pub type Notify = Box<dyn Fn(&Entry, bool, Origin) + Send>;

/// Where a change to the list came from: this node, or another node of the
/// cluster (`crate::cluster`), whose changes are not shared again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Here,
    Replicated,
}

type Reply<T> = Sender<Result<T, String>>;

enum Op {
    /// Add entries; `replace`: overwrite an entry of the same address and
    /// scope (an operator's word), else keep it (a repeated bounce does
    /// not renew it, nor overwrite an operator's reason).
    Add {
        entries: Vec<Entry>,
        replace: bool,
        origin: Origin,
        reply: Option<Reply<usize>>,
    },
    /// Remove an address from one scope, or from all.
    Remove {
        address: String,
        scope: Option<String>,
        origin: Origin,
        reply: Reply<Vec<Entry>>,
    },
}

/// The open list: its database, and the writer thread's channel.
pub struct SuppressionList {
    db: Arc<Database>,
    /// Bumped after every commit; readers compare it with theirs.
    generation: Arc<AtomicU64>,
    /// None until the writer has built it at open: lookups go to redb.
    filter: Arc<ArcSwapOption<AddressFilter>>,
    ops: Option<Sender<Op>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Bounce additions lost to a full channel.
    dropped: AtomicU64,
}

impl SuppressionList {
    /// Opens (or creates) the list at `path` and starts its writer.
    pub fn open(path: &Path, notify: Notify) -> Result<SuppressionList, String> {
        let failed = |err: &dyn fmt::Display| format!("suppression list {}: {err}", path.display());
        let db = Database::create(path).map_err(|e| failed(&e))?;
        // The table exists from the start, so readers need not tell "no
        // table" from "not listed".
        let txn = db.begin_write().map_err(|e| failed(&e))?;
        txn.open_table(TABLE).map_err(|e| failed(&e))?;
        txn.commit().map_err(|e| failed(&e))?;
        let db = Arc::new(db);
        let generation = Arc::new(AtomicU64::new(1));
        let filter = Arc::new(ArcSwapOption::empty());
        let (ops, inbox) = crossbeam_channel::bounded(WRITES_QUEUED_MAX);
        let writer = thread::Builder::new()
            .name("suppression".into())
            .spawn({
                let db = db.clone();
                let generation = generation.clone();
                let filter = filter.clone();
                move || {
                    rebuild_filter(&db, &filter);
                    write_loop(&db, &generation, &filter, &inbox, &notify);
                }
            })
            .map_err(|e| failed(&e))?;
        Ok(SuppressionList {
            db,
            generation,
            filter,
            ops: Some(ops),
            writer: Mutex::new(Some(writer)),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether the filter in front of redb is built (it is, soon after
    /// open, unless reading the list failed).
    pub fn filter_built(&self) -> bool {
        self.filter.load().is_some()
    }

    /// A reader for one shard.
    pub fn reader(&self) -> Reader {
        Reader {
            db: self.db.clone(),
            generation: self.generation.clone(),
            filter: self.filter.clone(),
            seen: 0,
            table: None,
            key: Vec::with_capacity(128),
            hit_scope: Vec::with_capacity(64),
            hit_value: Vec::with_capacity(128),
            errors: LogLimit::default(),
        }
    }

    fn send(&self, op: Op) -> Result<(), String> {
        self.ops
            .as_ref()
            .and_then(|ops| ops.send(op).ok())
            .ok_or_else(|| "the suppression list's writer has stopped".to_owned())
    }

    /// Adds (or replaces) entries, durably; waits for the commit. How many
    /// were written.
    pub fn add(&self, entries: Vec<Entry>) -> Result<usize, String> {
        self.add_from(entries, Origin::Here)
    }

    /// [`SuppressionList::add`] for changes from `origin`.
    pub fn add_from(&self, entries: Vec<Entry>, origin: Origin) -> Result<usize, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(Op::Add {
            entries,
            replace: true,
            origin,
            reply: Some(reply),
        })?;
        answer
            .recv()
            .map_err(|_| "no answer from the writer".to_owned())?
    }

    /// Adds an entry unless the address is already listed in that scope,
    /// without waiting: for a shard. `false` when the writer is too far
    /// behind and the entry was dropped.
    pub fn add_soon(&self, entry: Entry) -> bool {
        let Some(ops) = &self.ops else {
            return false;
        };
        let op = Op::Add {
            entries: vec![entry],
            replace: false,
            origin: Origin::Here,
            reply: None,
        };
        match ops.try_send(op) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Additions [`SuppressionList::add_soon`] dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Removes `address` from `scope`, or from every scope; waits for the
    /// commit. The entries removed.
    pub fn remove(&self, address: &str, scope: Option<&str>) -> Result<Vec<Entry>, String> {
        self.remove_from(address, scope, Origin::Here)
    }

    /// [`SuppressionList::remove`] for changes from `origin`.
    pub fn remove_from(
        &self,
        address: &str,
        scope: Option<&str>,
        origin: Origin,
    ) -> Result<Vec<Entry>, String> {
        let address = normalize_address(address)?;
        let scope = scope.map(normalize_scope).transpose()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(Op::Remove {
            address,
            scope,
            origin,
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| "no answer from the writer".to_owned())?
    }

    /// Every scope `address` is listed in.
    pub fn show(&self, address: &str) -> Result<Vec<Entry>, String> {
        let address = normalize_address(address)?;
        let table = self.table()?;
        let (low, high) = prefix_bounds(address.as_bytes());
        let range = table
            .range(low.as_slice()..high.as_slice())
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for row in range {
            let (k, v) = row.map_err(|e| e.to_string())?;
            entries.extend(decode(k.value(), v.value()));
        }
        Ok(entries)
    }

    /// Up to `limit` entries in key order, after `after` (an address and a
    /// scope); and whether more follow.
    pub fn page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), String> {
        let table = self.table()?;
        let start = after.map(|(address, scope)| key(address, scope));
        let range = match &start {
            Some(start) => table.range((
                std::ops::Bound::Excluded(start.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range(..),
        }
        .map_err(|e| e.to_string())?;
        let mut entries = Vec::with_capacity(limit.min(1024));
        for row in range {
            let (k, v) = row.map_err(|e| e.to_string())?;
            if entries.len() == limit {
                return Ok((entries, true));
            }
            entries.extend(decode(k.value(), v.value()));
        }
        Ok((entries, false))
    }

    /// Entries on the list.
    pub fn len(&self) -> Result<u64, String> {
        self.table()?.len().map_err(|e| e.to_string())
    }

    pub fn is_empty(&self) -> Result<bool, String> {
        Ok(self.len()? == 0)
    }

    /// Writes the whole list as CSV ([`CSV_HEADER`], then a row per entry,
    /// in address order), from one snapshot. Rows written.
    pub fn export(&self, out: &mut dyn Write) -> io::Result<u64> {
        let table = self.table().map_err(io::Error::other)?;
        out.write_all(CSV_HEADER.as_bytes())?;
        out.write_all(b"\n")?;
        let mut rows = 0;
        let mut line = String::with_capacity(256);
        for row in table.range(..).map_err(io::Error::other)? {
            let (k, v) = row.map_err(io::Error::other)?;
            if let Some(entry) = decode(k.value(), v.value()) {
                line.clear();
                csv_row(&mut line, &entry);
                out.write_all(line.as_bytes())?;
                rows += 1;
            }
        }
        Ok(rows)
    }

    fn table(&self) -> Result<ReadOnlyTable<&'static [u8], &'static [u8]>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        txn.open_table(TABLE).map_err(|e| e.to_string())
    }
}

impl Drop for SuppressionList {
    /// Closes the channel and waits for the writer to commit what it has.
    fn drop(&mut self) {
        self.ops = None;
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

/// The keys of every scope of `address`: from `address NUL` up to, not
/// including, `address 0x01`.
fn prefix_bounds(address: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut low = Vec::with_capacity(address.len() + 1);
    low.extend_from_slice(address);
    low.push(0);
    let mut high = low.clone();
    *high.last_mut().expect("not empty") = 1;
    (low, high)
}

/// Builds a filter from every address on the list, with room to grow by
/// half, and puts it in front of redb. On a read error the lookups keep
/// going to redb (the filter is an optimisation, never the truth).
fn rebuild_filter(db: &Database, filter: &ArcSwapOption<AddressFilter>) {
    let started = std::time::Instant::now();
    let built = (|| -> Result<AddressFilter, redb::Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let entries = table.len()?;
        let built = AddressFilter::with_capacity(entries + entries / 2);
        for row in table.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let address = k.iter().position(|&b| b == 0).map_or(k, |nul| &k[..nul]);
            built.insert(address);
        }
        Ok(built)
    })();
    match built {
        Ok(built) => {
            tracing::info!(
                capacity = built.capacity(),
                mib = built.bytes() >> 20,
                ms = started.elapsed().as_millis() as u64,
                "suppression list: filter built"
            );
            filter.store(Some(Arc::new(built)));
        }
        Err(err) => {
            filter.store(None);
            tracing::error!(%err, "suppression list: the filter could not be built; every lookup reads the list");
        }
    }
}

fn write_loop(
    db: &Database,
    generation: &AtomicU64,
    filter: &ArcSwapOption<AddressFilter>,
    inbox: &Receiver<Op>,
    notify: &Notify,
) {
    while let Ok(first) = inbox.recv() {
        let mut ops = vec![first];
        while ops.len() < OPS_PER_COMMIT_MAX {
            match inbox.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let current = filter.load_full();
        let mut outgrown = false;
        match apply(db, &ops, current.as_deref()) {
            Ok((changes, entries)) => {
                generation.fetch_add(1, Ordering::Release);
                outgrown = current.is_some_and(|f| entries > f.capacity());
                for (op, change) in ops.into_iter().zip(changes) {
                    match (op, change) {
                        (Op::Add { reply, origin, .. }, Change::Added(entries)) => {
                            for entry in &entries {
                                notify(entry, true, origin);
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(entries.len()));
                            }
                        }
                        (Op::Remove { reply, origin, .. }, Change::Removed(entries)) => {
                            for entry in &entries {
                                notify(entry, false, origin);
                            }
                            let _ = reply.send(Ok(entries));
                        }
                        _ => {}
                    }
                }
            }
            Err(err) => {
                tracing::error!(%err, "suppression list: a write failed");
                for op in ops {
                    match op {
                        Op::Add { reply, .. } => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(err.clone()));
                            }
                        }
                        Op::Remove { reply, .. } => {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        }
        // After the replies: a rebuild of a big list takes seconds, and
        // the old filter answers correctly meanwhile (only more "maybe"s).
        if outgrown {
            rebuild_filter(db, filter);
        }
    }
}

enum Change {
    Added(Vec<Entry>),
    Removed(Vec<Entry>),
}

/// One write transaction for a batch of operations, committed durably;
/// what changed, and how many entries the list then has. Added addresses
/// go into `filter` before the commit, so no lookup after it can miss
/// them.
fn apply(
    db: &Database,
    ops: &[Op],
    filter: Option<&AddressFilter>,
) -> Result<(Vec<Change>, u64), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    let mut changes = Vec::with_capacity(ops.len());
    let entries;
    {
        let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        for op in ops {
            match op {
                Op::Add {
                    entries, replace, ..
                } => {
                    let mut added = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let k = key(&entry.address, &entry.scope);
                        if !replace
                            && table
                                .get(k.as_slice())
                                .map_err(|e| e.to_string())?
                                .is_some()
                        {
                            continue;
                        }
                        if let Some(filter) = filter {
                            filter.insert(entry.address.as_bytes());
                        }
                        table
                            .insert(k.as_slice(), value(entry).as_slice())
                            .map_err(|e| e.to_string())?;
                        added.push(entry.clone());
                    }
                    changes.push(Change::Added(added));
                }
                Op::Remove { address, scope, .. } => {
                    let mut removed = Vec::new();
                    let keys: Vec<Vec<u8>> = match scope {
                        Some(scope) => vec![key(address, scope)],
                        None => {
                            let (low, high) = prefix_bounds(address.as_bytes());
                            let mut keys = Vec::new();
                            for row in table
                                .range(low.as_slice()..high.as_slice())
                                .map_err(|e| e.to_string())?
                            {
                                let (k, _) = row.map_err(|e| e.to_string())?;
                                keys.push(k.value().to_vec());
                            }
                            keys
                        }
                    };
                    for k in keys {
                        if let Some(v) = table.remove(k.as_slice()).map_err(|e| e.to_string())? {
                            removed.extend(decode(&k, v.value()));
                        }
                    }
                    changes.push(Change::Removed(removed));
                }
            }
        }
        entries = table.len().map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok((changes, entries))
}

/// A shard's view of the list: one read snapshot, renewed when the writer
/// has committed since.
pub struct Reader {
    db: Arc<Database>,
    generation: Arc<AtomicU64>,
    filter: Arc<ArcSwapOption<AddressFilter>>,
    /// The generation `table` was opened at; 0: none yet.
    seen: u64,
    table: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    /// The lookup's bounds, reused.
    key: Vec<u8>,
    /// The matching entry's scope and value, reused: a hit allocates
    /// nothing once these have grown.
    hit_scope: Vec<u8>,
    hit_value: Vec<u8>,
    errors: LogLimit,
}

/// What [`Reader::lookup`] found: the entry that suppresses, borrowed from
/// the reader until its next lookup.
#[derive(Debug)]
pub struct Hit<'r> {
    scope: &'r [u8],
    value: &'r [u8],
}

impl Hit<'_> {
    /// `global`, `domain:…` or `user:…`.
    pub fn scope(&self) -> &str {
        std::str::from_utf8(self.scope).unwrap_or(GLOBAL)
    }

    pub fn reason(&self) -> &str {
        self.value
            .get(9..)
            .and_then(|reason| std::str::from_utf8(reason).ok())
            .unwrap_or_default()
    }

    pub fn source(&self) -> Source {
        Source::from_byte(self.value.get(8).copied().unwrap_or_default())
    }
}

impl Reader {
    /// The entry that suppresses `recipient` for mail from
    /// `sender_domain` (any case) by `user`, if any: global first, then
    /// the sender domain's, then the user's. A read error is logged and
    /// taken as "not listed": the list must not stop mail.
    pub fn lookup(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        user: Option<&str>,
    ) -> Option<Hit<'_>> {
        match self.try_lookup(recipient, sender_domain, user) {
            Ok(true) => Some(Hit {
                scope: &self.hit_scope,
                value: &self.hit_value,
            }),
            Ok(false) => None,
            Err(err) => {
                self.table = None;
                if let Some(times) = self.errors.hit() {
                    tracing::error!(%err, times, "suppression list: a lookup failed; recipient accepted");
                }
                None
            }
        }
    }

    /// Whether an entry matched; if so it is in `hit_scope`, `hit_value`.
    fn try_lookup(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        user: Option<&str>,
    ) -> Result<bool, redb::Error> {
        self.key.clear();
        push_lowercase(&mut self.key, recipient);
        if let Some(filter) = self.filter.load().as_deref() {
            if !filter.may_contain(&self.key) {
                return Ok(false);
            }
        }
        self.refresh()?;
        let Some(table) = &self.table else {
            return Ok(false);
        };
        // `address NUL` then `address 0x01` in one buffer: the bounds of
        // every scope of the address.
        let address = self.key.len();
        self.key.push(0);
        let prefix = self.key.len();
        self.key.extend_from_within(..address);
        self.key.push(1);
        let (low, high) = self.key.split_at(prefix);
        let mut best: Option<u8> = None;
        for row in table.range(low..high)? {
            let (k, v) = row?;
            let scope = &k.value()[prefix..];
            let rank = if scope == GLOBAL.as_bytes() {
                0
            } else if let Some(domain) = scope.strip_prefix(b"domain:") {
                if !domain.eq_ignore_ascii_case(sender_domain) {
                    continue;
                }
                1
            } else if let Some(name) = scope.strip_prefix(b"user:") {
                if user.is_none_or(|user| user.as_bytes() != name) {
                    continue;
                }
                2
            } else {
                continue;
            };
            if best.is_none_or(|r| rank < r) {
                best = Some(rank);
                self.hit_scope.clear();
                self.hit_scope.extend_from_slice(scope);
                self.hit_value.clear();
                self.hit_value.extend_from_slice(v.value());
            }
        }
        Ok(best.is_some())
    }

    /// Takes a new snapshot if the writer committed since the last one;
    /// the shard also calls it when idle, so an old snapshot does not keep
    /// redb from reusing the pages it pins.
    pub fn refresh(&mut self) -> Result<(), redb::Error> {
        let now = self.generation.load(Ordering::Acquire);
        if now != self.seen || self.table.is_none() {
            self.table = None;
            let txn = self.db.begin_read()?;
            self.table = Some(txn.open_table(TABLE)?);
            self.seen = now;
        }
        Ok(())
    }
}

/// The first line of an export, and what an import may start with.
pub const CSV_HEADER: &str = "address,scope,reason,time_ms,source";

/// One CSV row (RFC 4180), with its line end.
fn csv_row(out: &mut String, entry: &Entry) {
    use std::fmt::Write as _;
    csv_field(out, &entry.address);
    out.push(',');
    csv_field(out, &entry.scope);
    out.push(',');
    csv_field(out, &entry.reason);
    let _ = writeln!(out, ",{},{}", entry.time_ms, entry.source);
}

fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Splits one CSV line into fields: quoted fields may hold commas and
/// doubled quotes (no line breaks: reasons are one line).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field does not end".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a quoted field".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Reads CSV rows: `address[,scope[,reason[,time_ms[,source]]]]`, an
/// optional [`CSV_HEADER`]-like first line (it starts with `address`),
/// blank lines skipped. Missing columns: `global`, `imported`, `now_ms`,
/// `import`; an export's rows come back as they were. Errors name the
/// line.
pub fn parse_csv(text: &str, now_ms: u64) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || (index == 0 && line.starts_with("address")) {
            continue;
        }
        let at = |err: String| format!("line {}: {err}", index + 1);
        let fields = csv_fields(line).map_err(at)?;
        let field = |i: usize| fields.get(i).map(String::as_str).filter(|f| !f.is_empty());
        let time_ms = match field(3) {
            Some(time) => time
                .parse()
                .map_err(|_| at(format!("{time:?} is not a time in unix milliseconds")))?,
            None => now_ms,
        };
        let source = match field(4) {
            Some(source) => Source::parse(source).ok_or_else(|| {
                at(format!(
                    "{source:?} is not a source (bounce, operator, unsubscribe, import)"
                ))
            })?,
            None => Source::Import,
        };
        let entry = Entry::new(
            field(0).unwrap_or_default(),
            field(1).unwrap_or(GLOBAL),
            field(2).unwrap_or("imported"),
            time_ms,
            source,
        )
        .map_err(at)?;
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn open(dir: &Path) -> (SuppressionList, mpsc::Receiver<(Entry, bool)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let list = SuppressionList::open(
            &dir.join("suppression.redb"),
            Box::new(move |entry, added, _origin| {
                let _ = tx.lock().unwrap().send((entry.clone(), added));
            }),
        )
        .unwrap();
        (list, rx)
    }

    fn entry(address: &str, scope: &str) -> Entry {
        Entry::new(address, scope, "test", 1_000, Source::Operator).unwrap()
    }

    #[test]
    fn addresses_and_scopes_are_normalised() {
        assert_eq!(
            normalize_address("<Bob@Example.ORG>").unwrap(),
            "bob@example.org"
        );
        assert_eq!(
            normalize_address("Jös@Dé.example").unwrap(),
            "jös@dé.example"
        );
        for bad in ["", "bob", "@example.org", "bob@", "a b@example.org"] {
            assert!(normalize_address(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_scope("").unwrap(), "global");
        assert_eq!(normalize_scope("GLOBAL").unwrap(), "global");
        assert_eq!(
            normalize_scope("domain:Shop.Example").unwrap(),
            "domain:shop.example"
        );
        assert_eq!(normalize_scope("user:App1").unwrap(), "user:App1");
        for bad in ["domain:", "user:", "sender:x", "domain:a b"] {
            assert!(normalize_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_match_the_scope_of_the_mail() {
        let dir = tempfile::tempdir().unwrap();
        let (list, events) = open(dir.path());
        list.add(vec![
            entry("all@example.org", "global"),
            entry("shop@example.org", "domain:shop.example"),
            entry("app@example.org", "user:app1"),
        ])
        .unwrap();
        assert_eq!(events.try_iter().count(), 3);
        let mut reader = list.reader();
        let found = |reader: &mut Reader, rcpt: &str, domain: &str, user| {
            reader
                .lookup(rcpt.as_bytes(), domain.as_bytes(), user)
                .map(|hit| hit.scope().to_owned())
        };
        assert_eq!(
            found(&mut reader, "ALL@example.org", "any.example", None).as_deref(),
            Some("global")
        );
        assert_eq!(
            found(&mut reader, "shop@example.org", "SHOP.example", None).as_deref(),
            Some("domain:shop.example")
        );
        assert_eq!(
            found(&mut reader, "shop@example.org", "other.example", None),
            None
        );
        assert_eq!(
            found(&mut reader, "app@example.org", "x.example", Some("app1")).as_deref(),
            Some("user:app1")
        );
        assert_eq!(
            found(&mut reader, "app@example.org", "x.example", Some("app2")),
            None
        );
        assert_eq!(
            found(&mut reader, "app@example.org", "x.example", None),
            None
        );
        // A longer address sharing the prefix is not the same address.
        assert_eq!(
            found(&mut reader, "all@example.org.uk", "x.example", None),
            None
        );

        // The reader sees a removal once committed.
        let removed = list.remove("all@EXAMPLE.org", None).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(
            found(&mut reader, "all@example.org", "x.example", None),
            None
        );
        let (event, added) = events.try_recv().unwrap();
        assert!(!added);
        assert_eq!(event.address, "all@example.org");
    }

    #[test]
    fn a_bounce_does_not_replace_an_entry_but_an_operator_does() {
        let dir = tempfile::tempdir().unwrap();
        let (list, events) = open(dir.path());
        list.add(vec![entry("a@example.org", "global")]).unwrap();
        let bounce = Entry::new(
            "a@example.org",
            "global",
            "550 5.1.1",
            2_000,
            Source::Bounce,
        );
        assert!(list.add_soon(bounce.unwrap()));
        // The writer handles operations in order: once this one is done,
        // so is the bounce.
        list.add(vec![entry("b@example.org", "global")]).unwrap();
        let shown = list.show("a@example.org").unwrap();
        assert_eq!(shown[0].source, Source::Operator);
        assert_eq!(events.try_iter().count(), 2);
        assert_eq!(list.len().unwrap(), 2);
    }

    #[test]
    fn the_list_survives_reopening_and_pages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (list, _) = open(dir.path());
            let entries = (0..25)
                .map(|i| entry(&format!("u{i:02}@example.org"), "global"))
                .collect();
            assert_eq!(list.add(entries).unwrap(), 25);
        }
        let (list, _) = open(dir.path());
        let (first, more) = list.page(None, 10).unwrap();
        assert!(more);
        assert_eq!(first[0].address, "u00@example.org");
        let last = first.last().unwrap();
        let (second, _) = list.page(Some((&last.address, &last.scope)), 10).unwrap();
        assert_eq!(second[0].address, "u10@example.org");
        let (rest, more) = list.page(Some(("u19@example.org", "global")), 10).unwrap();
        assert_eq!((rest.len(), more), (5, false));
    }

    #[test]
    fn the_filter_never_hides_a_listed_address_as_the_list_grows_shrinks_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let address = |i: u32| format!("Grow{i}@Example.org");
        let wait_filter = |list: &SuppressionList| {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !list.filter_built() {
                assert!(std::time::Instant::now() < until, "no filter");
                thread::yield_now();
            }
        };
        {
            let (list, _) = open(dir.path());
            wait_filter(&list);
            let mut reader = list.reader();
            // 20,000 in batches: past the first filter's capacity (6,144),
            // so the writer rebuilds it while lookups go on.
            for batch in 0..20 {
                let entries = (batch * 1000..(batch + 1) * 1000)
                    .map(|i| entry(&address(i), "global"))
                    .collect();
                list.add(entries).unwrap();
                for i in (0..(batch + 1) * 1000).step_by(97) {
                    assert!(
                        reader
                            .lookup(address(i).as_bytes(), b"s.example", None)
                            .is_some(),
                        "{i}"
                    );
                }
            }
            for i in 0..20_000 {
                assert!(
                    reader
                        .lookup(address(i).as_bytes(), b"s.example", None)
                        .is_some(),
                    "{i}"
                );
                assert!(reader
                    .lookup(
                        format!("other{i}@example.org").as_bytes(),
                        b"s.example",
                        None
                    )
                    .is_none());
            }
            // A removed address keeps its bits but is not suppressed.
            list.remove("grow7@example.org", None).unwrap();
            assert!(reader
                .lookup(b"grow7@example.org", b"s.example", None)
                .is_none());
        }
        // Reopened: the filter is built from what is on disk.
        let (list, _) = open(dir.path());
        wait_filter(&list);
        let mut reader = list.reader();
        for i in (0..20_000).filter(|&i| i != 7) {
            assert!(
                reader
                    .lookup(address(i).as_bytes(), b"s.example", None)
                    .is_some(),
                "{i}"
            );
        }
        assert!(reader
            .lookup(b"grow7@example.org", b"s.example", None)
            .is_none());
    }

    #[test]
    fn csv_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (list, _) = open(dir.path());
        let mut odd = entry("q@example.org", "domain:shop.example");
        odd.reason = "said \"no\", twice".into();
        list.add(vec![odd.clone(), entry("p@example.org", "global")])
            .unwrap();
        let mut csv = Vec::new();
        assert_eq!(list.export(&mut csv).unwrap(), 2);
        let text = String::from_utf8(csv).unwrap();
        assert!(
            text.starts_with("address,scope,reason,time_ms,source\n"),
            "{text}"
        );
        let parsed = parse_csv(&text, 5).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1], odd);
        // Short rows take the defaults.
        let parsed = parse_csv("x@example.org\ny@example.org,user:u1,why\n", 7).unwrap();
        assert_eq!(parsed[0].scope, "global");
        assert_eq!(parsed[0].source, Source::Import);
        assert_eq!(parsed[0].time_ms, 7);
        assert_eq!(parsed[1].reason, "why");
        let err = parse_csv("x@example.org\nnot-an-address\n", 7).unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
    }
}
