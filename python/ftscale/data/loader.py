"""Training data loader: mixture + packing at load time over a prepared dataset.

``PackedLoader`` reads one split of a prepared dataset (``ftscale.data.format``) from its token
stores (``ftscale.data.store``). Opening a loader reads each store's 64-byte header and its
document offsets, never its tokens; a micro-batch reads just its own pieces with positional
reads. The token pages stay in the page cache, shared by every rank of the node, and out of
each rank's resident set. Checksums are verified once per launch by ``verify_dataset`` (run
by ``ftscale train``'s driver), not by every rank; a rank checks each store's header and size.

Resident memory of a rank, per document of the selected sources (integer arrays in the
smallest unsigned dtype that holds their values; no token is held):

* 4 B length (uint32) + 4 B start within its shard's store (uint32; uint64 only when a
  shard holds more than 2^32 tokens) — 8 B per document;
* + 4 B family id per document, only with ``family_cap``;
* the current epoch's plan: per piece 4 B document index + 1 B piece number within its
  document (2 B or 4 B when a document has more than 255 / 65,535 pieces of seq_len
  tokens), and per packed row 4 B offset. A piece is a document or a seq_len slice of one;
  with the default ``tokens_per_epoch`` (one pass) there is one piece per document unless
  documents are longer than seq_len. Only one plan is kept; the plan of another epoch is
  rebuilt from the lengths when asked for.

That is ~13 B per document (measured in tests/unit/test_loader_memory.py: 12.7 B per
document steady, whatever the tokens per document). While a plan is built, the Rust
planners and the row permutation hold ~35 B per piece more for a moment (peak measured
46 B per document); they are handed back to the OS before the first batch. Fixed costs:
one open file per store (at most ``MAX_OPEN_STORES``) and the batch being assembled.

Epoch plan — a pure function of (dataset, mixture, seed, epoch, seq_len, strategy,
tokens_per_epoch, temperature, max_repeat, family_cap), never of rank or world size:

1. ``plan_mixture`` draws whole documents from the sources so that token shares follow the
   weights (target: ``tokens_per_epoch``, default the total tokens of the selected sources);
   the picks come out interleaved.
2. ``apply_overlong(..., "split")`` cuts picked documents longer than ``seq_len`` into
   consecutive pieces (CPT). An SFT document longer than ``seq_len`` (only possible when the
   loader's ``seq_len`` is below the prep ``seq_len``) keeps its first piece only, i.e. it is
   truncated like prep would have done: a conversation is never split into two samples.
3. ``pack(..., strategy)`` places the pieces into rows of ``seq_len`` slots.
4. A permutation seeded by (seed, epoch) orders the rows (BFD creates them longest-first);
   the result is the epoch's global row sequence.

Rank ``r`` of ``W`` reads global rows ``r, r + W, r + 2W, ...``; one step consumes the
contiguous block of ``W * micro_batch_size`` global rows. An epoch has
``floor(rows / (W * B))`` steps; the ragged tail (fewer than ``W * B`` rows) is dropped and
the next epoch starts with a fresh plan (``drop_last=False`` keeps it instead, padding the
last step with empty rows). The resume state is ``(seed, epoch,
rows_consumed)`` with ``rows_consumed`` counted in global rows, so a run may resume with a
different world size and continue the same global sequence. It also carries what the plan
is made of (``sequence``: the selected shards' checksums, mixture, seq_len, strategy and
the other plan parameters); a state whose sequence differs is refused, so a resume after
re-running prep or changing the mixture never silently continues another sequence.

Preference pairs (sources of kind ``preference``; a loader reads either only such sources or
none): prep writes a pair as two adjacent documents of one shard, chosen then rejected. The plan
treats a pair as one piece of ``len(chosen) + len(rejected)`` tokens (mixture weights, packing and
the permutation all work on pairs, never split), and a row emits it as two pieces, chosen first,
so both sides of a pair always share a row and a micro-batch. Batches then also carry
``sequence_index`` (which piece of the micro-batch each token belongs to, -1 on padding: pair
``i`` is pieces ``2i`` and ``2i + 1``), ``sequence_doc`` (the loader's document index of every
piece) and ``num_pairs``. No state is added per document; planning holds a 4 B pair length per
pair for a moment.

Row layout: each row holds its pieces back to back, then padding. Labels are -100 where the
loss mask is 0, on padding, and on the first token of every piece (the token a model would
otherwise predict from the previous document). ``position_ids`` restart at 0 for every
piece and for the padding run of a row (padding counts as its own segment, also in
``cu_seqlens``, which therefore always ends at ``B * L``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ftscale.data.format import IGNORE_INDEX, SPLITS, read_manifest, verify_dataset
from ftscale.data.store import Store, open_store
from ftscale.errors import ConfigError, DataError
from ftscale.memory import return_freed_memory

STATE_VERSION = 2  # 2: the state carries its sequence (version 1 states had none and are refused)
_PERM_STREAM = 0x726F7773  # "rows": keeps the row permutation's seed stream apart from others
# Open store files per rank, least recently used closed first: thousands of shards stay
# below the usual soft limit of 1,024 descriptors per process.
MAX_OPEN_STORES = 64


def _uint_for(max_value: int) -> type:
    """The smallest unsigned dtype (8 to 64 bits) holding ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _index_dtype(count: int) -> type:
    """uint32 for indices below ``count`` (the planners' own index type), uint64 past 2^32."""
    return np.uint32 if count <= 2**32 else np.uint64


@dataclass(frozen=True)
class EpochPlan:
    """The global row sequence of one epoch.

    Pieces are stored in global row order: row ``k`` (after the shuffle) holds pieces
    ``row_offsets[k] .. row_offsets[k+1]``, in that order. Piece ``i`` is tokens
    ``piece_start[i] .. piece_start[i] + piece_len[i]`` of document ``piece_doc[i]`` (the
    loader's document index: selected sources in manifest order, shards in order).
    """

    epoch: int
    num_rows: int
    seq_len: int
    row_offsets: np.ndarray  # uint32 (uint64 past 2^32 pieces), num_rows + 1
    piece_doc: np.ndarray  # uint32 (uint64 past 2^32 documents)
    piece_part: np.ndarray  # uint8/16/32: the piece starts at token piece_part * seq_len of its document
    doc_len: np.ndarray = field(repr=False)  # uint32, the loader's document lengths (shared, not a copy)
    stats: dict = field(default_factory=dict)
    # Preference data: a piece is a pair, documents piece_doc (chosen) and piece_doc + 1
    # (rejected), never split; piece_part is 0.
    paired: bool = False

    @property
    def piece_start(self) -> np.ndarray:
        """First token of every piece within its document (int64)."""
        return self.piece_part.astype(np.int64) * self.seq_len

    @property
    def piece_len(self) -> np.ndarray:
        """Tokens of every piece (int64): a seq_len slice, or what is left of the document; a
        pair's two documents together."""
        if self.paired:
            return self.doc_len[self.piece_doc].astype(np.int64) + self.doc_len[self.piece_doc + 1]
        return np.minimum(self.doc_len[self.piece_doc].astype(np.int64) - self.piece_start, self.seq_len)

    def row_tokens(self) -> np.ndarray:
        """Filled token slots of every row (global order)."""
        return np.add.reduceat(self.piece_len, self.row_offsets[:-1].astype(np.int64)) if self.num_rows else \
            np.zeros(0, dtype=np.int64)


def _excl_cumsum(a: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.int64)
    if len(a):
        out[0] = 0
        np.cumsum(a[:-1], out=out[1:])
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    starts, lengths = starts.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    return np.repeat(starts - _excl_cumsum(lengths), lengths) + np.arange(total, dtype=np.int64)


class PackedLoader:
    """Packed micro-batches of a prepared dataset for one rank; an infinite iterator unless
    ``max_epochs`` is given. See the module docstring for the plan, the row layout and the
    memory it holds.

    ``drop_last=False`` (for validation: every document once) keeps the ragged tail: the last
    step of an epoch is filled up with empty rows (all padding, no loss tokens), so every rank
    still runs the same number of steps, ``ceil(rows / (world_size x micro_batch_size))``.

    ``verify=True`` hashes the selected shards and stores against the manifest first
    (``verify_dataset``). Off by default: ``ftscale train`` verifies once in its driver before
    the workers start, and every rank re-hashing the dataset is the cost this layout removes;
    turn it on when using the loader on its own.

    Each item is a dict: ``input_ids``, ``labels``, ``position_ids``, ``attention_mask``
    (int64 ``[B, L]``), ``cu_seqlens`` (int32, 1-D, piece and padding boundaries over the
    flattened batch), ``max_seqlen``, ``num_loss_tokens`` and ``num_tokens`` (non-padding)
    as Python ints.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        mixture: dict[str, float] | None,
        seq_len: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        *,
        split: str = "train",
        tokens_per_epoch: int | None = None,
        strategy: str = "bfd",
        temperature: float = 1.0,
        max_repeat: float = 4.0,
        family_cap: float | None = None,
        pad_token_id: int | None = None,
        max_epochs: int | None = None,
        drop_last: bool = True,
        verify: bool = False,
    ) -> None:
        from ftscale.pack import STRATEGIES

        self.dataset_dir = Path(dataset_dir)
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if int(seq_len) < 1:
            raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
        if int(micro_batch_size) < 1:
            raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if int(world_size) < 1:
            raise ConfigError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"rank must be in 0..{int(world_size) - 1} for world_size={world_size}, got {rank}")
        if not 0 <= int(seed) < 2**64:
            raise ConfigError(f"seed must be an integer in 0..2**64-1, got {seed}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if tokens_per_epoch is not None and int(tokens_per_epoch) < 1:
            raise ConfigError(f"tokens_per_epoch must be >= 1 (or None for one natural pass), got {tokens_per_epoch}")
        if max_epochs is not None and int(max_epochs) < 0:
            raise ConfigError(f"max_epochs must be >= 0 (or None for no limit), got {max_epochs}")
        self.seq_len = int(seq_len)
        self.micro_batch_size = int(micro_batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.split = split
        self.strategy = strategy
        self.temperature = float(temperature)
        self.max_repeat = float(max_repeat)
        self.family_cap = family_cap
        self.max_epochs = None if max_epochs is None else int(max_epochs)
        self.drop_last = bool(drop_last)

        self.manifest = read_manifest(self.dataset_dir)
        self.sources, weights = self._select_sources(mixture)
        if verify:
            verify_dataset(self.dataset_dir, self.sources, (split,))
        self._open(self.sources)
        self.weights = weights
        if mixture is None:  # natural mix: proportional to the tokens each source has
            self.weights = [float(t) for t in self.source_tokens]
        self.tokens_per_epoch = int(tokens_per_epoch) if tokens_per_epoch is not None else sum(self.source_tokens)

        tok = self.manifest.tokenizer
        if pad_token_id is None:
            pad_token_id = tok.get("pad_token_id")
            if pad_token_id is None:
                pad_token_id = tok.get("eos_token_id")
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0

        self.epoch = 0
        self.rows_consumed = 0
        self._plan: EpochPlan | None = None
        if self.drop_last and self.plan(0).num_rows < self.rows_per_step:
            raise ConfigError(
                f"epoch 0 packs into {self.plan(0).num_rows} rows of {self.seq_len} tokens, fewer than one step "
                f"needs (world_size {self.world_size} x micro_batch_size {self.micro_batch_size}); lower "
                f"micro_batch_size or seq_len, or raise tokens_per_epoch"
            )

    # ----------------------------------------------------------------------------------------
    # opening

    def _select_sources(self, mixture: dict[str, float] | None) -> tuple[list[str], list[float]]:
        entries = self.manifest.sources
        available = list(entries)
        if mixture is None:
            names = [n for n in available if entries[n].shards(self.split)]
            if not names:
                raise ConfigError(
                    f"the dataset has no {self.split} shards in any source; "
                    + ("prep with val_fraction > 0" if self.split == "val" else "check the prep report")
                )
            weights = [1.0] * len(names)
        else:
            if not isinstance(mixture, dict) or not mixture:
                raise ConfigError("mixture must map source names to weights (or be None for the natural mix)")
            unknown = [n for n in mixture if n not in entries]
            if unknown:
                raise ConfigError(
                    f"mixture names unknown source(s) {', '.join(map(repr, unknown))}; the dataset has "
                    f"{', '.join(map(repr, available))}"
                )
            for name, w in mixture.items():
                if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w <= 0:
                    raise ConfigError(f"mixture.{name}: weight must be a number > 0, got {w!r}")
            # Manifest order, not dict order: the plan must not depend on how the mixture was spelt.
            names = [n for n in available if n in mixture]
            weights = [float(mixture[n]) for n in names]
            empty = [n for n in names if not any(s.rows for s in entries[n].shards(self.split))]
            if empty:
                hint = "re-run prep with val_fraction > 0 or " if self.split == "val" else ""
                raise ConfigError(
                    f"source(s) {', '.join(map(repr, empty))} have no {self.split} documents; "
                    f"{hint}remove them from the mixture"
                )
        pref = [n for n in names if entries[n].kind == "preference"]
        if pref and len(pref) != len(names):
            other = [n for n in names if n not in pref]
            raise ConfigError(
                f"mixture: preference source(s) {', '.join(map(repr, pref))} train with a preference objective and "
                f"cannot be mixed with cpt/sft source(s) {', '.join(map(repr, other))}; train them in separate runs "
                "(e.g. SFT first, then DPO from its export)")
        ds_seq_len = self.manifest.seq_len
        sft = [n for n in names if entries[n].kind == "sft"]
        if sft and self.seq_len > ds_seq_len:
            raise ConfigError(
                f"seq_len {self.seq_len} is larger than the dataset's seq_len {ds_seq_len}: SFT source(s) "
                f"{', '.join(map(repr, sft))} were truncated to {ds_seq_len} tokens at prep; set seq_len <= "
                f"{ds_seq_len} or re-run `ftscale prep` with seq_len={self.seq_len}"
            )
        return names, weights

    def _open(self, names: list[str]) -> None:
        """Open every store of the selected sources (header + size checks) and keep, per
        document, its length and its start within its store, read from the stores' offsets."""
        shards = self.manifest.shards(self.split, names)
        self._stores: list[Store] = [open_store(self.dataset_dir / s.store, s.rows, s.tokens, s.store_bytes)
                                     for _, s in shards]
        self._open_fds: OrderedDict[int, None] = OrderedDict()
        rows = np.array([s.rows for _, s in shards], dtype=np.int64)
        self._shard_base = np.concatenate(([0], np.cumsum(rows))).astype(np.int64)  # first document of each shard
        total_docs = int(self._shard_base[-1])
        self._doc_len = np.empty(total_docs, dtype=np.uint32)
        self._doc_start = np.empty(total_docs, dtype=_index_dtype(max((s.tokens for _, s in shards), default=0)))
        for k, store in enumerate(self._stores):
            offsets = store.offsets()
            store.close()  # reopened on demand, at most MAX_OPEN_STORES at a time
            lengths = np.diff(offsets)
            if len(lengths) and lengths.max() > np.iinfo(np.uint32).max:
                raise DataError(f"token store {store.path}: a document of {int(lengths.max())} tokens exceeds "
                                f"2^32 - 1; re-run `ftscale prep`")
            lo, hi = self._shard_base[k], self._shard_base[k + 1]
            self._doc_len[lo:hi] = lengths
            self._doc_start[lo:hi] = offsets[:-1]
        self._doc_index = _index_dtype(total_docs)
        docs = [sum(s.rows for n, s in shards if n == name) for name in names]
        self._src_base = np.concatenate(([0], np.cumsum(docs))).astype(np.int64)
        self.source_tokens = [sum(s.tokens for n, s in shards if n == name) for name in names]
        empty = [n for n, c in zip(names, docs) if c == 0]
        if empty:
            raise ConfigError(
                f"source(s) {', '.join(map(repr, empty))} have no {self.split} documents; remove them from the mixture"
            )
        self._is_sft = np.array([self.manifest.sources[n].kind == "sft" for n in names], dtype=bool)
        self.paired = all(self.manifest.sources[n].kind == "preference" for n in names)
        if self.paired:
            self._check_pairs(shards)
        self._families = [self._read_families([s for n, s in shards if n == name]) if self.family_cap is not None
                          else None for name in names]

    def _check_pairs(self, shards: list) -> None:
        """Every shard of a preference source holds whole pairs, and every pair fits one row."""
        odd = [s.path for _, s in shards if s.rows % 2]
        if odd:
            raise DataError(f"preference shard {odd[0]} holds an odd number of documents, so a pair is cut; "
                            "re-run `ftscale prep`")
        longest = int((self._doc_len[0::2].astype(np.int64) + self._doc_len[1::2]).max(initial=0))
        if longest > self.seq_len:
            raise ConfigError(
                f"seq_len {self.seq_len} is shorter than the longest preference pair ({longest} tokens, chosen + "
                f"rejected; prep keeps each side within its seq_len {self.manifest.seq_len} // 2): set seq_len >= "
                f"{longest}, or re-run `ftscale prep` with seq_len={self.seq_len}")

    def _read_families(self, shards: list) -> np.ndarray | None:
        """Dense family ids of one source's documents (by first occurrence; null is its own
        family), from the Parquet shards' ``family`` column; None when the source has none."""
        import pyarrow.parquet as pq

        ids_of: dict[Any, int] = {}
        parts = []
        for shard in shards:
            path = self.dataset_dir / shard.path
            try:
                column = pq.read_table(path, columns=["family"]).column("family").to_pylist()
            except Exception as e:  # noqa: BLE001 - any Arrow failure means an unusable shard
                raise DataError(f"shard {path} cannot be read for its family column ({e}); re-run `ftscale prep`") \
                    from e
            if len(column) != shard.rows:
                raise DataError(f"shard {path}: {len(column)} rows, the manifest says {shard.rows}; re-run "
                                "`ftscale prep`")
            parts.append(np.fromiter((ids_of.setdefault(f, len(ids_of)) for f in column), dtype=np.uint32,
                                     count=len(column)))
        if set(ids_of) <= {None}:
            return None
        return np.concatenate(parts)

    def _store(self, shard: int) -> Store:
        """The store of shard ``shard``, its descriptor among the ``MAX_OPEN_STORES`` kept open."""
        fds = self._open_fds
        if shard in fds:
            fds.move_to_end(shard)
        else:
            fds[shard] = None
            if len(fds) > MAX_OPEN_STORES:
                self._stores[fds.popitem(last=False)[0]].close()
        return self._stores[shard]

    def close(self) -> None:
        """Close the store files (they reopen on the next batch)."""
        for shard in self._open_fds:
            self._stores[shard].close()
        self._open_fds.clear()

    # ----------------------------------------------------------------------------------------
    # planning

    def plan(self, epoch: int) -> EpochPlan:
        """The global row sequence of ``epoch``; only the latest one asked for is kept."""
        epoch = int(epoch)
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = None  # free the old plan before building the next one
            self._plan = self._make_plan(epoch)
            # Building a plan frees ~35 B per piece of transient arrays that glibc would keep:
            # measured at 1 M documents, 48 B per document resident without this, 13 B with it.
            return_freed_memory()
        return self._plan

    def _make_plan(self, epoch: int) -> EpochPlan:
        from ftscale.pack import apply_overlong

        L = self.seq_len
        if self.paired:
            return self._make_pair_plan(epoch)
        mix = self._plan_mixture(self._doc_len, self._src_base, self._families, epoch)
        pick_doc = self._src_base.astype(self._doc_index)[mix.pick_source] + mix.pick_doc.astype(self._doc_index)
        pick_sft = self._is_sft[mix.pick_source] if self._is_sft.any() else None
        mixture_stats = mix.sources
        del mix
        pieces = apply_overlong(self._doc_len[pick_doc], L, "split")
        docs_split = int(pieces.stats.get("docs_split", 0))
        piece_doc = pick_doc[pieces.doc]
        piece_start, plen = pieces.start, pieces.length
        truncated_sft = 0
        if pick_sft is not None:
            keep = ~pick_sft[pieces.doc] | (piece_start == 0)
            truncated_sft = int(len(keep) - np.count_nonzero(keep))
            if truncated_sft:
                piece_doc, piece_start, plen = piece_doc[keep], piece_start[keep], plen[keep]
        del pieces, pick_doc, pick_sft
        order, row_offsets, stats = self._shuffled_rows(plen, epoch)
        del plen
        stats.update(docs_split=docs_split, sft_pieces_truncated=truncated_sft, mixture=mixture_stats)
        part = piece_start // np.uint32(L)
        return EpochPlan(
            epoch=epoch, num_rows=stats["rows"], seq_len=L, row_offsets=row_offsets, piece_doc=piece_doc[order],
            piece_part=part[order].astype(_uint_for(int(part.max(initial=0)))), doc_len=self._doc_len, stats=stats,
        )

    def _make_pair_plan(self, epoch: int) -> EpochPlan:
        """The plan of a preference loader: mixture, packing and permutation over whole pairs
        (a pair's length is both its sides; ``_check_pairs`` made sure every pair fits a row)."""
        pair_len = self._doc_len[0::2] + self._doc_len[1::2]  # 4 B per pair while planning
        base = self._src_base // 2
        families = [None if f is None else f[0::2] for f in self._families]
        mix = self._plan_mixture(pair_len, base, families, epoch)
        pick_pair = base[mix.pick_source] + mix.pick_doc.astype(np.int64)
        mixture_stats = mix.sources
        del mix
        plen = pair_len[pick_pair]
        del pair_len
        order, row_offsets, stats = self._shuffled_rows(plen, epoch)
        del plen
        stats.update(pairs=stats["pieces"], docs_split=0, sft_pieces_truncated=0, mixture=mixture_stats)
        return EpochPlan(
            epoch=epoch, num_rows=stats["rows"], seq_len=self.seq_len, row_offsets=row_offsets,
            piece_doc=(2 * pick_pair[order]).astype(self._doc_index), piece_part=np.zeros(len(order), dtype=np.uint8),
            doc_len=self._doc_len, stats=stats, paired=True,
        )

    def _plan_mixture(self, lengths: np.ndarray, base: np.ndarray, families: list, epoch: int) -> Any:
        """``plan_mixture`` over the selected sources, each unit (document or pair) of source
        ``si`` being ``lengths[base[si]:base[si + 1]]``; a ConfigError when it cannot be planned."""
        from ftscale.errors import FtscaleError
        from ftscale.pack import MixtureSource, plan_mixture

        srcs = [MixtureSource(name=name, lengths=lengths[base[si]:base[si + 1]], weight=self.weights[si],
                              families=families[si])
                for si, name in enumerate(self.sources)]
        try:
            return plan_mixture(srcs, self.tokens_per_epoch, seed=self.seed, epoch=epoch,
                                temperature=self.temperature, max_repeat=self.max_repeat, family_cap=self.family_cap)
        except FtscaleError as e:
            raise ConfigError(f"mixture cannot be planned: {e}") from e

    def _shuffled_rows(self, plen: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Pack pieces of lengths ``plen`` into rows and shuffle the rows (seeded by (seed,
        epoch)): ``(order, row_offsets, stats)`` — the pieces in global row order, each row's
        first piece in ``order``, and tokens / pieces / rows / fill."""
        from ftscale.pack import pack

        packed = pack(plen, self.seq_len, self.strategy)
        n_rows = int(packed.num_bins)
        counts = np.diff(packed.row_offsets.astype(np.int64))
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, _PERM_STREAM])))
        perm = rng.permutation(n_rows)
        new_counts = counts[perm]
        order = packed.row_docs[_ranges(packed.row_offsets[:-1][perm], new_counts)]  # pieces in global row order
        stats = {"tokens": int(plen.sum(dtype=np.int64)), "pieces": int(len(order)), "rows": n_rows,
                 "fill": float(packed.efficiency)}
        del packed, counts, perm
        row_offsets = np.zeros(n_rows + 1, dtype=_index_dtype(len(order) + 1))
        row_offsets[1:] = np.cumsum(new_counts)
        return order, row_offsets, stats

    def _pair_pass_plan(self) -> EpochPlan:
        """Every pair of the selected sources exactly once, packed (best-fit on pair lengths), in
        packing order: no mixture, no repetition, no shuffle."""
        from ftscale.pack import pack

        pair_len = self._doc_len[0::2] + self._doc_len[1::2]
        packed = pack(pair_len, self.seq_len, self.strategy)
        n_rows = int(packed.num_bins)
        order = packed.row_docs.astype(np.int64)
        row_offsets = packed.row_offsets.astype(_index_dtype(len(order) + 1))
        return EpochPlan(epoch=-1, num_rows=n_rows, seq_len=self.seq_len, row_offsets=row_offsets,
                         piece_doc=(2 * order).astype(self._doc_index), piece_part=np.zeros(len(order), dtype=np.uint8),
                         doc_len=self._doc_len, stats={"pairs": len(order), "rows": n_rows}, paired=True)

    @property
    def num_documents(self) -> int:
        """Documents of the selected sources and split: the range of ``sequence_doc``."""
        return len(self._doc_len)

    def pair_pass(self) -> Iterator[dict]:
        """This rank's micro-batches of one pass over every pair exactly once (a preference
        loader only): global rows ``r, r + W, ...`` of ``_pair_pass_plan``, the tail filled up
        with empty rows so every rank yields the same number of batches. For passes that must
        see each document once, e.g. the reference log-probs of ``reference: precomputed``; the
        training sequence and its resume state are untouched."""
        if not self.paired:
            raise ConfigError("pair_pass: the loader reads no preference sources")
        plan = self._pair_pass_plan()
        step = self.rows_per_step
        for first in range(0, plan.num_rows, step):
            yield self.collate(plan, first + self.rank + self.world_size * np.arange(self.micro_batch_size))

    # ----------------------------------------------------------------------------------------
    # sizes and state

    @property
    def rows_per_step(self) -> int:
        """Global rows one step consumes (world_size x micro_batch_size)."""
        return self.world_size * self.micro_batch_size

    @property
    def rows_per_epoch(self) -> int:
        """Packed rows in the current epoch's plan (it varies slightly between epochs)."""
        return self.plan(self.epoch).num_rows

    @property
    def steps_per_epoch(self) -> int:
        """Steps of the current epoch from its start: floor(rows_per_epoch / (world_size x micro_batch_size)),
        or the ceiling with ``drop_last=False``."""
        if self.drop_last:
            return self.rows_per_epoch // self.rows_per_step
        return -(-self.rows_per_epoch // self.rows_per_step)

    def sequence(self) -> dict[str, Any]:
        """What the global row sequence is a function of, besides the seed (JSON data)."""
        import hashlib

        digest = hashlib.sha256()
        for _, shard in self.manifest.shards(self.split, self.sources):
            digest.update(shard.store_sha256.encode())
        return {"split": self.split, "dataset": digest.hexdigest(), "sources": list(self.sources),
                "weights": list(self.weights), "seq_len": self.seq_len, "strategy": self.strategy,
                "tokens_per_epoch": self.tokens_per_epoch, "temperature": self.temperature,
                "max_repeat": self.max_repeat, "family_cap": self.family_cap, "drop_last": self.drop_last}

    def state_dict(self) -> dict:
        """Resume state; identical on every rank."""
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "rows_consumed": self.rows_consumed,
                "sequence": self.sequence()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off, also with another world size or micro-batch size:
        rank r continues at global row ``rows_consumed + r`` of ``epoch``."""
        try:
            version, seed = int(state["version"]), int(state["seed"])
            epoch, rows = int(state["epoch"]), int(state["rows_consumed"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"loader state must hold version, seed, epoch and rows_consumed; got {state!r}") from e
        if version != STATE_VERSION:
            raise ConfigError(f"loader state version {version} is not supported (expected {STATE_VERSION}; "
                              "a version 1 state does not say which data sequence it belongs to): start a new run")
        saved = state.get("sequence")
        current = self.sequence()
        if not isinstance(saved, dict) or saved != current:
            changed = [k for k in current if not isinstance(saved, dict) or saved.get(k) != current[k]]
            raise ConfigError(
                f"loader state belongs to another data sequence (changed: {', '.join(changed)}; 'dataset' means "
                "the prepared shards differ, e.g. prep was re-run); resuming would silently continue a different "
                "sequence: restore the original dataset and settings, or start a new run_name")
        if seed != self.seed:
            raise ConfigError(
                f"loader state was saved with seed {seed}, this loader has seed {self.seed}; "
                f"resume with the checkpoint's seed"
            )
        if epoch < 0 or rows < 0:
            raise ConfigError(f"loader state has negative epoch/rows_consumed: {state!r}")
        self.epoch, self.rows_consumed = epoch, rows
        if self._plan is not None and self._plan.epoch != epoch:
            self._plan = None

    def skip_rows(self, n: int) -> None:
        """Skip ``n`` global rows (call it on every rank alike). Rows past the end of the epoch
        carry into the next epochs; as usual, an epoch ends once fewer rows than one step remain."""
        n = int(n)
        if n < 0:
            raise ConfigError(f"skip_rows: n must be >= 0, got {n}")
        self.rows_consumed += n
        while self.rows_consumed >= self.plan(self.epoch).num_rows and self.plan(self.epoch).num_rows > 0:
            self.rows_consumed -= self.plan(self.epoch).num_rows
            self.epoch += 1

    # ----------------------------------------------------------------------------------------
    # iteration

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        step = self.rows_per_step
        while True:
            if self.max_epochs is not None and self.epoch >= self.max_epochs:
                raise StopIteration
            plan = self.plan(self.epoch)
            left = plan.num_rows - self.rows_consumed
            if left >= step or (left > 0 and not self.drop_last):
                break
            if plan.num_rows < step and self.drop_last:
                raise DataError(
                    f"epoch {self.epoch} packs into {plan.num_rows} rows, fewer than one step "
                    f"({self.world_size} x {self.micro_batch_size}); raise tokens_per_epoch or lower micro_batch_size"
                )
            self.epoch += 1
            self.rows_consumed = 0
        ks = self.rows_consumed + self.rank + self.world_size * np.arange(self.micro_batch_size, dtype=np.int64)
        batch = self.collate(plan, ks)
        self.rows_consumed += step
        return batch

    def _gather(self, pdoc: np.ndarray, pstart: np.ndarray, plen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int32) and loss mask (uint8) of the given pieces, back to back, read from
        their stores: two positional reads per piece (ids, mask), grouped by store."""
        tok = np.empty(int(plen.sum()), dtype="<i4")  # the store's byte order
        msk = np.empty(len(tok), dtype=np.uint8)
        shard = np.searchsorted(self._shard_base, pdoc, side="right") - 1
        start = self._doc_start[pdoc].astype(np.int64) + pstart
        out_at = _excl_cumsum(plen)
        by_shard = np.argsort(shard, kind="stable")
        shards, first = np.unique(shard[by_shard], return_index=True)
        for k, lo, hi in zip(shards.tolist(), first.tolist(), [*first[1:].tolist(), len(by_shard)]):
            sel = by_shard[lo:hi]
            self._store(k).read_pieces(start[sel], plen[sel], tok, msk, out_at[sel])
        return tok, msk

    def assemble(self, plan: EpochPlan, rows: np.ndarray) -> dict[str, Any]:
        """NumPy arrays of the given global rows of ``plan`` (see ``collate`` for the keys)."""
        L = self.seq_len
        rows = np.asarray(rows, dtype=np.int64)
        B = len(rows)
        # Rows past the end of the plan (only with drop_last=False) come out empty: all padding.
        row_offsets = plan.row_offsets
        first = row_offsets[np.minimum(rows, plan.num_rows)].astype(np.int64)
        cnt = row_offsets[np.minimum(rows + 1, plan.num_rows)].astype(np.int64) - first
        pieces = _ranges(first, cnt)
        pdoc = plan.piece_doc[pieces].astype(np.int64)
        pstart = plan.piece_part[pieces].astype(np.int64) * L
        if plan.paired:  # a pair piece comes out as its two documents: chosen, then rejected
            pdoc = np.stack([pdoc, pdoc + 1], axis=1).reshape(-1)
            pstart = np.zeros(len(pdoc), dtype=np.int64)
            cnt = 2 * cnt
        plen = np.minimum(self._doc_len[pdoc].astype(np.int64) - pstart, L)
        pcum = _excl_cumsum(plen)  # start of each piece in the concatenated token stream
        T = int(plen.sum())
        tok, msk = self._gather(pdoc, pstart, plen)

        prow = np.repeat(np.arange(B, dtype=np.int64), cnt)
        fill = np.bincount(prow, weights=plen, minlength=B).astype(np.int64)
        row_stream_start = _excl_cumsum(fill)
        dest_start = prow * L + (pcum - row_stream_start[prow])
        shift = np.repeat(dest_start - pcum, plen)
        ar = np.arange(T, dtype=np.int64)
        dest = shift + ar

        input_ids = np.full(B * L, self.pad_token_id, dtype=np.int64)
        input_ids[dest] = tok
        lab = np.where(msk.astype(bool), tok, IGNORE_INDEX).astype(np.int64)
        lab[pcum] = IGNORE_INDEX  # the first token of a piece is not predicted across a boundary
        labels = np.full(B * L, IGNORE_INDEX, dtype=np.int64)
        labels[dest] = lab
        col = np.arange(L, dtype=np.int64)
        position_ids = (col[None, :] - fill[:, None]).reshape(-1)  # padding: its own segment from 0
        position_ids[dest] = ar - np.repeat(pcum, plen)
        attention_mask = (col[None, :] < fill[:, None]).astype(np.int64).reshape(-1)

        # Segments over the flattened batch: every piece, then each row's padding run (if any).
        pad = L - fill
        seg = np.empty(len(plen) + B, dtype=np.int64)
        seg[np.arange(len(plen)) + prow] = plen
        seg[np.cumsum(cnt) + np.arange(B)] = pad
        seg = seg[seg > 0]
        cu_seqlens = np.zeros(len(seg) + 1, dtype=np.int32)
        np.cumsum(seg, out=cu_seqlens[1:])
        extra: dict[str, Any] = {}
        if plan.paired:
            sequence_index = np.full(B * L, -1, dtype=np.int64)
            sequence_index[dest] = np.repeat(np.arange(len(plen), dtype=np.int64), plen)
            extra = {"sequence_index": sequence_index.reshape(B, L), "sequence_doc": pdoc,
                     "num_pairs": len(pdoc) // 2}
        return {
            "input_ids": input_ids.reshape(B, L),
            "labels": labels.reshape(B, L),
            "position_ids": position_ids.reshape(B, L),
            "attention_mask": attention_mask.reshape(B, L),
            "cu_seqlens": cu_seqlens,
            "max_seqlen": int(seg.max()) if len(seg) else 0,
            "num_loss_tokens": int(np.count_nonzero(lab != IGNORE_INDEX)),
            "num_tokens": T,
            **extra,
        }

    def collate(self, plan: EpochPlan, rows: np.ndarray) -> dict[str, Any]:
        """The micro-batch of the given global rows as torch tensors (zero-copy from NumPy)."""
        import torch

        out = self.assemble(plan, rows)
        for key in ("input_ids", "labels", "position_ids", "attention_mask", "cu_seqlens", "sequence_index",
                    "sequence_doc"):
            if key in out:
                out[key] = torch.from_numpy(out[key])
        return out

    def __repr__(self) -> str:
        return (f"PackedLoader({str(self.dataset_dir)!r}, sources={self.sources}, seq_len={self.seq_len}, "
                f"B={self.micro_batch_size}, rank={self.rank}/{self.world_size}, epoch={self.epoch}, "
                f"rows_consumed={self.rows_consumed})")


__all__ = ["EpochPlan", "MAX_OPEN_STORES", "PackedLoader", "STATE_VERSION"]
