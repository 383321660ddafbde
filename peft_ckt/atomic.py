"""Atomic writes: a reader (or a resumed run) sees a file or folder whole or not at all, never half-written.

Every write goes to a temporary sibling, is flushed to disk (fsync) and then renamed over the target, which POSIX
makes atomic on one file system. This module is the one place in the package that renames files into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "commit_directory",
    "commit_files",
    "save_safetensors",
    "staged_directory",
    "write_bytes",
    "write_json",
    "write_text",
]


def _fsync_file(path: str | os.PathLike) -> None:
    if os.path.islink(path) or not os.path.isfile(path):
        return  # a link or folder put in place by its rename: nothing of its own to flush
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_directory(path: str | os.PathLike) -> None:
    # The rename itself lives in the directory entry: syncing the folder makes it survive a power cut.
    with contextlib.suppress(OSError):  # not every platform / file system lets a folder be opened and synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; when the block ends without error, that file is synced and renamed to
    `path`. On an error the temporary file is removed and `path` is left as it was. `suffix` ends the temporary name,
    for writers that pick the format from it (`".mp4"`, `".png"`).

    Example: `with atomic_path(out) as tmp: save_file(tensors, tmp)`.
    """
    target = os.fspath(path)
    tmp = f"{target}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> None:
    """`data` as JSON (`indent=2` unless `dumps_kwargs` say otherwise)."""
    dumps_kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(data, **dumps_kwargs))


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def commit_directory(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Puts the finished folder `staging` in place of `final` (replacing an older `final`): the rename is what marks
    the folder complete, so a job killed before it leaves only `staging` behind. An older `final` is renamed aside
    (`final.old-PID`) and removed only once `staging` is in its place; if that rename fails, it is put back."""
    staging, final = os.fspath(staging), os.fspath(final)
    for root, _, files in os.walk(staging):
        for name in files:
            _fsync_file(os.path.join(root, name))
    aside = None
    if os.path.isdir(final) and not os.path.islink(final):
        aside = f"{final}.old-{os.getpid()}"
        if os.path.isdir(aside):  # left by a run of the same pid killed between the renames
            shutil.rmtree(aside)
        os.replace(final, aside)
    try:
        os.replace(staging, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_directory(os.path.dirname(os.path.abspath(final)))


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty folder beside `final` (`final.partial`) to fill; when the block ends without error, it is put in
    place of `final` (`commit_directory`). What a killed writer left in `final.partial` is cleared first; on an error
    the staging folder is removed and `final` is left as it was.

    Example: `with staged_directory(out) as staging: model.save_pretrained(staging)`.
    """
    final = Path(final)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        commit_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def commit_files(
    staging: str | os.PathLike, output_dir: str | os.PathLike, names: list[str] | None = None
) -> list[str]:
    """Moves the files `names` (default: all) of the finished folder `staging` into `output_dir`, each one atomically,
    replacing files or folders of the same name. Returns the paths written."""
    staging, output_dir = os.fspath(staging), os.fspath(output_dir)
    written = []
    for name in names if names is not None else sorted(os.listdir(staging)):
        source, target = os.path.join(staging, name), os.path.join(output_dir, name)
        if os.path.isfile(source):
            _fsync_file(source)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(source, target)
        written.append(target)
    _fsync_directory(output_dir)
    return written
