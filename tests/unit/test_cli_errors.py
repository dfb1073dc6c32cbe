"""Every user-caused failure the CLI can meet ends in one line on stderr and exit status 2.

Each case is a real failure of a real input (a damaged archive, a non-UTF-8 file, a full
file-size limit, a package that cannot be imported), run through ``ftscale.cli.main`` or the
``ftscale`` process itself; none may end in a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftscale.cli import main


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    """Run the CLI; assert exit 2 and a single 'ftscale COMMAND: error: ...' line; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(f"ftscale {command}: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer=trainer)
    out = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(out))
    return out


def prep_config(tmp_path: Path, tokenizer: str | Path, paths: list[Path], **source) -> Path:
    cfg = {"output": str(tmp_path / "prepared"), "seq_len": 64, "tokenizer": {"path": str(tokenizer)},
           "sources": [{"name": "s", "kind": "cpt", "paths": [str(p) for p in paths], **source}]}
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_source_whose_records_are_all_rejected(tmp_path, tokenizer_dir, capsys):
    data = jsonl(tmp_path / "a.jsonl", [{"body": "text under another name"}] * 3)
    line = one_line_error(capsys, ["prep", str(prep_config(tmp_path, tokenizer_dir, [data]))], "prep")
    assert "source 's': all 3 records were rejected (missing_field: 3)" in line and "'text'" in line
    line = one_line_error(capsys, ["dedup", str(data), "--out", str(tmp_path / "d")], "dedup")
    assert "all 3 records were rejected" in line


def test_an_empty_source(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    line = one_line_error(capsys, ["dedup", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "d")], "dedup")
    assert "its files hold no records" in line


def test_a_damaged_gzip_file(tmp_path, capsys):
    data = bytearray(gzip.compress(b'{"text": "hello there"}\n' * 2000))
    data[30:60] = bytes(b ^ 0x5A for b in data[30:60])  # header intact, deflate stream broken
    (tmp_path / "a.jsonl.gz").write_bytes(bytes(data))
    line = one_line_error(capsys, ["dedup", str(tmp_path / "a.jsonl.gz"), "--out", str(tmp_path / "d")], "dedup")
    assert "cannot read" in line and "a.jsonl.gz" in line and "damaged" in line


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes(b"output: out\nseq_len: 64 # caf\xe9\n")
    for command in ("prep", "train", "validate"):
        line = one_line_error(capsys, [command, str(tmp_path / "c.yaml")], command)
        assert "not UTF-8 text" in line


def test_a_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("output: [unclosed\nseq_len: 64\n")
    assert "not valid YAML" in one_line_error(capsys, ["validate", str(tmp_path / "c.yaml")], "validate")


def test_a_damaged_tiktoken_file(tmp_path, capsys):
    (tmp_path / "bad.tiktoken").write_text("this is not base64 !!\n")
    data = jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    line = one_line_error(capsys, ["prep", str(prep_config(tmp_path, tmp_path / "bad.tiktoken", [data]))], "prep")
    assert "is not a readable .tiktoken file" in line


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00" + b"\xff" * 64, b"not a gguf file at all"])
def test_a_damaged_gguf_file(tmp_path, capsys, content):
    (tmp_path / "bad.gguf").write_bytes(content)
    assert "cannot read a transformers config" in one_line_error(
        capsys, ["plan", "--model", str(tmp_path / "bad.gguf")], "plan")
    data = jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    assert "cannot load a tokenizer" in one_line_error(
        capsys, ["prep", str(prep_config(tmp_path, tmp_path / "bad.gguf", [data]))], "prep")


def test_an_output_under_a_file(tmp_path, capsys):
    data = jsonl(tmp_path / "a.jsonl", [{"text": "hello world"}])
    (tmp_path / "file").write_text("x")
    line = one_line_error(capsys, ["dedup", str(data), "--out", str(tmp_path / "file" / "out")], "dedup")
    assert "cannot create output directory" in line


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))


def test_a_write_that_fails_midway_is_one_line(tmp_path):
    """Like a full disk: the kernel refuses a write (the file-size limit, EFBIG)."""
    rows = [{"text": f"document {i} " + "word " * 50} for i in range(400)]
    data = jsonl(tmp_path / "a.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "ftscale.cli", "dedup", str(data), "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, env=env, preexec_fn=_limit_file_size, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("ftscale dedup: error: cannot write "), out.stderr


def test_a_missing_optional_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    line = one_line_error(capsys, ["plan", "--model", str(tmp_path / "config.json")], "plan")
    assert "needs the 'transformers' package" in line and "pip install 'ftscale[prep]'" in line


@pytest.mark.parametrize("argv, message", [
    (["mix", "DATA", "--weights", "a=1", "--tokens", "infM"], "--tokens: expected a positive count"),
    (["mix", "DATA", "--weights", "a=1", "--tokens", "nanM"], "--tokens: expected a positive count"),
    (["mix", "DATA", "--weights", "a=1", "--tokens", "1M", "--seed", "-1"], "--seed must be >= 0"),
    (["dedup", "IN", "--out", "OUT", "--seed", "-3"], "--seed must be >= 0"),
    (["dedup", "IN", "--out", "OUT", "--threads", "-1"], "--threads must be >= 1"),
    (["sweep", "CONFIG", "--seed", "-2"], "--seed: must be >= 0"),
    (["inspect", "DATA", "--source", "a", "--n", "-1"], "--n must be >= 1"),
])
def test_bad_numbers_on_the_command_line(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    assert message in one_line_error(capsys, argv, argv[0])


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "a\\b", ""])
def test_a_run_name_that_is_not_a_plain_name(tmp_path, capsys, name):
    cfg = {"run_name": name, "data": {"path": str(tmp_path)}, "model": {"config": {"model_type": "llama"}}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert "run_name:" in one_line_error(capsys, ["validate", str(tmp_path / "t.yaml")], "validate")


def test_a_manifest_source_name_escaping_the_report_directory(tmp_path, capsys):
    from ftscale.data.format import MANIFEST_VERSION

    manifest = {"format_version": MANIFEST_VERSION, "seq_len": 8, "seed": 0, "tokenizer": {},
                "sources": {"../../escape": {}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "r")], "report")
    assert "'../../escape'" in line and "plain name" in line
    assert not (tmp_path.parent / "escape").exists()


def test_the_ftscale_process_prints_no_traceback(tmp_path):
    """The installed entry point, end to end: one line on stderr, status 2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "ftscale.cli", "mix", str(tmp_path), "--weights", "a=1",
                          "--tokens", "infM"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
