//! Bindings of the out-of-core engine's kernels (logic is in the core):
//! - map side: exact-dedup hashes and LSH band keys of a batch;
//! - reduce side: the exact keep rule of a hash partition, the buckets of a band-key
//!   partition, bucket verification and similarities over spilled documents (`SpillStore`),
//!   the audit's universe, scores and summary;
//! - `UnionFind`, the near-duplicate components over global document indices (8 bytes per
//!   document), and `EvalIndex`, the decontamination index built once and shipped as bytes.

use std::path::PathBuf;

use ftscale_core::audit::{loose_params, pick, score_pairs, summarize, universe_of, AuditReport};
use ftscale_core::components::UnionFind as CoreUnionFind;
use ftscale_core::decontam::{scan, DecontamParams, DecontamResult, EvalIndex as CoreEvalIndex};
use ftscale_core::exact::{exact_hashes as core_exact_hashes, exact_representatives};
use ftscale_core::keep::preference_ranks as core_preference_ranks;
use ftscale_core::lines::plan_chunks;
use ftscale_core::lsh::{band_keys as core_band_keys, check_params};
use ftscale_core::neardup::{find_buckets as core_find_buckets, NearDupParams, Verifier};
use ftscale_core::normalize::Normalization;
use ftscale_core::pool;
use ftscale_core::spill::{SpillDocs, SpillFiles, SpillUnit};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::{config_error, to_pyerr};
use crate::texts::Texts;
use crate::{parse_verify, shingling};

type U32Array<'py> = Bound<'py, PyArray1<u32>>;
type U64Array<'py> = Bound<'py, PyArray1<u64>>;
type Scores<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<bool>>);

fn near_params(threshold: f64, bands: usize, rows: usize, verify: &str, num_perm: usize) -> PyResult<NearDupParams> {
    check_params(bands, rows, num_perm).map_err(to_pyerr)?;
    Ok(NearDupParams { threshold, bands, rows, verify: parse_verify(verify)? })
}

fn pairs_of(a: &PyReadonlyArray1<u32>, b: &PyReadonlyArray1<u32>) -> PyResult<Vec<(u32, u32)>> {
    let (a, b) = (a.as_slice()?, b.as_slice()?);
    if a.len() != b.len() {
        return Err(config_error(format!("{} first and {} second members of pairs", a.len(), b.len())));
    }
    Ok(a.iter().copied().zip(b.iter().copied()).collect())
}

fn unzip_pairs<'py>(py: Python<'py>, pairs: Vec<(u32, u32)>) -> (U32Array<'py>, U32Array<'py>) {
    let (a, b): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
    (a.into_pyarray(py), b.into_pyarray(py))
}

/// 128-bit exact-dedup hashes of the normalised texts, as (high, low) uint64 halves.
#[pyfunction]
#[pyo3(signature = (texts, nfkc, lowercase, collapse_whitespace, strip_punctuation, num_threads=None))]
pub fn exact_hashes<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    nfkc: bool,
    lowercase: bool,
    collapse_whitespace: bool,
    strip_punctuation: bool,
    num_threads: Option<usize>,
) -> PyResult<(U64Array<'py>, U64Array<'py>)> {
    let norm = Normalization { nfkc, lowercase, strip_punctuation, collapse_whitespace };
    let holder = Texts::extract(texts)?;
    let strs = holder.as_strs()?;
    let hashes = py.detach(|| pool::install(num_threads, || core_exact_hashes(&strs, &norm)));
    let hi: Vec<u64> = hashes.iter().map(|h| (h >> 64) as u64).collect();
    let lo: Vec<u64> = hashes.iter().map(|&h| h as u64).collect();
    Ok((hi.into_pyarray(py), lo.into_pyarray(py)))
}

/// Keep rule of one exact-hash partition: for each row, the position of the best-ranked row
/// with the same hash (`rank`: preference rank of each row, lower is kept).
#[pyfunction]
#[pyo3(signature = (hi, lo, rank, num_threads=None))]
pub fn exact_keep<'py>(
    py: Python<'py>,
    hi: PyReadonlyArray1<u64>,
    lo: PyReadonlyArray1<u64>,
    rank: PyReadonlyArray1<u32>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (hi, lo, rank) = (hi.as_slice()?, lo.as_slice()?, rank.as_slice()?);
    if hi.len() != lo.len() || lo.len() != rank.len() {
        return Err(config_error("hi, lo and rank must have the same length"));
    }
    let hashes: Vec<u128> = hi.iter().zip(lo).map(|(&h, &l)| ((h as u128) << 64) | l as u128).collect();
    let rep = py.detach(|| pool::install(num_threads, || exact_representatives(&hashes, rank)));
    Ok(rep.into_iter().map(|r| r as i64).collect::<Vec<_>>().into_pyarray(py))
}

/// Units of a plain JSONL file: (start offset of each, records before each, records in all),
/// cut at the first line start at or after every multiple of `target_bytes`.
#[pyfunction]
pub fn jsonl_chunks(py: Python<'_>, path: PathBuf, target_bytes: u64) -> PyResult<(Vec<u64>, Vec<u64>, u64)> {
    let (chunks, rows) = py
        .detach(|| std::fs::File::open(&path).and_then(|f| plan_chunks(f, target_bytes)))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot read {}: {e}", path.display())))?;
    Ok((chunks.iter().map(|c| c.start).collect(), chunks.iter().map(|c| c.first_row).collect(), rows))
}

/// Keep-preference rank of every document (0 = kept first): highest score, then lowest uid.
/// uids must be unique.
#[pyfunction]
#[pyo3(signature = (uids, scores=None, num_threads=None))]
pub fn preference_ranks<'py>(
    py: Python<'py>,
    uids: PyReadonlyArray1<u64>,
    scores: Option<PyReadonlyArray1<f64>>,
    num_threads: Option<usize>,
) -> PyResult<U32Array<'py>> {
    let uids = uids.as_slice()?;
    let scores = scores.as_ref().map(|s| s.as_slice()).transpose()?;
    let rank = py.detach(|| pool::install(num_threads, || core_preference_ranks(uids, scores))).map_err(to_pyerr)?;
    Ok(rank.into_pyarray(py))
}

/// LSH band keys of every signature row: uint64 array of shape (n, bands).
#[pyfunction]
#[pyo3(signature = (sigs, bands, rows, num_threads=None))]
pub fn band_keys<'py>(
    py: Python<'py>,
    sigs: PyReadonlyArray2<u32>,
    bands: usize,
    rows: usize,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let (n, num_perm) = (sigs.shape()[0], sigs.shape()[1]);
    let flat = sigs.as_slice()?;
    let keys = py.detach(|| pool::install(num_threads, || core_band_keys(flat, num_perm, bands, rows))).map_err(to_pyerr)?;
    keys.into_pyarray(py).reshape([n, bands])
}

/// Buckets of one band-key partition: (band of each bucket, offsets into members (n+1),
/// members in keep-preference order). `rank` is indexed by global document.
#[pyfunction]
#[pyo3(signature = (bands, keys, docs, rank, num_threads=None))]
pub fn find_buckets<'py>(
    py: Python<'py>,
    bands: PyReadonlyArray1<u32>,
    keys: PyReadonlyArray1<u64>,
    docs: PyReadonlyArray1<u32>,
    rank: PyReadonlyArray1<u32>,
    num_threads: Option<usize>,
) -> PyResult<(U32Array<'py>, Bound<'py, PyArray1<i64>>, U32Array<'py>)> {
    let (bands, keys, docs, rank) = (bands.as_slice()?, keys.as_slice()?, docs.as_slice()?, rank.as_slice()?);
    let found = py.detach(|| pool::install(num_threads, || core_find_buckets(bands, keys, docs, rank))).map_err(to_pyerr)?;
    let offsets: Vec<i64> = found.offsets.iter().map(|&o| o as i64).collect();
    Ok((found.band.into_pyarray(py), offsets.into_pyarray(py), found.members.into_pyarray(py)))
}

/// The audit's loose banding `(bands, rows)` for a threshold.
#[pyfunction]
pub fn audit_loose_params(threshold: f64, num_perm: usize) -> PyResult<(usize, usize)> {
    loose_params(threshold, num_perm).map_err(to_pyerr)
}

/// Audit universe pairs (unsorted, may repeat) of one loose-band partition.
#[pyfunction]
#[pyo3(signature = (bands, keys, docs, num_threads=None))]
pub fn audit_universe<'py>(
    py: Python<'py>,
    bands: PyReadonlyArray1<u32>,
    keys: PyReadonlyArray1<u64>,
    docs: PyReadonlyArray1<u32>,
    num_threads: Option<usize>,
) -> PyResult<(U32Array<'py>, U32Array<'py>)> {
    let (bands, keys, docs) = (bands.as_slice()?, keys.as_slice()?, docs.as_slice()?);
    let pairs = py.detach(|| pool::install(num_threads, || universe_of(bands, keys, docs))).map_err(to_pyerr)?;
    Ok(unzip_pairs(py, pairs))
}

/// Connected components of near-duplicate edges over global document indices.
#[pyclass(module = "ftscale._core")]
pub struct UnionFind {
    inner: CoreUnionFind,
    len: usize,
}

#[pymethods]
impl UnionFind {
    #[new]
    fn new(n: usize) -> PyResult<Self> {
        if n > u32::MAX as usize {
            return Err(config_error(format!("{n} documents: at most {} per run", u32::MAX)));
        }
        Ok(Self { inner: CoreUnionFind::new(n), len: n })
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// Current root of each document (a snapshot: equal roots ⇔ same component).
    fn find_many<'py>(&mut self, py: Python<'py>, docs: PyReadonlyArray1<u32>) -> PyResult<U32Array<'py>> {
        let docs = docs.as_slice()?;
        self.check(docs)?;
        Ok(docs.iter().map(|&d| self.inner.find(d)).collect::<Vec<_>>().into_pyarray(py))
    }

    /// Unite every (a[i], b[i]); returns how many unions merged two components.
    fn union_many(&mut self, a: PyReadonlyArray1<u32>, b: PyReadonlyArray1<u32>) -> PyResult<u64> {
        let pairs = pairs_of(&a, &b)?;
        self.check(a.as_slice()?)?;
        self.check(b.as_slice()?)?;
        Ok(pairs.into_iter().filter(|&(x, y)| self.inner.union(x, y)).count() as u64)
    }

    /// For every document, the member of its component with the lowest rank.
    fn representatives<'py>(&mut self, py: Python<'py>, rank: PyReadonlyArray1<u32>) -> PyResult<U32Array<'py>> {
        let rank = rank.as_slice()?;
        if rank.len() != self.len {
            return Err(config_error(format!("{} ranks for {} documents", rank.len(), self.len)));
        }
        Ok(self.inner.representatives(rank).into_pyarray(py))
    }
}

impl UnionFind {
    fn check(&self, docs: &[u32]) -> PyResult<()> {
        match docs.iter().find(|&&d| d as usize >= self.len) {
            Some(d) => Err(config_error(format!("document {d} is beyond the {} documents", self.len))),
            None => Ok(()),
        }
    }
}

/// Signatures (and texts, when verification reads them) spilled by the map step, one set of
/// files per unit of work, addressed by global document index (see `ftscale_core::spill`).
#[pyclass(module = "ftscale._core", frozen)]
pub struct SpillStore {
    files: SpillFiles,
}

#[pymethods]
impl SpillStore {
    #[new]
    #[pyo3(signature = (signatures, texts, counts, num_perm, ngram, seed, char_ngrams, nfkc, strip_punctuation))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        signatures: Vec<String>,
        texts: Option<Vec<(String, String)>>,
        counts: Vec<u32>,
        num_perm: usize,
        ngram: usize,
        seed: u64,
        char_ngrams: bool,
        nfkc: bool,
        strip_punctuation: bool,
    ) -> PyResult<Self> {
        if signatures.len() != counts.len() || texts.as_ref().is_some_and(|t| t.len() != counts.len()) {
            return Err(config_error("signatures, texts and counts must list the same units"));
        }
        let mut texts = texts.map(|t| t.into_iter());
        let units = signatures
            .into_iter()
            .zip(counts)
            .map(|(sig, count)| SpillUnit {
                signatures: PathBuf::from(sig),
                texts: texts.as_mut().and_then(|t| t.next()).map(|(a, b)| (PathBuf::from(a), PathBuf::from(b))),
                count,
            })
            .collect();
        let files = SpillFiles::new(units, num_perm, shingling(ngram, seed, char_ngrams, nfkc, strip_punctuation)).map_err(to_pyerr)?;
        Ok(Self { files })
    }

    #[getter]
    fn num_docs(&self) -> u32 {
        self.files.num_docs()
    }
}

/// Verify buckets over spilled documents: bucket `i` is `members[offsets[i]..offsets[i+1]]`
/// in keep-preference order with the component roots (at band start) in `roots`. Returns the
/// edges (a, b) and the number of pairs checked.
#[pyfunction]
#[pyo3(signature = (store, members, roots, offsets, threshold, bands, rows, verify, num_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn verify_buckets<'py>(
    py: Python<'py>,
    store: &SpillStore,
    members: PyReadonlyArray1<u32>,
    roots: PyReadonlyArray1<u32>,
    offsets: PyReadonlyArray1<i64>,
    threshold: f64,
    bands: usize,
    rows: usize,
    verify: &str,
    num_threads: Option<usize>,
) -> PyResult<(U32Array<'py>, U32Array<'py>, u64)> {
    let params = near_params(threshold, bands, rows, verify, store.files.num_perm)?;
    let (members, roots) = (members.as_slice()?, roots.as_slice()?);
    let offsets: Vec<usize> = offsets.as_slice()?.iter().map(|&o| o.max(0) as usize).collect();
    if members.len() != roots.len() || offsets.first() != Some(&0) || offsets.last() != Some(&members.len())
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(config_error("members, roots and offsets do not describe the same buckets"));
    }
    let (edges, checked) = py
        .detach(|| {
            pool::install(num_threads, || {
                let docs = SpillDocs { files: &store.files, sigs: store.files.signatures(members)? };
                Verifier { docs: &docs, params }.buckets_edges(members, roots, &offsets)
            })
        })
        .map_err(to_pyerr)?;
    let (a, b) = unzip_pairs(py, edges);
    Ok((a, b, checked))
}

/// Similarity of each (a[i], b[i]) as verification measures it, over spilled documents.
#[pyfunction]
#[pyo3(signature = (store, a, b, threshold, bands, rows, verify, num_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn pair_similarities<'py>(
    py: Python<'py>,
    store: &SpillStore,
    a: PyReadonlyArray1<u32>,
    b: PyReadonlyArray1<u32>,
    threshold: f64,
    bands: usize,
    rows: usize,
    verify: &str,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let params = near_params(threshold, bands, rows, verify, store.files.num_perm)?;
    let pairs = pairs_of(&a, &b)?;
    let sims = py
        .detach(|| {
            pool::install(num_threads, || {
                let wanted: Vec<u32> = pairs.iter().flat_map(|&(x, y)| [x, y]).collect();
                let docs = SpillDocs { files: &store.files, sigs: store.files.signatures(&wanted)? };
                Verifier { docs: &docs, params }.pair_similarities(&pairs)
            })
        })
        .map_err(to_pyerr)?;
    Ok(sims.into_pyarray(py))
}

/// Audit scores of universe pairs: (estimated Jaccard, flagged by the chosen parameters).
#[pyfunction]
#[pyo3(signature = (store, a, b, threshold, bands, rows, verify, num_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn audit_score<'py>(
    py: Python<'py>,
    store: &SpillStore,
    a: PyReadonlyArray1<u32>,
    b: PyReadonlyArray1<u32>,
    threshold: f64,
    bands: usize,
    rows: usize,
    verify: &str,
    num_threads: Option<usize>,
) -> PyResult<Scores<'py>> {
    let params = near_params(threshold, bands, rows, verify, store.files.num_perm)?;
    let pairs = pairs_of(&a, &b)?;
    let scored = py
        .detach(|| {
            pool::install(num_threads, || {
                let wanted: Vec<u32> = pairs.iter().flat_map(|&(x, y)| [x, y]).collect();
                let docs = SpillDocs { files: &store.files, sigs: store.files.signatures(&wanted)? };
                score_pairs(&Verifier { docs: &docs, params }, &pairs)
            })
        })
        .map_err(to_pyerr)?;
    let (est, flagged): (Vec<f64>, Vec<bool>) = scored.into_iter().unzip();
    Ok((est.into_pyarray(py), flagged.into_pyarray(py)))
}

/// Sample and measure the audit over the whole scored universe (sorted, deduplicated pairs);
/// the same dict as `near_duplicates(..., audit_pairs=n)["audit"]`.
#[pyfunction]
#[pyo3(signature = (store, a, b, estimated, flagged, threshold, loose_bands, loose_rows, n, seed, num_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn audit_summarize<'py>(
    py: Python<'py>,
    store: &SpillStore,
    a: PyReadonlyArray1<u32>,
    b: PyReadonlyArray1<u32>,
    estimated: PyReadonlyArray1<f64>,
    flagged: PyReadonlyArray1<bool>,
    threshold: f64,
    loose_bands: usize,
    loose_rows: usize,
    n: usize,
    seed: u64,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let universe = pairs_of(&a, &b)?;
    let (est, flag) = (estimated.as_slice()?, flagged.as_slice()?);
    if est.len() != universe.len() || flag.len() != universe.len() {
        return Err(config_error("one estimate and one flag per universe pair"));
    }
    let scored: Vec<(f64, bool)> = est.iter().copied().zip(flag.iter().copied()).collect();
    let report = py
        .detach(|| {
            pool::install(num_threads, || {
                let picks = pick(&universe, &scored, threshold, n, seed);
                let wanted: Vec<u32> = picks.pairs.iter().flat_map(|&((x, y), _)| [x, y]).collect();
                let docs = SpillDocs { files: &store.files, sigs: store.files.signatures(&wanted)? };
                summarize(&docs, threshold, &picks, universe.len() as u64, (loose_bands, loose_rows))
            })
        })
        .map_err(to_pyerr)?;
    audit_dict(py, &report)
}

/// The audit report as the dict both dedup paths return.
pub fn audit_dict<'py>(py: Python<'py>, r: &AuditReport) -> PyResult<Bound<'py, PyDict>> {
    let a = PyDict::new(py);
    a.set_item("loose_bands", r.loose_bands)?;
    a.set_item("loose_rows", r.loose_rows)?;
    a.set_item("universe_recall_at_threshold", r.universe_recall_at_threshold)?;
    a.set_item("universe_pairs", r.universe_pairs)?;
    a.set_item("flagged_pairs", r.flagged_pairs)?;
    a.set_item("near_unflagged_pairs", r.near_unflagged_pairs)?;
    a.set_item("precision", r.precision)?;
    a.set_item("missed_share", r.missed_share)?;
    a.set_item("recall", r.recall)?;
    let pairs: Vec<(u32, u32, f64, f64, bool)> = r.sampled.iter().map(|p| (p.a, p.b, p.estimated, p.exact, p.flagged)).collect();
    a.set_item("pairs", pairs)?;
    Ok(a)
}

/// The decontamination result as a dict of NumPy arrays.
pub fn decontam_dict<'py>(py: Python<'py>, result: DecontamResult, eval_ngrams: usize) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("hits", result.hits.into_pyarray(py))?;
    out.set_item("ngrams", result.ngrams.into_pyarray(py))?;
    out.set_item("contaminated", result.contaminated.into_pyarray(py))?;
    let (rec, item): (Vec<u32>, Vec<u32>) = result.leaks.into_iter().unzip();
    out.set_item("leak_record", rec.into_pyarray(py))?;
    out.set_item("leak_eval_item", item.into_pyarray(py))?;
    out.set_item("eval_ngrams", eval_ngrams)?;
    Ok(out)
}

pub fn decontam_params(ngram: usize, min_fraction: f64, strip_punctuation: bool) -> DecontamParams {
    DecontamParams {
        ngram,
        min_fraction,
        normalization: Normalization { nfkc: true, lowercase: true, strip_punctuation, collapse_whitespace: true },
    }
}

/// The eval n-gram index: built once, then scanned against training batches; pickles as its
/// bytes, so Ray ships it to each worker once.
#[pyclass(module = "ftscale._core", frozen)]
pub struct EvalIndex {
    inner: CoreEvalIndex,
}

#[pymethods]
impl EvalIndex {
    #[new]
    #[pyo3(signature = (eval_texts, eval_owners, ngram, min_fraction, strip_punctuation, num_threads=None))]
    fn new(
        py: Python<'_>,
        eval_texts: &Bound<'_, PyList>,
        eval_owners: PyReadonlyArray1<u32>,
        ngram: usize,
        min_fraction: f64,
        strip_punctuation: bool,
        num_threads: Option<usize>,
    ) -> PyResult<Self> {
        let holder = Texts::extract(eval_texts)?;
        let strs = holder.as_strs()?;
        let owners = eval_owners.as_slice()?;
        let params = decontam_params(ngram, min_fraction, strip_punctuation);
        let inner = py.detach(|| pool::install(num_threads, || CoreEvalIndex::build(&strs, owners, params))).map_err(to_pyerr)?;
        Ok(Self { inner })
    }

    #[staticmethod]
    fn from_bytes(bytes: &[u8]) -> PyResult<Self> {
        Ok(Self { inner: CoreEvalIndex::from_bytes(bytes).map_err(to_pyerr)? })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let rebuild = py.get_type::<EvalIndex>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [slf.get().to_bytes(py)])?;
        PyTuple::new(py, [rebuild, args.into_any()])
    }

    #[getter]
    fn num_ngrams(&self) -> usize {
        self.inner.num_ngrams()
    }

    /// Scan training segments (owners non-decreasing, < num_records) against the index.
    #[pyo3(signature = (train_texts, train_owners, num_records, num_threads=None))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        train_texts: &Bound<'py, PyList>,
        train_owners: PyReadonlyArray1<u32>,
        num_records: usize,
        num_threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let holder = Texts::extract(train_texts)?;
        let strs = holder.as_strs()?;
        let owners = train_owners.as_slice()?;
        let result = py.detach(|| pool::install(num_threads, || scan(&self.inner, &strs, owners, num_records))).map_err(to_pyerr)?;
        decontam_dict(py, result, self.inner.num_ngrams())
    }
}
