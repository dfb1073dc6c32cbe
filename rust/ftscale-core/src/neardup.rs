//! Near-duplicate clustering: MinHash LSH candidates → verification → connected components.
//!
//! Per band (bands run one after another; work inside a band is parallel):
//! 1. every document with at least one shingle gets the key of that band; `(key, rank)`
//!    rows are sorted, so a bucket lists its members in keep-preference order;
//! 2. in each bucket the best-ranked member is the anchor; members already in the anchor's
//!    component (as of the start of the band) are skipped, the others are verified against
//!    the anchor; verified pairs become edges, and the unverified members repeat the step
//!    with the next anchor among them. A bucket of m copies of one text costs m−1 checks, not
//!    m²/2;
//! 3. the band's edges are united (the order of unions changes neither the components nor
//!    the number of merges).
//!
//! Every decision depends only on signatures, ranks and the component snapshot taken
//! before the band, so the clusters are the same for any thread count, any input order and
//! any partitioning of a band's buckets: the out-of-core engine (`spill`) runs the same
//! per-bucket step (`Verifier::bucket_edges`) on buckets found partition by partition, and
//! reaches the same clusters as `near_duplicates` below.
//!
//! Memory per document (in memory, here): the signature (4·num_perm bytes), 16 bytes of band
//! row while a band is processed, and 16 bytes of rank/union-find/representative state:
//! ~550 bytes at 128 permutations.

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

impl Verify {
    /// Whether verification may read texts (and so needs them kept, or spilled).
    pub fn needs_texts(self) -> bool {
        matches!(self, Verify::Exact | Verify::Auto)
    }
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

/// Where verification reads a document's signature and shingles from: texts and signatures
/// in memory (`InMemoryDocs`), or spilled to disk (`spill::SpillDocs`). Documents are named by
/// a `u32` the source understands (a position, or a global document index).
pub trait DocSource: Sync {
    /// Per-thread buffers (shingling, file handles).
    type Scratch: Default + Send;
    fn num_perm(&self) -> usize;
    fn sig(&self, doc: u32) -> &[u32];
    /// Exact Jaccard similarity of the two documents' shingle sets.
    fn exact_jaccard(&self, a: u32, b: u32, scratch: &mut Self::Scratch) -> Result<f64>;
}

pub struct InMemoryDocs<'a> {
    pub texts: &'a [&'a str],
    pub shingling: &'a Shingling,
    /// Row-major `n × num_perm` signatures.
    pub sigs: &'a [u32],
    pub num_perm: usize,
}

impl DocSource for InMemoryDocs<'_> {
    type Scratch = ShingleScratch;

    fn num_perm(&self) -> usize {
        self.num_perm
    }

    fn sig(&self, doc: u32) -> &[u32] {
        let k = self.num_perm;
        &self.sigs[doc as usize * k..(doc as usize + 1) * k]
    }

    fn exact_jaccard(&self, a: u32, b: u32, scratch: &mut ShingleScratch) -> Result<f64> {
        let sa = shingle_set(self.texts[a as usize], self.shingling, scratch);
        let sb = shingle_set(self.texts[b as usize], self.shingling, scratch);
        Ok(jaccard_sorted(&sa, &sb))
    }
}

pub struct NearDupInput<'a> {
    pub docs: InMemoryDocs<'a>,
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

/// The verification rule of one run: which similarity is trusted, and the threshold.
pub struct Verifier<'a, D: DocSource> {
    pub docs: &'a D,
    pub params: NearDupParams,
}

impl<D: DocSource> Verifier<'_, D> {
    /// The similarity verification uses (for `Auto`: exact inside the ambiguous band).
    pub fn similarity(&self, a: u32, b: u32, scratch: &mut D::Scratch) -> Result<f64> {
        let estimate = || estimate_jaccard(self.docs.sig(a), self.docs.sig(b));
        match self.params.verify {
            Verify::Exact => self.docs.exact_jaccard(a, b, scratch),
            Verify::Estimate | Verify::None => Ok(estimate()),
            Verify::Auto => {
                let est = estimate();
                let t = self.params.threshold;
                let margin = AUTO_SIGMAS * (t * (1.0 - t) / self.docs.num_perm() as f64).sqrt();
                if (est - t).abs() <= margin { self.docs.exact_jaccard(a, b, scratch) } else { Ok(est) }
            }
        }
    }

    pub fn is_duplicate(&self, a: u32, b: u32, scratch: &mut D::Scratch) -> Result<bool> {
        Ok(self.params.verify == Verify::None || self.similarity(a, b, scratch)? >= self.params.threshold)
    }

    /// Edges found in one bucket. `members` are `(document, component root at band start)` in
    /// keep-preference order; `checked` counts the verified pairs.
    pub fn bucket_edges(&self, members: &[(u32, u32)], scratch: &mut D::Scratch, checked: &mut u64) -> Result<Vec<(u32, u32)>> {
        let mut edges = Vec::new();
        let mut remaining: Vec<(u32, u32)> = members.to_vec();
        while remaining.len() >= 2 {
            let (anchor, anchor_root) = remaining[0];
            let mut unmatched = Vec::new();
            for &(m, root) in &remaining[1..] {
                if root == anchor_root {
                    continue;
                }
                *checked += 1;
                if self.is_duplicate(anchor, m, scratch)? {
                    edges.push((anchor, m));
                } else {
                    unmatched.push((m, root));
                }
            }
            remaining = unmatched;
        }
        Ok(edges)
    }

    /// Edges of many buckets in parallel: bucket `i` is `members[offsets[i]..offsets[i + 1]]`
    /// with roots aligned in `roots`. Returns the edges (bucket order) and the pairs checked.
    pub fn buckets_edges(&self, members: &[u32], roots: &[u32], offsets: &[usize]) -> Result<(Vec<(u32, u32)>, u64)> {
        let found: Vec<(Vec<(u32, u32)>, u64)> = offsets
            .par_windows(2)
            .map_init(D::Scratch::default, |scratch, w| {
                let bucket: Vec<(u32, u32)> =
                    members[w[0]..w[1]].iter().copied().zip(roots[w[0]..w[1]].iter().copied()).collect();
                let mut checked = 0;
                let edges = self.bucket_edges(&bucket, scratch, &mut checked)?;
                Ok((edges, checked))
            })
            .collect::<Result<_>>()?;
        let checked = found.iter().map(|f| f.1).sum();
        Ok((found.into_iter().flat_map(|f| f.0).collect(), checked))
    }

    /// Similarity of every `(a, b)` pair as verification measures it.
    pub fn pair_similarities(&self, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
        pairs
            .par_iter()
            .map_init(D::Scratch::default, |scratch, &(a, b)| Ok(self.similarity(a, b, scratch)? as f32))
            .collect()
    }
}

/// Buckets with at least two members, as flat lists: bucket `i` is
/// `members[offsets[i]..offsets[i + 1]]`, found in band `band[i]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    pub band: Vec<u32>,
    pub offsets: Vec<usize>,
    pub members: Vec<u32>,
}

/// The buckets among band rows `(band, key, document)` of one partition (a partition holds
/// every row of the keys it covers): rows with equal band and key form a bucket whose members
/// are listed in preference order (`rank[document]`, indexed by global document). Buckets
/// come out in (band, key) order. 24 bytes per row while sorting.
pub fn find_buckets(bands: &[u32], keys: &[u64], docs: &[u32], rank: &[u32]) -> Result<Buckets> {
    if bands.len() != keys.len() || keys.len() != docs.len() {
        return crate::error::invalid(format!("{} bands, {} keys and {} documents differ", bands.len(), keys.len(), docs.len()));
    }
    if let Some(&d) = docs.iter().find(|&&d| d as usize >= rank.len()) {
        return crate::error::invalid(format!("document {d} has no rank ({} ranks)", rank.len()));
    }
    let mut rows: Vec<(u32, u64, u32, u32)> =
        (0..docs.len()).into_par_iter().map(|i| (bands[i], keys[i], rank[docs[i] as usize], docs[i])).collect();
    rows.par_sort_unstable();
    let mut out = Buckets { offsets: vec![0], ..Default::default() };
    for bucket in rows.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).filter(|g| g.len() > 1) {
        out.band.push(bucket[0].0);
        out.members.extend(bucket.iter().map(|r| r.3));
        out.offsets.push(out.members.len());
    }
    Ok(out)
}

pub fn near_duplicates(input: &NearDupInput, params: NearDupParams) -> Result<NearDupResult> {
    check_params(params.bands, params.rows, input.docs.num_perm)?;
    let n = input.docs.texts.len();
    let verifier = Verifier { docs: &input.docs, params };
    let mut uf = UnionFind::new(n);
    let mut stats = NearDupStats::default();
    let matchable: Vec<u32> = (0..n as u32).filter(|&i| input.shingle_counts[i as usize] > 0).collect();
    for band in 0..params.bands {
        let roots = uf.roots();
        // (key, rank, document): sorted, a bucket lists its members in preference order.
        let mut keyed: Vec<(u64, u32, u32)> = matchable
            .par_iter()
            .map(|&i| (band_key(input.docs.sig(i), band, params.rows), input.rank[i as usize], i))
            .collect();
        keyed.par_sort_unstable();
        let mut members = Vec::new();
        let mut offsets = vec![0usize];
        for bucket in keyed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
            members.extend(bucket.iter().map(|&(_, _, doc)| doc));
            offsets.push(members.len());
        }
        drop(keyed);
        let member_roots: Vec<u32> = members.iter().map(|&m| roots[m as usize]).collect();
        let (edges, checked) = verifier.buckets_edges(&members, &member_roots, &offsets)?;
        stats.candidate_pairs_checked += checked;
        stats.verified_pairs += edges.iter().filter(|&&(a, b)| uf.union(a, b)).count() as u64;
    }
    let representative = uf.representatives(input.rank);
    let removed: Vec<(u32, u32)> =
        (0..n as u32).filter(|&i| representative[i as usize] != i).map(|i| (i, representative[i as usize])).collect();
    let mut similarity = vec![1.0f32; n];
    for (&(i, _), s) in removed.iter().zip(verifier.pair_similarities(&removed)?) {
        similarity[i as usize] = s;
    }
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
        let input = NearDupInput {
            docs: InMemoryDocs { texts, shingling: &hasher.shingling, sigs: &sigs, num_perm: 128 },
            shingle_counts: &counts,
            rank: &rank,
        };
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

    #[test]
    fn partitioned_buckets_give_the_in_memory_clusters() {
        use crate::hash::SplitMix64;
        use crate::lsh::optimal_params;
        let mut rng = SplitMix64::new(11);
        let mut texts: Vec<String> = Vec::new();
        for _ in 0..300 {
            let words: Vec<String> = (0..50).map(|_| format!("w{}", rng.below(400))).collect();
            texts.push(words.join(" "));
            // Chains of edited copies: each copy edits the previous one, so clusters form
            // through intermediate documents and verification is near the threshold.
            let mut copy = words;
            for _ in 0..rng.below(4) {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(50) as usize;
                    copy[at] = format!("e{}", rng.below(1000));
                }
                texts.push(copy.join(" "));
            }
        }
        texts.push(String::new());
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let n = refs.len();
        let hasher = MinHasher::new(128, Shingling::words(5, 0)).unwrap();
        let (sigs, counts) = hasher.signatures(&refs);
        let uids: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
        let rank = preference_ranks(&uids, None).unwrap();
        let (bands, rows) = optimal_params(0.7, 128, 0.1, 0.9).unwrap();
        let docs = InMemoryDocs { texts: &refs, shingling: &hasher.shingling, sigs: &sigs, num_perm: 128 };
        let input = NearDupInput { docs, shingle_counts: &counts, rank: &rank };
        let params = NearDupParams { threshold: 0.7, bands, rows, verify: Verify::Auto };
        let expected = near_duplicates(&input, params).unwrap();
        assert!(expected.representative.iter().enumerate().filter(|(i, &r)| r as usize != *i).count() > 100);
        let verifier = Verifier { docs: &input.docs, params };
        for parts in [1u64, 3, 8] {
            let mut uf = UnionFind::new(n);
            let mut stats = NearDupStats::default();
            for band in 0..bands {
                let mut members = Vec::new();
                let mut offsets = vec![0usize];
                for p in 0..parts {
                    let (mut b, mut k, mut d) = (Vec::new(), Vec::new(), Vec::new());
                    for i in (0..n as u32).filter(|&i| counts[i as usize] > 0) {
                        let key = band_key(input.docs.sig(i), band, rows);
                        if key % parts == p {
                            b.push(band as u32);
                            k.push(key);
                            d.push(i);
                        }
                    }
                    let found = find_buckets(&b, &k, &d, &rank).unwrap();
                    let base = members.len();
                    members.extend(found.members);
                    offsets.extend(found.offsets[1..].iter().map(|o| o + base));
                }
                let roots: Vec<u32> = members.iter().map(|&m| uf.find(m)).collect();
                let (edges, checked) = verifier.buckets_edges(&members, &roots, &offsets).unwrap();
                stats.candidate_pairs_checked += checked;
                stats.verified_pairs += edges.iter().filter(|&&(a, b)| uf.union(a, b)).count() as u64;
            }
            assert_eq!(uf.representatives(&rank), expected.representative, "{parts} partitions");
            assert_eq!(stats.candidate_pairs_checked, expected.stats.candidate_pairs_checked);
            assert_eq!(stats.verified_pairs, expected.stats.verified_pairs);
        }
    }

    #[test]
    fn a_member_already_joined_is_skipped_not_used_as_an_anchor() {
        // Bucket in preference order [a, m, u], with a–m joined by an earlier band, a≁u, m~u:
        // the rule skips m (same root as the anchor), so u gets no edge from this bucket.
        struct Fixed;
        impl DocSource for Fixed {
            type Scratch = ();
            fn num_perm(&self) -> usize {
                1
            }
            fn sig(&self, doc: u32) -> &[u32] {
                [&[0u32][..], &[1u32][..], &[1u32][..]][doc as usize]
            }
            fn exact_jaccard(&self, a: u32, b: u32, _: &mut ()) -> Result<f64> {
                Ok(if a == b { 1.0 } else { 0.0 })
            }
        }
        let v = Verifier { docs: &Fixed, params: NearDupParams { threshold: 0.9, bands: 1, rows: 1, verify: Verify::Estimate } };
        let mut checked = 0;
        let edges = v.bucket_edges(&[(0, 7), (1, 7), (2, 2)], &mut (), &mut checked).unwrap();
        assert_eq!((edges, checked), (vec![], 1));
        let edges = v.bucket_edges(&[(0, 0), (1, 1), (2, 2)], &mut (), &mut checked).unwrap();
        assert_eq!(edges, vec![(1, 2)]);
    }
}
