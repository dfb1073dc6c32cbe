//! Exact deduplication: records whose normalised text is byte-identical form one cluster.
//!
//! Identity is a seeded 128-bit XXH3 of the normalised bytes (collision odds ~n²/2^129).
//!
//! Performance: one pass per text into a per-thread buffer, then one hash; ASCII text takes
//! the byte-table path in `normalize`.

use rayon::prelude::*;

use crate::hash::hash128;
use crate::normalize::{is_identity, normalize_into, Normalization};

const EXACT_SEED: u64 = 0x0045_5841_4354; // "EXACT"

/// 128-bit hash of every normalised text (parallel; order-preserving).
pub fn exact_hashes(texts: &[&str], norm: &Normalization) -> Vec<u128> {
    texts
        .par_iter()
        .map_init(Vec::new, |buf, t| {
            if is_identity(t, norm) {
                return hash128(t.as_bytes(), EXACT_SEED);
            }
            normalize_into(t, norm, buf);
            hash128(buf, EXACT_SEED)
        })
        .collect()
}

/// For every record, the index of the best-ranked record with the same hash.
pub fn exact_representatives(hashes: &[u128], rank: &[u32]) -> Vec<u32> {
    let mut keyed: Vec<(u128, u32, u32)> =
        hashes.iter().zip(rank).enumerate().map(|(i, (&h, &r))| (h, r, i as u32)).collect();
    keyed.par_sort_unstable();
    let mut rep = vec![0u32; hashes.len()];
    for group in keyed.chunk_by(|a, b| a.0 == b.0) {
        let keep = group[0].2;
        for &(_, _, i) in group {
            rep[i as usize] = keep;
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keep::preference_ranks;

    #[test]
    fn normalised_duplicates_cluster_and_keep_lowest_uid() {
        let texts = ["Hello  World", "b", "hello world", "HELLO WORLD\n"];
        let h = exact_hashes(&texts, &Normalization::default());
        let rank = preference_ranks(&[9, 1, 5, 7], None).unwrap();
        assert_eq!(exact_representatives(&h, &rank), vec![2, 1, 2, 2]);
        let strict = Normalization { lowercase: false, ..Default::default() };
        let h = exact_hashes(&texts, &strict);
        assert_eq!(exact_representatives(&h, &rank), vec![0, 1, 2, 3]);
    }
}
