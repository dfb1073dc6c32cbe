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

    /// The index as bytes, to build it once and ship it to other processes (Ray workers).
    /// Layout (little-endian): magic, ngram u64, min_fraction f64, 4 normalization flags u8,
    /// slots u64, then per slot: n-gram hash u64, item count u32, items u32 × count.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.items.len() * 16);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&(self.params.ngram as u64).to_le_bytes());
        out.extend_from_slice(&self.params.min_fraction.to_le_bytes());
        let n = self.params.normalization;
        out.extend_from_slice(&[n.nfkc as u8, n.lowercase as u8, n.strip_punctuation as u8, n.collapse_whitespace as u8]);
        let mut by_slot: Vec<(u32, u64)> = self.slot_of.iter().map(|(&h, &slot)| (slot, h)).collect();
        by_slot.sort_unstable();
        out.extend_from_slice(&(by_slot.len() as u64).to_le_bytes());
        for (slot, hash) in by_slot {
            let items = &self.items[slot as usize];
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for &item in items {
                out.extend_from_slice(&item.to_le_bytes());
            }
        }
        out
    }

    /// Inverse of `to_bytes`; every size is checked against the bytes given.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(INDEX_MAGIC.len())? != INDEX_MAGIC {
            return invalid("not a serialized decontamination index (bad magic)");
        }
        let ngram = r.u64()? as usize;
        let min_fraction = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        let flags = r.take(4)?;
        let normalization = Normalization {
            nfkc: flags[0] != 0,
            lowercase: flags[1] != 0,
            strip_punctuation: flags[2] != 0,
            collapse_whitespace: flags[3] != 0,
        };
        let params = DecontamParams { ngram, min_fraction, normalization };
        if params.ngram == 0 || !(0.0..=1.0).contains(&params.min_fraction) {
            return invalid("serialized decontamination index has invalid parameters");
        }
        let slots = r.u64()?;
        if slots > (bytes.len() / 12) as u64 {
            return invalid("serialized decontamination index is truncated");
        }
        let mut slot_of = NgramMap::default();
        let mut items = Vec::with_capacity(slots as usize);
        for slot in 0..slots as u32 {
            let hash = r.u64()?;
            let count = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
            let raw = r.take(count.checked_mul(4).ok_or_else(|| crate::error::CoreError::InvalidArgument("item count overflows".into()))?)?;
            items.push(raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect());
            if slot_of.insert(hash, slot).is_some() {
                return invalid("serialized decontamination index repeats an n-gram");
            }
        }
        if r.at != bytes.len() {
            return invalid("serialized decontamination index has trailing bytes");
        }
        Ok(Self { params, slot_of, items })
    }
}

const INDEX_MAGIC: &[u8; 8] = b"FTEVAL01";

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { return invalid("serialized decontamination index is truncated") };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
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

    #[test]
    fn serialized_index_scans_the_same_and_bad_bytes_are_refused() {
        let items = ["the quick brown fox jumps over the lazy dog near the river bank today", "w1 w2 w3"];
        let index = EvalIndex::build(&items, &[0, 1], params(0.0)).unwrap();
        let bytes = index.to_bytes();
        let back = EvalIndex::from_bytes(&bytes).unwrap();
        assert_eq!(back.num_ngrams(), index.num_ngrams());
        assert_eq!(back.to_bytes(), bytes);
        let train = [items[0], "nothing to see", "W1 W2 W3"];
        let (a, b) = (scan(&index, &train, &[0, 1, 2], 3).unwrap(), scan(&back, &train, &[0, 1, 2], 3).unwrap());
        assert_eq!((a.contaminated, a.leaks, a.hits), (b.contaminated, b.leaks, b.hits));
        assert!(EvalIndex::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(EvalIndex::from_bytes(b"FTEVAL01").is_err());
        let mut huge = bytes.clone();
        huge[28..36].copy_from_slice(&u64::MAX.to_le_bytes()); // the slot count
        assert!(EvalIndex::from_bytes(&huge).is_err());
    }
}
