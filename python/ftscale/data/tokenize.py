"""Tokenizers for prep: a Hugging Face tokenizer directory, a GGUF model file, or a tiktoken
BPE file. Tokenization happens once, at prep, batched (the HF tokenizers library runs the
batch on all cores in Rust) — never on every training rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ftscale.errors import ConfigError
from ftscale.paths import hub_reference, pin_model_ref, resolve_model_ref

# The pre-tokenisation pattern of GPT-2's BPE; a .tiktoken file stores ranks only, so the
# pattern must be known. Used for `.tiktoken` files (e.g. whisper's gpt2.tiktoken).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TIKTOKEN_EOS = "<|endoftext|>"
# Text characters per tokenizer call. A fast tokenizer's call holds ~100 bytes per token
# (Encoding objects: ids, offsets, token strings, masks) plus Python ints for the ids, about
# 40x the text; 1 Mi characters (~0.3 M tokens) keeps that near 40 MB per worker (4,096
# documents of ~1 KB took 200 MB).
ENCODE_BATCH_CHARS = 1 << 20


@dataclass
class Tokenizer:
    """A loaded tokenizer plus what the manifest records about it."""

    path: str
    hf: Any | None  # transformers tokenizer (None for tiktoken)
    tiktoken: Any | None
    eos_token_id: int
    bos_token_id: int | None
    pad_token_id: int
    vocab_size: int
    chat_template: str | None
    fingerprint: str
    vocab_sha256: str = ""  # of the token → id map alone: what a model's embedding rows are indexed by

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32) of each text, without special tokens."""
        out: list[np.ndarray] = []
        for batch in _char_bounded(texts, ENCODE_BATCH_CHARS):
            if self.hf is not None:
                ids = self.hf(batch, add_special_tokens=False)["input_ids"]
            else:
                ids = self.tiktoken.encode_ordinary_batch(batch)
            out.extend(np.asarray(i, dtype=np.int32) for i in ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        if self.hf is not None:
            return self.hf.decode(list(ids), skip_special_tokens=False)
        return self.tiktoken.decode(list(ids))

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "eos_token_id": self.eos_token_id,
                "bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id,
                "vocab_size": self.vocab_size, "chat_template": self.chat_template, "vocab_sha256": self.vocab_sha256}


def _char_bounded(texts: Sequence[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive runs of ``texts`` of at most ``max_chars`` characters (at least one text each)."""
    run: list[str] = []
    chars = 0
    for text in texts:
        if run and chars + len(text) > max_chars:
            yield run
            run, chars = [], 0
        run.append(text)
        chars += len(text)
    if run:
        yield run


def _vocab_digest(vocab: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()


def _read_template(value: str | None) -> str | None:
    """A template given inline, or as a path to a .jinja file."""
    if value is None:
        return None
    p = Path(value)
    if "{%" not in value and "{{" not in value and p.is_file():
        return p.read_text(encoding="utf-8")
    return value


def load_tokenizer(path: str, chat_template: str | None = None) -> Tokenizer:
    """``path``: a tokenizer directory, a ``.gguf`` or ``.tiktoken`` file, ``pkg:`` or a Hub id
    (``ftscale.paths.resolve_model_ref``); a Hub id is recorded pinned to its cached commit."""
    try:
        p = resolve_model_ref(path)
    except ConfigError as e:
        raise ConfigError(f"tokenizer.path: {e}") from e
    pinned = pin_model_ref(path) if hub_reference(path) is not None else None
    if not p.exists():
        raise ConfigError(f"tokenizer.path: {path} not found; give a tokenizer directory "
                          "(tokenizer.json), a .gguf file or a .tiktoken file")
    if p.is_file() and p.suffix == ".tiktoken":
        return _load_tiktoken(p)
    if p.is_file() and p.suffix == ".gguf":
        return _load_hf(str(p.parent), chat_template, gguf_file=p.name, shown=pinned or str(p))
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return _load_hf(str(p), chat_template, shown=pinned or str(p))
    raise ConfigError(f"tokenizer.path: {path} is neither a directory with tokenizer.json, "
                      "a .gguf file nor a .tiktoken file")


def _load_hf(directory: str, chat_template: str | None, shown: str, gguf_file: str | None = None) -> Tokenizer:
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"local_files_only": True}
    cached = gguf_tokenizer_cache(Path(directory) / gguf_file) if gguf_file else None
    if cached is not None and (cached / "tokenizer.json").is_file():
        directory = str(cached)
    elif gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(directory, **kwargs)
    except Exception as e:  # transformers raises many types for unusable files
        raise ConfigError(f"tokenizer.path: cannot load a tokenizer from {shown}: {e}") from e
    if cached is not None and "gguf_file" in kwargs:  # converted just now: keep it for next time
        _keep(tok, cached)
    template = _read_template(chat_template)
    if template is not None:
        tok.chat_template = template
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer.path: {shown} defines no EOS token; documents could not be separated")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    h = hashlib.sha256()
    h.update(tok.backend_tokenizer.to_str().encode())
    h.update(json.dumps([tok.chat_template, tok.eos_token_id, tok.bos_token_id, pad]).encode())
    return Tokenizer(path=shown, hf=tok, tiktoken=None, eos_token_id=int(tok.eos_token_id),
                     bos_token_id=tok.bos_token_id, pad_token_id=int(pad), vocab_size=len(tok),
                     chat_template=tok.chat_template, fingerprint=h.hexdigest(),
                     vocab_sha256=_vocab_digest(tok.get_vocab()))


def gguf_tokenizer_cache(gguf: Path) -> Path | None:
    """Where the tokenizer converted from GGUF file ``gguf`` is kept, keyed by the file's path,
    size and modification time: ``$FTSCALE_CACHE_DIR`` (default ``~/.cache/ftscale``)
    ``/gguf-tokenizers/<key>``. Converting SmolLM2's GGUF vocabulary takes ~15-30 s on 2 cores,
    reading the saved conversion ~1 s, and both give the same tokenizer (same fingerprint).
    None when the file cannot be stat'ed."""
    try:
        stat = gguf.resolve().stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    root = Path(os.environ.get("FTSCALE_CACHE_DIR") or Path.home() / ".cache" / "ftscale")
    return root / "gguf-tokenizers" / key


def _keep(tok: Any, cached: Path) -> None:
    """Save a freshly converted tokenizer (before any template override) into its cache
    directory, atomically; a cache that cannot be written is skipped (it only saves time)."""
    tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    try:
        tok.save_pretrained(str(tmp))
        os.replace(tmp, cached)
    except OSError:  # read-only home, or another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)


def _load_tiktoken(path: Path) -> Tokenizer:
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError as e:
        raise ConfigError("tokenizer.path: reading a .tiktoken file needs the `tiktoken` package "
                          "(pip install tiktoken)") from e
    try:
        ranks = load_tiktoken_bpe(str(path))
    except (OSError, ValueError) as e:  # base64 or rank errors of a damaged file are ValueErrors
        raise ConfigError(f"tokenizer.path: {path} is not a readable .tiktoken file "
                          f"({str(e).splitlines()[0][:200]})") from e
    eos = len(ranks)
    enc = tiktoken.Encoding(name=path.stem, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={TIKTOKEN_EOS: eos})
    digest = hashlib.sha256(path.read_bytes() + GPT2_PATTERN.encode()).hexdigest()
    vocab = {token.hex(): rank for token, rank in ranks.items()}  # tokens are bytes: hex keeps them apart
    return Tokenizer(path=str(path), hf=None, tiktoken=enc, eos_token_id=eos, bos_token_id=None,
                     pad_token_id=eos, vocab_size=eos + 1, chat_template=None, fingerprint=digest,
                     vocab_sha256=_vocab_digest({**vocab, TIKTOKEN_EOS.encode().hex(): eos}))
