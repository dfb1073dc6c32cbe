//! Bindings of the packing and mixture planners (pure conversions; logic is in the core).

use std::str::FromStr;

use ftscale_core::mixture::{plan_mixture as core_plan_mixture, MixConfig, MixSource};
use ftscale_core::pack::{apply_overlong as core_apply_overlong, pack as core_pack, OverlongPolicy, PackStrategy};
use ftscale_core::pool;
use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{config_error, to_pyerr};

/// Pack documents of the given token lengths into rows of `seq_len` tokens.
#[pyfunction]
pub fn pack<'py>(py: Python<'py>, lengths: PyReadonlyArray1<u32>, seq_len: u32, strategy: &str) -> PyResult<Bound<'py, PyDict>> {
    let strategy = PackStrategy::from_str(strategy).map_err(to_pyerr)?;
    let lengths = lengths.as_slice()?.to_vec();
    let (plan, offsets, docs) = py
        .detach(|| {
            let plan = core_pack(&lengths, seq_len, strategy)?;
            let (offsets, docs) = plan.rows_flat();
            Ok::<_, ftscale_core::CoreError>((plan, offsets, docs))
        })
        .map_err(to_pyerr)?;
    let out = PyDict::new(py);
    out.set_item("num_bins", plan.num_bins)?;
    out.set_item("efficiency", plan.efficiency)?;
    out.set_item("bin_of", plan.bin_of.into_pyarray(py))?;
    out.set_item("bin_tokens", plan.bin_tokens.into_pyarray(py))?;
    let offsets: Vec<u64> = offsets.into_iter().map(|o| o as u64).collect();
    out.set_item("row_offsets", offsets.into_pyarray(py))?;
    out.set_item("row_docs", docs.into_pyarray(py))?;
    Ok(out)
}

/// Split, truncate or drop documents longer than `seq_len`; returns pieces and counts.
#[pyfunction]
pub fn apply_overlong<'py>(py: Python<'py>, lengths: PyReadonlyArray1<u32>, seq_len: u32, policy: &str) -> PyResult<Bound<'py, PyDict>> {
    let policy = OverlongPolicy::from_str(policy).map_err(to_pyerr)?;
    let lengths = lengths.as_slice()?.to_vec();
    let (pieces, stats) = py.detach(|| core_apply_overlong(&lengths, seq_len, policy));
    let out = PyDict::new(py);
    let doc: Vec<u32> = pieces.iter().map(|p| p.doc).collect();
    let start: Vec<u32> = pieces.iter().map(|p| p.start).collect();
    let len: Vec<u32> = pieces.iter().map(|p| p.len).collect();
    out.set_item("doc", doc.into_pyarray(py))?;
    out.set_item("start", start.into_pyarray(py))?;
    out.set_item("len", len.into_pyarray(py))?;
    let s = PyDict::new(py);
    s.set_item("docs_in", stats.docs_in)?;
    s.set_item("docs_empty", stats.docs_empty)?;
    s.set_item("docs_split", stats.docs_split)?;
    s.set_item("docs_truncated", stats.docs_truncated)?;
    s.set_item("docs_dropped", stats.docs_dropped)?;
    s.set_item("tokens_in", stats.tokens_in)?;
    s.set_item("tokens_out", stats.tokens_out)?;
    s.set_item("tokens_dropped", stats.tokens_dropped)?;
    out.set_item("stats", s)?;
    Ok(out)
}

/// Deterministic mixture sample for (seed, epoch). Sources are parallel lists.
#[pyfunction]
#[pyo3(signature = (names, lengths, weights, families, max_repeats, target_tokens, temperature, max_repeat, family_cap, seed, epoch))]
#[allow(clippy::too_many_arguments)]
pub fn plan_mixture<'py>(
    py: Python<'py>,
    names: Vec<String>,
    lengths: Vec<PyReadonlyArray1<u32>>,
    weights: Vec<f64>,
    families: Vec<Option<PyReadonlyArray1<u32>>>,
    max_repeats: Vec<Option<f64>>,
    target_tokens: u64,
    temperature: f64,
    max_repeat: f64,
    family_cap: Option<f64>,
    seed: u64,
    epoch: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let n = names.len();
    if lengths.len() != n || weights.len() != n || families.len() != n || max_repeats.len() != n {
        return Err(config_error("names, lengths, weights, families and max_repeats must have one entry per source"));
    }
    let mut sources = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = MixSource::new(names[i].clone(), lengths[i].as_slice()?.to_vec(), weights[i]);
        if let Some(f) = &families[i] {
            s = s.with_families(f.as_slice()?.to_vec());
        }
        if let Some(r) = max_repeats[i] {
            s = s.with_max_repeat(r);
        }
        sources.push(s);
    }
    let cfg = MixConfig { target_tokens, temperature, max_repeat, family_cap };
    let plan = py.detach(|| pool::install(None, || core_plan_mixture(&sources, &cfg, seed, epoch))).map_err(to_pyerr)?;
    let out = PyDict::new(py);
    let summaries = PyList::empty(py);
    for s in &plan.sources {
        let d = PyDict::new(py);
        d.set_item("name", &s.name)?;
        d.set_item("weight", s.weight)?;
        d.set_item("effective_weight", s.effective_weight)?;
        d.set_item("unique_docs", s.unique_docs)?;
        d.set_item("unique_tokens", s.unique_tokens)?;
        d.set_item("max_repeat", s.max_repeat)?;
        d.set_item("target_tokens", s.target_tokens)?;
        d.set_item("selected_tokens", s.selected_tokens)?;
        d.set_item("docs_selected", s.docs_selected)?;
        d.set_item("repetition", s.repetition)?;
        d.set_item("clamped", s.clamped)?;
        summaries.append(d)?;
    }
    out.set_item("sources", summaries)?;
    let (src, doc): (Vec<u32>, Vec<u32>) = plan.picks.into_iter().unzip();
    out.set_item("pick_source", src.into_pyarray(py))?;
    out.set_item("pick_doc", doc.into_pyarray(py))?;
    out.set_item("total_tokens", plan.total_tokens)?;
    Ok(out)
}
