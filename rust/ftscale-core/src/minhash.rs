//! MinHash signatures.
//!
//! Each shingle's 64-bit hash is folded to 32 bits and made odd, `x`; permutation `i` is the
//! bijection `x ↦ a_i·x (mod 2^32)` of the odd residues, with odd `a_i` drawn from the seed. A
//! signature is the minimum of each permutation over the document's shingles: `num_perm` u32
//! values, i.e. 512 bytes per document at 128 permutations. A document without shingles has
//! the all-`u32::MAX` signature and is never matched (see `shingle_count`).
//!
//! Why linear, not affine (`a_i·x + b_i`): the kernel is bound by vector-pipe throughput, and
//! the add was a third of its instructions (one `vpmulld`, one `vpaddd`, one `vpminud` per 8
//! permutations); without it MinHash measured 377k → 420k docs/s. The inputs are already
//! outputs of a strong mixer, so the add brought no randomness the estimator needs: the
//! 3-sigma test below passes as before, and on the benchmark F1 stayed 0.988 (0.987 affine).
//! `x` is odd so that no shingle maps to 0 under every permutation (an all-zero signature
//! would match every document holding that shingle).
//!
//! Performance notes (2-core AMD EPYC, AVX2, 20k KJV documents of ~220 words, 1 thread,
//! `cargo run --release --example minhash_profile`, A/B runs of two binaries interleaved and
//! the best of 6 rounds each, because the machine's speed drifts by ±30% within minutes):
//! - Shingling, not the permutations, dominated at first: 67% of the time was word splitting
//!   and an XXH3 call per word. See `words` for the splitter's history (~96k → 379k docs/s).
//! - Fused into the word loop, a rolling window kept its state in stack slots; windows over a
//!   word-hash slice, written with `extend` (no capacity check per shingle), measured 428k →
//!   451k together with the two-pass splitter.
//! - The kernel walks permutations in blocks of 64 lanes (eight 8-lane registers of minima)
//!   and, inside a block, every shingle, so minima stay in registers. Written with intrinsics:
//!   LLVM's vectorisation of the equivalent portable loop changed shape with unrelated edits
//!   (once vectorising across shingles instead, 30% slower). Blocks of 32 lanes were ~1%
//!   slower; the kernel is now ~25% of the time.
//! - 32-bit lanes rather than 64-bit: AVX2 has no 64-bit multiply (LLVM emulates it with
//!   three), and 32 bits keep the collision odds of two distinct minima at 2^-31, far below
//!   the estimator's own noise (1/num_perm).
//! - The AVX2 kernel is chosen at run time, so the wheel still runs on any x86-64.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::hash::SplitMix64;
use crate::shingle::{shingle_hashes, ShingleScratch, Shingling};

/// Version of the signature scheme: word splitting and hashing, shingle hashing and the
/// permutations. Signatures (and so near-duplicate decisions) are comparable only between
/// builds with the same version; reports record it. Bump it with any change that alters a
/// signature (the test `signatures_match_the_recorded_scheme` fails until the values pinned
/// there are updated). 1: every build before 2026-11-23 (the scheme changed without a
/// record); 2: 16-byte word blocks, linear permutations on odd inputs.
pub const SIGNATURE_VERSION: u32 = 2;

/// Permutations per kernel block, and 8-lane registers per block.
const BLOCK: usize = 64;
const LANES: usize = BLOCK / 8;

#[derive(Clone, Debug)]
pub struct MinHasher {
    pub num_perm: usize,
    pub shingling: Shingling,
    a: Vec<u32>,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingling: Shingling) -> Result<Self> {
        if num_perm == 0 || num_perm > 4096 {
            return invalid(format!("num_perm must be in 1..=4096, got {num_perm}"));
        }
        if shingling.ngram == 0 {
            return invalid("ngram must be at least 1");
        }
        let mut rng = SplitMix64::new(shingling.seed ^ 0x004D_494E_4841_5348); // "MINHASH"
        let a = (0..num_perm).map(|_| (rng.next_u64() as u32) | 1).collect();
        Ok(Self { num_perm, shingling, a })
    }

    /// Signature of one text into `out` (len `num_perm`); returns the number of shingles.
    pub fn signature_into(&self, text: &str, scratch: &mut SigScratch, out: &mut [u32]) -> usize {
        let hashes = shingle_hashes(text, &self.shingling, &mut scratch.shingles);
        let xs = &mut scratch.folded;
        xs.clear();
        xs.extend(hashes.iter().map(|&h| fold32(h)));
        out.fill(u32::MAX);
        if !xs.is_empty() {
            update(&self.a, xs, out);
        }
        xs.len()
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

/// A shingle hash as the permutations' input: 32 bits, odd (see the module notes).
#[inline(always)]
fn fold32(h: u64) -> u32 {
    ((h ^ (h >> 32)) as u32) | 1
}

/// Fraction of equal positions: the MinHash estimate of Jaccard similarity.
#[inline]
pub fn estimate_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

fn update(a: &[u32], xs: &[u32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { update_avx2(a, xs, out) };
            return;
        }
    }
    update_portable(a, xs, out);
}

/// The kernel in blocks of `BLOCK` permutations whose running minima stay in registers while
/// every shingle passes: per shingle and 8 permutations one `vpmulld` and one `vpminud`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(a: &[u32], xs: &[u32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let full = out.len() / BLOCK * BLOCK;
    for start in (0..full).step_by(BLOCK) {
        let ap = a[start..start + BLOCK].as_ptr().cast::<__m256i>();
        let op = out[start..start + BLOCK].as_mut_ptr().cast::<__m256i>();
        // SAFETY: `ap` and `op` point at BLOCK = LANES × 8 u32s (sliced above); unaligned access.
        unsafe {
            let mut m: [__m256i; LANES] = std::array::from_fn(|k| _mm256_loadu_si256(op.add(k)));
            for &x in xs {
                let v = _mm256_set1_epi32(x as i32);
                for (k, mk) in m.iter_mut().enumerate() {
                    *mk = _mm256_min_epu32(*mk, _mm256_mullo_epi32(_mm256_loadu_si256(ap.add(k)), v));
                }
            }
            for (k, mk) in m.iter().enumerate() {
                _mm256_storeu_si256(op.add(k), *mk);
            }
        }
    }
    update_portable(&a[full..], xs, &mut out[full..]);
}

fn update_portable(a: &[u32], xs: &[u32], out: &mut [u32]) {
    for (&ai, o) in a.iter().zip(out) {
        for &x in xs {
            *o = (*o).min(ai.wrapping_mul(x));
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
    fn blocks_and_tail_match_scalar() {
        let k = 2 * BLOCK + 22; // two kernel blocks and a portable tail
        let hasher = MinHasher::new(k, Shingling::words(2, 3)).unwrap();
        let text = "a b c d e f g h i j k l";
        let mut sig = vec![0; k];
        hasher.signature_into(text, &mut SigScratch::default(), &mut sig);
        let xs: Vec<u32> =
            shingle_hashes(text, &hasher.shingling, &mut ShingleScratch::default()).iter().map(|&h| fold32(h)).collect();
        for (i, (&got, &a)) in sig.iter().zip(&hasher.a).enumerate() {
            let want = xs.iter().map(|&x| a.wrapping_mul(x)).min().unwrap();
            assert_eq!(got, want, "permutation {i}");
        }
    }

    /// Pinned values of the current scheme (`SIGNATURE_VERSION`): a change to word splitting,
    /// word or window hashing, or the permutations fails here. Then bump the version and pin
    /// the new values.
    #[test]
    fn signatures_match_the_recorded_scheme() {
        assert_eq!(SIGNATURE_VERSION, 2);
        let hasher = MinHasher::new(4, Shingling::words(2, 7)).unwrap();
        let (sig, counts) = hasher.signatures(&["In the beginning God created the heaven\u{2019}s AND earth.", "Å ﬁne day"]);
        assert_eq!(counts, vec![8, 2]);
        let pinned = [599309787, 519894401, 378665261, 156323135, 899718175, 1087065887, 367199987, 3186389033];
        assert_eq!(sig, pinned, "the signature scheme changed: bump SIGNATURE_VERSION and pin the new values");
    }

    #[test]
    fn empty_text_has_max_signature() {
        let hasher = MinHasher::new(8, Shingling::words(5, 0)).unwrap();
        let (s, c) = hasher.signatures(&["   "]);
        assert_eq!(c, vec![0]);
        assert!(s.iter().all(|&v| v == u32::MAX));
    }
}
