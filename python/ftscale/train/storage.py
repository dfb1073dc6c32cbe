"""Run storage: ``storage_path`` as a local directory or a URI of any ``pyarrow.fs`` filesystem
(``s3://``, ``gs://``, ``abfs://``, ``hdfs://``; ``file://`` is local).

Ray Train persists each checkpoint to ``{storage_path}/{run_name}/checkpoint_NNNNNNN`` itself
(``RunConfig(storage_path=URI)``) and hands a worker its checkpoint back on restart. What
ftscale reads and writes around that goes through this module:

- rank 0 writes ``metrics.jsonl`` and ``tensorboard/`` into a local staging directory and
  uploads them after every checkpoint and at the end (object stores cannot append);
- resume, rollback, export, eval and report read a remote run through a *mirror*: a local
  directory holding the run's small files (``metrics.jsonl``, every checkpoint's ``*.json``),
  on which ``ftscale.train.runs`` picks checkpoints exactly as in a local run; only the
  checkpoints picked are downloaded whole;
- export writes into a local temporary directory and uploads it when ``--out`` is a URI.

Credentials and endpoints come from the filesystem's usual environment (``AWS_*`` with
``AWS_ENDPOINT_URL`` for S3-compatible stores, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``); every node of a cluster needs them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftscale.errors import ConfigError, InputError, OutputError

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


def upload(src: Path, uri: str) -> None:
    """Copy local file or directory ``src`` to ``uri`` (objects overwritten)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        if src.is_dir():
            fs.create_dir(path, recursive=True)
        pafs.copy_files(str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as e:
        raise OutputError(f"cannot upload {src} to {uri}: {' '.join(str(e).split())}") from e


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
    """``ftscale export`` when the run or the output is a URI: the checkpoints it picks are
    downloaded into a mirror, exported locally, and the result uploaded when ``out`` is one."""
    from ftscale.train.export import _checkpoints, export
    from ftscale.train.runs import RUN_FILE

    with tempfile.TemporaryDirectory(prefix="ftscale-export-") as tmp:
        local_source = local_path(source)
        if is_remote(source):
            is_checkpoint = exists(join(source, RUN_FILE))
            run_uri = source.rstrip("/").rsplit("/", 1)[0] if is_checkpoint else source
            mirror = mirror_run(run_uri, Path(tmp) / "run")
            local_source = str(mirror / source.rstrip("/").rsplit("/", 1)[1]) if is_checkpoint else str(mirror)
            chosen = _checkpoints(local_source, options.get("average_last", 1), options.get("best", False))
            for checkpoint in chosen:
                fetch_checkpoint(run_uri, mirror, checkpoint)
        local_out = Path(tmp) / "out" if is_remote(out) else Path(local_path(out))
        exported = export(local_source, str(local_out), **options)
        if not is_remote(out):
            return exported
        upload(Path(exported), out)
        return out
