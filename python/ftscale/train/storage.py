"""Run storage: ``storage_path`` as a local directory or a URI of any ``pyarrow.fs`` filesystem
(``s3://``, ``gs://``, ``abfs://``, ``hdfs://``; ``file://`` is local).

Ray Train persists each checkpoint to ``{storage_path}/{run_name}/checkpoint_NNNNNNN`` itself
(``RunConfig(storage_path=URI)``); the workers choose the one to resume from themselves
(``ftscale.train.resume``), as in a local run. What ftscale reads and writes around that goes
through this module:

- rank 0 writes ``metrics.jsonl`` and ``tensorboard/`` into a local staging directory and
  uploads them after every checkpoint and at the end (object stores cannot append);
- checkpoints are complete or invisible as in a local run (``ftscale.train.runs``): every
  rank's file list is uploaded with its files; after the barrier rank 0 checks, with one
  ``get_file_info`` call, that every listed object exists with the listed size and then writes
  the commit marker (one object PUT: it exists whole or not at all) — ``commit_remote``;
- resume, rollback, export, eval and report read a remote run through a *mirror*: a local
  directory holding the run's small files (``metrics.jsonl``, every checkpoint's ``*.json``,
  markers and file lists included), on which ``ftscale.train.runs`` picks checkpoints exactly
  as in a local run, with the sizes of the other files asked of the store (``remote_sizes``);
  only the checkpoints picked are downloaded whole, and checked against their checksums there;
- export writes into a local temporary directory and uploads it when ``--out`` is a URI.

Credentials and endpoints come from the filesystem's usual environment (``AWS_*`` with
``AWS_ENDPOINT_URL`` for S3-compatible stores, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``); every node of a cluster needs them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError, OutputError

EXPORT_MARKER = "ftscale_export.json"  # written last into an export: its presence says the export is complete
SMALL_SUFFIXES = (".json", ".jsonl")  # what a mirror copies: run files, metrics, markers


def is_uri(path: str) -> bool:
    return "://" in path


def is_remote(path: str) -> bool:
    """True for a URI whose filesystem is not this machine's (``file://`` is local)."""
    return is_uri(path) and not path.startswith("file://")


def local_path(path: str) -> str:
    """``file:///x`` → ``/x``; anything else unchanged."""
    return path[len("file://"):] if path.startswith("file://") else path


def filesystem(uri: str, key: str = "storage_path") -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` of ``uri``; a one-line ConfigError when the
    scheme is unknown or the store cannot be reached (credentials, endpoint, bucket)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, ImportError) as e:
        reason = " ".join(str(e).split())
        raise ConfigError(f"{key}: cannot open {uri}: {reason}") from e


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _kind(fs: Any, path: str) -> Any:
    return fs.get_file_info(path).type


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return _kind(fs, path) != pafs.FileType.NotFound


def download(uri: str, dest: Path) -> Path:
    """Copy the file or directory at ``uri`` to local ``dest`` (created; its files replaced)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    kind = _kind(fs, path)
    if kind == pafs.FileType.NotFound:
        raise InputError(f"{uri} not found")
    # copy_files creates the subdirectories it lists but not the destination itself, so a
    # directory of plain files (an exported adapter) would fail without this
    (dest if kind == pafs.FileType.Directory else dest.parent).mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as e:
        raise InputError(f"cannot download {uri}: {' '.join(str(e).split())}") from e
    return dest


def upload(src: Path, uri: str, last: str | None = None) -> None:
    """Copy local file or directory ``src`` to ``uri`` (objects overwritten). ``last``: a file
    of the directory uploaded after all the others (a completion marker: an object store has no
    rename, so a reader that waits for it never sees a partial upload)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    local = pafs.LocalFileSystem()
    try:
        if not src.is_dir():
            pafs.copy_files(str(src), path, source_filesystem=local, destination_filesystem=fs)
            return
        fs.create_dir(path, recursive=True)
        for item in sorted(src.iterdir()):
            if item.name != last:
                target = f"{path.rstrip('/')}/{item.name}"
                if item.is_dir():
                    fs.create_dir(target, recursive=True)
                pafs.copy_files(str(item), target, source_filesystem=local, destination_filesystem=fs)
        if last is not None and (src / last).is_file():
            pafs.copy_files(str(src / last), f"{path.rstrip('/')}/{last}", source_filesystem=local,
                            destination_filesystem=fs)
    except OSError as e:
        raise OutputError(f"cannot upload {src} to {uri}: {' '.join(str(e).split())}") from e


def remote_sizes(run_uri: str, mirror: Path) -> Any:
    """A ``runs.Sizes`` for ``mirror`` (the mirror of ``run_uri``): the sizes of a checkpoint's
    files in the store, asked in one ``get_file_info`` call per checkpoint."""
    import pyarrow.fs as pafs

    fs, root = filesystem(run_uri)

    def sizes(checkpoint: Path, names: list[str]) -> dict[str, int | None]:
        base = "/".join([root.rstrip("/"), checkpoint.relative_to(mirror).as_posix()])
        try:
            infos = fs.get_file_info([f"{base}/{name}" for name in names])
        except OSError as e:
            raise InputError(f"cannot list {run_uri}: {' '.join(str(e).split())}") from e
        return {name: info.size if info.type == pafs.FileType.File else None for name, info in zip(names, infos)}

    return sizes


def clear_remote(checkpoint_uri: str) -> None:
    """Remove a remote checkpoint that is about to be written again (see ``runs.clear``)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(checkpoint_uri)
    try:
        if _kind(fs, path) == pafs.FileType.Directory:
            fs.delete_dir(path)
    except OSError as e:
        raise OutputError(f"{checkpoint_uri}: cannot remove the earlier attempt's checkpoint: "
                          f"{' '.join(str(e).split())}") from e


def commit_remote(run_uri: str, name: str, world_size: int, step: int) -> None:
    """``runs.commit`` for checkpoint ``name`` of a remote run: the marker is built from the
    uploaded file lists and the store's sizes, and written as one object."""
    import json

    import pyarrow.fs as pafs

    from ftscale.train.runs import COMMIT_FILE, commit_marker

    fs, _ = filesystem(run_uri)
    with tempfile.TemporaryDirectory(prefix="ftscale-commit-") as tmp:
        mirror = Path(tmp) / "run"
        checkpoint = mirror / name
        checkpoint.mkdir(parents=True)
        _, base = filesystem(join(run_uri, name))
        for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):  # the listing, not recursive
            file_name = info.path.rsplit("/", 1)[-1]
            if file_name.endswith(".json"):
                with fs.open_input_stream(info.path) as f:
                    (checkpoint / file_name).write_bytes(f.read())
        marker = commit_marker(checkpoint, world_size, step, remote_sizes(run_uri, mirror))
    try:
        with fs.open_output_stream(f"{base}/{COMMIT_FILE}") as f:
            f.write(json.dumps(marker, indent=1).encode())
    except OSError as e:
        raise OutputError(f"{join(run_uri, name)}: cannot write the commit marker: {' '.join(str(e).split())}") from e


def mirror_run(run_uri: str, into: Path) -> Path:
    """The small files of the run directory at ``run_uri`` copied into ``into`` (which is
    returned): ``metrics.jsonl`` and the ``*.json`` files at the top of every checkpoint
    directory. Memory and traffic: one listing of the run plus those files."""
    import pyarrow.fs as pafs

    fs, root = filesystem(run_uri)
    into.mkdir(parents=True, exist_ok=True)
    if _kind(fs, root) == pafs.FileType.NotFound:
        return into
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = info.path[len(root.rstrip("/")) + 1:]
        depth = rel.count("/")
        wanted = info.type == pafs.FileType.File and rel.endswith(SMALL_SUFFIXES) and (
            depth == 0 or (depth == 1 and rel.startswith("checkpoint_")))
        if wanted:
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as f:
                target.write_bytes(f.read())
    return into


@contextmanager
def mirrored(run_uri: str) -> Iterator[Path]:
    """A mirror (``mirror_run``) of a remote run in a temporary directory; a local run as it is."""
    if not is_remote(run_uri):
        yield Path(local_path(run_uri))
        return
    with tempfile.TemporaryDirectory(prefix="ftscale-mirror-") as tmp:
        yield mirror_run(run_uri, Path(tmp) / "run")


def fetch_checkpoint(run_uri: str, mirror: Path, checkpoint: Path) -> Path:
    """Checkpoint ``checkpoint`` (a directory of ``mirror``, the mirror of ``run_uri``) made
    whole: every file downloaded into it. Returns it."""
    shutil.rmtree(checkpoint, ignore_errors=True)
    return download(join(run_uri, checkpoint.relative_to(mirror).as_posix()), checkpoint)


def export_remote(source: str, out: str, **options: Any) -> Path | str:
    """``ftscale export`` when the run or the output is a URI: the checkpoints it picks (by
    marker and the store's sizes) are downloaded into a mirror and exported locally (which
    checks their checksums), and the result uploaded when ``out`` is one."""
    from ftscale.train.export import export

    overwrite = options.get("overwrite", False)
    if is_remote(out) and exists(out) and not overwrite:
        raise OutputError(f"--out {out} exists; choose a new location or pass --overwrite")
    with tempfile.TemporaryDirectory(prefix="ftscale-export-") as tmp:
        local_source = local_path(source)
        if is_remote(source):
            local_source = str(_fetch_for_export(source, Path(tmp) / "run", options.get("average_last", 1),
                                                 options.get("best", False)))
            options = {**options, "best": False}
        local_out = Path(tmp) / "out" if is_remote(out) else Path(local_path(out))
        exported = export(local_source, str(local_out), **options)
        if not is_remote(out):
            return exported
        # An object store has no rename, so an export there is complete once its marker
        # (EXPORT_MARKER) exists: the marker is uploaded after every other file, and when an
        # export is replaced the old marker goes first, then the old objects (another method's
        # files must not linger among the new ones).
        if overwrite and exists(out):
            fs, path = filesystem(out)
            try:
                if exists(join(out, EXPORT_MARKER)):
                    fs.delete_file(f"{path.rstrip('/')}/{EXPORT_MARKER}")
                fs.delete_dir(path)
            except OSError as e:
                raise OutputError(f"cannot remove the old export at {out}: {' '.join(str(e).split())}") from e
        upload(Path(exported), out, last=EXPORT_MARKER)
        return out


def _fetch_for_export(source: str, into: Path, average_last: int, best: bool) -> Path:
    """The checkpoints an export of remote ``source`` (a run or one of its checkpoints) reads,
    downloaded into a mirror of the run; returns the newest of them, inside the mirror."""
    from ftscale.train.runs import RUN_FILE, best_checkpoint, checksum_problem, problem, scan

    if average_last < 1:
        raise ConfigError(f"--average-last must be >= 1, got {average_last}")
    if best and average_last != 1:
        raise ConfigError("--best exports one checkpoint; leave out --average-last")
    is_checkpoint = exists(join(source, RUN_FILE))
    run_uri = source.rstrip("/").rsplit("/", 1)[0] if is_checkpoint else source
    mirror = mirror_run(run_uri, into)
    sizes = remote_sizes(run_uri, mirror)
    complete, skipped = scan(mirror, sizes)
    if best:
        found = best_checkpoint(mirror, sizes)
        if found is None:
            raise InputError(f"{source}: no best checkpoint recorded (train with eval.select; with eval.guard, "
                             "an evaluation of a trained step must respect it)")
        picked = [found]
    elif is_checkpoint:
        newest = mirror / source.rstrip("/").rsplit("/", 1)[1]
        why = problem(newest, sizes)
        if why is not None:
            raise InputError(f"checkpoint {source} cannot be used: {why}")
        picked = (complete[: complete.index(newest) + 1] if newest in complete else [newest])[-average_last:]
    else:
        for path, why in skipped:
            print(f"ftscale export: skipping {path.name}: {why}", file=sys.stderr)
        if not complete:
            raise InputError(f"{source} is neither a checkpoint nor a run directory with complete checkpoints")
        picked = []
        for checkpoint in reversed(complete):  # newest first, until enough verify (as in a local run)
            why = checksum_problem(fetch_checkpoint(run_uri, mirror, checkpoint))
            if why is None:
                picked.insert(0, checkpoint)
            else:
                print(f"ftscale export: skipping {checkpoint.name}: {why}", file=sys.stderr)
                shutil.rmtree(checkpoint)
            if len(picked) == average_last:
                break
        if not picked:
            raise InputError(f"{source}: no checkpoint passed verification (reasons above)")
        return picked[-1]
    for checkpoint in picked:
        fetch_checkpoint(run_uri, mirror, checkpoint)
    return picked[-1]
