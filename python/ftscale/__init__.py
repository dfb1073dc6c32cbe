"""ftscale: a Rust-accelerated data engine and Ray/DeepSpeed trainer for fine-tuning LLMs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ftscale.dedup import (
    MINHASH_SIGNATURE_VERSION,
    DedupResult,
    candidate_probability,
    exact_duplicates,
    lsh_params,
    minhash,
    near_duplicates,
)
from ftscale.errors import ConfigError, DataError, FtscaleError, InputError, OutputError
from ftscale.pack import PackPlan, pack, plan_mixture

__all__ = [
    "MINHASH_SIGNATURE_VERSION",
    "ConfigError",
    "DataError",
    "DedupResult",
    "FtscaleError",
    "InputError",
    "OutputError",
    "PackPlan",
    "candidate_probability",
    "exact_duplicates",
    "lsh_params",
    "minhash",
    "near_duplicates",
    "pack",
    "plan_mixture",
]

try:
    __version__ = version("ftscale")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
