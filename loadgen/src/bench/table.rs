//! The results of a bench: one row per path, as a text table for people
//! and JSON for `bench/results/`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::latency::LatencySummary;

/// Which transports a bench runs (`--tls [MODE]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text on every hop of every path.
    #[default]
    Off,
    /// STARTTLS on every hop of every path (`--tls` alone).
    On,
    /// Every path twice, plain text and then STARTTLS on every hop: both
    /// rows in one table.
    Both,
}

impl TlsMode {
    /// The transports each path runs over, in order: `false` plain text,
    /// `true` STARTTLS on every hop.
    pub fn passes(self) -> &'static [bool] {
        match self {
            TlsMode::Off => &[false],
            TlsMode::On => &[true],
            TlsMode::Both => &[false, true],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Both => "both",
        }
    }
}

/// The load every path of a bench carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "ScenarioWire")]
pub struct Scenario {
    pub connections: u64,
    pub count: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub size: String,
    pub rcpts: u16,
    /// STARTTLS on every hop of every row (`bench --tls`, `--tls on`);
    /// false for `--tls both`, whose rows each say. Absent in results
    /// written before the option existed, which were all plain text.
    pub tls: bool,
    /// `--tls`'s mode; in results written before it existed, read from
    /// `tls`.
    pub tls_mode: TlsMode,
}

/// A scenario as read: `tls_mode` may be missing (results written before
/// `--tls both`), and `tls` too (before `--tls`).
#[derive(Deserialize)]
struct ScenarioWire {
    connections: u64,
    count: Option<u64>,
    duration_seconds: Option<f64>,
    size: String,
    rcpts: u16,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    tls_mode: Option<TlsMode>,
}

impl From<ScenarioWire> for Scenario {
    fn from(wire: ScenarioWire) -> Scenario {
        let tls_mode = wire
            .tls_mode
            .unwrap_or(if wire.tls { TlsMode::On } else { TlsMode::Off });
        Scenario {
            connections: wire.connections,
            count: wire.count,
            duration_seconds: wire.duration_seconds,
            size: wire.size,
            rcpts: wire.rcpts,
            tls: wire.tls,
            tls_mode,
        }
    }
}

/// One path: `direct` (send → sink), or a relay (send → relay → sink),
/// over plain text or TLS.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// `direct`, `baton`, `postfix`, `kumomta`, `kumomta-sync`: the same
    /// for a path's plain and TLS rows.
    pub path: String,
    /// STARTTLS on every hop of this row. In results written before
    /// `--tls both` it is missing, and read from the scenario's `tls`.
    #[serde(default)]
    pub tls: bool,
    /// Messages the first hop (sink or relay) accepted from `send`.
    pub messages_sent: u64,
    /// `send`'s rate: how fast the first hop accepted.
    pub sent_per_second: f64,
    /// Distinct messages that reached the sink.
    pub messages_delivered: u64,
    /// Delivered messages over the time from the start of `send` to the
    /// last delivery; None when nothing arrived.
    pub delivered_per_second: Option<f64>,
    /// `delivered_per_second` over the direct path's (the plain one's in a
    /// `--tls both` run).
    pub ratio: Option<f64>,
    /// A TLS row of a `--tls both` run: `delivered_per_second` over that of
    /// the same path's plain row. None otherwise, or when either row
    /// delivered nothing.
    #[serde(default)]
    pub tls_over_plain: Option<f64>,
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
#[serde(from = "BenchResultWire")]
pub struct BenchResult {
    /// When it started, RFC 3339 in UTC.
    pub started: String,
    pub host: String,
    pub cpus: usize,
    pub scenario: Scenario,
    pub rows: Vec<Row>,
}

/// A bench as read: before `--tls both`, rows did not say whether they
/// ran over TLS; the scenario did, for all of them.
#[derive(Deserialize)]
struct BenchResultWire {
    started: String,
    host: String,
    cpus: usize,
    scenario: ScenarioWire,
    rows: Vec<Row>,
}

impl From<BenchResultWire> for BenchResult {
    fn from(wire: BenchResultWire) -> BenchResult {
        let mut rows = wire.rows;
        if wire.scenario.tls_mode.is_none() {
            for row in &mut rows {
                row.tls = wire.scenario.tls;
            }
        }
        BenchResult {
            started: wire.started,
            host: wire.host,
            cpus: wire.cpus,
            scenario: wire.scenario.into(),
            rows,
        }
    }
}

impl BenchResult {
    /// The table for people, and the lines under it: with `--tls both`,
    /// each path's TLS rate over its plain rate; then the notes.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let scenario = &self.scenario;
        let amount = match (scenario.count, scenario.duration_seconds) {
            (Some(count), _) => format!("{count} messages"),
            (None, Some(seconds)) => format!("{seconds} s"),
            (None, None) => String::new(),
        };
        let transport = match scenario.tls_mode {
            TlsMode::Off => "tls: false",
            TlsMode::On => "tls: true, STARTTLS on every hop",
            TlsMode::Both => "tls: both, each path plain then with STARTTLS on every hop",
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
        if scenario.tls_mode == TlsMode::Both {
            let fractions: Vec<String> = self
                .rows
                .iter()
                .filter(|row| row.tls)
                .map(|row| {
                    let fraction = row
                        .tls_over_plain
                        .map_or_else(|| "-".to_string(), |f| format!("{f:.2}"));
                    format!("{} {fraction}", row.path)
                })
                .collect();
            let _ = writeln!(
                out,
                "TLS / plain (delivered msg/s, each path against its own plain row): {}",
                fractions.join(", ")
            );
        }
        for row in &self.rows {
            for note in &row.notes {
                let _ = writeln!(out, "- {}: {note}", row.label());
            }
        }
        out
    }
}

impl Row {
    /// The row's name in the table: its path, and `+tls` when it ran over
    /// TLS (`baton`, `baton+tls`).
    pub fn label(&self) -> String {
        if self.tls {
            format!("{}+tls", self.path)
        } else {
            self.path.clone()
        }
    }

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
            self.label(),
            self.sent_per_second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(tls_mode: TlsMode) -> Scenario {
        Scenario {
            connections: 50,
            count: Some(2000),
            size: "5KiB".into(),
            rcpts: 1,
            tls: tls_mode == TlsMode::On,
            tls_mode,
            ..Scenario::default()
        }
    }

    fn result(tls_mode: TlsMode, rows: Vec<Row>) -> BenchResult {
        BenchResult {
            started: "2026-12-06T10:00:00Z".into(),
            host: "h".into(),
            cpus: 2,
            scenario: scenario(tls_mode),
            rows,
        }
    }

    /// A row that delivered `sent` messages at `rate`, latency 1.5/4 ms.
    fn row(path: &str, tls: bool, rate: f64, ratio: f64, tls_over_plain: Option<f64>) -> Row {
        Row {
            path: path.into(),
            tls,
            messages_sent: 2000,
            sent_per_second: rate,
            messages_delivered: 2000,
            delivered_per_second: Some(rate),
            ratio: Some(ratio),
            tls_over_plain,
            latency_end_to_end: LatencySummary {
                count: 2000,
                p50_ms: 1.5,
                p99_ms: 4.0,
                ..LatencySummary::default()
            },
            messages_lost: Some(0),
            ..Row::default()
        }
    }

    /// The rows of a `--tls both` run with direct and baton, baton's TLS
    /// row with a note.
    fn both_rows() -> Vec<Row> {
        let mut baton_tls = row("baton", true, 16000.0, 0.16, Some(0.8));
        baton_tls
            .notes
            .push("3 of 2000 messages reached the sink without TLS".into());
        vec![
            row("direct", false, 100000.0, 1.0, None),
            row("direct", true, 79000.0, 0.79, Some(0.79)),
            row("baton", false, 20000.0, 0.2, None),
            baton_tls,
        ]
    }

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
        let plain = result(TlsMode::Off, Vec::new()).text();
        assert!(
            plain.starts_with(
                "loadgen bench: 2000 messages of 5KiB, 1 recipient(s), 50 connections, \
                 tls: false (h, 2 cpus, 2026-12-06T10:00:00Z)\n"
            ),
            "{plain}"
        );
        assert!(result(TlsMode::On, Vec::new())
            .text()
            .contains(", tls: true, STARTTLS on every hop ("));
        assert!(result(TlsMode::Both, Vec::new())
            .text()
            .contains(", tls: both, each path plain then with STARTTLS on every hop ("));
    }

    #[test]
    fn a_both_run_has_plain_and_tls_rows_and_each_paths_fraction_under_the_table() {
        let text = result(TlsMode::Both, both_rows()).text();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "| path | sent msg/s | delivered msg/s | ratio | p50 ms | p99 ms | lost | duplicated |",
                "|---|---|---|---|---|---|---|---|",
                "| direct | 100000 | 100000 | 1.00 | 1.5 | 4.0 | 0 | 0 |",
                "| direct+tls | 79000 | 79000 | 0.79 | 1.5 | 4.0 | 0 | 0 |",
                "| baton | 20000 | 20000 | 0.20 | 1.5 | 4.0 | 0 | 0 |",
                "| baton+tls | 16000 | 16000 | 0.16 | 1.5 | 4.0 | 0 | 0 |",
                "TLS / plain (delivered msg/s, each path against its own plain row): \
                 direct 0.79, baton 0.80",
                "- baton+tls: 3 of 2000 messages reached the sink without TLS",
            ]
        );
    }

    #[test]
    fn a_tls_row_without_a_fraction_shows_a_dash() {
        let mut rows = both_rows();
        rows[3].tls_over_plain = None;
        let text = result(TlsMode::Both, rows).text();
        assert!(text.contains(": direct 0.79, baton -\n"), "{text}");
    }

    #[test]
    fn only_a_both_run_has_the_fraction_line() {
        let rows = vec![row("direct", true, 79000.0, 1.0, None)];
        let text = result(TlsMode::On, rows).text();
        assert!(text.contains("| direct+tls | 79000 |"), "{text}");
        assert!(!text.contains("TLS / plain"), "{text}");
    }

    #[test]
    fn the_json_says_the_mode_and_which_rows_are_tls() {
        let json = serde_json::to_value(result(TlsMode::Both, both_rows())).expect("JSON");
        assert_eq!(json["scenario"]["tls_mode"], "both");
        assert_eq!(json["scenario"]["tls"], false, "not every row is TLS");
        let rows = json["rows"].as_array().expect("rows");
        let kinds: Vec<(&str, bool)> = rows
            .iter()
            .map(|r| (r["path"].as_str().unwrap(), r["tls"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("direct", false),
                ("direct", true),
                ("baton", false),
                ("baton", true)
            ]
        );
        assert_eq!(rows[2]["tls_over_plain"], serde_json::Value::Null);
        assert_eq!(rows[3]["tls_over_plain"], 0.8);

        let read: BenchResult = serde_json::from_value(json).expect("read back");
        assert_eq!(read.scenario.tls_mode, TlsMode::Both);
        assert_eq!(
            read.rows.iter().map(|r| r.tls).collect::<Vec<_>>(),
            [false, true, false, true]
        );
        let on = serde_json::to_value(result(TlsMode::On, Vec::new())).expect("JSON");
        assert_eq!(on["scenario"]["tls_mode"], "on");
        assert_eq!(on["scenario"]["tls"], true);
    }

    #[test]
    fn results_written_before_tls_existed_read_as_plain() {
        let old =
            r#"{"connections":50,"count":100,"duration_seconds":null,"size":"5KiB","rcpts":1}"#;
        let scenario: Scenario = serde_json::from_str(old).expect("old scenario");
        assert!(!scenario.tls);
        assert_eq!(scenario.tls_mode, TlsMode::Off);
    }

    #[test]
    fn results_of_a_tls_run_before_both_existed_read_as_tls_rows() {
        let old = r#"{"started":"2026-12-06T10:00:00Z","host":"h","cpus":2,
            "scenario":{"connections":50,"count":100,"duration_seconds":null,
                        "size":"5KiB","rcpts":1,"tls":true},
            "rows":[{"path":"direct","messages_sent":100,"sent_per_second":1.0,
                     "messages_delivered":100,"delivered_per_second":1.0,"ratio":1.0,
                     "latency_end_to_end":{"count":0,"mean_ms":0.0,"p50_ms":0.0,
                        "p90_ms":0.0,"p99_ms":0.0,"p999_ms":0.0,"max_ms":0.0},
                     "messages_lost":0,"duplicated_deliveries":0,"notes":[]}]}"#;
        let result: BenchResult = serde_json::from_str(old).expect("old result");
        assert_eq!(result.scenario.tls_mode, TlsMode::On);
        assert!(result.rows[0].tls, "every row of a --tls run was TLS");
        assert_eq!(result.rows[0].tls_over_plain, None);
    }
}
