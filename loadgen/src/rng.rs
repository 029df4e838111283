//! Seeded randomness: every random choice of a run comes from here, so a
//! run reproduces from the seed its report prints.
//!
//! xoshiro256++ seeded through SplitMix64: fast, small, and good enough
//! for picking sizes, domains and injected failures; not for secrets.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

/// A seeded pseudo-random generator (xoshiro256++).
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut mix = seed;
        let mut state = [0; 4];
        for word in &mut state {
            *word = splitmix64(&mut mix);
        }
        Rng { state }
    }

    /// An independent generator for one worker or connection of a run.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut mix = seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F);
        Rng::new(splitmix64(&mut mix))
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the tiny bias is of
    /// no consequence here). `bound` 0 gives 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for runs that were not given one.
pub fn seed_from_time() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut mix = nanos ^ u64::from(std::process::id()).rotate_left(32);
    splitmix64(&mut mix)
}

/// Values drawn with weights.
#[derive(Clone, Debug)]
pub struct Weighted<T> {
    items: Vec<T>,
    /// Running totals of the weights, one per item.
    cumulative: Vec<u64>,
}

impl<T> Weighted<T> {
    /// From `(value, weight)` pairs; weights of zero are dropped.
    pub fn new(pairs: impl IntoIterator<Item = (T, u64)>) -> anyhow::Result<Weighted<T>> {
        let mut items = Vec::new();
        let mut cumulative = Vec::new();
        let mut total: u64 = 0;
        for (item, weight) in pairs {
            if weight == 0 {
                continue;
            }
            total = total.checked_add(weight).context("weights overflow")?;
            items.push(item);
            cumulative.push(total);
        }
        if items.is_empty() {
            bail!("a weighted list needs at least one value with a weight above 0");
        }
        Ok(Weighted { items, cumulative })
    }

    /// One value, drawn with its weight.
    pub fn pick(&self, rng: &mut Rng) -> &T {
        let total = *self.cumulative.last().expect("non-empty by construction");
        let point = rng.below(total);
        let index = self.cumulative.partition_point(|&c| c <= point);
        &self.items[index]
    }

    /// The values, in the order given.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Parses `value[:weight]` items (weight 1 when absent).
pub fn parse_weighted_items<T>(
    items: &[String],
    parse: impl Fn(&str) -> anyhow::Result<T>,
) -> anyhow::Result<Weighted<T>> {
    let pairs = items
        .iter()
        .map(|item| {
            let (value, weight) = match item.rsplit_once(':') {
                Some((value, weight)) => {
                    let weight = weight
                        .trim()
                        .parse::<u64>()
                        .with_context(|| format!("bad weight in {item:?}"))?;
                    (value, weight)
                }
                None => (item.as_str(), 1),
            };
            Ok((parse(value.trim())?, weight))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Weighted::new(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut c = Rng::derive(42, 1);
        let mut d = Rng::derive(42, 2);
        assert_ne!(c.next_u64(), d.next_u64());
    }

    #[test]
    fn below_and_chance_stay_in_range() {
        let mut rng = Rng::new(7);
        assert!((0..10_000).all(|_| rng.below(10) < 10));
        assert_eq!(rng.below(0), 0);
        assert!((0..1000).all(|_| !rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
        let hits = (0..100_000).filter(|_| rng.chance(0.25)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }

    #[test]
    fn weights_are_respected() {
        let items = vec!["a:3".to_string(), "b".to_string(), "c:0".to_string()];
        let weighted = parse_weighted_items(&items, |s| Ok(s.to_string())).unwrap();
        assert_eq!(weighted.len(), 2);
        let mut rng = Rng::new(1);
        let a = (0..40_000)
            .filter(|_| weighted.pick(&mut rng) == "a")
            .count();
        assert!((29_000..31_000).contains(&a), "{a}");
        assert!(parse_weighted_items(&["x:0".to_string()], |s| Ok(s.to_string())).is_err());
    }
}
