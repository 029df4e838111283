//! Retries and expiry: when a deferred recipient is tried again, and when
//! it has waited long enough to fail.

use std::time::Duration;

use crate::outbound::Awaiting;

/// What delivery needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Waits between attempts; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// Undelivered this long after arrival: fail and bounce.
    pub max_age: Duration,
    /// Permanent failures are deferred instead (`[delivery] soft_bounce`).
    pub soft_bounce: bool,
    pub timeouts: Timeouts,
    /// How long an idle connection waits for more work before QUIT.
    pub idle_timeout: Duration,
    /// The first pause after a destination failed us; doubles up to
    /// `pause_max`.
    pub pause: Duration,
    pub pause_max: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        DeliverySettings {
            retry_schedule: [1, 5, 15, 30, 60, 120, 240].map(minutes).to_vec(),
            max_age: Duration::from_secs(5 * 24 * 3600),
            soft_bounce: false,
            timeouts: Timeouts::default(),
            idle_timeout: Duration::from_secs(2),
            pause: Duration::from_secs(1),
            pause_max: minutes(5),
        }
    }
}

/// Client timeouts, RFC 5321 §4.5.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub helo: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    /// For the `354` to DATA.
    pub data: Duration,
    /// For each write of the body.
    pub data_block: Duration,
    /// For the reply to the final `.`.
    pub dot: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: minutes(5),
            helo: minutes(5),
            mail: minutes(5),
            rcpt: minutes(5),
            data: minutes(2),
            data_block: minutes(3),
            dot: minutes(10),
        }
    }
}

impl Timeouts {
    /// The wait for the reply the client is waiting for.
    pub fn for_reply(&self, awaiting: Awaiting) -> Duration {
        match awaiting {
            Awaiting::Greeting => self.greeting,
            // AUTH is part of the session's opening, as EHLO is.
            Awaiting::Ehlo | Awaiting::Helo | Awaiting::StartTls | Awaiting::Auth => self.helo,
            Awaiting::Rset | Awaiting::Mail | Awaiting::Quit => self.mail,
            Awaiting::Rcpt(_) => self.rcpt,
            Awaiting::Data => self.data,
            Awaiting::Dot => self.dot,
        }
    }
}

/// What becomes of a recipient that got a temporary failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Try again at this Unix ms time; `attempts` so far.
    At { attempts: u32, next_attempt_ms: u64 },
    /// Past the maximum age: fail it.
    Expired { attempts: u32 },
}

impl DeliverySettings {
    /// The fate of a recipient deferred on its `attempts`-th attempt
    /// (1-based) of a message that arrived at `arrival_ms`.
    pub fn retry(&self, attempts: u32, arrival_ms: u64, now_ms: u64) -> Retry {
        let age_ms = now_ms.saturating_sub(arrival_ms);
        if u128::from(age_ms) >= self.max_age.as_millis() {
            return Retry::Expired { attempts };
        }
        let step = (attempts.max(1) - 1) as usize;
        let wait = self
            .retry_schedule
            .get(step)
            .or(self.retry_schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(60));
        Retry::At {
            attempts,
            next_attempt_ms: now_ms.saturating_add(wait.as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_followed_and_its_last_step_repeats() {
        let settings = DeliverySettings::default();
        let at = |attempts| match settings.retry(attempts, 0, 1000) {
            Retry::At {
                next_attempt_ms, ..
            } => next_attempt_ms - 1000,
            Retry::Expired { .. } => panic!("not expired"),
        };
        assert_eq!(at(1), 60_000);
        assert_eq!(at(2), 300_000);
        assert_eq!(at(7), 4 * 3_600_000);
        assert_eq!(at(30), 4 * 3_600_000);
    }

    #[test]
    fn old_messages_expire() {
        let settings = DeliverySettings {
            max_age: Duration::from_secs(10),
            ..DeliverySettings::default()
        };
        assert_eq!(
            settings.retry(3, 1_000, 11_000),
            Retry::Expired { attempts: 3 }
        );
        assert!(matches!(settings.retry(3, 1_000, 10_999), Retry::At { .. }));
    }
}
