//! `baton-sim`: one seed (`--seed S`, printing the history of a failure),
//! or many (`--seeds N`, or `--hours H` of wall time) for a soak, with
//! seeds per second and simulated time covered.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_sim::{run, Params};
use clap::Parser;

/// A run of many seeds prints a line on standard error every this many.
const PROGRESS_EVERY_SEEDS: u64 = 200;

// baton's own allocator: the code under test allocates as it does in
// production (and the system allocator took a fifth of the run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "baton's deterministic simulator")]
struct Args {
    /// Run this seed alone (decimal or 0x hex).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Run this many seeds, from --first.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a run of many.
    #[arg(long, default_value_t = 1, value_parser = parse_seed)]
    first: u64,
    /// Run seeds for this many hours of wall time instead.
    #[arg(long)]
    hours: Option<f64>,
    /// Simulated seconds of traffic per seed.
    #[arg(long, default_value_t = 20)]
    sim_seconds: u64,
    /// Messages per simulated second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Turn a planted bug on (`ack`: a 250 before its datasync;
    /// `reclaim`: reclamation of a segment with a pending recipient;
    /// `outcome`: a delivery recorded from the RCPT's 250, before the
    /// delivery it records; `name`: a new segment handed to the writer
    /// before the directory that names it is synced), to see the seed at
    /// which the simulator catches it.
    #[arg(long)]
    plant: Option<String>,
    /// Power cuts per round, in ten thousand (the scenario's by default).
    #[arg(long)]
    power_cuts: Option<u64>,
    /// Seeds run at once, one thread each.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Power cuts reorder unsynced writes (a later one kept, an earlier
    /// one lost) instead of tearing them at one point.
    #[arg(long)]
    reorder: bool,
    /// Simulate a cluster of this many nodes sharing one site's limits
    /// through the model of Redis (node crashes, Redis outages), instead
    /// of one node's spool and SMTP.
    #[arg(long, value_name = "NODES")]
    cluster: Option<usize>,
    /// With --cluster: the site's connection limit, the cluster's.
    #[arg(long, default_value_t = 20)]
    connections_max: usize,
    /// With --cluster: the site's messages per second, the cluster's (0: none).
    #[arg(long, default_value_t = 400)]
    site_rate: u32,
    /// With --cluster: recipients arriving per simulated second at each node.
    #[arg(long, default_value_t = 100)]
    per_node_rate: u64,
    /// With --cluster: no node crash, no Redis outage.
    #[arg(long)]
    no_faults: bool,
}

fn parse_seed(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.plant.as_deref() {
        None => {}
        Some("ack") => baton_spool::plant::ACK_BEFORE_SYNC.store(true, Ordering::Relaxed),
        Some("reclaim") => baton_spool::plant::RECLAIM_PENDING.store(true, Ordering::Relaxed),
        Some("outcome") => baton_spool::plant::DELIVERED_AT_RCPT.store(true, Ordering::Relaxed),
        Some("name") => baton_spool::plant::SEGMENT_NAME_UNSYNCED.store(true, Ordering::Relaxed),
        Some(other) => {
            eprintln!("--plant {other}: ack, reclaim, outcome or name");
            return ExitCode::FAILURE;
        }
    }
    let params = |seed| Params {
        sim_seconds: args.sim_seconds,
        messages_per_second: args.rate,
        reorder: args.reorder,
        power_cut_per_10k: args
            .power_cuts
            .unwrap_or(Params::scenario(seed).power_cut_per_10k),
        ..Params::scenario(seed)
    };
    if let Some(seed) = args.seed {
        return match run(&params(seed)) {
            Ok(report) => {
                println!("seed {seed:#x}: ok {report:?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(nodes) = args.cluster {
        return run_cluster_seeds(&args, nodes);
    }
    let started = Instant::now();
    let deadline = args
        .hours
        .map(|h| started + Duration::from_secs_f64(h * 3600.0));
    // Seeds are handed out in order to `--jobs` threads; the first failure
    // stops them all.
    let next = AtomicU64::new(args.first);
    let last = args.first + args.seeds;
    let failed = AtomicBool::new(false);
    let totals = Mutex::new((0u64, 0u64, 0u64, 0u64)); // seeds, sim ms, traffic ms, messages
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
                if failed.load(Ordering::Relaxed) || out_of_time {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if deadline.is_none() && seed >= last {
                    return;
                }
                let params = params(seed);
                match run(&params) {
                    Ok(report) => {
                        let mut t = totals.lock().expect("totals");
                        t.0 += 1;
                        t.1 += report.sim_ms;
                        t.2 += params.sim_seconds * 1000;
                        t.3 += report.messages_acknowledged;
                        // A long soak says how far it got, so that it can be
                        // stopped (to free the cores) without losing its count.
                        if t.0.is_multiple_of(PROGRESS_EVERY_SEEDS) {
                            eprintln!(
                                "{} seeds passed ({} messages acknowledged) in {:.0} s; now at seed {seed:#x}",
                                t.0,
                                t.3,
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(failure) => {
                        failed.store(true, Ordering::Relaxed);
                        eprintln!("{failure}");
                        eprintln!("replay: baton-sim --seed {seed:#x}");
                    }
                }
            });
        }
    });
    if failed.load(Ordering::Relaxed) {
        return ExitCode::FAILURE;
    }
    let (seeds, sim_ms, traffic_ms, messages) = *totals.lock().expect("totals");
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds in {wall:.1} s ({:.2} seeds/s): {:.0} simulated s of traffic at {} messages/s \
         ({:.0} per wall s), {:.0} simulated s in all with the drains ({:.0} per wall s), \
         {messages} messages acknowledged",
        seeds as f64 / wall,
        traffic_ms as f64 / 1000.0,
        args.rate,
        traffic_ms as f64 / 1000.0 / wall,
        sim_ms as f64 / 1000.0,
        sim_ms as f64 / 1000.0 / wall,
    );
    ExitCode::SUCCESS
}

/// `--cluster N`: seeds of the cluster scenario, one after another; the
/// first failure stops the run.
fn run_cluster_seeds(args: &Args, nodes: usize) -> ExitCode {
    use baton_sim::cluster::{run_cluster, ClusterParams};
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let (mut delivered, mut sim_ms, mut calls, mut rate, mut peak) = (0u64, 0u64, 0u64, 0f64, 0);
    let (mut crashes, mut outages, mut rate_peak) = (0u64, 0u64, 0u64);
    for &seed in &seeds {
        let params = ClusterParams {
            seed,
            nodes,
            sim_seconds: args.sim_seconds,
            per_node_rate: args.per_node_rate,
            connections_max: args.connections_max,
            message_rate_max: args.site_rate,
            faults: !args.no_faults,
        };
        match run_cluster(&params) {
            Ok(report) => {
                delivered += report.delivered;
                sim_ms += report.sim_ms;
                calls += report.redis_calls;
                rate += report.traffic_rate;
                peak = peak.max(report.connections_peak);
                crashes += report.crashes;
                outages += report.outages;
                rate_peak = rate_peak.max(report.messages_per_second_peak);
            }
            Err(failure) => {
                eprintln!("{failure}");
                eprintln!("replay: baton-sim --cluster {nodes} --seed {seed:#x}");
                return ExitCode::FAILURE;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{nodes} nodes, {} seeds in {wall:.1} s: {delivered} delivered, {:.0} a simulated second during the traffic, \
         peak {peak} connections (limit {}), peak {rate_peak} messages started in a second (rate {}), \
         {crashes} node crashes, {outages} Redis outages, {:.4} Redis calls per delivered message, \
         {:.0} simulated s in all",
        seeds.len(),
        rate / seeds.len() as f64,
        args.connections_max,
        args.site_rate,
        calls as f64 / delivered.max(1) as f64,
        sim_ms as f64 / 1000.0,
    );
    ExitCode::SUCCESS
}
