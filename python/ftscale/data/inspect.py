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
    """Print the first ``n`` documents of a source's first shard (of a preference source: the
    first ``n`` pairs, chosen then rejected): tokens from the token store, uids from the Parquet
    shard."""
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.text import Text

    from ftscale.data.format import read_manifest
    from ftscale.data.store import open_store
    from ftscale.data.tokenize import load_tokenizer

    manifest = read_manifest(dataset_dir)
    if source not in manifest.sources:
        raise ConfigError(f"--source {source!r} is not in {dataset_dir}; it has: {', '.join(manifest.sources)}")
    shards = manifest.sources[source].shards(split)
    if not shards:
        raise ConfigError(f"source {source!r} has no {split} documents")
    tok = load_tokenizer(str(manifest.tokenizer.get("path")),
                         (manifest.config.get("tokenizer") or {}).get("chat_template"))
    paired = manifest.sources[source].kind == "preference"
    docs = 2 * n if paired else n
    shard = shards[0]
    store = open_store(Path(dataset_dir) / shard.store, shard.rows, shard.tokens, shard.store_bytes)
    offsets = store.offsets()[:docs + 1]
    uids = pq.read_table(Path(dataset_dir) / shard.path, columns=["uid"]).column("uid").to_pylist()[:docs]
    console = Console()
    console.print(f"[bold]{source}[/bold] ({split}): [green on grey15]green[/] = supervised (loss), dim = context")
    for k, (uid, doc_start, doc_end) in enumerate(zip(uids, offsets[:-1].tolist(), offsets[1:].tolist())):
        ids, mask = store.read(doc_start, doc_end - doc_start)
        text = Text()
        for start, end, supervised in loss_spans(mask):
            piece = tok.decode(ids[start:end].tolist())
            text.append(piece, style="bold green on grey15" if supervised else "dim")
        side = f"pair {k // 2} · {'rejected' if k % 2 else 'chosen'} · " if paired else ""
        console.rule(f"{side}uid {uid} · {len(ids)} tokens · {int(mask.sum())} supervised")
        console.print(text)
