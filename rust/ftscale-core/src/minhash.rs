//! MinHash signatures.
//!
//! Each shingle's 64-bit hash is folded to 32 bits `x`; permutation `i` is the bijection
//! `x ↦ a_i·x + b_i (mod 2^32)` with odd `a_i`, both drawn from the seed. A signature is the
//! minimum of each permutation over the document's shingles: `num_perm` u32 values, i.e.
//! 512 bytes per document at 128 permutations. A document without shingles has the
//! all-`u32::MAX` signature and is never matched (see `shingle_count`).
//!
//! Performance notes (2-core AMD EPYC, AVX2, 20k KJV documents of ~220 words, 1 thread,
//! `cargo run --release --example minhash_profile`; the machine was shared, so ±15%):
//! - Shingling, not the permutations, dominated: 67% of the time was word splitting and an
//!   XXH3 call per word. The SWAR word path (`words`) and a rolling window hash took the
//!   whole signature from ~96k to ~200k docs/s.
//! - Then (A/B runs of the two binaries interleaved, best of 5 rounds each, because the
//!   machine's speed drifts by ±30% within minutes): inert non-ASCII characters (`’`, in a
//!   third of the documents) on the SWAR path, 230k → 277k; rolling hash fused with word
//!   hashing (no word list), 280k → 300k; a one-multiply window finaliser instead of
//!   splitmix64, 300k → 319k; a cyclic-polynomial (rotate/xor) window instead of a
//!   multiplicative one, 319k → 329k. Tried and dropped (slower): inlining the word splitter
//!   into its caller; detecting non-inert characters inside the word loop instead of a
//!   pre-scan; a register-resident whitespace test. The permutation kernel is now ~30%.
//! - The kernel walks permutations in blocks of 32 lanes and, inside a block, every shingle,
//!   so a block's `a`, `b` and running minima can stay in registers. Against the naive order
//!   (for each shingle, all permutations) it measured only ~6% faster (78.7k vs 74.1k
//!   docs/s, before the shingling work): L1-resident loads are cheap here.
//! - 32-bit lanes rather than 64-bit: AVX2 has no 64-bit multiply (LLVM emulates it with
//!   three), and 32 bits keep the collision odds of two distinct minima at 2^-32, far below
//!   the estimator's own noise (1/num_perm).
//! - The AVX2 variant is the same source compiled with `target_feature`, chosen at run time,
//!   so the wheel still runs on any x86-64.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::hash::SplitMix64;
use crate::shingle::{for_each_shingle, ShingleScratch, Shingling};

const BLOCK: usize = 32;

#[derive(Clone, Debug)]
pub struct MinHasher {
    pub num_perm: usize,
    pub shingling: Shingling,
    a: Vec<u32>,
    b: Vec<u32>,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingling: Shingling) -> Result<Self> {
        if num_perm == 0 || num_perm > 4096 {
            return invalid(format!("num_perm must be in 1..=4096, got {num_perm}"));
        }
        if shingling.ngram == 0 {
            return invalid("ngram must be at least 1");
        }
        let mut rng = SplitMix64::new(shingling.seed ^ 0x4D49_4E48_4153_48); // "MINHASH"
        let a = (0..num_perm).map(|_| (rng.next_u64() as u32) | 1).collect();
        let b = (0..num_perm).map(|_| rng.next_u64() as u32).collect();
        Ok(Self { num_perm, shingling, a, b })
    }

    /// Signature of one text into `out` (len `num_perm`); returns the number of shingles.
    pub fn signature_into(&self, text: &str, scratch: &mut SigScratch, out: &mut [u32]) -> usize {
        let mut xs = std::mem::take(&mut scratch.folded); // a local: see `for_each_shingle`
        xs.clear();
        let n = for_each_shingle(text, &self.shingling, &mut scratch.shingles, |h| {
            xs.push((h ^ (h >> 32)) as u32)
        });
        out.fill(u32::MAX);
        if n > 0 {
            update(&self.a, &self.b, &xs, out);
        }
        scratch.folded = xs;
        n
    }

    /// Signatures of all texts, row-major `texts.len() × num_perm`, plus each text's shingle
    /// count. Parallel over documents; output is independent of the thread count.
    pub fn signatures(&self, texts: &[&str]) -> (Vec<u32>, Vec<u32>) {
        let k = self.num_perm;
        let mut sigs = vec![0u32; texts.len() * k];
        let mut counts = vec![0u32; texts.len()];
        sigs.par_chunks_mut(k)
            .zip(counts.par_iter_mut())
            .zip(texts.par_iter())
            .for_each_init(SigScratch::default, |scratch, ((sig, count), text)| {
                *count = self.signature_into(text, scratch, sig).min(u32::MAX as usize) as u32;
            });
        (sigs, counts)
    }
}

#[derive(Default)]
pub struct SigScratch {
    shingles: ShingleScratch,
    folded: Vec<u32>,
}

/// Fraction of equal positions: the MinHash estimate of Jaccard similarity.
#[inline]
pub fn estimate_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

fn update(a: &[u32], b: &[u32], xs: &[u32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { update_avx2(a, b, xs, out) };
            return;
        }
    }
    update_portable(a, b, xs, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(a: &[u32], b: &[u32], xs: &[u32], out: &mut [u32]) {
    update_portable(a, b, xs, out)
}

#[inline(always)]
fn update_portable(a: &[u32], b: &[u32], xs: &[u32], out: &mut [u32]) {
    let full = out.len() / BLOCK * BLOCK;
    for ((ab, bb), ob) in a[..full]
        .chunks_exact(BLOCK)
        .zip(b[..full].chunks_exact(BLOCK))
        .zip(out[..full].chunks_exact_mut(BLOCK))
    {
        let ab: &[u32; BLOCK] = ab.try_into().unwrap();
        let bb: &[u32; BLOCK] = bb.try_into().unwrap();
        let mut acc: [u32; BLOCK] = (&*ob).try_into().unwrap();
        for &x in xs {
            for j in 0..BLOCK {
                acc[j] = acc[j].min(ab[j].wrapping_mul(x).wrapping_add(bb[j]));
            }
        }
        ob.copy_from_slice(&acc);
    }
    for ((&ai, &bi), o) in a[full..].iter().zip(&b[full..]).zip(&mut out[full..]) {
        for &x in xs {
            *o = (*o).min(ai.wrapping_mul(x).wrapping_add(bi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shingle::jaccard_sorted;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Random set pairs with known Jaccard; the estimate must lie within 3 sigma of the
    /// exact value (sigma = sqrt(J(1-J)/k)) for at least 99% of pairs, and the mean error
    /// must be ~0 (no bias from the linear permutations).
    #[test]
    fn estimates_within_three_sigma() {
        let k = 128;
        let hasher = MinHasher::new(k, Shingling::words(1, 42)).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let (mut outside, mut err_sum, trials) = (0, 0.0, 400);
        let mut scratch = SigScratch::default();
        for t in 0..trials {
            let shared = rng.random_range(0..300);
            let only_a = rng.random_range(1..200);
            let only_b = rng.random_range(1..200);
            let word = |i: u64| format!("w{}x{}", t, i);
            let mut a: Vec<String> = (0..shared).map(word).collect();
            let mut b = a.clone();
            a.extend((1000..1000 + only_a).map(word));
            b.extend((5000..5000 + only_b).map(word));
            let (ta, tb) = (a.join(" "), b.join(" "));
            let mut sa = vec![0; k];
            let mut sb = vec![0; k];
            hasher.signature_into(&ta, &mut scratch, &mut sa);
            hasher.signature_into(&tb, &mut scratch, &mut sb);
            let sets = |t: &str| crate::shingle::shingle_set(t, &hasher.shingling, &mut ShingleScratch::default());
            let exact = jaccard_sorted(&sets(&ta), &sets(&tb));
            let est = estimate_jaccard(&sa, &sb);
            let sigma = (exact * (1.0 - exact) / k as f64).sqrt().max(1e-9);
            if (est - exact).abs() > 3.0 * sigma + 1.0 / k as f64 {
                outside += 1;
            }
            err_sum += est - exact;
        }
        assert!(outside <= trials / 100, "{outside} of {trials} estimates outside 3 sigma");
        assert!((err_sum / trials as f64).abs() < 0.01, "mean error {}", err_sum / trials as f64);
    }

    #[test]
    fn identical_texts_identical_signatures_and_seed_matters() {
        let h0 = MinHasher::new(64, Shingling::words(5, 0)).unwrap();
        let h1 = MinHasher::new(64, Shingling::words(5, 1)).unwrap();
        let t = "the quick brown fox jumps over the lazy dog again";
        let (s0, c0) = h0.signatures(&[t, t]);
        assert_eq!(s0[..64], s0[64..]);
        assert_eq!(c0, vec![6, 6]);
        let (s1, _) = h1.signatures(&[t]);
        assert_ne!(s0[..64], s1[..]);
    }

    #[test]
    fn odd_block_sizes_match_scalar() {
        let hasher = MinHasher::new(45, Shingling::words(2, 3)).unwrap();
        let mut scratch = SigScratch::default();
        let mut sig = vec![0; 45];
        hasher.signature_into("a b c d e f", &mut scratch, &mut sig);
        let xs: Vec<u32> = {
            let mut v = Vec::new();
            for_each_shingle("a b c d e f", &hasher.shingling, &mut ShingleScratch::default(), |h| {
                v.push((h ^ (h >> 32)) as u32)
            });
            v
        };
        for i in 0..45 {
            let want = xs.iter().map(|&x| hasher.a[i].wrapping_mul(x).wrapping_add(hasher.b[i])).min().unwrap();
            assert_eq!(sig[i], want);
        }
    }

    #[test]
    fn empty_text_has_max_signature() {
        let hasher = MinHasher::new(8, Shingling::words(5, 0)).unwrap();
        let (s, c) = hasher.signatures(&["   "]);
        assert_eq!(c, vec![0]);
        assert!(s.iter().all(|&v| v == u32::MAX));
    }
}
