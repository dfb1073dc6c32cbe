//! Train/eval decontamination by word n-gram overlap.
//!
//! Every eval item contributes the hashes of its word n-grams (default 13 words, the
//! GPT-3 / Llama convention; lowercased, NFKC, punctuation as spaces). A training record is
//! contaminated when the share of its n-grams found in the eval index reaches
//! `min_fraction` (0 means: any single hit). Text is given as *segments* with an owner id
//! (a chat record has one segment per checked turn), so an n-gram never spans two turns.
//! A segment shorter than `ngram` words is one n-gram of all its words.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::normalize::Normalization;
use crate::shingle::{for_each_shingle, ShingleKind, ShingleScratch, Shingling};

/// Keys are already uniform 64-bit hashes; hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("IdentityHasher only hashes u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type NgramMap = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

#[derive(Clone, Copy, Debug)]
pub struct DecontamParams {
    pub ngram: usize,
    pub min_fraction: f64,
    pub normalization: Normalization,
}

impl DecontamParams {
    fn shingling(&self) -> Shingling {
        Shingling { kind: ShingleKind::Words, ngram: self.ngram, normalization: self.normalization, seed: 0xDEC0 }
    }
}

/// n-gram hash → the eval items that contain it.
pub struct EvalIndex {
    params: DecontamParams,
    slot_of: NgramMap,
    items: Vec<Vec<u32>>,
}

impl EvalIndex {
    pub fn build(segments: &[&str], owners: &[u32], params: DecontamParams) -> Result<Self> {
        if segments.len() != owners.len() {
            return invalid(format!("{} eval segments but {} owners", segments.len(), owners.len()));
        }
        if params.ngram == 0 || !(0.0..=1.0).contains(&params.min_fraction) {
            return invalid("ngram must be >= 1 and min_fraction in [0, 1]");
        }
        let shingling = params.shingling();
        let grams: Vec<Vec<u64>> = segments
            .par_iter()
            .map_init(ShingleScratch::default, |scratch, s| {
                let mut v = Vec::new();
                for_each_shingle(s, &shingling, scratch, |h| v.push(h));
                v
            })
            .collect();
        let mut slot_of = NgramMap::default();
        let mut items: Vec<Vec<u32>> = Vec::new();
        for (hashes, &owner) in grams.iter().zip(owners) {
            for &h in hashes {
                let slot = *slot_of.entry(h).or_insert_with(|| {
                    items.push(Vec::new());
                    (items.len() - 1) as u32
                });
                let list = &mut items[slot as usize];
                if list.last() != Some(&owner) && !list.contains(&owner) {
                    list.push(owner);
                }
            }
        }
        Ok(Self { params, slot_of, items })
    }

    pub fn num_ngrams(&self) -> usize {
        self.slot_of.len()
    }
}

#[derive(Debug, Default)]
pub struct DecontamResult {
    /// Per training record: n-grams found in the eval index, and n-grams in total.
    pub hits: Vec<u32>,
    pub ngrams: Vec<u32>,
    pub contaminated: Vec<bool>,
    /// (training record, eval item) pairs with at least one shared n-gram, for contaminated
    /// records only; sorted.
    pub leaks: Vec<(u32, u32)>,
}

/// Scan training segments (owners non-decreasing, `< num_records`) against the index.
pub fn scan(index: &EvalIndex, segments: &[&str], owners: &[u32], num_records: usize) -> Result<DecontamResult> {
    if segments.len() != owners.len() {
        return invalid(format!("{} training segments but {} owners", segments.len(), owners.len()));
    }
    if owners.windows(2).any(|w| w[0] > w[1]) || owners.last().is_some_and(|&o| o as usize >= num_records) {
        return invalid("training segment owners must be non-decreasing record indices below num_records");
    }
    let shingling = index.params.shingling();
    let groups: Vec<(u32, usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, w) in owners.windows(2).enumerate() {
            if w[0] != w[1] {
                out.push((owners[start], start, i + 1));
                start = i + 1;
            }
        }
        if !owners.is_empty() {
            out.push((owners[start], start, owners.len()));
        }
        out
    };
    let per_record: Vec<(u32, u32, u32, Vec<u32>)> = groups
        .par_iter()
        .map_init(ShingleScratch::default, |scratch, &(owner, lo, hi)| {
            let (mut hits, mut total) = (0u32, 0u32);
            let mut leaked = Vec::new();
            for seg in &segments[lo..hi] {
                total += for_each_shingle(seg, &shingling, scratch, |h| {
                    if let Some(&slot) = index.slot_of.get(&h) {
                        hits += 1;
                        leaked.extend_from_slice(&index.items[slot as usize]);
                    }
                }) as u32;
            }
            leaked.sort_unstable();
            leaked.dedup();
            (owner, hits, total, leaked)
        })
        .collect();
    let mut out = DecontamResult {
        hits: vec![0; num_records],
        ngrams: vec![0; num_records],
        contaminated: vec![false; num_records],
        leaks: Vec::new(),
    };
    let min_fraction = index.params.min_fraction;
    for (owner, hits, total, leaked) in per_record {
        let o = owner as usize;
        out.hits[o] = hits;
        out.ngrams[o] = total;
        let flagged = hits > 0 && (min_fraction == 0.0 || hits as f64 >= min_fraction * total as f64);
        out.contaminated[o] = flagged;
        if flagged {
            out.leaks.extend(leaked.into_iter().map(|item| (owner, item)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(min_fraction: f64) -> DecontamParams {
        DecontamParams {
            ngram: 13,
            min_fraction,
            normalization: Normalization { strip_punctuation: true, ..Default::default() },
        }
    }

    #[test]
    fn finds_planted_leak_and_nothing_in_disjoint_text() {
        let eval_q = "What is the capital of France? The capital of France is Paris, a city on the Seine river.";
        let index = EvalIndex::build(&[eval_q, "a short item"], &[0, 1], params(0.0)).unwrap();
        let leak = format!("Some preamble words here. {} And more afterwards.", eval_q.to_uppercase());
        let clean = "Completely unrelated text about gardening, tomatoes and the right amount of water for them.";
        let r = scan(&index, &[&leak, clean, "A SHORT ITEM!"], &[0, 1, 2], 3).unwrap();
        assert_eq!(r.contaminated, vec![true, false, true]);
        assert_eq!(r.leaks, vec![(0, 0), (2, 1)]);
        assert_eq!(r.hits[1], 0);
    }

    #[test]
    fn fraction_threshold_and_turn_boundaries() {
        let words: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let index = EvalIndex::build(&[&words.join(" ")], &[0], params(0.5)).unwrap();
        // 13 of the eval words split across two turns: no 13-gram spans the boundary.
        let (t1, t2) = (words[..7].join(" "), words[7..13].join(" "));
        let r = scan(&index, &[&t1, &t2], &[0, 0], 1).unwrap();
        assert!(!r.contaminated[0]);
        let long_leak = format!("{} x y z", words.join(" "));
        let r = scan(&index, &[&long_leak], &[0], 1).unwrap();
        assert!(r.contaminated[0]); // 8 of 11 n-grams hit >= 0.5
    }
}
