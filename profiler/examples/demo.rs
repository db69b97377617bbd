//! A small but real workload for trying prof: it generates a text corpus, indexes it,
//! ranks the words, sorts and checksums the records, in a few seconds of CPU time.
//!
//! ```text
//! cargo build --release --bin prof --example demo
//! sudo target/release/prof record -e cycles,page-faults -o demo.svg -- target/release/examples/demo
//! ```
//!
//! `--stable-sort` sorts the records with a stable sort instead, for trying `prof diff`.
//!
//! The workspace builds with frame pointers (`.cargo/config.toml`), which the kernel's stack
//! unwinder needs; release builds keep line tables, so prof shows inlined functions too.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// A deterministic pseudo-random generator (xorshift), so every run does the same work.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "zu", "an", "el",
];

/// Builds `words` words of 1 to 4 syllables, with a skewed (Zipf-like) vocabulary.
fn build_corpus(words: usize, rng: &mut Rng) -> String {
    let mut text = String::with_capacity(words * 8);
    for _ in 0..words {
        let skew = (rng.next() % 1000) as f64 / 1000.0;
        let rank = (skew * skew * skew * 4000.0) as u64;
        let mut seed = rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let syllables = 1 + (rank % 4) as usize;
        for _ in 0..syllables {
            seed ^= seed >> 29;
            text.push_str(SYLLABLES[(seed % SYLLABLES.len() as u64) as usize]);
            seed = seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        }
        text.push(' ');
    }
    text
}

/// Counts each word.
fn count_words(text: &str) -> HashMap<&str, u64> {
    let mut counts = HashMap::new();
    for word in text.split_ascii_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// Ranks words by count, then alphabetically.
fn rank_words<'a>(counts: &HashMap<&'a str, u64>) -> Vec<(&'a str, u64)> {
    let mut ranked: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (*w, *c)).collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
}

/// Builds fixed-size records from the text and sorts them (allocation-heavy: page faults).
fn sort_records(text: &str, rng: &mut Rng, stable: bool) -> Vec<[u8; 32]> {
    let bytes = text.as_bytes();
    let mut records: Vec<[u8; 32]> = (0..bytes.len() / 4)
        .map(|_| {
            let at = (rng.next() as usize) % (bytes.len() - 32);
            bytes[at..at + 32].try_into().expect("32 bytes")
        })
        .collect();
    if stable {
        records.sort();
    } else {
        records.sort_unstable();
    }
    records
}

/// FNV-1a over every record.
fn checksum(records: &[[u8; 32]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for record in records {
        for &byte in record {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn main() {
    let started = Instant::now();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let stable = std::env::args().any(|arg| arg == "--stable-sort");
    let mut total = 0u64;
    for round in 0..4 {
        let text = build_corpus(2_000_000, &mut rng);
        let counts = count_words(&text);
        let ranked = rank_words(&counts);
        let records = sort_records(&text, &mut rng, stable);
        let sum = checksum(&records);
        total = total.wrapping_add(sum);
        println!(
            "round {round}: {} words, {} distinct, top `{}` x{}, {} records, checksum {sum:016x}",
            counts.values().sum::<u64>(),
            ranked.len(),
            ranked[0].0,
            ranked[0].1,
            records.len()
        );
        black_box(&records);
    }
    println!(
        "done in {:.2} s (total {total:016x})",
        started.elapsed().as_secs_f64()
    );
}
