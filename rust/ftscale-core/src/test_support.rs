//! Helpers shared by the crate's unit tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` lognormal token lengths (Box–Muller), rounded and clamped to `1..=max`; seeded.
pub fn lognormal_lengths(n: usize, mu: f64, sigma: f64, max: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mu + sigma * z).exp().round().clamp(1.0, max as f64) as u32
        })
        .collect()
}
