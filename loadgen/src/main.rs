//! The `loadgen` binary: `send`, `sink` and `bench`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use baton_loadgen::{bench, send, sink};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An SMTP load generator and a scriptable SMTP sink.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Send mail to an SMTP server and report rates, reply codes and
    /// latency.
    Send(send::SendArgs),
    /// Accept mail, count it, check it for loss and duplicates, and
    /// misbehave on request.
    Sink(sink::SinkArgs),
    /// Compare the direct path (send → sink) with relays in between
    /// (send → relay → sink): one table, and JSON under bench/results.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match &cli.command {
        Commands::Send(_) => "send",
        Commands::Sink(_) => "sink",
        Commands::Bench(_) => "bench",
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadgen {name}: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.build().context("cannot start the runtime")?;
    match cli.command {
        Commands::Send(args) => runtime.block_on(run_send(args)),
        Commands::Sink(args) => runtime.block_on(run_sink(args)),
        Commands::Bench(args) => runtime
            .block_on(bench::run(args))
            .map(|()| ExitCode::SUCCESS),
    }
}

async fn run_send(args: send::SendArgs) -> anyhow::Result<ExitCode> {
    let report = send::run(args.clone()).await?;
    emit(&report, report.text(), args.json, args.report.as_deref())?;
    if let Some(fatal) = &report.fatal {
        eprintln!("loadgen send: error: {fatal}");
        return Ok(ExitCode::FAILURE);
    }
    if report.messages_accepted == 0 && report.messages_failed > 0 {
        eprintln!("loadgen send: error: {}", report.why_nothing_accepted());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_sink(args: sink::SinkArgs) -> anyhow::Result<ExitCode> {
    let summary = sink::run(args.clone()).await?;
    emit(&summary, summary.text(), args.json, args.report.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints text or JSON on stdout, and JSON to a file when asked.
fn emit<T: serde::Serialize>(
    value: &T,
    text: String,
    json: bool,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let encoded = serde_json::to_string_pretty(value).context("encode the report")?;
    if let Some(path) = file {
        std::fs::write(path, format!("{encoded}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{encoded}")?;
    } else {
        write!(stdout, "{text}")?;
    }
    Ok(())
}
