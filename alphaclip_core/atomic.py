"""Files and folders written atomically: a crash or a full disk never leaves half a file in place.

Every writer of the package that produces a result file (weights, cards, results, shards' indexes)
goes through :func:`atomic_write` or :func:`atomic_folder`: the new content is written beside the
target as ``.<name>.<random>.tmp``, synced, then moved into place with ``os.replace``. A write that
fails for lack of space or rights raises an ``OSError`` naming the target.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

from .errors import InputError, disk_error

__all__ = ["atomic_write", "atomic_folder", "remove_stale_temp_files"]

logger = logging.getLogger("alphaclip_core.checkpoints")   # the logger these functions always used
PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    return f".{name}."


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the file into place atomically (no half-written ``path``).

    The temporary file sits next to ``path`` as ``.<name>.<random>.tmp`` and is removed on any error;
    the final file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask).
    A write that fails for lack of space or rights raises ``OSError`` (ENOSPC, EROFS, ...) naming
    ``path``, whatever library did the writing.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with _disk_errors_named(path):
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _temp_beside(path: Path, folder: bool = False) -> str:
    """A new temporary file (or folder) next to ``path``, ``.<name>.<random>.tmp``; errors name ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if folder:
            return tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
        os.close(fd)
        return tmp
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def _disk_errors_named(path: Path) -> Iterator[None]:
    """Re-raise a write that failed for lack of space or rights as an ``OSError`` naming ``path``."""
    try:
        yield
    except Exception as e:
        disk = disk_error(path, e)
        if disk is not None:
            raise disk from e
        raise


def remove_stale_temp_files(folder: PathLike, name: Optional[str] = None) -> List[Path]:
    """Delete the temporary files :func:`atomic_write` (and :func:`atomic_folder`) leave in ``folder``
    when a process is killed mid-write (``.<name>.<random>.tmp``; only those of ``name`` when given).

    Call it where only one writer works on ``folder`` (e.g. at the start of a run). Returns what it removed.
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f"{_temp_prefix(name) if name else '.'}*.tmp"):
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError as e:  # another process may own it; leave it
            logger.debug("could not remove %s: %s", p, e)
    if removed:
        logger.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling folder to fill; on success it replaces
    ``path`` (an existing folder there is removed only after the new one is in place), on any error it
    is deleted and ``path`` is left as it was.

    ``with atomic_folder("out/model") as tmp: write files into tmp``
    """
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    tmp = Path(_temp_beside(path, folder=True))
    try:
        with _disk_errors_named(path):
            yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(_temp_beside(path, folder=True))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
