"""Run storage through pyarrow.fs, on this machine's filesystem addressed as ``file://`` URIs
(the same code path as s3:// and gs://; tests/integration/test_ecosystem.py runs it against a
real S3 API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftscale.errors import ConfigError, InputError
from ftscale.train.storage import download, exists, filesystem, is_remote, local_path, mirror_run, mirrored, upload


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_which_paths_are_remote() -> None:
    assert is_remote("s3://bucket/runs") and is_remote("gs://b/x") and is_remote("abfs://c@acct/x")
    assert not is_remote("file:///tmp/runs") and not is_remote("runs") and not is_remote("/abs/runs")
    assert local_path("file:///tmp/runs") == "/tmp/runs" and local_path("runs/x") == "runs/x"


def test_a_flat_directory_downloads_into_a_new_destination(tmp_path) -> None:
    """An exported adapter is a directory of plain files: pyarrow's copy_files creates the
    subdirectories it lists but not the destination, which download must create."""
    src = write_tree(tmp_path / "adapter", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"\x00" * 64})
    dest = download(f"file://{src}", tmp_path / "new" / "adapter")
    assert dest == tmp_path / "new" / "adapter" and tree(dest) == tree(src)


def test_upload_then_download_round_trips_a_nested_directory(tmp_path) -> None:
    files = {"checkpoint_0000002/ftscale_run.json": b'{"step": 2}', "checkpoint_0000002/model/w.bin": b"\x01\x02",
             "metrics.jsonl": b'{"step": 1}\n'}
    src = write_tree(tmp_path / "run", files)
    uri = f"file://{tmp_path}/store/runs/r"
    upload(src, uri)
    assert exists(uri) and exists(f"{uri}/metrics.jsonl") and not exists(f"{uri}/nothing.json")
    assert tree(download(uri, tmp_path / "back")) == files
    single = download(f"{uri}/metrics.jsonl", tmp_path / "one" / "metrics.jsonl")
    assert single.read_bytes() == files["metrics.jsonl"]


def test_a_missing_source_is_an_input_error_naming_it(tmp_path) -> None:
    with pytest.raises(InputError, match=f"file://{tmp_path}/gone not found"):
        download(f"file://{tmp_path}/gone", tmp_path / "x")


def test_an_unknown_scheme_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^storage_path: cannot open nosuch://bucket/runs: "):
        filesystem("nosuch://bucket/runs")
    with pytest.raises(ConfigError, match=r"^out: cannot open nosuch://x"):
        filesystem("nosuch://x", key="out")


def test_a_mirror_holds_only_the_runs_small_files(tmp_path) -> None:
    """Metrics and each checkpoint's top-level JSON files, never weights or nested files: what
    picking a checkpoint needs, at the cost of one listing plus those files."""
    run = write_tree(tmp_path / "run", {
        "metrics.jsonl": b"m", "ftscale_summary.json": b"s", "tensorboard/events.out": b"tb",
        "checkpoint_0000004/ftscale_run.json": b"r", "checkpoint_0000004/.ftscale_complete.json": b"c",
        "checkpoint_0000004/model/mp_rank_00_model_states.pt": b"w" * 100,
        "checkpoint_0000004/model/zero_meta.json": b"nested", "checkpoint_0000004/adapter.safetensors": b"w",
        "other/notes.json": b"not a checkpoint"})
    mirror = mirror_run(f"file://{run}", tmp_path / "mirror")
    assert tree(mirror) == {"metrics.jsonl": b"m", "ftscale_summary.json": b"s",
                            "checkpoint_0000004/ftscale_run.json": b"r",
                            "checkpoint_0000004/.ftscale_complete.json": b"c"}
    assert tree(mirror_run(f"file://{tmp_path}/no-run-yet", tmp_path / "empty")) == {}


def test_mirrored_gives_a_local_run_as_it_is(tmp_path) -> None:
    with mirrored(f"file://{tmp_path}") as local:
        assert local == tmp_path
    with mirrored(str(tmp_path / "runs" / "r")) as local:
        assert local == tmp_path / "runs" / "r"


def test_an_upload_with_a_marker_writes_the_marker_after_every_other_file(tmp_path, monkeypatch) -> None:
    """An object store has no rename: an export there is complete once its marker exists, so
    the marker must be the last object written (a reader waiting for it never sees half)."""
    import pyarrow.fs as pafs

    src = write_tree(tmp_path / "export", {"config.json": b"{}", "model.safetensors": b"\x01" * 128,
                                           "ftscale_export.json": b'{"done": true}', "sub/tokenizer.json": b"{}"})
    written: list[str] = []
    real_copy = pafs.copy_files

    def recording_copy(source, destination, **kwargs):
        written.append(Path(source).relative_to(src).as_posix())
        return real_copy(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", recording_copy)
    upload(src, f"file://{tmp_path / 'remote'}", last="ftscale_export.json")
    assert written[-1] == "ftscale_export.json" and len(written) == 4
    assert tree(tmp_path / "remote") == tree(src)
