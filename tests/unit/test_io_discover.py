"""ftscale.data.io.discover: Hugging Face metadata is untrusted and cannot point outside its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from ftscale.data.io import iter_input_files, read_source
from ftscale.errors import InputError


def write_stream(path: Path, texts: list[str]) -> Path:
    table = pa.table({"text": texts})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def hf_dataset(directory: Path, filenames: list, *, write: bool = True) -> Path:
    """A minimal ``Dataset.save_to_disk`` layout listing ``filenames`` in state.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dataset_info.json").write_text("{}")
    (directory / "state.json").write_text(json.dumps({"_data_files": [{"filename": f} for f in filenames]}))
    for name in filenames:
        if write and isinstance(name, str) and "/" not in name:
            write_stream(directory / name, [f"text of {name}"])
    return directory


def test_hand_made_dataset_reads(tmp_path):
    root = hf_dataset(tmp_path / "hf", ["a.arrow", "b.arrow"])
    assert read_source("s", [root]).records.column("text").to_pylist() == ["text of a.arrow", "text of b.arrow"]


@pytest.mark.parametrize("name", ["../outside.arrow", "sub/../../outside.arrow", "/etc/hostname", "", None, 5])
def test_data_file_names_escaping_the_dataset_raise(tmp_path, name):
    write_stream(tmp_path / "outside.arrow", ["secret"])
    root = hf_dataset(tmp_path / "hf", [name], write=False)
    with pytest.raises(InputError, match="state.json"):
        iter_input_files([root])


def test_data_file_symlinked_outside_raises(tmp_path):
    write_stream(tmp_path / "outside.arrow", ["secret"])
    root = hf_dataset(tmp_path / "hf", ["link.arrow"], write=False)
    (root / "link.arrow").symlink_to(tmp_path / "outside.arrow")
    with pytest.raises(InputError, match="resolves to .*outside"):
        iter_input_files([root])


@pytest.mark.parametrize("split", ["..", ".", "../elsewhere", "/tmp", "linked"])
def test_split_names_escaping_the_dataset_raise(tmp_path, split):
    hf_dataset(tmp_path / "elsewhere", ["a.arrow"])
    root = tmp_path / "dd"
    root.mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": [split]}))
    with pytest.raises(InputError, match="dataset_dict.json lists split"):
        iter_input_files([root])


@pytest.mark.parametrize("content", ["[1, 2]", '{"splits": "train"}', "{}", "not json"])
def test_malformed_dataset_dict_raises(tmp_path, content):
    (tmp_path / "dataset_dict.json").write_text(content)
    with pytest.raises(InputError, match="dataset_dict.json"):
        iter_input_files([tmp_path])


def test_malformed_state_raises(tmp_path):
    hf_dataset(tmp_path, [])
    (tmp_path / "state.json").write_text(json.dumps({"_data_files": ["a.arrow"]}))
    with pytest.raises(InputError, match="_data_files"):
        iter_input_files([tmp_path])
