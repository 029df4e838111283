//! The results of a bench: one row per path, as a text table for people
//! and JSON for `bench/results/`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::latency::LatencySummary;

/// The load every path of a bench carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scenario {
    pub connections: u64,
    pub count: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub size: String,
    pub rcpts: u16,
    /// STARTTLS on every hop (`bench --tls`); absent in results written
    /// before the option existed, which were all plain text.
    #[serde(default)]
    pub tls: bool,
}

/// One path: `direct` (send → sink), or a relay (send → relay → sink).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    pub path: String,
    /// Messages the first hop (sink or relay) accepted from `send`.
    pub messages_sent: u64,
    /// `send`'s rate: how fast the first hop accepted.
    pub sent_per_second: f64,
    /// Distinct messages that reached the sink.
    pub messages_delivered: u64,
    /// Delivered messages over the time from the start of `send` to the
    /// last delivery; None when nothing arrived.
    pub delivered_per_second: Option<f64>,
    /// `delivered_per_second` over the direct path's.
    pub ratio: Option<f64>,
    /// From each message's `X-Loadgen-Sent` to its acceptance by the sink.
    pub latency_end_to_end: LatencySummary,
    /// Sent (accepted by the first hop) and never delivered.
    pub messages_lost: Option<u64>,
    /// Recipients of one message delivered more than once.
    pub duplicated_deliveries: u64,
    /// What the figures do not say by themselves.
    pub notes: Vec<String>,
}

/// A whole bench.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchResult {
    /// When it started, RFC 3339 in UTC.
    pub started: String,
    pub host: String,
    pub cpus: usize,
    pub scenario: Scenario,
    pub rows: Vec<Row>,
}

impl BenchResult {
    /// The table for people, and the notes under it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let scenario = &self.scenario;
        let amount = match (scenario.count, scenario.duration_seconds) {
            (Some(count), _) => format!("{count} messages"),
            (None, Some(seconds)) => format!("{seconds} s"),
            (None, None) => String::new(),
        };
        let transport = if scenario.tls {
            "tls: true, STARTTLS on every hop"
        } else {
            "tls: false"
        };
        let _ = writeln!(
            out,
            "loadgen bench: {amount} of {}, {} recipient(s), {} connections, {transport} ({}, {} cpus, {})",
            scenario.size, scenario.rcpts, scenario.connections, self.host, self.cpus, self.started
        );
        let _ = writeln!(
            out,
            "| path | sent msg/s | delivered msg/s | ratio | p50 ms | p99 ms | lost | duplicated |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let _ = writeln!(out, "{}", row.text());
        }
        for row in &self.rows {
            for note in &row.notes {
                let _ = writeln!(out, "- {}: {note}", row.path);
            }
        }
        out
    }
}

impl Row {
    /// One line of the table (Markdown, so it pastes into a README).
    fn text(&self) -> String {
        let dash = || "-".to_string();
        let delivered = self
            .delivered_per_second
            .map_or_else(dash, |r| format!("{r:.0}"));
        let ratio = self.ratio.map_or_else(dash, |r| format!("{r:.2}"));
        let latency = &self.latency_end_to_end;
        let (p50, p99) = if latency.count == 0 {
            (dash(), dash())
        } else {
            (
                format!("{:.1}", latency.p50_ms),
                format!("{:.1}", latency.p99_ms),
            )
        };
        let lost = self.messages_lost.map_or_else(dash, |n| n.to_string());
        let duplicated = if self.messages_delivered == 0 {
            dash()
        } else {
            self.duplicated_deliveries.to_string()
        };
        format!(
            "| {} | {:.0} | {delivered} | {ratio} | {p50} | {p99} | {lost} | {duplicated} |",
            self.path, self.sent_per_second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_that_delivered_nothing_shows_no_figures() {
        let row = Row {
            path: "baton".into(),
            messages_sent: 100,
            sent_per_second: 1234.4,
            notes: vec!["relay delivered 0 of 100".into()],
            ..Row::default()
        };
        assert_eq!(row.text(), "| baton | 1234 | - | - | - | - | - | - |");
    }

    #[test]
    fn the_header_says_whether_the_run_was_tls() {
        let mut result = BenchResult {
            started: "2026-12-06T10:00:00Z".into(),
            host: "h".into(),
            cpus: 2,
            scenario: Scenario {
                connections: 50,
                count: Some(2000),
                size: "5KiB".into(),
                rcpts: 1,
                ..Scenario::default()
            },
            rows: Vec::new(),
        };
        let plain = result.text();
        assert!(
            plain.starts_with(
                "loadgen bench: 2000 messages of 5KiB, 1 recipient(s), 50 connections, \
                 tls: false (h, 2 cpus, 2026-12-06T10:00:00Z)\n"
            ),
            "{plain}"
        );
        result.scenario.tls = true;
        assert!(result
            .text()
            .contains(", tls: true, STARTTLS on every hop ("));
    }

    #[test]
    fn results_written_before_tls_existed_read_as_plain() {
        let old =
            r#"{"connections":50,"count":100,"duration_seconds":null,"size":"5KiB","rcpts":1}"#;
        let scenario: Scenario = serde_json::from_str(old).expect("old scenario");
        assert!(!scenario.tls);
    }
}
