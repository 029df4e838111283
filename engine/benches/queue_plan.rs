//! `Queues::plan`, the delivery timer every shard runs on its sweep, with
//! 100,000 scheduled recipients over 10,000 destinations (sites): the
//! cost of one sweep when nothing is due, the common case: retries are
//! minutes apart and sweeps a quarter of a second.
//!
//! ```sh
//! cargo bench -p baton --bench queue_plan
//! ```

use std::hint::black_box;

use baton::queue::{QueuedRecipient, Queues, Shaping};
use baton::route::Destination;
use baton_spool::{QueueId, Status};
use criterion::{criterion_group, criterion_main, Criterion};

const DESTINATIONS: u64 = 10_000;
const PER_DESTINATION: u64 = 10;
/// Next attempts spread over an hour after the start.
const SPREAD_MS: u64 = 3_600_000;
const START_MS: u64 = 1_000_000;

fn filled() -> Queues {
    let queues = Queues::new(Box::new(|_| Shaping::default()));
    for d in 0..DESTINATIONS {
        let destination = Destination::new(format!("d{d}.example"));
        for r in 0..PER_DESTINATION {
            let i = d * PER_DESTINATION + r;
            let next = START_MS + 60_000 + (i * 7_919) % SPREAD_MS;
            let status = Status::Deferred {
                attempts: 1,
                next_attempt_ms: next,
            };
            let item = QueuedRecipient {
                queue_id: QueueId(i + 1),
                recipient: 0,
                attempts: 1,
            };
            queues.push(&destination, &[item], status, START_MS);
        }
    }
    queues
}

fn plan(c: &mut Criterion) {
    let queues = filled();
    // The first sweep after the pushes.
    queues.plan(START_MS);
    c.bench_function("plan_nothing_due_100k_over_10k_sites", |b| {
        b.iter(|| black_box(queues.plan(black_box(START_MS + 1))))
    });
}

criterion_group!(benches, plan);
criterion_main!(benches);
