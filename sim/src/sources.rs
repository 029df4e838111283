//! Sending sources in the simulation: one pool of two, as an operator
//! warming up a new address writes it, built by baton's own `Egress`
//! from its configuration; and the checker's account of the new source's
//! warm-up caps.
//!
//! The simulated clock starts ten seconds before a UTC midnight, so a
//! seed's traffic crosses a day and an hour: the new source spends its
//! first day's hourly cap within seconds, rests (its lane suspended until
//! the next hour, as the shard does), and starts its second day with the
//! second step's caps.

use baton::shaping::egress::{parse_step, Step};

/// The configuration's egress: `warm` (no cap) and `new` (warming up),
/// three connections from `warm` for each from `new`.
pub const EGRESS_TOML: &str = r#"
[[source]]
name = "warm"
address = "127.0.0.2"
ehlo = "warm.baton.sim"

[[source]]
name = "new"
address = "127.0.0.3"
ehlo = "new.baton.sim"
warmup = ["1d:1500:200/h", "2d:3000:400/h", "7d:20000"]

[[pool]]
name = "out"
sources = ["warm:3", "new:1"]

[delivery]
pool = "out"
"#;

/// The source with a warm-up schedule.
pub const WARMING: &str = "new";
/// Its schedule, as [`EGRESS_TOML`] says.
const WARMING_STEPS: [&str; 3] = ["1d:1500:200/h", "2d:3000:400/h", "7d:20000"];

pub const DAY_MS: u64 = 86_400_000;
pub const HOUR_MS: u64 = 3_600_000;

/// What the checker knows of the warming source: the messages it really
/// sent, per UTC day and hour, never forgotten, against its caps.
pub struct WarmupAccount {
    steps: Vec<Step>,
    /// The UTC day it first sent.
    first_day: Option<u64>,
    /// (day, messages sent that day).
    day: (u64, u64),
    hour: (u64, u64),
    /// Messages over a cap the engine may send this day or hour: what it
    /// forgot at crashes (its counts are saved every housekeeping pass,
    /// not with each message, by design).
    forgotten_day: u64,
    forgotten_hour: u64,
    pub sent: u64,
}

impl Default for WarmupAccount {
    fn default() -> WarmupAccount {
        WarmupAccount {
            steps: WARMING_STEPS
                .iter()
                .map(|s| parse_step(s).expect("a valid step"))
                .collect(),
            first_day: None,
            day: (0, 0),
            hour: (0, 0),
            forgotten_day: 0,
            forgotten_hour: 0,
            sent: 0,
        }
    }
}

impl WarmupAccount {
    fn roll(&mut self, now_ms: u64) {
        let (today, hour) = (now_ms / DAY_MS, now_ms / HOUR_MS);
        if self.day.0 != today {
            self.day = (today, 0);
            self.forgotten_day = 0;
        }
        if self.hour.0 != hour {
            self.hour = (hour, 0);
            self.forgotten_hour = 0;
        }
    }

    /// The caps of `today`, `None` once warm.
    fn step(&self, today: u64) -> Option<Step> {
        let day = today - self.first_day.unwrap_or(today).min(today) + 1;
        let last = self.steps.last()?;
        if day > last.day {
            return None;
        }
        self.steps
            .iter()
            .take_while(|step| step.day <= day)
            .last()
            .copied()
    }

    /// A message leaves from the source: within today's and this hour's
    /// caps, give or take what crashes made the engine forget.
    pub fn sent(&mut self, now_ms: u64) -> Result<(), String> {
        self.roll(now_ms);
        self.first_day.get_or_insert(now_ms / DAY_MS);
        self.day.1 += 1;
        self.hour.1 += 1;
        self.sent += 1;
        let Some(step) = self.step(self.day.0) else {
            return Ok(());
        };
        if self.day.1 > step.per_day + self.forgotten_day {
            return Err(format!(
                "source {WARMING} sent {} messages on day {} of its warm-up, its cap is {} (+{} forgotten at crashes)",
                self.day.1, step.day, step.per_day, self.forgotten_day
            ));
        }
        if let Some(cap) = step.per_hour {
            if self.hour.1 > cap + self.forgotten_hour {
                return Err(format!(
                    "source {WARMING} sent {} messages in an hour of day {} of its warm-up, its cap is {cap} an hour (+{} forgotten at crashes)",
                    self.hour.1, step.day, self.forgotten_hour
                ));
            }
        }
        Ok(())
    }

    /// baton restarted with these counts (`sent` today, `hour_sent` this
    /// hour, as its file kept them): what it forgot may be sent again.
    pub fn restarted(&mut self, now_ms: u64, kept_today: u64, kept_this_hour: u64) {
        self.roll(now_ms);
        // The engine's count is the checker's less everything it forgot
        // at every crash this day (hour) so far.
        self.forgotten_day = self
            .forgotten_day
            .max(self.day.1.saturating_sub(kept_today));
        self.forgotten_hour = self
            .forgotten_hour
            .max(self.hour.1.saturating_sub(kept_this_hour));
    }
}
