"""The second pass of ``ftscale prep``: the records the global steps kept are tokenized, split
into train and val by uid hash, and spilled per unit for the shard writer.

- ``LoadKept`` streams a unit's spilled records, keeps those still alive and conforms them to
  their source's unified schema;
- ``Tokenize``: CPT documents become their token ids (+ EOS), all supervised; SFT
  conversations are rendered with the tokenizer's own chat template with loss on assistant
  tokens only (``ftscale.data.chat``: the Rust engine, or the Python one the driver chose for the
  template), one or more samples each (a turn the template rewrites gets its own); an over-long
  sample is truncated or dropped (as the source's ``overlong`` says), and a conversation left
  without a supervised token is quarantined; a preference pair becomes two documents, chosen
  then rejected, each at most ``seq_len // 2`` tokens (``chat.preference``);
- ``SpillTokens``: per split, the flat token ids (int32) and loss masks (uint8), and a small
  table per document (uid, length, supervised tokens, family); plus what tokenizing rejected.
  All samples of a conversation carry its uid, so they land in the same split.

Held per unit: one batch of records and its tokens (4 + 1 bytes per token); the tokenizer and
the chat encoder once per process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftscale.data.steps.base import Batch, Step, UnitContext
from ftscale.data.steps.records import unit_batches, write_ipc
from ftscale.data.workdir import ArrayAppender, read_meta
from ftscale.errors import ConfigError

if TYPE_CHECKING:
    from ftscale.config import PrepConfig

SPLITS = ("train", "val")
VAL_SALT = np.uint64(0x56414C)  # "VAL": decorrelates the split from other uses of the uid
DOCS_SCHEMA = pa.schema([("uid", pa.uint64()), ("length", pa.int32()), ("supervised", pa.int32()),
                         ("family", pa.string())])
RAW_MAX_CHARS = 10_000
_TOKENIZERS: dict[tuple[str, str | None], Any] = {}  # per process: loaded once
_CHAT_ENCODERS: dict[tuple[str, str | None, str, str, int | None], Any] = {}  # per process: built once


def val_mask(uids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Held-out records: a hash of (uid, seed) below ``fraction`` — never position-based."""
    from ftscale.data.io import splitmix64_array

    if fraction <= 0:
        return np.zeros(len(uids), dtype=bool)
    with np.errstate(over="ignore"):
        h = splitmix64_array(uids.astype(np.uint64) ^ (np.uint64(seed) * VAL_SALT))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def tokenizer_for(path: str, chat_template: str | None) -> Any:
    """The prep tokenizer, loaded once per process."""
    from ftscale.data.tokenize import load_tokenizer

    key = (path, chat_template)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(path, chat_template)
    return _TOKENIZERS[key]


def chat_encoder_for(cfg: PrepConfig, policy: str, engine: str) -> Any:
    """The SFT encoder of this process for a rewritten-turns policy and an engine ("rust" or
    "python", as ``chat.choose_engine`` decided on the driver); built once per process."""
    from ftscale.data.chat import ChatEncoder, RustChatEncoder

    key = (cfg.tokenizer.path, cfg.tokenizer.chat_template, policy, engine, cfg.num_threads)
    if key not in _CHAT_ENCODERS:
        tok = tokenizer_for(cfg.tokenizer.path, cfg.tokenizer.chat_template)
        python = ChatEncoder(tok.hf, policy=policy)
        _CHAT_ENCODERS[key] = python if engine == "python" else RustChatEncoder(tok.hf, python, policy, cfg.num_threads)
    return _CHAT_ENCODERS[key]


class LoadKept(Step):
    """A later pass's source: the unit's records still alive after the global steps."""

    name = "load kept records"

    def __init__(self, alive: np.ndarray, bases: np.ndarray, schemas: list[Any]) -> None:
        self.alive = np.packbits(alive)  # 1 bit per document: what every worker receives
        self.bases = bases
        self.schemas = schemas  # io.SourceSchema per source

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        from ftscale.data.io import conform

        meta = read_meta(ctx.root, "meta-read.json")
        if meta is None:
            raise AssertionError(f"unit {ctx.index} has no first pass")  # the executor runs passes in order
        lo, hi = int(self.bases[ctx.index]), int(self.bases[ctx.index + 1])
        first_byte = lo // 8  # unpack only this unit's bytes of the bitmap
        flags = np.unpackbits(self.alive[first_byte:(hi + 7) // 8])[lo - 8 * first_byte:hi - 8 * first_byte].astype(bool)
        schema = self.schemas[ctx.source_index]
        for first, table in unit_batches(ctx.root, meta):
            keep = np.flatnonzero(flags[first:first + table.num_rows])
            yield Batch(records=conform(table.take(pa.array(keep)), schema), first=first,
                        derived={"json_extras": schema.json_extras})


class Tokenize(Step):
    """Token ids and loss masks of a batch's records; ``chat_engine`` is the driver's choice
    (``chat.choose_engine``) for SFT sources."""

    name = "tokenize"

    def __init__(self, cfg: PrepConfig, chat_engine: str = "python") -> None:
        self.cfg = cfg
        self.chat_engine = chat_engine

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        cfg, src = self.cfg, ctx.source.config
        tok = tokenizer_for(cfg.tokenizer.path, cfg.tokenizer.chat_template)
        encoder = None
        if src.kind in ("sft", "preference"):
            if tok.hf is None:
                raise ConfigError(f"sources.{src.name}: {src.kind} needs a tokenizer with a chat template "
                                  "(a tokenizer directory or .gguf), not a .tiktoken file")
            encoder = chat_encoder_for(cfg, src.rewritten_turns, self.chat_engine)
        for batch in batches:
            records = batch.records
            families = _families(records, src)
            uids = records.column("uid").to_numpy()
            if encoder is None:
                ids = tok.encode_batch(records.column(src.text_field).to_pylist())
                if cfg.tokenizer.add_eos:
                    ids = [np.append(x, np.int32(tok.eos_token_id)) for x in ids]
                masks = [np.ones(len(x), dtype=np.uint8) for x in ids]
                owners = np.arange(records.num_rows)
                rejected: dict[int, tuple[str, str]] = {}
            elif src.kind == "preference":
                ids, masks, owners, rejected = _encode_pairs(encoder, records, src, cfg.seq_len, ctx)
            else:
                ids, masks, owners, rejected = _encode_chats(encoder, records, src, cfg.seq_len,
                                                             bool(batch.derived.get("json_extras")), ctx)
            batch.derived.update(ids=ids, masks=masks, uids=uids[owners], families=[families[i] for i in owners],
                                 rejected=_rejected_table(records, src, rejected))
            yield batch


def _families(records: pa.Table, src: Any) -> list[str | None]:
    if not src.family_field:
        return [None] * records.num_rows
    if src.family_field not in records.column_names:
        if records.num_rows:
            raise ConfigError(f"sources.{src.name}.family_field: column {src.family_field!r} not found")
        return []
    return records.column(src.family_field).cast(pa.string()).to_pylist()


def _encode_chats(encoder: Any, records: pa.Table, src: Any, seq_len: int, json_extras: bool,
                  ctx: UnitContext) -> tuple[list, list, np.ndarray, dict]:
    """Samples of a batch's conversations: (ids, masks, owner record of each sample, rejected)."""
    from ftscale.data.chat import RustChatEncoder, plain_messages, template_messages, template_tools

    messages = records.column(src.messages_field)
    tools = records.column(src.tools_field) if src.tools_field in records.column_names else None
    no_tools = tools is None or tools.null_count == records.num_rows
    plain = plain_messages(messages) if no_tools and isinstance(encoder, RustChatEncoder) else None
    if plain is not None:
        # Role and content text only: the columns go to the Rust engine as they are, with no
        # dict per message (~10 of ~40 µs per conversation).
        encoded = encoder.encode_columns(plain, src.system_prompt, lambda i: (
            template_messages(messages[i].as_py(), src.system_prompt, json_extras), None))
    else:
        each_tools = tools.to_pylist() if tools is not None else [None] * records.num_rows
        encoded = encoder.encode_batch([(template_messages(m, src.system_prompt, json_extras), template_tools(t))
                                        for m, t in zip(messages.to_pylist(), each_tools)])
    rejected = {i: (reason, detail) for i, reason, detail in encoded.failures}
    # Which samples stay, for the whole batch at once (a per-sample Python loop was ~4 µs of a
    # conversation's ~35): over seq_len, a sample is dropped or cut; a sample with no supervised
    # token left is not kept. Held for the batch: its masks joined (1 byte per token).
    count = len(encoded.ids)
    lengths = np.fromiter(map(len, encoded.ids), dtype=np.int64, count=count)
    all_owners = np.asarray(encoded.owners, dtype=np.int64)
    over = lengths > seq_len
    supervised = np.zeros(count, dtype=np.int64)
    nonempty = lengths > 0
    if nonempty.any():
        # An empty sample holds no token, so each non-empty sample's tokens run to the next one's start.
        starts = np.cumsum(lengths) - lengths
        supervised[nonempty] = np.add.reduceat(np.concatenate(encoded.masks), starts[nonempty], dtype=np.int64)
    for i in np.flatnonzero(over):
        supervised[i] = np.count_nonzero(encoded.masks[i][:seq_len])
    keep = supervised > 0
    drop = src.overlong == "drop"
    dropped_overlong = set(all_owners[over].tolist()) if drop else set()
    truncated = 0 if drop else int(over.sum())
    if drop:
        keep &= ~over
    chosen = np.flatnonzero(keep).tolist()
    ids = [encoded.ids[i][:seq_len] for i in chosen]
    masks = [encoded.masks[i][:seq_len] for i in chosen]
    owners = all_owners[chosen].tolist()
    kept = set(owners)
    for owner in sorted(set(encoded.owners) - kept):
        rejected[owner] = (("overlong", f"every sample is longer than seq_len {seq_len}") if owner in dropped_overlong
                           else ("no_supervised_tokens", "no assistant token left (truncated away?)"))
    for name, n in (("truncated", truncated), ("extra_samples", len(owners) - len(kept)),
                    ("expanded_turns", encoded.expanded_turns), ("located_turns", encoded.located_turns),
                    ("python_rendered", encoded.python_rendered)):
        ctx.count(name, n)
    return ids, masks, np.asarray(owners, dtype=np.int64), rejected


def _encode_pairs(encoder: Any, records: pa.Table, src: Any, seq_len: int,
                  ctx: UnitContext) -> tuple[list, list, np.ndarray, dict]:
    """Documents of a batch's preference pairs: (ids, masks, owner record of each document,
    rejected); a kept pair's chosen document is followed by its rejected one."""
    from ftscale.data.chat import template_messages, template_tools
    from ftscale.data.chat.preference import encode_pairs
    from ftscale.data.io.preference import PAIR_FIELD

    tools = (records.column(src.tools_field).to_pylist() if src.tools_field in records.column_names
             else [None] * records.num_rows)
    pairs = []
    for stored, t in zip(records.column(PAIR_FIELD).to_pylist(), tools):
        pair = json.loads(stored)
        # The system prompt goes in through template_messages on the prompt alone, so both sides get it.
        prompt = template_messages(pair["prompt"], src.system_prompt)
        chosen, rejected = template_messages([pair["chosen"], pair["rejected"]])
        pairs.append((prompt, chosen, rejected, template_tools(t)))
    encoded = encode_pairs(encoder, pairs, seq_len // 2, src.overlong)
    # Each kept pair's rejected document is an extra sample of its record: kept + extra_samples
    # == documents, the manifest's conservation rule.
    for name, n in (("truncated", encoded.truncated), ("extra_samples", len(encoded.owners) // 2),
                    ("located_turns", encoded.located_turns), ("python_rendered", encoded.python_rendered)):
        ctx.count(name, n)
    return encoded.ids, encoded.masks, np.asarray(encoded.owners, dtype=np.int64), encoded.failures


def _rejected_table(records: pa.Table, src: Any, rejected: dict[int, tuple[str, str]]) -> pa.Table:
    from ftscale.data.io import QUARANTINE_SCHEMA
    from ftscale.data.io.preference import PAIR_FIELD

    rows = sorted(rejected)
    if not rows:
        return QUARANTINE_SCHEMA.empty_table()
    picked = records.take(pa.array(rows))
    if src.kind == "preference":  # the stored pair is JSON text already
        raws = [stored[:RAW_MAX_CHARS] for stored in picked.column(PAIR_FIELD).to_pylist()]
    else:
        raws = [json.dumps(m, ensure_ascii=False)[:RAW_MAX_CHARS] for m in picked.column(src.messages_field).to_pylist()]
    return pa.table({
        "uid": picked.column("uid"), "source": picked.column("source"), "file": picked.column("file"),
        "row": picked.column("row"), "reason": pa.array([rejected[i][0] for i in rows], pa.string()),
        "detail": pa.array([rejected[i][1] for i in rows], pa.string()), "raw": pa.array(raws, pa.string()),
    }).cast(QUARANTINE_SCHEMA)


class SpillTokens(Step):
    """Split by uid hash and spill each split's tokens, masks and per-document table."""

    name = "spill tokens"

    def __init__(self, val_fraction: float, seed: int) -> None:
        self.val_fraction = val_fraction
        self.seed = seed

    def run(self, batches: Iterator[Batch], ctx: UnitContext) -> Iterator[Batch]:
        out = {s: _SplitSpill(ctx.dir, s) for s in SPLITS}
        rejected = []
        try:
            for batch in batches:
                d = batch.derived
                is_val = val_mask(d["uids"], self.val_fraction, self.seed)
                for split, mask in (("train", ~is_val), ("val", is_val)):
                    idx = np.flatnonzero(mask)
                    out[split].append(d["uids"][idx], [d["ids"][i] for i in idx], [d["masks"][i] for i in idx],
                                      [d["families"][i] for i in idx])
                if d["rejected"].num_rows:
                    rejected.append(d["rejected"])
                yield batch
        finally:
            for spill in out.values():
                spill.close()
        if rejected:
            write_ipc(pa.concat_tables(rejected), ctx.dir / "rejected.arrow")
        ctx.meta.update({s: out[s].summary() for s in SPLITS},
                        rejected=sum(t.num_rows for t in rejected),
                        rejected_by_reason=_by_reason(rejected))


def _by_reason(tables: list[pa.Table]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tables:
        for reason in t.column("reason").to_pylist():
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


class _SplitSpill:
    """One split of a unit: tokens.i32, masks.u8, docs-NNNNN.arrow (per batch)."""

    def __init__(self, directory: Path, split: str) -> None:
        self.directory = directory
        self.split = split
        self.tokens = ArrayAppender(directory / f"{split}.tokens.i32", np.int32)
        self.masks = ArrayAppender(directory / f"{split}.masks.u8", np.uint8)
        self.docs: list[pa.Table] = []
        self.files: list[str] = []
        self.rows = 0
        self.supervised = 0

    def append(self, uids: np.ndarray, ids: list[np.ndarray], masks: list[np.ndarray], families: list) -> None:
        if not len(uids):
            return
        lengths = np.array([len(x) for x in ids], dtype=np.int32)
        supervised = np.array([int(m.sum()) for m in masks], dtype=np.int32)
        self.tokens.append(np.concatenate(ids))
        self.masks.append(np.concatenate(masks))
        name = f"{self.split}.docs-{len(self.files):05d}.arrow"
        write_ipc(pa.table({"uid": pa.array(uids, pa.uint64()), "length": lengths, "supervised": supervised,
                            "family": pa.array(families, pa.string())}, schema=DOCS_SCHEMA), self.directory / name)
        self.files.append(name)
        self.rows += len(uids)
        self.supervised += int(supervised.sum())

    def close(self) -> None:
        self.tokens.close()
        self.masks.close()

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "tokens": self.tokens.count, "supervised": self.supervised, "docs": self.files}
