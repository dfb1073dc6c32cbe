"""`ftscale mix`: what a token-weighted mixture draws from each source of a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftscale.data.format import Manifest, read_manifest
from ftscale.errors import ConfigError


def parse_weights(text: str) -> dict[str, float]:
    """'domain=1,general=5' → {'domain': 1.0, 'general': 5.0}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or not name or w <= 0:
            raise ConfigError(f"--weights: {part!r} must be NAME=POSITIVE_NUMBER, e.g. domain=1,general=5")
        weights[name] = w
    if not weights:
        raise ConfigError("--weights: give at least one NAME=WEIGHT")
    return weights


def source_lengths(dataset_dir: str | Path, manifest: Manifest, name: str, split: str = "train") -> np.ndarray:
    """Token length of every document of one source split (uint32), in shard order, from the
    token stores' offsets."""
    from ftscale.data.store import open_store

    if name not in manifest.sources:
        raise ConfigError(f"source {name!r} is not in {dataset_dir}; it has: {', '.join(manifest.sources)}")
    parts = [open_store(Path(dataset_dir) / s.store, s.rows, s.tokens, s.store_bytes).lengths()
             for s in manifest.sources[name].shards(split)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def describe_mixture(dataset_dir: str, weights: dict[str, float], tokens: int, *, seed: int = 0, epoch: int = 0,
                     temperature: float = 1.0, max_repeat: float = 4.0,
                     family_cap: float | None = None) -> list[dict[str, Any]]:
    from ftscale.pack import MixtureSource, plan_mixture

    manifest = read_manifest(dataset_dir)
    sources = [MixtureSource(n, source_lengths(dataset_dir, manifest, n), w) for n, w in weights.items()]
    plan = plan_mixture(sources, tokens, seed=seed, epoch=epoch, temperature=temperature, max_repeat=max_repeat,
                        family_cap=family_cap)
    total = max(plan.total_tokens, 1)
    return [{"source": s["name"], "weight": s["weight"], "share": round(s["selected_tokens"] / total, 4),
             "tokens": int(s["selected_tokens"]), "documents": int(s["docs_selected"]),
             "unique tokens": int(s["unique_tokens"]), "repetition": round(s["repetition"], 3)}
            for s in plan.sources]
