//! Torn and corrupted segment files: recovery never panics, recovers every
//! record the damage did not touch, cuts torn tails, and quarantines a
//! segment damaged in the middle after copying its live messages forward.
//!
//! One spool of a few segments is built once; each case copies it, damages
//! the copy as a seeded PRNG says, and checks recovery against what the
//! undamaged records alone say is pending. Set `BATON_SPOOL_CORRUPTION_SEED`
//! to run one seed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::env;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use baton_spool::{BlockingWriter, NewMessage, RecordRef, Recovered, Spool, SpoolConfig, Status};

mod common;

use common::{
    addresses, merge, message, outcome, patterned_body as body, pending_recipients,
    pending_statuses, recipient, segment_paths, unfinished, SplitMix as Rng,
};

const SEGMENT_BYTES: u64 = 64 << 10;
const SEGMENT_HEADER_BYTES: u64 = 64;
const FRAME_HEADER_BYTES: u64 = 32;
const MESSAGES: u64 = 45;
const BODY_BYTES_MIN: u64 = 2_000;
const BODY_BYTES_MAX: u64 = 6_000;
/// Cases per kind of damage.
const SEEDS: u64 = 40;
const FLIPS_MAX: u64 = 4;
const BUILD_SEED: u64 = 0xC0_FFEE;
const SEED_ENV: &str = "BATON_SPOOL_CORRUPTION_SEED";

fn seeds() -> Vec<u64> {
    match env::var(SEED_ENV) {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => (0..SEEDS).collect(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Message {
        queue_id: u64,
        recipients: u32,
        body_len: u64,
    },
    Outcome {
        queue_id: u64,
        recipient: u32,
        status: Status,
    },
}

#[derive(Clone, Copy, Debug)]
struct Rec {
    at: RecordRef,
    /// End of the bytes the CRC covers; the padding after is not checked.
    covered_end: u64,
    kind: Kind,
}

/// The undamaged spool, and what is in it.
struct Pristine {
    dir: tempfile::TempDir,
    records: Vec<Rec>,
    /// Segment file name by segment id.
    files: HashMap<u64, String>,
}

impl Pristine {
    /// Segments holding records, in the order the writer filled them.
    fn segments(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.records.iter().map(|r| r.at.segment.0).collect();
        ids.dedup();
        ids
    }

    fn records_in(&self, segment: u64) -> Vec<(usize, Rec)> {
        self.records
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, r)| r.at.segment.0 == segment)
            .collect()
    }

    /// A fresh copy to damage.
    fn copy(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        dir
    }

    /// What recovery must return when the records in `lost` are gone.
    fn expected(&self, lost: &HashSet<usize>) -> BTreeMap<(u64, u32), Status> {
        let mut statuses: BTreeMap<u64, Vec<Status>> = BTreeMap::new();
        let kept = || {
            self.records
                .iter()
                .enumerate()
                .filter(|(i, _)| !lost.contains(i))
        };
        for (_, r) in kept() {
            if let Kind::Message {
                queue_id,
                recipients,
                ..
            } = r.kind
            {
                statuses.insert(queue_id, vec![Status::Pending; recipients as usize]);
            }
        }
        for (_, r) in kept() {
            if let Kind::Outcome {
                queue_id,
                recipient,
                status,
            } = r.kind
            {
                if let Some(s) = statuses.get_mut(&queue_id) {
                    s[recipient as usize] = merge(s[recipient as usize], status);
                }
            }
        }
        unfinished(statuses.iter().map(|(&id, s)| (id, &s[..])))
    }

    fn body_len(&self, queue_id: u64) -> u64 {
        self.records
            .iter()
            .find_map(|r| match r.kind {
                Kind::Message {
                    queue_id: id,
                    body_len,
                    ..
                } if id == queue_id => Some(body_len),
                _ => None,
            })
            .expect("a known message")
    }
}

fn config(dir: &Path) -> SpoolConfig {
    common::config(dir, SEGMENT_BYTES)
}

/// Messages with one to three recipients, and outcomes for earlier ones
/// in between: some delivered, some failed, some deferred.
fn build() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(BUILD_SEED);
    let mut records = Vec::new();
    {
        let (spool, _) = Spool::open(config(dir.path())).unwrap();
        let mut writer = BlockingWriter::new(spool.writer(0).unwrap());
        let mut attempts = 0;
        for queue_id in 1..=MESSAGES {
            let recipients = rng.range(1, 4) as u32;
            let body_len = rng.range(BODY_BYTES_MIN, BODY_BYTES_MAX);
            let addresses = addresses(recipients as usize);
            let rcpts = pending_recipients(&addresses);
            let body = body(queue_id, body_len);
            let appended = writer
                .append_message(&message(queue_id, 0, &rcpts, &body))
                .unwrap();
            records.push((
                appended.at,
                Kind::Message {
                    queue_id,
                    recipients,
                    body_len,
                },
            ));
            for _ in 0..rng.range(0, 3) {
                let target = rng.range(1, queue_id + 1);
                let Some(&(_, Kind::Message { recipients, .. })) = records.iter().find(
                    |(_, k)| matches!(k, Kind::Message { queue_id: id, .. } if *id == target),
                ) else {
                    unreachable!("every queue id up to this one has a message");
                };
                let recipient = rng.range(0, u64::from(recipients)) as u32;
                attempts += 1;
                let status = match rng.range(0, 4) {
                    0 => Status::Delivered { attempts: 1 },
                    1 => Status::Failed { attempts: 1 },
                    _ => Status::Deferred {
                        attempts,
                        next_attempt_ms: 1000,
                    },
                };
                let appended = writer
                    .append_outcome(&outcome(
                        target,
                        recipient,
                        status,
                        0,
                        b"451 4.3.0 try later",
                    ))
                    .unwrap();
                records.push((
                    appended.at,
                    Kind::Outcome {
                        queue_id: target,
                        recipient,
                        status,
                    },
                ));
            }
        }
        writer.flush().unwrap();
    }
    let files = segment_files(dir.path());
    let records = records
        .into_iter()
        .map(|(at, kind)| {
            let file = fs::File::open(dir.path().join(&files[&at.segment.0])).unwrap();
            let mut len = [0u8; 4];
            file.read_exact_at(&mut len, at.offset + 28).unwrap();
            Rec {
                at,
                covered_end: at.offset + FRAME_HEADER_BYTES + u64::from(u32::from_le_bytes(len)),
                kind,
            }
        })
        .collect();
    let pristine = Pristine {
        dir,
        records,
        files,
    };
    assert!(
        pristine.segments().len() >= 3,
        "the spool spans a few segments"
    );
    pristine
}

/// Segment file names by the id in their header.
fn segment_files(dir: &Path) -> HashMap<u64, String> {
    segment_paths(dir)
        .into_iter()
        .map(|(id, path)| (id, path.file_name().unwrap().to_str().unwrap().to_owned()))
        .collect()
}

fn flip_bytes(path: &Path, at: &[(u64, u8)]) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for &(offset, mask) in at {
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        byte[0] ^= mask;
        file.write_all_at(&byte, offset).unwrap();
    }
}

/// Records whose checked bytes hold one of the flipped offsets.
fn hit(records: &[(usize, Rec)], flips: &[(u64, u8)]) -> HashSet<usize> {
    records
        .iter()
        .filter(|(_, r)| {
            flips
                .iter()
                .any(|&(o, _)| (r.at.offset..r.covered_end).contains(&o))
        })
        .map(|&(i, _)| i)
        .collect()
}

/// Opens the damaged copy and checks the pending set, and every pending
/// message's body.
fn open_and_check(pristine: &Pristine, dir: &Path, lost: &HashSet<usize>, case: &str) -> Recovered {
    let (spool, recovered) =
        Spool::open(config(dir)).unwrap_or_else(|e| panic!("{case}: recovery failed: {e}"));
    let got = pending_statuses(&recovered, &format!("{case}: a recipient is pending twice"));
    assert_eq!(
        got,
        pristine.expected(lost),
        "{case}: pending recipients (lost records {lost:?})"
    );
    for p in &recovered.pending {
        let record = spool
            .read(p.message)
            .unwrap_or_else(|e| panic!("{case}: {}: {e}", p.queue_id));
        let view = record.message().unwrap();
        assert_eq!(view.queue_id, p.queue_id, "{case}");
        assert!(
            view.body == body(p.queue_id.0, pristine.body_len(p.queue_id.0)),
            "{case}: body of {}",
            p.queue_id
        );
    }
    recovered
}

/// A second reopen after the first recovery repaired the spool: the same
/// recipients, and nothing left to repair.
fn reopen_clean(pristine: &Pristine, dir: &Path, lost: &HashSet<usize>, case: &str) {
    let recovered = open_and_check(pristine, dir, lost, &format!("{case}, second open"));
    let report = &recovered.report;
    assert!(
        report.damaged.is_empty(),
        "{case}: second open: {:?}",
        report.damaged
    );
    assert!(
        report.torn_tails.is_empty(),
        "{case}: second open: {:?}",
        report.torn_tails
    );
    assert!(
        report.quarantined.is_empty(),
        "{case}: second open: {:?}",
        report.quarantined
    );
}

#[test]
fn an_undamaged_spool_recovers_everything() {
    let pristine = build();
    let dir = pristine.copy();
    let recovered = open_and_check(&pristine, dir.path(), &HashSet::new(), "undamaged");
    assert!(recovered.report.torn_tails.is_empty() && recovered.report.damaged.is_empty());
    assert!(!recovered.pending.is_empty());
}

#[test]
fn a_truncated_last_segment_is_damage_and_loses_only_the_cut_records() {
    let pristine = build();
    let last = *pristine.segments().last().unwrap();
    let records = pristine.records_in(last);
    let records_end =
        records.last().unwrap().1.at.offset + u64::from(records.last().unwrap().1.at.len);
    // Random cuts, then the edges of every record: its start, just after
    // its header, the end of its checked bytes (in its padding), its end.
    // Regression: a cut inside the padding of the last frame made recovery
    // panic (the frame was taken as whole, and the scan ran past the file).
    let random = seeds().into_iter().map(|seed| {
        (
            format!("seed {seed}"),
            Rng(seed).range(SEGMENT_HEADER_BYTES, records_end + 1),
        )
    });
    let edges = records.iter().flat_map(|(_, r)| {
        let ends = [
            r.at.offset,
            r.at.offset + FRAME_HEADER_BYTES,
            r.covered_end,
            r.at.offset + u64::from(r.at.len),
        ];
        ends.map(|cut| (format!("edge of record at {}", r.at.offset), cut))
    });
    for (what, cut) in random.chain(edges) {
        let case = format!("{what}: cut at {cut}");
        let dir = pristine.copy();
        let path = dir.path().join(&pristine.files[&last]);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // A record survives only if all of it, padding included, is left:
        // a reference to it must resolve.
        let lost: HashSet<usize> = records
            .iter()
            .filter(|(_, r)| r.at.offset + u64::from(r.at.len) > cut)
            .map(|&(i, _)| i)
            .collect();
        // A crash never shortens a preallocated file: even the writer's
        // newest segment, cut short, is damage, not a torn tail.
        let recovered = open_and_check(&pristine, dir.path(), &lost, &case);
        let report = &recovered.report;
        assert!(
            report.torn_tails.is_empty(),
            "{case}: {:?}",
            report.torn_tails
        );
        assert_eq!(report.damaged.len(), 1, "{case}: {:?}", report.damaged);
        assert_eq!(
            report.quarantined.len(),
            1,
            "{case}: {:?}",
            report.quarantined
        );
        reopen_clean(&pristine, dir.path(), &lost, &case);
    }
}

#[test]
fn flipped_bytes_in_the_tail_cost_at_most_the_last_record() {
    let pristine = build();
    let last = *pristine.segments().last().unwrap();
    let records = pristine.records_in(last);
    let (last_index, last_record) = *records.last().unwrap();
    for seed in seeds() {
        let mut rng = Rng(seed);
        // Half the cases hit the last record, the rest only bytes after it.
        let from = if seed % 2 == 0 {
            last_record.at.offset
        } else {
            last_record.at.offset + u64::from(last_record.at.len)
        };
        let flips: Vec<(u64, u8)> = (0..rng.range(1, FLIPS_MAX + 1))
            .map(|_| (rng.range(from, SEGMENT_BYTES), rng.flip()))
            .collect();
        let case = format!("seed {seed}: flips {flips:?}");
        let dir = pristine.copy();
        flip_bytes(&dir.path().join(&pristine.files[&last]), &flips);
        let lost = hit(&[(last_index, last_record)], &flips);
        let padding_only = flips.iter().all(|&(o, _)| {
            (last_record.covered_end..last_record.at.offset + u64::from(last_record.at.len))
                .contains(&o)
        });
        let recovered = open_and_check(&pristine, dir.path(), &lost, &case);
        let report = &recovered.report;
        assert!(report.damaged.is_empty(), "{case}: {:?}", report.damaged);
        assert_eq!(
            report.torn_tails.len(),
            usize::from(!padding_only),
            "{case}: {:?}",
            report.torn_tails
        );
        reopen_clean(&pristine, dir.path(), &lost, &case);
    }
}

#[test]
fn damage_in_the_middle_of_a_segment_quarantines_it_and_keeps_every_other_record() {
    let pristine = build();
    // The last segment too: damage followed by good records is damage there
    // as well, not a torn tail.
    let segments = pristine.segments();
    for seed in seeds() {
        let mut rng = Rng(seed);
        let dir = pristine.copy();
        // One damaged segment, or two: recovery goes on after the first.
        let mut damaged: Vec<u64> = vec![segments[rng.range(0, segments.len() as u64) as usize]];
        if seed % 3 == 0 {
            let other = segments[rng.range(0, segments.len() as u64) as usize];
            if other != damaged[0] {
                damaged.push(other);
            }
        }
        let mut lost = HashSet::new();
        let mut case = format!("seed {seed}:");
        for &segment in &damaged {
            let records = pristine.records_in(segment);
            // Anywhere from the first record up to the last one, which must
            // stay whole for the damage to be in the middle.
            let start = records[0].1.at.offset;
            let end = records.last().unwrap().1.at.offset;
            let at = rng.range(start, end);
            let span = rng.range(1, 300).min(end - at);
            let flips: Vec<(u64, u8)> = (0..rng.range(1, FLIPS_MAX + 1))
                .map(|_| (rng.range(at, at + span), rng.flip()))
                .collect();
            flip_bytes(&dir.path().join(&pristine.files[&segment]), &flips);
            lost.extend(hit(&records, &flips));
            case += &format!(" segment {segment} flips {flips:?}");
        }
        let recovered = open_and_check(&pristine, dir.path(), &lost, &case);
        let report = &recovered.report;
        assert!(
            report.torn_tails.is_empty(),
            "{case}: {:?}",
            report.torn_tails
        );
        for &segment in &damaged {
            let name = &pristine.files[&segment];
            let hit_here = pristine
                .records_in(segment)
                .iter()
                .any(|(i, _)| lost.contains(i));
            let reported = report.damaged.iter().any(|d| d.path.ends_with(name));
            assert_eq!(
                reported, hit_here,
                "{case}: damage in {name}: {:?}",
                report.damaged
            );
            let quarantined = dir.path().join("quarantine").join(name);
            assert_eq!(
                report.quarantined.contains(&quarantined),
                hit_here,
                "{case}: {name}"
            );
            assert_eq!(
                quarantined.exists(),
                hit_here,
                "{case}: {name} in quarantine/"
            );
            assert_eq!(
                dir.path().join(name).exists(),
                !hit_here,
                "{case}: {name} in the spool"
            );
        }
        reopen_clean(&pristine, dir.path(), &lost, &case);
    }
}

/// Issue 10: truncating a sealed segment (one its writer moved on from)
/// lost its records with a WARN "torn tail", and the file stayed. A crash
/// tears only the end of a writer's newest segment; the next segment's link
/// says how many frames this one held, so the loss is counted, logged as
/// damage, the rest copied forward and the file quarantined.
#[test]
fn a_truncated_or_tail_damaged_sealed_segment_is_damage_with_its_loss_counted() {
    let pristine = build();
    let segments = pristine.segments();
    assert!(segments.len() >= 3, "the build fills several segments");
    for seed in seeds() {
        let mut rng = Rng(seed);
        let dir = pristine.copy();
        // Any segment but the last: sealed, its successor links it.
        let segment = segments[rng.range(0, segments.len() as u64 - 1) as usize];
        let records = pristine.records_in(segment);
        let name = &pristine.files[&segment];
        let path = dir.path().join(name);
        let last = records.last().unwrap().1;
        let records_end = last.at.offset + u64::from(last.at.len);
        let (lost, case): (HashSet<usize>, String) = if seed % 2 == 0 {
            // Cut from just after the link frame to the end of the records.
            let cut = rng.range(records[0].1.at.offset, records_end);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let lost = records
                .iter()
                .filter(|(_, r)| r.at.offset + u64::from(r.at.len) > cut)
                .map(|&(i, _)| i)
                .collect();
            (lost, format!("seed {seed}: segment {segment} cut at {cut}"))
        } else {
            // Bytes flipped in the last record: the tail of a sealed segment.
            let flips: Vec<(u64, u8)> = (0..rng.range(1, FLIPS_MAX + 1))
                .map(|_| (rng.range(last.at.offset, last.covered_end), rng.flip()))
                .collect();
            flip_bytes(&path, &flips);
            let lost = hit(&records, &flips);
            (
                lost,
                format!("seed {seed}: segment {segment} flips {flips:?}"),
            )
        };
        let recovered = open_and_check(&pristine, dir.path(), &lost, &case);
        let report = &recovered.report;
        assert!(
            report.torn_tails.is_empty(),
            "{case}: {:?}",
            report.torn_tails
        );
        if lost.is_empty() {
            // A cut through zeroes after the last record loses nothing.
            assert!(report.damaged.is_empty(), "{case}: {:?}", report.damaged);
            continue;
        }
        let damage: Vec<_> = report
            .damaged
            .iter()
            .filter(|d| d.path.ends_with(name))
            .collect();
        assert_eq!(damage.len(), 1, "{case}: {:?}", report.damaged);
        assert_eq!(
            damage[0].records_lost,
            Some(lost.len() as u64),
            "{case}: the loss is counted"
        );
        assert!(
            dir.path().join("quarantine").join(name).exists(),
            "{case}: {name} in quarantine/"
        );
        assert!(!path.exists(), "{case}: {name} left the spool");
        reopen_clean(&pristine, dir.path(), &lost, &case);
    }
}

/// Issue 10: a damaged header used to cost every frame behind it (193
/// intact messages went to `quarantine/`, and the report said no damage).
/// Now the segment is rebuilt around its first frame, which carries its
/// id: every record is recovered, the damage is reported, and the file is
/// copied forward and quarantined.
#[test]
fn a_segment_with_a_damaged_header_keeps_its_records_and_is_quarantined() {
    let pristine = build();
    let segments = pristine.segments();
    for seed in seeds() {
        let mut rng = Rng(seed);
        let segment = segments[rng.range(0, segments.len() as u64) as usize];
        let name = &pristine.files[&segment];
        let flips = [(rng.range(0, SEGMENT_HEADER_BYTES), rng.flip())];
        let case = format!("seed {seed}: {name} header flips {flips:?}");
        let dir = pristine.copy();
        flip_bytes(&dir.path().join(name), &flips);
        let lost = HashSet::new();
        let recovered = open_and_check(&pristine, dir.path(), &lost, &case);
        let quarantined = dir.path().join("quarantine").join(name);
        assert_eq!(
            recovered.report.quarantined,
            vec![quarantined.clone()],
            "{case}"
        );
        assert_eq!(recovered.report.damaged.len(), 1, "{case}");
        assert_eq!(recovered.report.damaged[0].offset, 0, "{case}");
        assert!(
            quarantined.exists() && !dir.path().join(name).exists(),
            "{case}"
        );
        reopen_clean(&pristine, dir.path(), &lost, &case);
    }
}

#[test]
fn leftover_temporary_and_empty_files_do_not_stop_recovery() {
    let pristine = build();
    let dir = pristine.copy();
    let leftovers: Vec<PathBuf> = ["tmp-00000000000000ff.seg", "tmp-0000000000000100.seg"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    fs::write(&leftovers[0], vec![7u8; 4096]).unwrap();
    fs::write(&leftovers[1], b"").unwrap();
    let empty_segment = dir.path().join("003-0000000009.seg");
    fs::write(&empty_segment, b"").unwrap();
    let empty_spare = dir.path().join("spare-00000000000000aa.seg");
    fs::write(&empty_spare, b"").unwrap();
    let short_segment = dir.path().join("004-0000000001.seg");
    fs::write(&short_segment, [0u8; 10]).unwrap();

    let recovered = open_and_check(&pristine, dir.path(), &HashSet::new(), "leftovers");
    for path in leftovers.iter().chain([&empty_spare]) {
        assert!(!path.exists(), "{} is removed", path.display());
    }
    let mut quarantined = recovered.report.quarantined.clone();
    quarantined.sort();
    let quarantine = dir.path().join("quarantine");
    assert_eq!(
        quarantined,
        vec![
            quarantine.join("003-0000000009.seg"),
            quarantine.join("004-0000000001.seg")
        ]
    );
    assert!(!empty_segment.exists() && !short_segment.exists());
    reopen_clean(&pristine, dir.path(), &HashSet::new(), "leftovers");
}

/// A spool whose last segment is a recycled file: frames of its earlier
/// life follow its own.
fn build_recycled() -> (tempfile::TempDir, Vec<(u64, RecordRef)>) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path())).unwrap();
    let mut writer = BlockingWriter::new(spool.writer(0).unwrap());
    let rcpt = [recipient(b"r@example.org")];
    let append = |writer: &mut BlockingWriter, queue_id: u64| {
        let body = body(queue_id, 5_000);
        let message = NewMessage {
            reverse_path: b"",
            ..message(queue_id, 0, &rcpt, &body)
        };
        writer.append_message(&message).unwrap().at
    };
    // Fill and empty a few segments, so that they become spares...
    for queue_id in 1..=40 {
        append(&mut writer, queue_id);
        writer
            .append_outcome(&outcome(
                queue_id,
                0,
                Status::Delivered { attempts: 1 },
                0,
                b"250 ok",
            ))
            .unwrap();
    }
    writer.flush().unwrap();
    assert!(spool.reclaim().unwrap().segments_recycled > 0);
    // ... then write into them again, a little less than before.
    let kept: Vec<(u64, RecordRef)> = (41..=70).map(|id| (id, append(&mut writer, id))).collect();
    writer.flush().unwrap();
    (dir, kept)
}

/// Regression: frames of a recycled file's earlier lives were reported as a
/// torn tail, and the file cut, at every reopen. Telling them apart must not
/// hide a real torn tail, wherever the damage lands in the last frame.
#[test]
fn a_recycled_segment_has_no_torn_tail_after_a_clean_shutdown_but_keeps_real_ones() {
    let (pristine, kept) = build_recycled();
    let last = kept.last().unwrap().1;
    let name = segment_files(pristine.path())[&last.segment.0].clone();
    let bytes = fs::read(pristine.path().join(&name)).unwrap();
    let after = (last.offset + u64::from(last.len)) as usize;
    assert!(
        bytes[after..].iter().any(|&b| b != 0),
        "frames of an earlier life follow the last record"
    );
    let pending = |recovered: &Recovered| {
        let mut ids: Vec<u64> = recovered.pending.iter().map(|p| p.queue_id.0).collect();
        ids.sort();
        ids
    };
    let all: Vec<u64> = kept.iter().map(|&(id, _)| id).collect();

    let copy = |from: &Path| {
        let dir = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    };
    let clean = copy(pristine.path());
    let (_, recovered) = Spool::open(config(clean.path())).unwrap();
    assert_eq!(pending(&recovered), all);
    assert!(
        recovered.report.torn_tails.is_empty(),
        "{:?}",
        recovered.report.torn_tails
    );

    // Damage to the last record is still a torn tail, wherever it lands in
    // the frame header or the payload.
    let header = FRAME_HEADER_BYTES;
    for seed in seeds() {
        let mut rng = Rng(seed);
        let at = last.offset + rng.range(0, header + 64);
        let flips = [(at, rng.flip())];
        let case = format!("seed {seed}: flips {flips:?}");
        let dir = copy(pristine.path());
        flip_bytes(&dir.path().join(&name), &flips);
        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(pending(&recovered), all[..all.len() - 1], "{case}");
        assert_eq!(
            recovered.report.torn_tails.len(),
            1,
            "{case}: {:?}",
            recovered.report.torn_tails
        );
        assert!(recovered.report.damaged.is_empty(), "{case}");
        for p in &recovered.pending {
            assert_eq!(
                spool.read(p.message).unwrap().message().unwrap().body,
                body(p.queue_id.0, 5_000),
                "{case}"
            );
        }
    }
}
