//! Profile MinHash signatures on a text file (one document per line):
//! `cargo run --release --example minhash_profile -- FILE [NUM_PERM]`; single thread.
use std::time::Instant;

use ftscale_core::minhash::{MinHasher, SigScratch};
use ftscale_core::shingle::Shingling;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: minhash_profile FILE [NUM_PERM]");
    let num_perm: usize = args.next().map_or(128, |s| s.parse().expect("NUM_PERM"));
    let text = std::fs::read_to_string(path).expect("readable file");
    let docs: Vec<&str> = text.lines().collect();
    let hasher = MinHasher::new(num_perm, Shingling::words(5, 0)).expect("valid params");
    let mut sig = vec![0u32; num_perm];
    let mut scratch = SigScratch::default();
    for round in 0..5 {
        let start = Instant::now();
        for d in &docs {
            hasher.signature_into(d, &mut scratch, &mut sig);
        }
        let s = start.elapsed().as_secs_f64();
        println!("round {round}: {:.0} docs/s ({:.2} us/doc)", docs.len() as f64 / s, s / docs.len() as f64 * 1e6);
    }
}
