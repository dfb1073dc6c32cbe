"""Checkpoints are complete or invisible, and nothing in one is unpickled beyond tensors.

Checkpoints here are built file by file the way the recipe writes them (each rank's part
listed by ``write_rank_files``, "uploaded" into the run directory, committed by rank 0), so
every torn state can be made exactly; the integration tests train real ones.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ftscale.errors import ConfigError, InputError, OutputError
from ftscale.train import runs
from ftscale.train.runs import COMMIT_FILE, RUN_FILE, checkpoint_name, commit, write_rank_files


def rank_part(tmp: Path, rank: int, step: int, best_step: int | None = None) -> Path:
    """What one rank writes before its upload (names as DeepSpeed and the recipe use them)."""
    part = tmp / f"part-{step}-{rank}"
    (part / "ds").mkdir(parents=True)
    (part / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(3000 + rank))
    (part / f"ftscale_rng_rank{rank}.json").write_text(json.dumps({"rank": rank}))
    if rank == 0:
        (part / "ds" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(5000))
        (part / RUN_FILE).write_text(json.dumps({"step": step, "world_size": 2, "gate": {"best_step": best_step}}))
    write_rank_files(part, rank)
    return part


def make_checkpoint(run: Path, step: int, *, ranks: tuple[int, ...] = (0, 1), committed: bool = True,
                    best_step: int | None = None) -> Path:
    checkpoint = run / checkpoint_name(step)
    for rank in ranks:
        shutil.copytree(rank_part(run.parent, rank, step, best_step), checkpoint, dirs_exist_ok=True)  # the upload
    if committed:
        commit(checkpoint, 2, step)
    return checkpoint


def optim_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_a_committed_checkpoint_verifies_and_lists_every_rank_file(run):
    checkpoint = make_checkpoint(run, 2)
    files = runs.committed_files(checkpoint)
    assert {RUN_FILE, "ds/mp_rank_00_model_states.pt", "ftscale_rng_rank1.json"} <= set(files)
    assert files["ds/zero_pp_rank_1_mp_rank_00_optim_states.pt"]["size"] == 3001
    assert runs.checksum_problem(checkpoint) is None and runs.checkpoints(run) == [checkpoint]


@pytest.mark.parametrize("tear, reason", [
    (lambda c: optim_file(c, 1).unlink(), "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing"),
    (lambda c: optim_file(c, 0).write_bytes(optim_file(c, 0).read_bytes()[:100]), "has 100 bytes, 3000 were written"),
    (lambda c: (c / COMMIT_FILE).unlink(), "no commit marker"),
    (lambda c: (c / COMMIT_FILE).write_text("{not json"), "no readable commit marker"),
])
def test_a_torn_checkpoint_is_skipped_with_its_reason(run, tear, reason):
    older = make_checkpoint(run, 2)
    newest = make_checkpoint(run, 4)
    tear(newest)
    found, skipped = runs.scan(run)
    assert found == [older] and runs.latest_checkpoint(run) == older
    assert [(p, reason in why) for p, why in skipped] == [(newest, True)], skipped


def test_a_changed_byte_is_caught_by_the_checksum_only(run):
    checkpoint = make_checkpoint(run, 2)
    flip_a_byte(optim_file(checkpoint, 1))
    assert runs.problem(checkpoint) is None  # the sizes still match
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its checksum" in runs.checksum_problem(checkpoint)
    with pytest.raises(InputError, match="cannot be used"):
        runs.verified(checkpoint)


def test_a_checkpoint_of_an_older_version_is_skipped_and_named_so(run):
    older = make_checkpoint(run, 2)
    for listing in [*older.glob("ftscale_files_rank*.json"), older / COMMIT_FILE]:
        listing.unlink()  # what versions before commit markers wrote
    torn = make_checkpoint(run, 4, committed=False)
    assert runs.checkpoints(run) == []
    assert "written by an ftscale version without them" in runs.problem(older)
    assert "interrupted while saving" in runs.problem(torn)


def test_commit_refuses_a_rank_that_did_not_arrive(run):
    checkpoint = make_checkpoint(run, 2, ranks=(0,), committed=False)
    with pytest.raises(OutputError, match="rank 1's file list did not arrive"):
        commit(checkpoint, 2, 2)
    assert not (checkpoint / COMMIT_FILE).exists() and runs.checkpoints(run) == []


def test_commit_refuses_a_file_that_arrived_short(run):
    checkpoint = make_checkpoint(run, 2, committed=False)
    optim_file(checkpoint, 1).write_bytes(b"short")
    with pytest.raises(OutputError, match="has 5 bytes"):
        commit(checkpoint, 2, 2)
    assert not (checkpoint / COMMIT_FILE).exists()


@pytest.mark.parametrize("name", ["../../outside.pt", "/etc/passwd", "ds/../../x", ""])
def test_a_marker_naming_paths_outside_the_checkpoint_is_refused(run, name):
    checkpoint = make_checkpoint(run, 2)
    marker = json.loads((checkpoint / COMMIT_FILE).read_text())
    marker["files"][name] = {"size": 0, "sha256": "0" * 64}
    (checkpoint / COMMIT_FILE).write_text(json.dumps(marker))
    assert "not a path inside the checkpoint" in runs.problem(checkpoint)


def test_a_symlink_out_of_the_checkpoint_is_refused(run, tmp_path):
    checkpoint = make_checkpoint(run, 2)
    outside = tmp_path / "elsewhere.pt"
    shutil.move(optim_file(checkpoint, 1), outside)
    optim_file(checkpoint, 1).symlink_to(outside)
    assert "links outside the checkpoint" in runs.problem(checkpoint)


def test_the_best_checkpoint_must_be_complete(run):
    make_checkpoint(run, 2)
    make_checkpoint(run, 4, best_step=2)
    assert runs.best_checkpoint(run) == run / checkpoint_name(2)
    optim_file(run / checkpoint_name(2), 0).unlink()
    with pytest.raises(InputError, match="best checkpoint \\(step 2\\) cannot be used: .* is missing"):
        runs.best_checkpoint(run)


def test_resume_chooses_the_newest_checkpoint_that_verifies(run, capsys):
    from ftscale.train.resume import choose_checkpoint

    good = make_checkpoint(run, 2)
    changed = make_checkpoint(run, 4)
    flip_a_byte(changed / "ds" / "mp_rank_00_model_states.pt")
    torn = make_checkpoint(run, 6, committed=False)
    assert choose_checkpoint(run, 0, 1, torch.device("cpu")) == good
    out = capsys.readouterr().out
    assert f"skipping {torn.name}: no commit marker" in out
    assert f"skipping {changed.name}: ds/mp_rank_00_model_states.pt does not match its checksum" in out
    assert choose_checkpoint(run.parent / "no-such-run", 0, 1, torch.device("cpu")) is None


def test_export_skips_torn_checkpoints_and_says_why(run, capsys):
    from ftscale.train.export import _checkpoints

    good = make_checkpoint(run, 2)
    changed = make_checkpoint(run, 4)
    flip_a_byte(optim_file(changed, 0))
    make_checkpoint(run, 6, ranks=(0,), committed=False)
    assert _checkpoints(str(run), 1) == [good]
    err = capsys.readouterr().err
    assert "skipping checkpoint_0000006: no commit marker" in err and "skipping checkpoint_0000004" in err
    with pytest.raises(ConfigError, match="only 1 complete"):
        _checkpoints(str(run), 2)
    with pytest.raises(InputError, match="no commit marker"):
        _checkpoints(str(run / checkpoint_name(6)), 1)


# ------------------------------------------------------------------------- no pickles

class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def weights_only_env(monkeypatch):
    from ftscale.train.torch_load import WEIGHTS_ONLY_ENV

    monkeypatch.setenv(WEIGHTS_ONLY_ENV, "0")  # restored after the test; the code under test sets "1"


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_runs(run, tmp_path, weights_only_env):
    from ftscale.train.export import fp32_state_dict

    marker = tmp_path / "code-ran"
    checkpoint = run / checkpoint_name(2)
    (checkpoint / "ds").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "extra": Payload(marker)}, checkpoint / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(InputError, match=r"holds pickled objects other than tensors \(Unsupported global: GLOBAL getattr"):
        fp32_state_dict(checkpoint)
    assert not marker.exists()
    # DeepSpeed's own loads pass weights_only=False: the process-wide switch overrides them too.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(checkpoint / "ds" / "mp_rank_00_model_states.pt", weights_only=False)
    assert not marker.exists()


def test_deepspeed_zero_checkpoint_classes_are_allowed(tmp_path, weights_only_env):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from ftscale.train.torch_load import weights_only_loads

    weights_only_loads()
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "t": torch.arange(3)},
               tmp_path / "optim.pt")
    loaded = torch.load(tmp_path / "optim.pt", weights_only=False)
    assert loaded["zero_stage"] == ZeroStageEnum.gradients and torch.equal(loaded["t"], torch.arange(3))


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_round_trips_through_json():
    from ftscale.train.rng import rng_state, seed_everything, set_rng_state

    seed_everything(5)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    saved = json.loads(json.dumps(rng_state(on_gpu=False)))
    expected = draws()
    seed_everything(99)
    set_rng_state(saved, on_gpu=False, where="test")
    assert draws() == expected


@pytest.mark.parametrize("damage", [
    lambda s: s["python"].update(words=[1, 2, 3]),
    lambda s: s.update(torch="not base64!"),
    lambda s: s["numpy"].update(keys=[-1] * 624),
    lambda s: s.pop("numpy"),
])
def test_a_malformed_rng_state_is_an_input_error(damage):
    from ftscale.train.rng import rng_state, set_rng_state

    state = json.loads(json.dumps(rng_state(on_gpu=False)))
    damage(state)
    with pytest.raises(InputError, match="ckpt/rng.json: the random generator state is malformed"):
        set_rng_state(state, on_gpu=False, where="ckpt/rng.json")


# ------------------------------------------------------------------------- export target

def test_export_refuses_a_non_empty_directory_before_reading_anything(tmp_path):
    from ftscale.train.export import export

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty; choose a new directory or pass --overwrite"):
        export(str(tmp_path / "no-such-run"), str(out))
    assert (out / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------- object storage

@pytest.fixture
def s3_run(monkeypatch, tmp_path):
    """A run URI in a real S3 API (moto's server on loopback): the checkpoints of a run whose
    ``storage_path`` is an object store, with no shared directory to commit or check in."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="ckpt")
    yield "s3://ckpt/runs/run"
    server.stop()


def upload_checkpoint(run_uri: str, tmp: Path, step: int, ranks: tuple[int, ...] = (0, 1)) -> str:
    """Each rank's part uploaded the way Ray Train persists a report, then committed by rank 0."""
    from ftscale.train.storage import commit_remote, join, upload

    uri = join(run_uri, checkpoint_name(step))
    for rank in ranks:
        upload(rank_part(tmp, rank, step), uri)
    commit_remote(run_uri, checkpoint_name(step), 2, step)
    return uri


def remote_scan(run_uri: str, tmp: Path) -> tuple[list[str], list[tuple[str, str]]]:
    from ftscale.train.storage import mirror_run, remote_sizes

    mirror = mirror_run(run_uri, tmp / f"mirror-{len(list(tmp.glob('mirror-*')))}")
    found, skipped = runs.scan(mirror, remote_sizes(run_uri, mirror))
    return [p.name for p in found], [(p.name, why) for p, why in skipped]


def put(uri: str, data: bytes) -> None:
    from ftscale.train.storage import filesystem

    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def test_a_remote_checkpoint_is_committed_and_torn_ones_are_skipped(s3_run, tmp_path):
    from ftscale.train.storage import download, filesystem, join

    upload_checkpoint(s3_run, tmp_path, 2)
    marker = json.loads((download(join(s3_run, checkpoint_name(2), COMMIT_FILE), tmp_path / "m.json")).read_text())
    assert "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt" in marker["files"] and marker["world_size"] == 2
    with pytest.raises(OutputError, match="rank 1's file list did not arrive"):
        upload_checkpoint(s3_run, tmp_path, 4, ranks=(0,))
    deleted = upload_checkpoint(s3_run, tmp_path, 6)
    fs, path = filesystem(join(deleted, "ds", "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    fs.delete_file(path)
    truncated = upload_checkpoint(s3_run, tmp_path, 8)
    put(join(truncated, "ds", "mp_rank_00_model_states.pt"), b"short")
    found, skipped = remote_scan(s3_run, tmp_path)
    assert found == [checkpoint_name(2)]
    assert dict(skipped) == {
        checkpoint_name(4): "no commit marker: it was never completed (interrupted while saving?)",
        checkpoint_name(6): "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt is missing",
        checkpoint_name(8): "ds/mp_rank_00_model_states.pt has 5 bytes, 5000 were written"}


def test_remote_resume_and_export_choose_the_newest_checkpoint_that_verifies(s3_run, tmp_path, capsys):
    from ftscale.train.resume import choose_checkpoint
    from ftscale.train.storage import _fetch_for_export, download, join

    upload_checkpoint(s3_run, tmp_path, 2)
    changed = upload_checkpoint(s3_run, tmp_path, 4)
    local = download(join(changed, "ds", "mp_rank_00_model_states.pt"), tmp_path / "model_states.pt")
    flip_a_byte(local)  # same size: only a checksum sees it
    put(join(changed, "ds", "mp_rank_00_model_states.pt"), local.read_bytes())
    chosen = choose_checkpoint(s3_run, 0, 1, torch.device("cpu"), tmp_path / "scratch")
    assert chosen == tmp_path / "scratch" / checkpoint_name(2) and runs.verified(chosen) == chosen
    assert not (tmp_path / "scratch" / checkpoint_name(4)).exists()  # the bad download is gone
    out = capsys.readouterr().out
    assert f"skipping {checkpoint_name(4)}: ds/mp_rank_00_model_states.pt does not match its checksum" in out
    # export of the run: the newest checkpoint whose download verifies
    picked = _fetch_for_export(s3_run, tmp_path / "export-mirror", 1, False)
    assert picked.name == checkpoint_name(2) and runs.verified(picked) == picked
    assert f"skipping {checkpoint_name(4)}: ds/mp_rank_00_model_states.pt does not match" in capsys.readouterr().err
    # export of that one checkpoint: downloaded, and refused by the local pass's checksums
    picked = _fetch_for_export(changed, tmp_path / "export-mirror-2", 1, False)
    with pytest.raises(InputError, match="does not match its checksum"):
        runs.verified(picked)
