//! A Bloom filter of the addresses on the suppression list, in front of
//! redb, so that the common lookup (a recipient who is not listed) costs
//! a hash and one cache line instead of a B-tree descent.
//!
//! A blocked filter: each address sets [`BITS_PER_ADDRESS`] bits within
//! one 64-bit word, so a lookup reads one word. "No" is certain; "maybe"
//! goes on to redb. The bits are atomics: the list's writer thread sets
//! them (before it commits, so a committed entry is never missed) while
//! the shards read them, without a lock.
//!
//! Removals leave their bits set: a removed address costs a redb lookup
//! that answers "not listed" until the filter is next rebuilt, which the
//! writer does when the list outgrows the filter's capacity.

#![forbid(unsafe_code)]

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits each address sets in its word.
const BITS_PER_ADDRESS: u32 = 4;
/// Addresses a word holds at the filter's capacity: with 4 bits of 64 set
/// per address, 6 per word gives about 1 % false "maybe"s at capacity,
/// and a quarter of that at the load a rebuild leaves (2/3 of capacity).
const ADDRESSES_PER_WORD: u64 = 6;
/// The smallest filter: 8 KiB, 6,144 addresses.
const WORDS_MIN: u64 = 1024;
/// The largest: 2^32 words (32 GiB) is far beyond any list; the word
/// index is a 32-bit hash scaled to the length.
const WORDS_MAX: u64 = 1 << 32;

pub struct AddressFilter {
    words: Box<[AtomicU64]>,
}

impl AddressFilter {
    /// A filter with room for `addresses` at about 1 % false "maybe"s.
    pub fn with_capacity(addresses: u64) -> AddressFilter {
        let words = addresses
            .div_ceil(ADDRESSES_PER_WORD)
            .clamp(WORDS_MIN, WORDS_MAX);
        AddressFilter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many addresses it holds before false "maybe"s exceed about 1 %.
    pub fn capacity(&self) -> u64 {
        self.words.len() as u64 * ADDRESSES_PER_WORD
    }

    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Adds a lowercased address.
    pub fn insert(&self, address: &[u8]) {
        let (word, bits) = self.place(address);
        self.words[word].fetch_or(bits, Ordering::Relaxed);
    }

    /// `false` if the lowercased `address` was never inserted.
    pub fn may_contain(&self, address: &[u8]) -> bool {
        let (word, bits) = self.place(address);
        self.words[word].load(Ordering::Relaxed) & bits == bits
    }

    /// The word an address lives in, and its bits there: the high 32 bits
    /// of the hash pick the word (scaled, so the length need not be a
    /// power of two), four 6-bit slices of the low bits pick the bits.
    fn place(&self, address: &[u8]) -> (usize, u64) {
        let hash = hash(address);
        let word = ((hash >> 32) * self.words.len() as u64) >> 32;
        let mut bits = 0;
        for i in 0..BITS_PER_ADDRESS {
            bits |= 1 << ((hash >> (6 * i)) & 63);
        }
        (word as usize, bits)
    }
}

/// SipHash-1-3 with fixed keys: the filter is in memory only, so the
/// hash need not be stable across builds, and an attacker who can choose
/// recipients gains at most redb lookups by making the filter say "maybe".
fn hash(address: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(address);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inserted_address_is_always_a_maybe() {
        let filter = AddressFilter::with_capacity(10_000);
        for i in 0..10_000 {
            filter.insert(format!("user{i}@example.com").as_bytes());
        }
        for i in 0..10_000 {
            assert!(filter.may_contain(format!("user{i}@example.com").as_bytes()));
        }
    }

    #[test]
    fn at_capacity_few_absent_addresses_are_maybes() {
        let filter = AddressFilter::with_capacity(60_000);
        for i in 0..filter.capacity() {
            filter.insert(format!("listed{i}@example.com").as_bytes());
        }
        let maybes = (0..100_000)
            .filter(|i| filter.may_contain(format!("other{i}@example.net").as_bytes()))
            .count();
        // About 1 % expected at capacity; 2 % leaves room for the spread.
        assert!(maybes < 2_000, "{maybes} false maybes in 100,000");
    }

    #[test]
    fn an_empty_filter_says_no() {
        let filter = AddressFilter::with_capacity(0);
        assert_eq!(filter.bytes(), (WORDS_MIN * 8) as usize);
        assert!(!filter.may_contain(b"anyone@example.com"));
    }
}
