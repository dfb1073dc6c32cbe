//! The keep rule: which record of a duplicate cluster survives.
//!
//! Records are ranked by preference — highest score first when scores are given (NaN counts
//! as lowest), then lowest uid — and a cluster keeps its best-ranked member. Because the
//! ranking depends only on (uid, score), never on input position, the result does not change
//! when the input is shuffled or re-partitioned.

use rayon::prelude::*;

use crate::error::{invalid, Result};

/// `rank[i]` = position of record `i` in preference order (0 = most preferred).
pub fn preference_ranks(uids: &[u64], scores: Option<&[f64]>) -> Result<Vec<u32>> {
    let n = uids.len();
    if n > u32::MAX as usize - 1 {
        return invalid(format!("at most {} records per call, got {n}", u32::MAX - 1));
    }
    if let Some(s) = scores {
        if s.len() != n {
            return invalid(format!("scores has {} values for {n} records", s.len()));
        }
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    let score_key = |i: u32| scores.map_or(f64::NEG_INFINITY, |s| {
        let v = s[i as usize];
        if v.is_nan() { f64::NEG_INFINITY } else { v }
    });
    order.par_sort_unstable_by(|&a, &b| {
        score_key(b).total_cmp(&score_key(a)).then(uids[a as usize].cmp(&uids[b as usize]))
    });
    if let Some(w) = order.windows(2).find(|w| uids[w[0] as usize] == uids[w[1] as usize]) {
        return invalid(format!(
            "uids must be unique; uid {} appears more than once (records {} and {})",
            uids[w[0] as usize], w[0], w[1]
        ));
    }
    let mut rank = vec![0u32; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i as usize] = r as u32;
    }
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_uid_then_highest_score() {
        assert_eq!(preference_ranks(&[30, 10, 20], None).unwrap(), vec![2, 0, 1]);
        let r = preference_ranks(&[30, 10, 20], Some(&[1.0, f64::NAN, 1.0])).unwrap();
        assert_eq!(r, vec![1, 2, 0]);
        assert!(preference_ranks(&[1, 1], None).is_err());
    }
}
