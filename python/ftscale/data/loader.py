"""Training data loader: mixture + packing at load time over a prepared dataset.

``PackedLoader`` reads the shards of one split of a prepared dataset (``ftscale.data.format``),
verifies every shard against the manifest's sha256, and keeps all tokens of the selected
sources in memory as one flat ``int32`` array plus one ``uint8`` loss-mask array and
per-document offsets (4 + 1 bytes per token).

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
different world size and continue the same global sequence.

Row layout: each row holds its pieces back to back, then padding. Labels are -100 where the
loss mask is 0, on padding, and on the first token of every piece (the token a model would
otherwise predict from the previous document). ``position_ids`` restart at 0 for every
piece and for the padding run of a row (padding counts as its own segment, also in
``cu_seqlens``, which therefore always ends at ``B * L``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ftscale.data.format import IGNORE_INDEX, MANIFEST, read_manifest
from ftscale.errors import ConfigError, DataError

STATE_VERSION = 1
SPLITS = ("train", "val")
_PERM_STREAM = 0x726F7773  # "rows": keeps the row permutation's seed stream apart from others


@dataclass(frozen=True)
class EpochPlan:
    """The global row sequence of one epoch.

    Pieces are slices of documents: token ``piece_start[i] .. piece_start[i] + piece_len[i]``
    of the loader's flat token array, taken from source ``piece_source[i]``. Row ``k`` (in
    global order, after the shuffle) holds pieces ``row_pieces[row_offsets[k]:row_offsets[k+1]]``
    in that order.
    """

    epoch: int
    num_rows: int
    piece_start: np.ndarray  # int64
    piece_len: np.ndarray  # int64
    piece_source: np.ndarray  # int32, index into PackedLoader.sources
    row_offsets: np.ndarray  # int64, num_rows + 1
    row_pieces: np.ndarray  # int64
    stats: dict = field(default_factory=dict)

    def row_tokens(self) -> np.ndarray:
        """Filled token slots of every row (global order)."""
        return np.add.reduceat(self.piece_len[self.row_pieces], self.row_offsets[:-1]) if self.num_rows else \
            np.zeros(0, dtype=np.int64)


def _excl_cumsum(a: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.int64)
    if len(a):
        out[0] = 0
        np.cumsum(a[:-1], out=out[1:])
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    total = int(lengths.sum())
    return np.repeat(starts - _excl_cumsum(lengths), lengths) + np.arange(total, dtype=np.int64)


def _sha256_file(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackedLoader:
    """Packed micro-batches of a prepared dataset for one rank; an infinite iterator unless
    ``max_epochs`` is given. See the module docstring for the plan and the row layout.

    ``drop_last=False`` (for validation: every document once) keeps the ragged tail: the last
    step of an epoch is filled up with empty rows (all padding, no loss tokens), so every rank
    still runs the same number of steps, ``ceil(rows / (world_size x micro_batch_size))``.

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
        self._load(self.sources)
        self.weights = weights
        if mixture is None:  # natural mix: proportional to the tokens each source has
            self.weights = [float(t) for t in self.source_tokens]
        self.tokens_per_epoch = int(tokens_per_epoch) if tokens_per_epoch is not None else int(self._doc_len.sum())

        tok = self.manifest.get("tokenizer") or {}
        if pad_token_id is None:
            pad_token_id = tok.get("pad_token_id")
            if pad_token_id is None:
                pad_token_id = tok.get("eos_token_id")
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0

        self.epoch = 0
        self.rows_consumed = 0
        self._plans: dict[int, EpochPlan] = {}
        if self.drop_last and self.plan(0).num_rows < self.rows_per_step:
            raise ConfigError(
                f"epoch 0 packs into {self.plan(0).num_rows} rows of {self.seq_len} tokens, fewer than one step "
                f"needs (world_size {self.world_size} x micro_batch_size {self.micro_batch_size}); lower "
                f"micro_batch_size or seq_len, or raise tokens_per_epoch"
            )

    # ----------------------------------------------------------------------------------------
    # opening

    def _select_sources(self, mixture: dict[str, float] | None) -> tuple[list[str], list[float]]:
        available = list(self.manifest["sources"])
        if mixture is None:
            names = [n for n in available if self.manifest["sources"][n].get(self.split)]
            if not names:
                raise ConfigError(
                    f"the dataset has no {self.split} shards in any source; "
                    + ("prep with val_fraction > 0" if self.split == "val" else "check the prep report")
                )
            weights = [1.0] * len(names)
        else:
            if not isinstance(mixture, dict) or not mixture:
                raise ConfigError("mixture must map source names to weights (or be None for the natural mix)")
            unknown = [n for n in mixture if n not in self.manifest["sources"]]
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
            empty = [n for n in names if not self.manifest["sources"][n].get(self.split)]
            if empty:
                hint = "re-run prep with val_fraction > 0 or " if self.split == "val" else ""
                raise ConfigError(
                    f"source(s) {', '.join(map(repr, empty))} have no {self.split} documents; "
                    f"{hint}remove them from the mixture"
                )
        ds_seq_len = self.manifest.get("seq_len")
        sft = [n for n in names if self.manifest["sources"][n].get("kind") == "sft"]
        if sft and ds_seq_len is not None and self.seq_len > int(ds_seq_len):
            raise ConfigError(
                f"seq_len {self.seq_len} is larger than the dataset's seq_len {ds_seq_len}: SFT source(s) "
                f"{', '.join(map(repr, sft))} were truncated to {ds_seq_len} tokens at prep; set seq_len <= "
                f"{ds_seq_len} or re-run `ftscale prep` with seq_len={self.seq_len}"
            )
        return names, weights

    def _load(self, names: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        entries = []  # (source index, shard entry)
        for si, name in enumerate(names):
            for shard in self.manifest["sources"][name][self.split]:
                entries.append((si, shard))
        try:
            total_tokens = sum(int(s["tokens"]) for _, s in entries)
            total_docs = sum(int(s["rows"]) for _, s in entries)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.dataset_dir / MANIFEST}: shard entry without rows/tokens ({e}); re-run prep") from e
        tokens = np.empty(total_tokens, dtype=np.int32)
        mask = np.empty(total_tokens, dtype=np.uint8)
        doc_len = np.empty(total_docs, dtype=np.int64)
        doc_source = np.empty(total_docs, dtype=np.int32)
        families: list[list[Any]] = [[] for _ in names]
        tpos = dpos = 0
        for si, shard in entries:
            path = self.dataset_dir / shard["path"]
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DataError(f"shard {path} cannot be read ({e.strerror or e}); re-run `ftscale prep`") from e
            digest = _sha256_file(data)
            if digest != shard.get("sha256"):
                raise DataError(
                    f"shard {path} does not match the manifest (sha256 {digest[:16]}..., manifest "
                    f"{str(shard.get('sha256'))[:16]}...): the file was modified or torn after prep; "
                    f"restore it or re-run `ftscale prep`"
                )
            try:
                table = pq.read_table(pa.BufferReader(data), columns=["input_ids", "loss_mask", "length", "family"])
            except Exception as e:  # noqa: BLE001 - any Arrow failure means an unusable shard
                raise DataError(f"shard {path} is not a readable Parquet shard ({e}); re-run `ftscale prep`") from e
            del data
            ids = table.column("input_ids")
            msk = table.column("loss_mask")
            n = table.num_rows
            if ids.null_count or msk.null_count:
                raise DataError(f"shard {path}: null input_ids or loss_mask; re-run `ftscale prep`")
            lens = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
            mlens = pc.list_value_length(msk).to_numpy(zero_copy_only=False).astype(np.int64)
            declared = table.column("length").to_numpy(zero_copy_only=False).astype(np.int64)
            if not (np.array_equal(lens, mlens) and np.array_equal(lens, declared)):
                raise DataError(
                    f"shard {path}: input_ids, loss_mask and length disagree on document lengths; re-run `ftscale prep`"
                )
            ntok = int(lens.sum())
            if n != int(shard["rows"]) or ntok != int(shard["tokens"]):
                raise DataError(
                    f"shard {path}: {n} rows / {ntok} tokens, manifest says {shard['rows']} / {shard['tokens']}; "
                    f"re-run `ftscale prep`"
                )
            if n and lens.min() < 1:
                raise DataError(f"shard {path}: has an empty document; re-run `ftscale prep` (it drops them)")
            tokens[tpos:tpos + ntok] = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
            mask[tpos:tpos + ntok] = pc.list_flatten(msk).to_numpy(zero_copy_only=False)
            doc_len[dpos:dpos + n] = lens
            doc_source[dpos:dpos + n] = si
            if self.family_cap is not None:  # only the family cap needs them
                families[si].extend(table.column("family").to_pylist())
            tpos += ntok
            dpos += n
        self._tokens = tokens
        self._mask = mask
        self._doc_len = doc_len
        self._doc_off = _excl_cumsum(doc_len)
        self._doc_source = doc_source
        counts = np.bincount(doc_source, minlength=len(names))
        self._src_base = _excl_cumsum(counts)
        self._src_count = counts
        self.source_tokens = [int(x) for x in np.bincount(doc_source, weights=doc_len, minlength=len(names))]
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            raise ConfigError(
                f"source(s) {', '.join(map(repr, empty))} have no {self.split} documents; remove them from the mixture"
            )
        self._is_sft = np.array([self.manifest["sources"][n].get("kind") == "sft" for n in names], dtype=bool)
        # Family ids (only used with family_cap): dense ids by first occurrence; null is its own family.
        self._families: list[np.ndarray | None] = []
        for fam in families:
            if self.family_cap is None or all(f is None for f in fam):
                self._families.append(None)
                continue
            ids_of: dict[Any, int] = {}
            self._families.append(np.fromiter((ids_of.setdefault(f, len(ids_of)) for f in fam),
                                              dtype=np.uint32, count=len(fam)))

    # ----------------------------------------------------------------------------------------
    # planning

    def plan(self, epoch: int) -> EpochPlan:
        """The global row sequence of ``epoch`` (cached: the current and the next epoch)."""
        epoch = int(epoch)
        cached = self._plans.get(epoch)
        if cached is not None:
            return cached
        plan = self._make_plan(epoch)
        for e in [e for e in self._plans if e < self.epoch or e > self.epoch + 1]:
            del self._plans[e]
        self._plans[epoch] = plan
        return plan

    def _make_plan(self, epoch: int) -> EpochPlan:
        from ftscale.errors import FtscaleError
        from ftscale.pack import MixtureSource, apply_overlong, pack, plan_mixture

        L = self.seq_len
        srcs = []
        for si, name in enumerate(self.sources):
            lo, n = int(self._src_base[si]), int(self._src_count[si])
            srcs.append(MixtureSource(
                name=name, lengths=self._doc_len[lo:lo + n], weight=self.weights[si],
                families=self._families[si] if self.family_cap is not None else None,
            ))
        try:
            mix = plan_mixture(srcs, self.tokens_per_epoch, seed=self.seed, epoch=epoch,
                               temperature=self.temperature, max_repeat=self.max_repeat, family_cap=self.family_cap)
        except FtscaleError as e:
            raise ConfigError(f"mixture cannot be planned: {e}") from e
        gdoc = self._src_base[mix.pick_source.astype(np.int64)] + mix.pick_doc.astype(np.int64)
        pieces = apply_overlong(self._doc_len[gdoc], L, "split")
        pdoc = gdoc[pieces.doc.astype(np.int64)]
        pstart = pieces.start.astype(np.int64)
        plen = pieces.length.astype(np.int64)
        truncated_sft = 0
        if self._is_sft.any():
            keep = ~self._is_sft[self._doc_source[pdoc]] | (pstart == 0)
            truncated_sft = int((~keep).sum())
            if truncated_sft:
                pdoc, pstart, plen = pdoc[keep], pstart[keep], plen[keep]
        packed = pack(plen, L, self.strategy)
        n_rows = int(packed.num_bins)
        counts = np.diff(packed.row_offsets.astype(np.int64))
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, _PERM_STREAM])))
        perm = rng.permutation(n_rows)
        new_counts = counts[perm]
        row_offsets = np.concatenate(([0], np.cumsum(new_counts))).astype(np.int64)
        row_pieces = packed.row_docs.astype(np.int64)[_ranges(packed.row_offsets[:-1].astype(np.int64)[perm],
                                                              new_counts)]
        stats = {
            "tokens": int(plen.sum()),
            "pieces": int(len(plen)),
            "rows": n_rows,
            "fill": float(packed.efficiency),
            "docs_split": int(pieces.stats.get("docs_split", 0)),
            "sft_pieces_truncated": truncated_sft,
            "mixture": mix.sources,
        }
        return EpochPlan(
            epoch=epoch, num_rows=n_rows, piece_start=self._doc_off[pdoc] + pstart, piece_len=plen,
            piece_source=self._doc_source[pdoc], row_offsets=row_offsets, row_pieces=row_pieces, stats=stats,
        )

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

    def state_dict(self) -> dict:
        """Resume state; identical on every rank."""
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "rows_consumed": self.rows_consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off, also with another world size or micro-batch size:
        rank r continues at global row ``rows_consumed + r`` of ``epoch``."""
        try:
            version, seed = int(state["version"]), int(state["seed"])
            epoch, rows = int(state["epoch"]), int(state["rows_consumed"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"loader state must hold version, seed, epoch and rows_consumed; got {state!r}") from e
        if version != STATE_VERSION:
            raise ConfigError(f"loader state version {version} is not supported (expected {STATE_VERSION})")
        if seed != self.seed:
            raise ConfigError(
                f"loader state was saved with seed {seed}, this loader has seed {self.seed}; "
                f"resume with the checkpoint's seed"
            )
        if epoch < 0 or rows < 0:
            raise ConfigError(f"loader state has negative epoch/rows_consumed: {state!r}")
        self.epoch, self.rows_consumed = epoch, rows
        self._plans = {e: p for e, p in self._plans.items() if e in (epoch, epoch + 1)}

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

    def assemble(self, plan: EpochPlan, rows: np.ndarray) -> dict[str, Any]:
        """NumPy arrays of the given global rows of ``plan`` (see ``collate`` for the keys)."""
        L = self.seq_len
        rows = np.asarray(rows, dtype=np.int64)
        B = len(rows)
        # Rows past the end of the plan (only with drop_last=False) come out empty: all padding.
        first = plan.row_offsets[np.minimum(rows, plan.num_rows)]
        cnt = plan.row_offsets[np.minimum(rows + 1, plan.num_rows)] - first
        pieces = plan.row_pieces[_ranges(first, cnt)]
        plen = plan.piece_len[pieces]
        pcum = _excl_cumsum(plen)  # start of each piece in the concatenated token stream
        T = int(plen.sum())
        src = _ranges(plan.piece_start[pieces], plen)
        tok = self._tokens[src]
        msk = self._mask[src]

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
        return {
            "input_ids": input_ids.reshape(B, L),
            "labels": labels.reshape(B, L),
            "position_ids": position_ids.reshape(B, L),
            "attention_mask": attention_mask.reshape(B, L),
            "cu_seqlens": cu_seqlens,
            "max_seqlen": int(seg.max()) if len(seg) else 0,
            "num_loss_tokens": int(np.count_nonzero(lab != IGNORE_INDEX)),
            "num_tokens": T,
        }

    def collate(self, plan: EpochPlan, rows: np.ndarray) -> dict[str, Any]:
        """The micro-batch of the given global rows as torch tensors (zero-copy from NumPy)."""
        import torch

        out = self.assemble(plan, rows)
        for key in ("input_ids", "labels", "position_ids", "attention_mask", "cu_seqlens"):
            out[key] = torch.from_numpy(out[key])
        return out

    def __repr__(self) -> str:
        return (f"PackedLoader({str(self.dataset_dir)!r}, sources={self.sources}, seq_len={self.seq_len}, "
                f"B={self.micro_batch_size}, rank={self.rank}/{self.world_size}, epoch={self.epoch}, "
                f"rows_consumed={self.rows_consumed})")


__all__ = ["EpochPlan", "PackedLoader", "STATE_VERSION"]
