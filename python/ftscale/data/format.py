"""The prepared-dataset format: the contract between `ftscale prep` and the loader.

Layout of a prepared directory::

    manifest.json                         written last (atomically): the dataset exists once it does
    shards/<source>/part-NNNNN.parquet    training documents (uids, tokens, masks, provenance)
    shards/<source>/part-NNNNN.tokens     the same documents as a token store (``data/store.py``):
                                          what the loader reads
    val/<source>/part-NNNNN.{parquet,tokens}  held-out documents (chosen by uid hash, never position)
    quarantine/<source>.parquet           rejected records with a reason
    dedup/decisions.parquet               removed uid → kept uid, similarity, reason
    report.json, plots/<source>_lengths.png

Shard columns (``SHARD_SCHEMA``): ``uid`` (uint64), ``input_ids`` (list<int32>),
``loss_mask`` (list<uint8>: 1 where the token is a training target), ``length`` (int32,
tokens) and ``family`` (string, null when the source has no task-family field). CPT
documents end with EOS and have an all-ones mask; SFT masks cover assistant turns only.
A preference source's documents come in pairs, both with the pair's uid: the chosen document
(even index within its shard), then the rejected one (odd index); every shard holds whole
pairs; both documents share the prompt's tokens as their prefix, carry loss on the final reply
only, and hold at most ``seq_len // 2`` tokens each.
The loader turns masks into labels (-100 where the mask is 0, and at the first token of
every packed piece, so no label is predicted across a document boundary).

Manifest keys (``MANIFEST_VERSION`` 2; each maps to a typed object below)::

    format_version, created_by, seq_len, seed,
    config            the prep config as plain data
    config_fingerprint  sha256 of the canonical config JSON
    tokenizer         {path, fingerprint, eos_token_id, pad_token_id, bos_token_id, vocab_size,
                       chat_template (or null)}
    sources           {name: SourceEntry}
    SourceEntry       {kind, counts: StageCounts, tokens{train, val, supervised_train},
                       supervised_share, train: [Shard...], val: [Shard...], lengths_histogram, warnings}
    StageCounts       {read, quarantined, quarantined_by_reason{reason: n}, exact_duplicate,
                       near_duplicate, contaminated, kept, truncated, train_docs, val_docs}
    Shard             {path (relative), rows, tokens, sha256 (of the Parquet file),
                       store: {path (relative), bytes, sha256}}

The manifest is read as untrusted input: every value is type- and range-checked and every
file path must stay inside the dataset directory, else a one-line DataError names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, NoReturn

import pyarrow as pa

from ftscale.errors import ConfigError, DataError, InputError

MANIFEST_VERSION = 2
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
VAL_DIR = "val"
SPLITS = ("train", "val")
SOURCE_KINDS = ("cpt", "sft", "preference")

SHARD_SCHEMA = pa.schema([
    ("uid", pa.uint64()),
    ("input_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.uint8())),
    ("length", pa.int32()),
    ("family", pa.string()),
])

IGNORE_INDEX = -100  # label value that carries no loss (the PyTorch / HF convention)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RERUN = "re-run `ftscale prep`"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


# ---------------------------------------------------------------------------------------------
# validating untrusted JSON: `where` names the key, e.g. "<dir>/manifest.json: sources.web.train[0].rows"


def _fail(where: str, problem: str) -> NoReturn:
    raise DataError(f"{where} {problem}; {_RERUN}")


def _get(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        _fail(f"{where}.{key}", "is missing")
    return obj[key]


def _dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"must be a JSON object, got {type(value).__name__}")
    return value


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(where, f"must be a non-negative integer, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, got {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    """A source name: it names files and directories (report plots, shard folders), so it must
    be one plain path component."""
    from ftscale.config.base import PLAIN_NAME_RULE, plain_name

    name = _str(value, where)
    if not plain_name(name):
        _fail(where, f"must be {PLAIN_NAME_RULE}, got {name!r}")
    return name


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        _fail(where, f"must be a sha256 hex digest, got {value!r}")
    return value


def _relative_path(value: Any, dataset_dir: Path, where: str) -> str:
    """A path inside ``dataset_dir``: relative, no '..', not escaping through a symlink."""
    text = _str(value, where)
    rel = PurePosixPath(text)
    if not text or "\x00" in text or "\\" in text or rel.is_absolute() or ".." in rel.parts or not rel.parts:
        _fail(where, f"must be a relative path inside the dataset directory, got {text!r}")
    root = dataset_dir.resolve()
    if not (root / rel).resolve().is_relative_to(root):
        _fail(where, f"{text!r} leads outside the dataset directory {root} (through a symlink)")
    return rel.as_posix()


# ---------------------------------------------------------------------------------------------
# typed objects


@dataclass(frozen=True)
class StageCounts:
    """Records of one source per stage. A record leaves at the first stage that removes it, so
    ``read = kept + quarantined + exact_duplicate + near_duplicate + contaminated``; prep then
    splits ``kept + extra_samples = train_docs + val_docs`` (both 0 in a dedup report): docs are
    shard rows, and an SFT conversation whose template rewrites earlier turns yields one extra
    sample per such turn (``extra_samples``). ``truncated`` counts SFT samples cut to seq_len
    (prep only). A preference source counts pairs: a kept pair is two documents, its rejected
    one counted in ``extra_samples`` (so ``extra_samples == kept``), and ``truncated`` counts
    pairs with a reply cut to ``seq_len // 2``."""

    read: int
    quarantined: int
    exact_duplicate: int
    near_duplicate: int
    contaminated: int
    kept: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    train_docs: int = 0
    val_docs: int = 0
    extra_samples: int = 0

    _JSON_ORDER = ("read", "quarantined", "quarantined_by_reason", "exact_duplicate", "near_duplicate",
                   "contaminated", "kept", "truncated", "train_docs", "val_docs", "extra_samples")
    _OPTIONAL = ("quarantined_by_reason", "truncated", "train_docs", "val_docs", "extra_samples")

    @classmethod
    def from_json(cls, obj: Any, where: str = "counts") -> StageCounts:
        obj = _dict(obj, where)
        values: dict[str, Any] = {}
        for key in cls._JSON_ORDER:
            if key not in obj and key in cls._OPTIONAL:
                continue
            value = _get(obj, key, where)
            if key == "quarantined_by_reason":
                values[key] = {_str(r, f"{where}.{key} key"): _count(n, f"{where}.{key}.{r}")
                               for r, n in _dict(value, f"{where}.{key}").items()}
            else:
                values[key] = _count(value, f"{where}.{key}")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {k: dict(self.quarantined_by_reason) if k == "quarantined_by_reason" else getattr(self, k)
                for k in self._JSON_ORDER}

    def violations(self) -> list[str]:
        """The conservation equations these counts break (empty when they all hold)."""
        broken = []
        removed = self.kept + self.quarantined + self.exact_duplicate + self.near_duplicate + self.contaminated
        if self.read != removed:
            broken.append(f"read {self.read} != kept + quarantined + exact_duplicate + near_duplicate + "
                          f"contaminated = {removed}")
        by_reason = sum(self.quarantined_by_reason.values())
        if by_reason != self.quarantined:
            broken.append(f"quarantined {self.quarantined} != sum of quarantined_by_reason = {by_reason}")
        docs = self.train_docs + self.val_docs
        if docs > 0 and self.kept + self.extra_samples != docs:
            broken.append(f"kept {self.kept} + extra_samples {self.extra_samples} != train_docs + val_docs = {docs}")
        return broken

    def check(self, source: str) -> None:
        """AssertionError when counts ftscale computed itself are not conserved: that is a bug,
        not bad input (a manifest read from disk is reported with ``violations`` instead)."""
        broken = self.violations()
        if broken:
            raise AssertionError(f"count conservation broken for source {source!r}: {'; '.join(broken)} "
                                 f"({self.to_json()})")

    def __add__(self, other: StageCounts) -> StageCounts:
        """Field-wise sum (totals over sources)."""
        reasons = dict(self.quarantined_by_reason)
        for r, n in other.quarantined_by_reason.items():
            reasons[r] = reasons.get(r, 0) + n
        sums = {f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self) if f.name != "quarantined_by_reason"}
        return StageCounts(**sums, quarantined_by_reason=reasons)

    @classmethod
    def zero(cls) -> StageCounts:
        return cls(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class Shard:
    """One shard of one split: a Parquet file and its token store, paths relative to the dataset."""

    path: str  # the Parquet shard
    rows: int  # documents
    tokens: int
    sha256: str  # of the Parquet file
    store: str  # the token store (``data/store.py``)
    store_bytes: int
    store_sha256: str

    @classmethod
    def from_json(cls, obj: Any, dataset_dir: Path, where: str = "shard") -> Shard:
        obj = _dict(obj, where)
        store = _dict(_get(obj, "store", where), f"{where}.store")
        return cls(
            path=_relative_path(_get(obj, "path", where), dataset_dir, f"{where}.path"),
            rows=_count(_get(obj, "rows", where), f"{where}.rows"),
            tokens=_count(_get(obj, "tokens", where), f"{where}.tokens"),
            sha256=_sha(_get(obj, "sha256", where), f"{where}.sha256"),
            store=_relative_path(_get(store, "path", f"{where}.store"), dataset_dir, f"{where}.store.path"),
            store_bytes=_count(_get(store, "bytes", f"{where}.store"), f"{where}.store.bytes"),
            store_sha256=_sha(_get(store, "sha256", f"{where}.store"), f"{where}.store.sha256"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "tokens": self.tokens, "sha256": self.sha256,
                "store": {"path": self.store, "bytes": self.store_bytes, "sha256": self.store_sha256}}


@dataclass(frozen=True)
class SourceEntry:
    """One source of a prepared dataset: its counts, token totals and shards per split."""

    kind: str  # "cpt", "sft" or "preference"
    counts: StageCounts
    train: tuple[Shard, ...]
    val: tuple[Shard, ...]
    train_tokens: int
    val_tokens: int
    supervised_train_tokens: int  # train tokens whose loss mask is 1
    supervised_share: float  # supervised_train_tokens / train_tokens (0 when there are none)
    lengths_histogram: dict[str, list[int]] | None = None  # {"edges": [...], "counts": [...]}, tokens/doc
    warnings: tuple[str, ...] = ()
    # SFT and preference: which chat engine encoded the source and why, and how its turns were
    # placed (engine, engine_reason, python_rendered, expanded_turns, located_turns).
    chat: dict[str, Any] | None = None

    def shards(self, split: str) -> tuple[Shard, ...]:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return self.train if split == "train" else self.val

    @classmethod
    def from_json(cls, obj: Any, dataset_dir: Path, where: str = "source") -> SourceEntry:
        obj = _dict(obj, where)
        kind = _get(obj, "kind", where)
        if kind not in SOURCE_KINDS:
            _fail(f"{where}.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
        counts = StageCounts.from_json(_get(obj, "counts", where), f"{where}.counts")
        tokens = _dict(_get(obj, "tokens", where), f"{where}.tokens")
        splits = {}
        for split in SPLITS:
            items = _get(obj, split, where)
            if not isinstance(items, list):
                _fail(f"{where}.{split}", "must be a list of shards")
            splits[split] = tuple(Shard.from_json(s, dataset_dir, f"{where}.{split}[{i}]")
                                  for i, s in enumerate(items))
            declared = _count(_get(tokens, split, f"{where}.tokens"), f"{where}.tokens.{split}")
            if declared != sum(s.tokens for s in splits[split]):
                _fail(f"{where}.tokens.{split}", f"({declared}) is not the sum of its shards' tokens")
            docs = getattr(counts, f"{split}_docs")
            if docs != sum(s.rows for s in splits[split]):
                _fail(f"{where}.counts.{split}_docs", f"({docs}) is not the sum of its shards' rows")
        share = obj.get("supervised_share", 0.0)
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            _fail(f"{where}.supervised_share", f"must be a number in [0, 1], got {share!r}")
        histogram = obj.get("lengths_histogram")
        if histogram is not None:
            key = f"{where}.lengths_histogram"
            histogram = _dict(histogram, key)
            edges, bins = _get(histogram, "edges", key), _get(histogram, "counts", key)
            if not isinstance(edges, list) or not isinstance(bins, list) or len(edges) != len(bins) + 1:
                _fail(key, "must hold lists 'edges' and 'counts', one more edge than counts")
            histogram = {"edges": [_count(e, f"{key}.edges") for e in edges],
                         "counts": [_count(c, f"{key}.counts") for c in bins]}
        warnings = obj.get("warnings", [])
        if not isinstance(warnings, list):
            _fail(f"{where}.warnings", "must be a list of strings")
        chat = obj.get("chat")
        if chat is not None:
            chat = _dict(chat, f"{where}.chat")
        return cls(
            kind=kind, counts=counts, train=splits["train"], val=splits["val"], train_tokens=tokens["train"],
            val_tokens=tokens["val"],
            supervised_train_tokens=_count(_get(tokens, "supervised_train", f"{where}.tokens"),
                                           f"{where}.tokens.supervised_train"),
            supervised_share=float(share), lengths_histogram=histogram,
            warnings=tuple(_str(w, f"{where}.warnings[{i}]") for i, w in enumerate(warnings)), chat=chat,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "counts": self.counts.to_json(),
            "tokens": {"train": self.train_tokens, "val": self.val_tokens,
                       "supervised_train": self.supervised_train_tokens},
            "supervised_share": self.supervised_share,
            "train": [s.to_json() for s in self.train], "val": [s.to_json() for s in self.val],
        }
        if self.lengths_histogram is not None:
            out["lengths_histogram"] = self.lengths_histogram
        out["warnings"] = list(self.warnings)
        if self.chat is not None:
            out["chat"] = dict(self.chat)
        return out


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a prepared dataset (see the module docstring)."""

    seq_len: int  # tokens; SFT conversations were truncated (or dropped) to it
    seed: int
    sources: dict[str, SourceEntry]  # in prep config order (the loader's source order)
    tokenizer: dict[str, Any]  # what ``Tokenizer.describe()`` records
    config: dict[str, Any] = field(default_factory=dict)
    config_fingerprint: str = ""
    created_by: str = "ftscale prep"

    def shards(self, split: str, sources: Iterable[str] | None = None) -> list[tuple[str, Shard]]:
        """(source name, shard) of one split, in manifest order, for all or the named sources."""
        names = list(self.sources) if sources is None else list(sources)
        unknown = [n for n in names if n not in self.sources]
        if unknown:
            raise ConfigError(f"unknown source(s) {', '.join(map(repr, unknown))}; the dataset has "
                              f"{', '.join(map(repr, self.sources))}")
        return [(n, s) for n in self.sources if n in names for s in self.sources[n].shards(split)]

    @classmethod
    def from_json(cls, obj: Any, dataset_dir: str | Path) -> Manifest:
        root = Path(dataset_dir)
        where = str(root / MANIFEST) + ":"
        obj = _dict(obj, where)
        version = obj.get("format_version")
        if version != MANIFEST_VERSION:
            raise DataError(f"{root / MANIFEST}: format_version {version!r}, this ftscale reads {MANIFEST_VERSION}; "
                            f"{_RERUN} with this version")
        sources = _dict(_get(obj, "sources", where), f"{where} sources")
        tokenizer = _dict(_get(obj, "tokenizer", where), f"{where} tokenizer")
        for key in ("eos_token_id", "pad_token_id", "bos_token_id", "vocab_size"):
            if tokenizer.get(key) is not None:
                _count(tokenizer[key], f"{where} tokenizer.{key}")
        seq_len = _count(_get(obj, "seq_len", where), f"{where} seq_len")
        if seq_len < 1:
            _fail(f"{where} seq_len", "must be >= 1")
        return cls(
            seq_len=seq_len, seed=_count(_get(obj, "seed", where), f"{where} seed"),
            sources={_name(name, f"{where} sources key"): SourceEntry.from_json(entry, root, f"{where} sources.{name}")
                     for name, entry in sources.items()},
            tokenizer=tokenizer, config=_dict(obj.get("config", {}), f"{where} config"),
            config_fingerprint=_str(obj.get("config_fingerprint", ""), f"{where} config_fingerprint"),
            created_by=_str(obj.get("created_by", ""), f"{where} created_by"),
        )

    def to_json(self) -> dict[str, Any]:
        return {"format_version": MANIFEST_VERSION, "created_by": self.created_by, "seq_len": self.seq_len,
                "seed": self.seed, "config": self.config, "config_fingerprint": self.config_fingerprint,
                "tokenizer": self.tokenizer, "sources": {n: e.to_json() for n, e in self.sources.items()}}


def read_manifest(dataset_dir: str | Path) -> Manifest:
    """The manifest of a prepared dataset, checked for existence, JSON, format version and every value."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path} not found: {dataset_dir} is not a prepared dataset (run `ftscale prep` first "
                         "and point at its output directory)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as JSON ({e}); {_RERUN}") from e
    return Manifest.from_json(obj, dataset_dir)


# ---------------------------------------------------------------------------------------------
# integrity


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (hashlib releases the GIL on large updates)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_dataset(dataset_dir: str | Path, sources: Iterable[str] | None = None,
                   splits: Iterable[str] = SPLITS, *, threads: int | None = None) -> int:
    """Check every Parquet shard and token store of the given sources and splits against the
    manifest's sha256 (DataError naming the first bad file, in manifest order); returns the
    bytes hashed. Run once per launch (``ftscale train``'s driver), not on every rank: the
    ranks check store headers and sizes only."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(dataset_dir)
    manifest = read_manifest(root)
    files = [(rel, digest) for split in splits for _, s in manifest.shards(split, sources)
             for rel, digest in ((s.path, s.sha256), (s.store, s.store_sha256))]

    def digest_of(rel: str) -> tuple[str | None, int]:
        path = root / rel
        try:
            return sha256_file(path), path.stat().st_size
        except OSError as e:
            return f"unreadable ({e.strerror or e})", 0

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftscale-verify") as pool:
        results = list(pool.map(digest_of, [rel for rel, _ in files]))
    for (rel, expected), (got, _) in zip(files, results):
        if got != expected:
            raise DataError(f"shard {root / rel} does not match the manifest (sha256 {str(got)[:16]}..., manifest "
                            f"{expected[:16]}...): the file was modified or torn after prep; restore it or {_RERUN}")
    return sum(size for _, size in results)
