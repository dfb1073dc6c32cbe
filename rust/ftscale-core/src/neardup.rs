//! Near-duplicate clustering: MinHash LSH candidates → verification → connected components.
//!
//! Per band (bands run one after another; work inside a band is parallel):
//! 1. every document with at least one shingle gets the key of that band; `(key, rank)`
//!    pairs are sorted, so a bucket lists its members in keep-preference order;
//! 2. in each bucket the best-ranked member is the anchor; members already in the anchor's
//!    component (as of the start of the band) are skipped, the others are verified against
//!    the anchor; verified pairs become edges, and the unverified members repeat the step
//!    with the next anchor among them. A bucket of m copies of one text costs m−1 checks, not
//!    m²/2;
//! 3. edges are united in bucket order.
//!
//! Every decision depends only on signatures, ranks and the component snapshot taken
//! before the band, so the clusters are the same for any thread count and any input order.
//!
//! Memory per document: the signature (4·num_perm bytes), 16 bytes of band key while a band
//! is processed, and 16 bytes of rank/union-find/representative state: ~550 bytes at 128
//! permutations.

use rayon::prelude::*;

use crate::components::UnionFind;
use crate::error::Result;
use crate::lsh::{band_key, check_params};
use crate::minhash::estimate_jaccard;
use crate::shingle::{jaccard_sorted, shingle_set, ShingleScratch, Shingling};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Estimated Jaccard from the signatures (free).
    Estimate,
    /// Exact Jaccard of the shingle sets (re-shingles both texts).
    Exact,
    /// No verification: every LSH candidate is a duplicate (the datatrove / text-dedup default).
    None,
    /// The estimate where it is decisive; exact Jaccard only when the estimate lies within
    /// `AUTO_SIGMAS` standard errors of the threshold. Exact's precision at near-estimate cost.
    Auto,
}

/// Half-width of the ambiguous band of `Verify::Auto`, in standard errors of the estimate
/// (sqrt(t(1-t)/num_perm)): beyond 3 of them an estimate lands on the wrong side of the
/// threshold with probability < 0.15%.
pub const AUTO_SIGMAS: f64 = 3.0;

#[derive(Clone, Copy, Debug)]
pub struct NearDupParams {
    pub threshold: f64,
    pub bands: usize,
    pub rows: usize,
    pub verify: Verify,
}

pub struct NearDupInput<'a> {
    pub texts: &'a [&'a str],
    pub shingling: &'a Shingling,
    /// Row-major `n × num_perm` signatures.
    pub sigs: &'a [u32],
    pub num_perm: usize,
    /// Shingle count per document; documents with none are never matched.
    pub shingle_counts: &'a [u32],
    /// Keep-preference rank per document (see `keep`).
    pub rank: &'a [u32],
}

#[derive(Debug, Default, Clone)]
pub struct NearDupStats {
    pub candidate_pairs_checked: u64,
    pub verified_pairs: u64,
}

pub struct NearDupResult {
    /// Index of the kept representative of each document's cluster (itself if kept).
    pub representative: Vec<u32>,
    /// Similarity of each document to its representative (1.0 for representatives).
    pub similarity: Vec<f32>,
    pub stats: NearDupStats,
}

struct Checker<'a> {
    input: &'a NearDupInput<'a>,
    params: NearDupParams,
}

impl Checker<'_> {
    fn sig(&self, i: u32) -> &[u32] {
        let k = self.input.num_perm;
        &self.input.sigs[i as usize * k..(i as usize + 1) * k]
    }

    fn exact(&self, a: u32, b: u32, scratch: &mut ShingleScratch) -> f64 {
        let sa = shingle_set(self.input.texts[a as usize], self.input.shingling, scratch);
        let sb = shingle_set(self.input.texts[b as usize], self.input.shingling, scratch);
        jaccard_sorted(&sa, &sb)
    }

    /// The similarity verification uses (for `Auto`: exact inside the ambiguous band).
    fn similarity(&self, a: u32, b: u32, scratch: &mut ShingleScratch) -> f64 {
        let estimate = || estimate_jaccard(self.sig(a), self.sig(b));
        match self.params.verify {
            Verify::Exact => self.exact(a, b, scratch),
            Verify::Estimate | Verify::None => estimate(),
            Verify::Auto => {
                let est = estimate();
                let t = self.params.threshold;
                let margin = AUTO_SIGMAS * (t * (1.0 - t) / self.input.num_perm as f64).sqrt();
                if (est - t).abs() <= margin { self.exact(a, b, scratch) } else { est }
            }
        }
    }

    fn is_duplicate(&self, a: u32, b: u32, scratch: &mut ShingleScratch) -> bool {
        self.params.verify == Verify::None || self.similarity(a, b, scratch) >= self.params.threshold
    }

    /// Edges found in one bucket (members in preference order).
    fn bucket_edges(&self, members: &[u32], roots: &[u32], scratch: &mut ShingleScratch, checked: &mut u64) -> Vec<(u32, u32)> {
        let mut edges = Vec::new();
        let mut remaining: Vec<u32> = members.to_vec();
        while remaining.len() >= 2 {
            let anchor = remaining[0];
            let mut unmatched = Vec::new();
            for &m in &remaining[1..] {
                if roots[m as usize] == roots[anchor as usize] {
                    continue;
                }
                *checked += 1;
                if self.is_duplicate(anchor, m, scratch) {
                    edges.push((anchor, m));
                } else {
                    unmatched.push(m);
                }
            }
            remaining = unmatched;
        }
        edges
    }
}

pub fn near_duplicates(input: &NearDupInput, params: NearDupParams) -> Result<NearDupResult> {
    check_params(params.bands, params.rows, input.num_perm)?;
    let n = input.texts.len();
    let checker = Checker { input, params };
    let mut uf = UnionFind::new(n);
    let mut stats = NearDupStats::default();
    // rank → document index, to turn sorted ranks back into documents.
    let mut by_rank = vec![0u32; n];
    for (i, &r) in input.rank.iter().enumerate() {
        by_rank[r as usize] = i as u32;
    }
    let matchable: Vec<u32> = (0..n as u32).filter(|&i| input.shingle_counts[i as usize] > 0).collect();
    for band in 0..params.bands {
        let roots = uf.roots();
        let mut keyed: Vec<(u64, u32)> = matchable
            .par_iter()
            .map(|&i| (band_key(checker.sig(i), band, params.rows), input.rank[i as usize]))
            .collect();
        keyed.par_sort_unstable();
        let buckets: Vec<&[(u64, u32)]> = keyed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1).collect();
        let found: Vec<(Vec<(u32, u32)>, u64)> = buckets
            .par_iter()
            .map_init(ShingleScratch::default, |scratch, bucket| {
                let members: Vec<u32> = bucket.iter().map(|&(_, r)| by_rank[r as usize]).collect();
                let mut checked = 0;
                let edges = checker.bucket_edges(&members, &roots, scratch, &mut checked);
                (edges, checked)
            })
            .collect();
        for (edges, checked) in found {
            stats.candidate_pairs_checked += checked;
            for (a, b) in edges {
                if uf.union(a, b) {
                    stats.verified_pairs += 1;
                }
            }
        }
    }
    let representative = uf.representatives(input.rank);
    let similarity: Vec<f32> = (0..n as u32)
        .into_par_iter()
        .map_init(ShingleScratch::default, |scratch, i| {
            let rep = representative[i as usize];
            if rep == i { 1.0 } else { checker.similarity(i, rep, scratch) as f32 }
        })
        .collect();
    Ok(NearDupResult { representative, similarity, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keep::preference_ranks;
    use crate::minhash::MinHasher;

    fn run(texts: &[&str], uids: &[u64], verify: Verify) -> NearDupResult {
        let hasher = MinHasher::new(128, Shingling::words(3, 0)).unwrap();
        let (sigs, counts) = hasher.signatures(texts);
        let rank = preference_ranks(uids, None).unwrap();
        let input = NearDupInput { texts, shingling: &hasher.shingling, sigs: &sigs, num_perm: 128, shingle_counts: &counts, rank: &rank };
        near_duplicates(&input, NearDupParams { threshold: 0.7, bands: 16, rows: 8, verify }).unwrap()
    }

    #[test]
    fn clusters_near_copies_and_keeps_lowest_uid() {
        let base: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
        let a = base.join(" ");
        let mut edited = base.clone();
        edited[30] = "changed".into();
        let b = edited.join(" ");
        let c: String = (0..60).map(|i| format!("other{i} ")).collect();
        for verify in [Verify::Estimate, Verify::Exact, Verify::Auto] {
            let r = run(&[&a, &b, &c, ""], &[5, 2, 9, 1], verify);
            assert_eq!(r.representative, vec![1, 1, 2, 3]);
            assert!(r.similarity[0] > 0.8 && r.similarity[0] < 1.0);
        }
    }
}
