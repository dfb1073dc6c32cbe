"""Does the prepared dataset's tokenizer fit the model? Checked by ``ftscale train`` before Ray starts.

Two failures this prevents: a token id at or beyond the model's embedding rows (on GPU an
out-of-range index crashes the run mid-step, with a CUDA assert far from the cause), and a
different tokenizer whose ids happen to be in range (the run trains silently on ids that mean
other tokens to the model). Ids of the data are below the tokenizer's ``vocab_size``
(``len(tokenizer)``, added tokens included), so that is compared with the model config's
``vocab_size``. When the model ships a tokenizer (a Hugging Face directory with
``tokenizer.json``, or a GGUF file), its token → id map is compared with the one the data was
prepared with (``vocab_sha256`` in the manifest; older manifests: the whole tokenizer
fingerprint). Chat templates may differ: they change the rendering prep did, not what ids mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError


def model_vocab_size(cfg: Any) -> int | None:
    """Embedding rows of the configured model, from its config alone (no weights loaded)."""
    if cfg.model.config is not None:
        value = cfg.model.config.get("vocab_size")
    else:
        from ftscale.plan import load_model_config

        try:
            config = load_model_config(cfg.model.path)
        except InputError as e:
            raise ConfigError(f"model.path: {str(e).removeprefix('--model: ')}") from e
        value = getattr(config.get_text_config(), "vocab_size", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_tokenizer_path(model_path: str) -> Path | None:
    from ftscale.paths import resolve_model_ref

    p = resolve_model_ref(model_path)  # a Hub id: its cached snapshot
    if (p.is_file() and p.suffix == ".gguf") or (p.is_dir() and (p / "tokenizer.json").is_file()):
        return p
    return None


def check_model_tokenizer(cfg: Any, tokenizer: dict[str, Any]) -> None:
    """ConfigError when the dataset's tokenizer (the manifest's ``tokenizer`` entry) does not
    fit ``cfg``'s model: more ids than embedding rows, or another vocabulary than the model's own."""
    data_vocab = tokenizer.get("vocab_size")
    rows = model_vocab_size(cfg)
    fix = "prepare the data with the model's tokenizer (tokenizer.path: the model's directory or .gguf)"
    if isinstance(data_vocab, int) and rows is not None and data_vocab > rows:
        raise ConfigError(f"model: its embedding has {rows} rows, but the dataset's tokenizer ({tokenizer.get('path')}) "
                          f"has {data_vocab} tokens, so token ids up to {data_vocab - 1} would index past it; {fix}")
    if cfg.model.path is None:
        return
    own = _model_tokenizer_path(cfg.model.path)
    data_path = tokenizer.get("path")
    if own is None or (isinstance(data_path, str) and _same_file(_local(data_path), own)):
        return
    from ftscale.data.tokenize import load_tokenizer

    model_tok = load_tokenizer(str(own), tokenizer.get("chat_template")).describe()
    key = "vocab_sha256" if tokenizer.get("vocab_sha256") else "fingerprint"
    if model_tok[key] != tokenizer.get(key):
        raise ConfigError(f"model: its own tokenizer ({own}) has another vocabulary than the one the dataset was "
                          f"prepared with ({data_path}; {key} {str(tokenizer.get(key))[:12]}… vs "
                          f"{str(model_tok[key])[:12]}…): the ids would mean other tokens to the model; {fix}")


def _local(reference: str) -> Path:
    """The dataset's tokenizer reference as a local path (a Hub id no longer cached: as given,
    which matches nothing, so the vocabularies are compared)."""
    from ftscale.paths import resolve_model_ref

    try:
        return resolve_model_ref(reference)
    except ConfigError:
        return Path(reference)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
