"""The errors this package raises on purpose, and how the ``alphaclip`` command reports any error.

Two kinds, matching the command's exit codes:

- :class:`InputError` (exit code 2): the user gave something that cannot work: a file that is not
  what the argument expects, an unknown model name, a device this machine does not have, data with
  no usable sample. It is a ``ValueError``, so library callers catching ``ValueError`` keep working.
- :class:`RunError` (exit code 1): the input was fine but the run could not go on (a full disk, a
  read-only output folder, a training run whose batches keep coming out empty).

Messages name what they are about first: ``"<argument or file>: <what is wrong>"``, so the command
can print them as ``error: <message>`` on one line. :func:`describe_error` turns any exception
(ours, or a common one from the standard library, PIL or torch) into ``(exit code, message)``.
"""
from __future__ import annotations

import difflib
import errno
import os
import pickle
from typing import Iterable, List, Optional, Tuple

__all__ = ["AlphaClipError", "InputError", "RunError", "CheckpointError", "describe_error", "closest", "disk_error"]


class AlphaClipError(Exception):
    """Base of this package's deliberate errors; ``exit_code`` is what ``alphaclip`` exits with."""

    exit_code = 1


class InputError(AlphaClipError, ValueError):
    """Bad input (a file, a flag, a value): the message says which and what was expected. Exit code 2."""

    exit_code = 2


class RunError(AlphaClipError, RuntimeError):
    """The input was fine but the work could not go on (disk, device, data that ran dry). Exit code 1."""

    exit_code = 1


class CheckpointError(InputError):
    """A checkpoint file is unreadable, of an unexpected format, or does not fit the model
    (a ``ValueError``; the ``alphaclip`` command exits with code 2)."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> List[str]:
    """Up to ``n`` entries of ``choices`` that look most like ``name`` (case-insensitive)."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)
    return [lower[h] for h in hits]


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is larger than this system allows",
}


def disk_error(path: "os.PathLike[str] | str", cause: BaseException) -> Optional[OSError]:
    """An ``OSError`` naming ``path`` when ``cause`` is a failed write for lack of space or rights.

    torch and safetensors do not raise ``OSError`` when a write fails (torch says ``unexpected pos``,
    safetensors ``os error 28``); this recognises them by errno, by message and, for torch's
    message-less failure, by the free space left next to ``path``. Returns None for other errors.
    """
    code = cause.errno if isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS else None
    text = str(cause)
    if code is None:
        for num, words in ((errno.ENOSPC, ("No space left", "os error 28")),
                           (errno.EDQUOT, ("quota exceeded", "os error 122")),
                           (errno.EROFS, ("Read-only file system", "os error 30"))):
            if any(w in text for w in words):
                code = num
                break
    if code is None and ("unexpected pos" in text or "file write failed" in text):
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".")
            if st.f_bavail * st.f_frsize < 16 * 2**20:
                code = errno.ENOSPC
        except OSError:
            pass
    if code is None:
        return None
    return OSError(code, _DISK_ERRNOS[code], os.fspath(path))


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def _dataloader_original(text: str) -> str:
    """A DataLoader worker's re-raised error carries the worker traceback: keep its last line."""
    if "Original Traceback" in text:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else text
        return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return text


def describe_error(e: BaseException) -> Tuple[int, str]:
    """``(exit code, message)`` for an error that reached the command line: 2 for bad input, 1 otherwise.

    The message has no ``error:`` prefix and may span lines only where ours do (a suggested command).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, AlphaClipError):
        return e.exit_code, _dataloader_original(str(e))
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, Image.DecompressionBombError):
        return 2, (f"{_first_line(str(e))}; to open images this large set ALPHACLIP_MAX_IMAGE_PIXELS to a "
                   "larger pixel count (0 = no limit) if you trust the file")
    if isinstance(e, UnidentifiedImageError):
        return 2, f"{_first_line(str(e))}: not an image file PIL can read"
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        if e.filename is None:  # ours: the message already names the argument
            return 2, str(e)
        what = {FileNotFoundError: "no such file or folder", IsADirectoryError: "is a folder, expected a file",
                NotADirectoryError: "a part of the path is not a folder"}[type(e)]
        return 2, f"{e.filename}: {what}"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        if e.errno in _DISK_ERRNOS:
            return 1, f"{where}{_DISK_ERRNOS[e.errno]}"
        return 1, f"{where}{e.strerror or _first_line(str(e)) or type(e).__name__}"
    if isinstance(e, pickle.UnpicklingError):
        return 2, _first_line(str(e))
    if isinstance(e, (ValueError, TypeError)):
        return 2, _dataloader_original(str(e)) or type(e).__name__
    text = _dataloader_original(str(e))
    low = text.lower()
    if isinstance(e, (RuntimeError, AssertionError)) and any(
            k in low for k in ("no nvidia driver", "no cuda gpus", "not compiled with cuda", "cuda driver",
                               "invalid device ordinal", "not linked with support for")):
        return 2, f"--device: {_first_line(text)}; this machine cannot run that device (try --device cpu)"
    disk = disk_error("", e)
    if disk is not None:
        return 1, str(disk.strerror)
    return 1, f"{type(e).__name__}: {_first_line(text) or 'no message'} (an unexpected error: run again with --debug for " \
              "the traceback and report it)"
