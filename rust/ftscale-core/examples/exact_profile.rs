//! Profile exact-dedup hashing on a text file (one document per line), single thread:
//! `cargo run --release --example exact_profile -- FILE`.
use std::time::Instant;

use ftscale_core::exact::exact_hashes;
use ftscale_core::normalize::Normalization;

fn main() {
    let path = std::env::args().nth(1).expect("usage: exact_profile FILE");
    let text = std::fs::read_to_string(path).expect("readable file");
    let docs: Vec<&str> = text.lines().collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    for (name, norm) in [
        ("default", Normalization::default()),
        ("none", Normalization { nfkc: false, lowercase: false, strip_punctuation: false, collapse_whitespace: false }),
    ] {
        for _ in 0..3 {
            let start = Instant::now();
            let h = pool.install(|| exact_hashes(&docs, &norm));
            let s = start.elapsed().as_secs_f64();
            println!("{name}: {:.2} GB/s ({} docs)", bytes as f64 / s / 1e9, h.len());
        }
    }
}
