"""Doc-level precision / recall / F1 of a dedup tool's removals against the scale corpus's planted
pairs (benchmarks/scale_corpus.py ``truth.parquet``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def removal_scores(removed_ids: np.ndarray, n_docs: int, id_a: np.ndarray, id_b: np.ndarray,
                   sim: np.ndarray, threshold: float = 0.8) -> dict:
    """Doc-level precision / recall / F1 of a set of removed documents.

    Which member of a duplicate group a tool keeps is its own rule (ftscale: lowest uid;
    datatrove: the root of its union-find), so truth is defined per group, not per document:
    the groups are the connected components of the graph whose edges are the ground-truth pairs
    with Jaccard >= ``threshold``. A group of ``s`` documents holds ``s - 1`` positives (a perfect
    tool keeps exactly one, any one).

    * A removed document is a true positive when its group still has a kept member: it has a
      partner at >= threshold that is kept, or one that is removed but itself linked at >=
      threshold to a kept one, and so on (a tool clusters transitively, as both tools do).
    * It is a false positive when it is in no group (no partner at >= threshold: a copy below
      the threshold, or an unrelated document) or when its whole group was removed (the
      content is lost).
    * recall = TP / sum(s - 1); a group with ``k >= 1`` kept members misses ``k - 1``.
    """
    removed = np.zeros(n_docs, dtype=bool)
    removed[np.asarray(removed_ids, dtype=np.int64)] = True
    keep = np.asarray(sim) >= threshold
    a, b = np.asarray(id_a)[keep].tolist(), np.asarray(id_b)[keep].tolist()
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for x, y in zip(a, b):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    members = np.array(sorted(set(a) | set(b)), dtype=np.int64)
    roots = np.array([find(int(m)) for m in members], dtype=np.int64)
    _, group = np.unique(roots, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = np.bincount(group, minlength=n_groups)
    gone = np.bincount(group, weights=removed[members], minlength=n_groups).astype(np.int64)
    has_kept = gone < size
    tp = int(gone[has_kept].sum())
    positives = int((size - 1).sum())
    predicted = int(removed.sum())
    in_group = np.zeros(n_docs, dtype=bool)
    in_group[members] = True
    in_any_pair = np.zeros(n_docs, dtype=bool)
    in_any_pair[np.asarray(id_a, dtype=np.int64)] = True
    in_any_pair[np.asarray(id_b, dtype=np.int64)] = True
    precision = tp / predicted if predicted else 1.0
    recall = tp / positives if positives else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": predicted - tp,
        "fn": positives - tp, "removed": predicted, "positives": positives, "groups": n_groups,
        "fp_below_threshold_copies": int((removed & ~in_group & in_any_pair).sum()),
        "fp_unrelated": int((removed & ~in_any_pair).sum()),
        "fp_whole_group_removed": int(gone[~has_kept].sum()),
    }


def score_removed(out_dir: Path, removed_ids: np.ndarray, threshold: float = 0.8) -> dict:
    """``removal_scores`` against this corpus's ``truth.parquet``."""
    import pyarrow.parquet as pq

    meta = json.loads((Path(out_dir) / "corpus.json").read_text())
    t = pq.read_table(Path(out_dir) / "truth.parquet", columns=["id_a", "id_b", "jaccard"])
    return removal_scores(removed_ids, meta["docs"], t["id_a"].to_numpy(), t["id_b"].to_numpy(),
                          t["jaccard"].to_numpy(), threshold)
