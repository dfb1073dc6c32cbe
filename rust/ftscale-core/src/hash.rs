//! Seeded hashing primitives. Every hash in ftscale is a pure function of its bytes and seed,
//! so outputs are identical across runs, threads and machines.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

/// 64-bit hash of `bytes` (XXH3, seeded).
#[inline]
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// 128-bit hash of `bytes` (XXH3-128, seeded); used where a collision would silently drop a
/// record (exact dedup), so 2^-64 birthday odds are not good enough.
#[inline]
pub fn hash128(bytes: &[u8], seed: u64) -> u128 {
    xxh3_128_with_seed(bytes, seed)
}

/// 64×64→128-bit multiply with the halves xored (the wyhash "mum"): one multiply that mixes
/// every input bit into the output. Word hashes and shingle-window finishing use it.
#[inline(always)]
pub fn mum(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// SplitMix64 step: a bijective 64-bit mixer, also our seedable PRNG.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic generator (SplitMix64 sequence). Implemented here, not taken from a
/// crate, so that seeded outputs can never change with a dependency update.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.state.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform integer in `0..bound` (Lemire's multiply-shift; bias below 2^-32 for our sizes).
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform float in [0, 1).
    #[inline]
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
