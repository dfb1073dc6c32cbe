"""`ftscale inspect`: show prepared samples with the loss-bearing tokens highlighted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftscale.errors import ConfigError


def loss_spans(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Runs of equal mask values as (start, end, supervised)."""
    spans = []
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            spans.append((start, i, bool(mask[start])))
            start = i
    return spans


def print_samples(dataset_dir: str, source: str, n: int, split: str = "train") -> None:
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.text import Text

    from ftscale.data.format import read_manifest
    from ftscale.data.tokenize import load_tokenizer

    manifest = read_manifest(dataset_dir)
    if source not in manifest["sources"]:
        raise ConfigError(f"--source {source!r} is not in {dataset_dir}; it has: {', '.join(manifest['sources'])}")
    shards = manifest["sources"][source][split]
    if not shards:
        raise ConfigError(f"source {source!r} has no {split} documents")
    tok = load_tokenizer(manifest["tokenizer"]["path"], manifest["config"]["tokenizer"].get("chat_template"))
    table = pq.read_table(Path(dataset_dir) / shards[0]["path"]).slice(0, n)
    console = Console()
    console.print(f"[bold]{source}[/bold] ({split}): [green on grey15]green[/] = supervised (loss), dim = context")
    for row in table.to_pylist():
        ids = np.asarray(row["input_ids"])
        mask = np.asarray(row["loss_mask"])
        text = Text()
        for start, end, supervised in loss_spans(mask):
            piece = tok.decode(ids[start:end].tolist())
            text.append(piece, style="bold green on grey15" if supervised else "dim")
        console.rule(f"uid {row['uid']} · {len(ids)} tokens · {int(mask.sum())} supervised")
        console.print(text)
