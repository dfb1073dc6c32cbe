//! `ftscale._core`: the thin PyO3 binding of `ftscale-core`.
//!
//! Each function converts its arguments, releases the GIL, runs the core on the crate's rayon
//! pool and converts the result to NumPy arrays. No logic lives here.

mod chat;
mod engine;
mod errors;
mod planning;
mod texts;

use ftscale_core::audit::audit;
use ftscale_core::decontam::{scan, EvalIndex};
use ftscale_core::exact::{exact_hashes, exact_representatives};
use ftscale_core::keep::preference_ranks;
use ftscale_core::lsh::{candidate_probability, check_params, optimal_params};
use ftscale_core::minhash::MinHasher;
use ftscale_core::neardup::{near_duplicates as core_near_duplicates, InMemoryDocs, NearDupInput, NearDupParams, Verify};
use ftscale_core::normalize::Normalization;
use ftscale_core::pool;
use ftscale_core::shingle::{ShingleKind, Shingling};
use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{config_error, to_pyerr};
use crate::texts::Texts;

/// MinHash signatures (n × num_perm) and shingle counts (n).
type Signatures<'py> = (Bound<'py, numpy::PyArray2<u32>>, Bound<'py, PyArray1<u32>>);

pub(crate) fn shingling(ngram: usize, seed: u64, char_ngrams: bool, nfkc: bool, strip_punctuation: bool) -> Shingling {
    Shingling {
        kind: if char_ngrams { ShingleKind::Chars } else { ShingleKind::Words },
        ngram,
        normalization: Normalization { nfkc, lowercase: true, strip_punctuation, collapse_whitespace: true },
        seed,
    }
}

fn ranks(n: usize, uids: Option<PyReadonlyArray1<u64>>, scores: Option<PyReadonlyArray1<f64>>) -> PyResult<Vec<u32>> {
    let uids: Vec<u64> = match uids {
        Some(u) => u.as_slice()?.to_vec(),
        None => (0..n as u64).collect(),
    };
    if uids.len() != n {
        return Err(config_error(format!("uids has {} values for {n} texts", uids.len())));
    }
    let scores: Option<Vec<f64>> = scores.map(|s| s.as_slice().map(<[f64]>::to_vec)).transpose()?;
    preference_ranks(&uids, scores.as_deref()).map_err(to_pyerr)
}

pub(crate) fn parse_verify(verify: &str) -> PyResult<Verify> {
    match verify {
        "estimate" => Ok(Verify::Estimate),
        "exact" => Ok(Verify::Exact),
        "none" => Ok(Verify::None),
        "auto" => Ok(Verify::Auto),
        other => Err(config_error(format!("verify must be 'auto', 'estimate', 'exact' or 'none', got {other:?}"))),
    }
}

/// MinHash signatures, shape (n, num_perm), dtype uint32, and each text's shingle count
/// (uint32; a text with none never matches anything).
#[pyfunction]
#[pyo3(signature = (texts, num_perm, ngram, seed, char_ngrams, nfkc, strip_punctuation, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn minhash<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    num_perm: usize,
    ngram: usize,
    seed: u64,
    char_ngrams: bool,
    nfkc: bool,
    strip_punctuation: bool,
    num_threads: Option<usize>,
) -> PyResult<Signatures<'py>> {
    let hasher = MinHasher::new(num_perm, shingling(ngram, seed, char_ngrams, nfkc, strip_punctuation)).map_err(to_pyerr)?;
    let holder = Texts::extract(texts)?;
    let strs = holder.as_strs()?;
    let n = strs.len();
    let (sigs, counts) = py.detach(|| pool::install(num_threads, || hasher.signatures(&strs)));
    Ok((sigs.into_pyarray(py).reshape([n, num_perm])?, counts.into_pyarray(py)))
}

/// Near-duplicate clusters. Returns a dict of NumPy arrays and counts.
#[pyfunction]
#[pyo3(signature = (texts, threshold, num_perm, ngram, seed, bands, rows, verify, uids, scores, char_ngrams, nfkc, strip_punctuation, fp_weight, fn_weight, audit_pairs=0, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn near_duplicates<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    threshold: f64,
    num_perm: usize,
    ngram: usize,
    seed: u64,
    bands: Option<usize>,
    rows: Option<usize>,
    verify: &str,
    uids: Option<PyReadonlyArray1<u64>>,
    scores: Option<PyReadonlyArray1<f64>>,
    char_ngrams: bool,
    nfkc: bool,
    strip_punctuation: bool,
    fp_weight: f64,
    fn_weight: f64,
    audit_pairs: usize,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(config_error(format!("threshold must be in (0, 1], got {threshold}")));
    }
    let (bands, rows) = match (bands, rows) {
        (Some(b), Some(r)) => (b, r),
        (None, None) => optimal_params(threshold.min(0.999), num_perm, fp_weight, fn_weight).map_err(to_pyerr)?,
        _ => return Err(config_error("give both bands and rows, or neither")),
    };
    check_params(bands, rows, num_perm).map_err(to_pyerr)?;
    let params = NearDupParams { threshold, bands, rows, verify: parse_verify(verify)? };
    let hasher = MinHasher::new(num_perm, shingling(ngram, seed, char_ngrams, nfkc, strip_punctuation)).map_err(to_pyerr)?;
    let holder = Texts::extract(texts)?;
    let strs = holder.as_strs()?;
    let rank = ranks(strs.len(), uids, scores)?;
    let (result, report) = py.detach(|| {
        pool::install(num_threads, || {
            let (sigs, counts) = hasher.signatures(&strs);
            let docs = InMemoryDocs { texts: &strs, shingling: &hasher.shingling, sigs: &sigs, num_perm };
            let input = NearDupInput { docs, shingle_counts: &counts, rank: &rank };
            let result = core_near_duplicates(&input, params)?;
            let report = if audit_pairs > 0 { Some(audit(&input, params, audit_pairs, seed)?) } else { None };
            Ok::<_, ftscale_core::CoreError>((result, report))
        })
    }).map_err(to_pyerr)?;
    let out = PyDict::new(py);
    let rep: Vec<i64> = result.representative.iter().map(|&r| r as i64).collect();
    out.set_item("cluster", rep.into_pyarray(py))?;
    out.set_item("similarity", result.similarity.into_pyarray(py))?;
    out.set_item("bands", bands)?;
    out.set_item("rows", rows)?;
    out.set_item("candidate_pairs_checked", result.stats.candidate_pairs_checked)?;
    out.set_item("verified_pairs", result.stats.verified_pairs)?;
    if let Some(r) = report {
        out.set_item("audit", engine::audit_dict(py, &r)?)?;
    }
    Ok(out)
}

/// Exact-duplicate clusters: the representative index of each text.
#[pyfunction]
#[pyo3(signature = (texts, nfkc, lowercase, collapse_whitespace, strip_punctuation, uids, scores, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn exact_duplicates<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    nfkc: bool,
    lowercase: bool,
    collapse_whitespace: bool,
    strip_punctuation: bool,
    uids: Option<PyReadonlyArray1<u64>>,
    scores: Option<PyReadonlyArray1<f64>>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let norm = Normalization { nfkc, lowercase, strip_punctuation, collapse_whitespace };
    let holder = Texts::extract(texts)?;
    let strs = holder.as_strs()?;
    let rank = ranks(strs.len(), uids, scores)?;
    let rep = py.detach(|| {
        pool::install(num_threads, || {
            let hashes = exact_hashes(&strs, &norm);
            exact_representatives(&hashes, &rank)
        })
    });
    Ok(rep.into_iter().map(|r| r as i64).collect::<Vec<_>>().into_pyarray(py))
}

/// `(bands, rows)` minimising the weighted false-positive/negative areas.
#[pyfunction]
fn lsh_params(threshold: f64, num_perm: usize, fp_weight: f64, fn_weight: f64) -> PyResult<(usize, usize)> {
    optimal_params(threshold, num_perm, fp_weight, fn_weight).map_err(to_pyerr)
}

/// Probability that a pair of Jaccard similarity `s` shares at least one LSH bucket.
#[pyfunction]
fn lsh_candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    candidate_probability(s, bands, rows)
}

/// Word n-gram decontamination of training segments against eval segments.
#[pyfunction]
#[pyo3(signature = (eval_texts, eval_owners, train_texts, train_owners, num_records, ngram, min_fraction, strip_punctuation, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn decontaminate<'py>(
    py: Python<'py>,
    eval_texts: &Bound<'py, PyList>,
    eval_owners: PyReadonlyArray1<u32>,
    train_texts: &Bound<'py, PyList>,
    train_owners: PyReadonlyArray1<u32>,
    num_records: usize,
    ngram: usize,
    min_fraction: f64,
    strip_punctuation: bool,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let params = engine::decontam_params(ngram, min_fraction, strip_punctuation);
    let (eval_holder, train_holder) = (Texts::extract(eval_texts)?, Texts::extract(train_texts)?);
    let (eval_strs, train_strs) = (eval_holder.as_strs()?, train_holder.as_strs()?);
    let (eo, to) = (eval_owners.as_slice()?, train_owners.as_slice()?);
    let (result, num_ngrams) = py.detach(|| {
        pool::install(num_threads, || {
            let index = EvalIndex::build(&eval_strs, eo, params)?;
            Ok::<_, ftscale_core::CoreError>((scan(&index, &train_strs, to, num_records)?, index.num_ngrams()))
        })
    }).map_err(to_pyerr)?;
    engine::decontam_dict(py, result, num_ngrams)
}

/// Number of threads a call uses when it is not given one (`FTSCALE_NUM_THREADS`, else all cores).
#[pyfunction]
fn default_num_threads() -> usize {
    pool::default_num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MINHASH_SIGNATURE_VERSION", ftscale_core::minhash::SIGNATURE_VERSION)?;
    m.add_function(wrap_pyfunction!(minhash, m)?)?;
    m.add_function(wrap_pyfunction!(near_duplicates, m)?)?;
    m.add_function(wrap_pyfunction!(exact_duplicates, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_params, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_candidate_probability, m)?)?;
    m.add_function(wrap_pyfunction!(decontaminate, m)?)?;
    m.add_function(wrap_pyfunction!(default_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(planning::pack, m)?)?;
    m.add_function(wrap_pyfunction!(planning::apply_overlong, m)?)?;
    m.add_function(wrap_pyfunction!(planning::plan_mixture, m)?)?;
    m.add_function(wrap_pyfunction!(engine::exact_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(engine::exact_keep, m)?)?;
    m.add_function(wrap_pyfunction!(engine::preference_ranks, m)?)?;
    m.add_function(wrap_pyfunction!(engine::jsonl_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(engine::band_keys, m)?)?;
    m.add_function(wrap_pyfunction!(engine::find_buckets, m)?)?;
    m.add_function(wrap_pyfunction!(engine::audit_universe, m)?)?;
    m.add_function(wrap_pyfunction!(engine::audit_loose_params, m)?)?;
    m.add_function(wrap_pyfunction!(engine::verify_buckets, m)?)?;
    m.add_function(wrap_pyfunction!(engine::pair_similarities, m)?)?;
    m.add_function(wrap_pyfunction!(engine::audit_score, m)?)?;
    m.add_function(wrap_pyfunction!(engine::audit_summarize, m)?)?;
    m.add_class::<engine::UnionFind>()?;
    m.add_class::<engine::SpillStore>()?;
    m.add_class::<engine::EvalIndex>()?;
    m.add_class::<chat::ChatEncoder>()?;
    Ok(())
}
