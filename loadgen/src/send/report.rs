//! `send`'s final report: JSON for machines (and the sink's `--verify`),
//! text for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::client::Stage;
use crate::ids::AcceptedSet;
use crate::latency::LatencySummary;
use crate::units::format_bytes;

/// Latencies of accepted messages.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    /// TCP connect to ready for MAIL (greeting, EHLO, STARTTLS, AUTH).
    pub connect: LatencySummary,
    /// MAIL written to the reply to the final `.`.
    pub transaction: LatencySummary,
    /// Due time (open loop: on the schedule; closed loop: when taken) to
    /// the reply to the final `.`.
    pub message: LatencySummary,
}

/// Connection errors of one kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorCount {
    pub count: u64,
    pub first: String,
}

/// Everything a run of `send` measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SendReport {
    pub target: String,
    /// The run's id in hex, as in each message's `X-Loadgen-Id`.
    pub run_id: String,
    pub seed: u64,
    /// `closed` or `open`.
    pub mode: String,
    pub rate_target: Option<f64>,
    pub connections: u64,
    pub pipelining: bool,
    pub duration_seconds: f64,
    pub messages_accepted: u64,
    pub messages_failed: u64,
    pub recipients_accepted: u64,
    pub recipients_refused: u64,
    pub bytes_accepted: u64,
    pub messages_per_second: f64,
    pub recipients_per_second: f64,
    pub bytes_per_second: f64,
    pub connections_opened: u64,
    pub connection_errors: BTreeMap<String, ErrorCount>,
    /// Count of each reply code, by the command it answered.
    pub replies: BTreeMap<String, BTreeMap<u16, u64>>,
    /// The text of the first reply of each error code, by command.
    pub reply_samples: BTreeMap<String, String>,
    pub latency: LatencyReport,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
    /// The messages accepted, for the sink's `--verify`.
    pub accepted: AcceptedSet,
}

impl SendReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mode = match self.rate_target {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop".to_string(),
        };
        let pipelining = if self.pipelining {
            "pipelining"
        } else {
            "no pipelining"
        };
        let _ = writeln!(
            out,
            "loadgen send to {}: {} connections, {mode}, {pipelining}, run {} (seed {})",
            self.target, self.connections, self.run_id, self.seed
        );
        let _ = writeln!(out, "  duration     {:.2} s", self.duration_seconds);
        let _ = writeln!(
            out,
            "  messages     {} accepted, {} failed ({:.1}/s)",
            self.messages_accepted, self.messages_failed, self.messages_per_second
        );
        let _ = writeln!(
            out,
            "  recipients   {} accepted, {} refused ({:.1}/s)",
            self.recipients_accepted, self.recipients_refused, self.recipients_per_second
        );
        let _ = writeln!(
            out,
            "  bytes        {} ({}/s)",
            format_bytes(self.bytes_accepted as f64),
            format_bytes(self.bytes_per_second)
        );
        let errors: u64 = self.connection_errors.values().map(|e| e.count).sum();
        let _ = writeln!(
            out,
            "  connections  {} opened, {errors} errors",
            self.connections_opened
        );
        for (kind, error) in &self.connection_errors {
            let _ = writeln!(
                out,
                "    {kind:<10} {:>8}  first: {}",
                error.count, error.first
            );
        }
        let _ = writeln!(out, "  replies");
        // In the order of a session.
        let order = |stage: &String| Stage::ALL.iter().position(|s| s.as_str() == stage);
        let mut stages: Vec<_> = self.replies.iter().collect();
        stages.sort_by_key(|(stage, _)| order(stage));
        for (stage, codes) in stages {
            let counts: Vec<String> = codes
                .iter()
                .map(|(code, n)| format!("{code} x{n}"))
                .collect();
            let _ = writeln!(out, "    {stage:<10} {}", counts.join(", "));
        }
        for (key, text) in &self.reply_samples {
            let _ = writeln!(out, "    first {key}: {text}");
        }
        let _ = writeln!(out, "{}", LatencySummary::text_header("latency ms"));
        let latency = &self.latency;
        let _ = writeln!(out, "{}", latency.connect.text_row("connect"));
        let _ = writeln!(out, "{}", latency.transaction.text_row("transaction"));
        let _ = writeln!(out, "{}", latency.message.text_row("message"));
        if let Some(fatal) = &self.fatal {
            let _ = writeln!(out, "  stopped: {fatal}");
        }
        out
    }
}

impl SendReport {
    /// Why a run in which no message was accepted failed, in one line:
    /// the refusal at the earliest step of the session.
    pub fn why_nothing_accepted(&self) -> String {
        let refusal = Stage::ALL.iter().find_map(|stage| {
            self.reply_samples
                .iter()
                .find(|(key, _)| key.split(' ').next() == Some(stage.as_str()))
                .map(|(_, text)| (*stage, text))
        });
        match refusal {
            Some((Stage::Mail, text)) => format!("the server refused the sender: {text}"),
            Some((Stage::Rcpt, text)) => format!("the server refused the recipients: {text}"),
            Some((stage, text)) => format!("the server accepted no message ({stage}: {text})"),
            None => match self.connection_errors.values().next() {
                Some(error) => format!("the server accepted no message ({})", error.first),
                None => "the server accepted no message".to_string(),
            },
        }
    }
}

/// The part of a send report the sink reads for `--verify`.
#[derive(Clone, Debug, Deserialize)]
pub struct AcceptedRun {
    pub run_id: String,
    pub accepted: AcceptedSet,
}
