//! LSH banding: `bands × rows` signature positions; two documents are candidates when all
//! `rows` values of at least one band agree, which happens with probability
//! `1 - (1 - s^rows)^bands` for Jaccard similarity `s`.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::hash::hash64;

/// Probability that a pair of Jaccard similarity `s` becomes a candidate.
pub fn candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

/// Simpson's rule on [lo, hi] with `steps` (even) intervals.
fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64, steps: usize) -> f64 {
    if hi <= lo {
        return 0.0;
    }
    let h = (hi - lo) / steps as f64;
    let mut sum = f(lo) + f(hi);
    for i in 1..steps {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * f(lo + i as f64 * h);
    }
    sum * h / 3.0
}

/// Choose `(bands, rows)` with `bands·rows ≤ num_perm` minimising
/// `fp_weight·∫₀ᵗ P(s) ds + fn_weight·∫ₜ¹ (1 − P(s)) ds`, the weighted false-positive and
/// false-negative areas under the candidate curve (the criterion datasketch's
/// `_optimal_param` uses; we integrate with Simpson's rule instead of adaptive quadrature).
/// Ties keep the first found, scanning bands then rows ascending.
pub fn optimal_params(threshold: f64, num_perm: usize, fp_weight: f64, fn_weight: f64) -> Result<(usize, usize)> {
    if !(threshold > 0.0 && threshold < 1.0) {
        return invalid(format!("threshold must be in (0, 1), got {threshold}"));
    }
    if num_perm < 2 {
        return invalid(format!("num_perm must be at least 2 for LSH, got {num_perm}"));
    }
    if !(fp_weight >= 0.0 && fn_weight >= 0.0 && fp_weight + fn_weight > 0.0) {
        return invalid("fp/fn weights must be non-negative and not both zero");
    }
    let mut best = (f64::INFINITY, 1, 1);
    for bands in 1..=num_perm {
        for rows in 1..=(num_perm / bands) {
            let fp = integrate(|s| candidate_probability(s, bands, rows), 0.0, threshold, 200);
            let fnr = integrate(|s| 1.0 - candidate_probability(s, bands, rows), threshold, 1.0, 200);
            let err = fp_weight * fp + fn_weight * fnr;
            if err < best.0 {
                best = (err, bands, rows);
            }
        }
    }
    Ok((best.1, best.2))
}

/// Check explicit band parameters against the signature width.
pub fn check_params(bands: usize, rows: usize, num_perm: usize) -> Result<()> {
    if bands == 0 || rows == 0 || bands * rows > num_perm {
        return invalid(format!(
            "bands × rows must be between 1 and num_perm ({num_perm}); got {bands} × {rows}"
        ));
    }
    Ok(())
}

/// Bucket key of band `band` of one signature.
#[inline]
pub fn band_key(sig: &[u32], band: usize, rows: usize) -> u64 {
    let slice = &sig[band * rows..(band + 1) * rows];
    let mut bytes = [0u8; 4 * 64];
    if rows <= 64 {
        for (dst, v) in bytes.chunks_exact_mut(4).zip(slice) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        hash64(&bytes[..4 * rows], band as u64)
    } else {
        let owned: Vec<u8> = slice.iter().flat_map(|v| v.to_le_bytes()).collect();
        hash64(&owned, band as u64)
    }
}

/// Keys of every band of every signature (row-major `n × num_perm` in, `n × bands` out).
pub fn band_keys(sigs: &[u32], num_perm: usize, bands: usize, rows: usize) -> Result<Vec<u64>> {
    check_params(bands, rows, num_perm)?;
    Ok(sigs.par_chunks(num_perm).flat_map_iter(|sig| (0..bands).map(move |band| band_key(sig, band, rows))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_for_common_thresholds_are_sane() {
        let (b, r) = optimal_params(0.8, 128, 0.5, 0.5).unwrap();
        assert!(b * r <= 128);
        // The candidate curve must cross 1/2 near the threshold.
        let t_half = (1.0 / b as f64).powf(1.0 / r as f64);
        assert!((t_half - 0.8).abs() < 0.1, "b={b} r={r} t_half={t_half}");
        assert!(optimal_params(1.5, 128, 0.5, 0.5).is_err());
    }

    #[test]
    fn simpson_integrates_polynomials_exactly() {
        assert!((integrate(|x| x * x, 0.0, 1.0, 10) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn explicit_params_checked() {
        assert!(check_params(16, 8, 128).is_ok());
        assert!(check_params(17, 8, 128).is_err());
    }
}
