//! A default Rust release build (no forced frame pointers, std prebuilt without them): a
//! closure called from std's sort. Runs for the seconds in argv[1] (2 by default).
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn weigh(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..24 {
        h = black_box(h.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17));
    }
    h
}

#[inline(never)]
fn sort_round(values: &mut [u64]) {
    values.sort_by(|a, b| weigh(*a).cmp(&weigh(*b)));
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(2.0, |s| s.parse().expect("seconds"));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut seed = 1u64;
    let mut checksum = 0u64;
    while Instant::now() < deadline {
        let mut values: Vec<u64> = (0..2048)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                seed >> 11
            })
            .collect();
        sort_round(&mut values);
        checksum ^= values[0];
    }
    println!("{checksum}");
}
