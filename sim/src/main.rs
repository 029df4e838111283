//! `baton-sim`: one seed (`--seed S`, printing the history of a failure),
//! or many (`--seeds N`, or `--hours H` of wall time) for a soak, with
//! seeds per second and simulated time covered.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton_sim::{run, Params};
use clap::Parser;

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
    /// Power cuts reorder unsynced writes (a later one kept, an earlier
    /// one lost) instead of tearing them at one point.
    #[arg(long)]
    reorder: bool,
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
    let params = |seed| Params {
        sim_seconds: args.sim_seconds,
        messages_per_second: args.rate,
        reorder: args.reorder,
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
    let started = Instant::now();
    let deadline = args
        .hours
        .map(|h| started + Duration::from_secs_f64(h * 3600.0));
    let (mut seeds, mut sim_ms, mut messages) = (0u64, 0u64, 0u64);
    let mut seed = args.first;
    loop {
        let done = match deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => seeds >= args.seeds,
        };
        if done {
            break;
        }
        match run(&params(seed)) {
            Ok(report) => {
                sim_ms += report.sim_ms;
                messages += report.messages_acknowledged;
            }
            Err(failure) => {
                eprintln!("{failure}");
                eprintln!("replay: baton-sim --seed {seed:#x}");
                return ExitCode::FAILURE;
            }
        }
        seeds += 1;
        seed += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds in {wall:.1} s ({:.2} seeds/s): {:.0} simulated s ({:.0} simulated s per wall s), {messages} messages acknowledged",
        seeds as f64 / wall,
        sim_ms as f64 / 1000.0,
        sim_ms as f64 / 1000.0 / wall
    );
    ExitCode::SUCCESS
}
