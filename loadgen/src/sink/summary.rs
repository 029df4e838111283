//! The sink's summary: JSON for tests and `bench`, text for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::record::IdSummary;
use crate::latency::LatencySummary;
use crate::units::format_bytes;

/// Counts over one second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecondSample {
    /// Seconds since the sink started (the end of this second).
    pub second: u64,
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
    /// Connections open at the end of the second.
    pub connections: u64,
}

/// Everything the sink saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkSummary {
    pub listen: String,
    pub duration_seconds: f64,
    pub connections: u64,
    pub connections_peak: u64,
    /// Turned away with 421 past --max-connections.
    pub connections_over_limit: u64,
    pub messages_accepted: u64,
    /// Of those, the messages that came after STARTTLS.
    #[serde(default)]
    pub messages_tls: u64,
    pub recipients_accepted: u64,
    pub bytes_accepted: u64,
    /// Messages answered with an error after their content.
    pub messages_refused: u64,
    pub recipients_refused: u64,
    /// Connections closed on purpose, without a reply.
    pub disconnects: u64,
    /// Connections closed on purpose after a reply (`--close-after`).
    #[serde(default)]
    pub closed_after: u64,
    /// Accepted messages by `client-address EHLO-name`: which source a
    /// relay sent each from.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, u64>,
    /// AUTH commands received (with `--auth`).
    #[serde(default)]
    pub auth_attempts: u64,
    /// AUTH exchanges answered 235.
    #[serde(default)]
    pub auth_successes: u64,
    /// AUTH exchanges refused: wrong credentials, or tried before TLS.
    #[serde(default)]
    pub auth_failures: u64,
    /// From the first accepted message to the last.
    pub busy_seconds: f64,
    /// Over the busy span.
    pub messages_per_second: f64,
    /// The busiest second.
    pub messages_per_second_peak: u64,
    /// Count of each reply code the sink sent.
    pub replies: BTreeMap<u16, u64>,
    pub ids: IdSummary,
    /// From each message's `X-Loadgen-Sent` to its acceptance here.
    pub latency_end_to_end: LatencySummary,
    /// Set when --verify could not read the report.
    pub verify_error: Option<String>,
    pub per_second: Vec<SecondSample>,
}

impl SinkSummary {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "loadgen sink on {}", self.listen);
        let _ = writeln!(
            out,
            "  duration     {:.2} s, {:.2} s from the first message to the last",
            self.duration_seconds, self.busy_seconds
        );
        let _ = writeln!(
            out,
            "  connections  {} (peak {} at once, {} over the limit)",
            self.connections, self.connections_peak, self.connections_over_limit
        );
        let _ = writeln!(
            out,
            "  messages     {} accepted, {} refused ({:.1}/s, peak {}/s)",
            self.messages_accepted,
            self.messages_refused,
            self.messages_per_second,
            self.messages_per_second_peak
        );
        if self.messages_tls > 0 {
            let _ = writeln!(
                out,
                "  tls          {} messages after STARTTLS",
                self.messages_tls
            );
        }
        let _ = writeln!(
            out,
            "  recipients   {} accepted, {} refused",
            self.recipients_accepted, self.recipients_refused
        );
        let _ = writeln!(
            out,
            "  bytes        {}",
            format_bytes(self.bytes_accepted as f64)
        );
        let _ = writeln!(out, "  disconnects  {} (scripted)", self.disconnects);
        if self.closed_after > 0 {
            let _ = writeln!(out, "  closed after {} (--close-after)", self.closed_after);
        }
        if self.auth_attempts > 0 {
            let _ = writeln!(
                out,
                "  auth         {} attempts, {} succeeded, {} failed",
                self.auth_attempts, self.auth_successes, self.auth_failures
            );
        }
        let codes: Vec<String> = self
            .replies
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect();
        let _ = writeln!(out, "  replies      {}", codes.join(", "));
        let ids = &self.ids;
        let _ = writeln!(
            out,
            "  ids          {} distinct, {} deliveries, {} duplicated ({} messages), {} without id",
            ids.distinct_ids,
            ids.deliveries,
            ids.duplicated_deliveries,
            ids.duplicated_messages,
            ids.messages_without_id
        );
        if ids.records_truncated {
            let _ = writeln!(
                out,
                "  ids          recording stopped at its limit: counts are partial"
            );
        }
        if let Some(verify) = &ids.verify {
            let _ = writeln!(
                out,
                "  verify       run {}: {} messages expected, {} lost, {} recipients lost, {} unexpected",
                verify.run_id,
                verify.expected_messages,
                verify.messages_lost,
                verify.recipients_lost,
                verify.messages_unexpected
            );
        }
        if let Some(error) = &self.verify_error {
            let _ = writeln!(out, "  verify       failed: {error}");
        }
        let _ = writeln!(out, "{}", LatencySummary::text_header("latency ms"));
        let _ = writeln!(out, "{}", self.latency_end_to_end.text_row("end to end"));
        out
    }
}
