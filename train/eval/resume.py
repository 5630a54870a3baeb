"""Resumable progress files that remember the settings of the run that wrote them.

A long evaluation writes one JSON line per finished item, so an interrupted run continues where it
stopped. A progress file is only valid for the SAME run: its first line records every setting that
changes results (weights, geometry, methods, class names, templates, precision ...). A rerun with
other settings is refused with a message that names what differs, or, when asked (``restart=True``,
``--restart`` on the command line), the old file is moved aside to ``<name>.old`` and the run starts
over. Used by ``alphaclip eval imagenet-s``, ``alphaclip eval rec`` and ``alphaclip pseudolabel``.

Settings are plain JSON. Two helpers turn the things that define a run into comparable values:
:func:`module_digest` (sha256 of a model's parameters and buffers, names, dtypes and shapes: equal
weights give equal digests, whatever file they came from) and :func:`approx` (float values that are
recomputed on every run, e.g. a projection of text classifier weights, compared with a tolerance
instead of bit for bit, so that a rerun on another thread count is not refused).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np
import torch

__all__ = ["SettingsMismatch", "module_digest", "tensor_digest", "file_digest", "json_digest", "approx",
           "classifier_summary", "settings_diff", "ResumeLog"]

logger = logging.getLogger(__name__)

_APPROX = "approx"


class SettingsMismatch(ValueError):
    """A progress file (or shard) was written by a run with other settings."""


def _hash_tensor(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def module_digest(module: Optional[torch.nn.Module], skip: Optional[str] = None) -> Optional[str]:
    """sha256 (hex, 16 chars) of a module's state dict: names, dtypes, shapes and bytes. None for None.

    ``skip``: leave out the entries whose name starts with this prefix (e.g. ``"visual."`` to digest
    only a CLIP's text side)."""
    if module is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip is None or not name.startswith(skip):
            _hash_tensor(h, name, t)
    return h.hexdigest()[:16]


def tensor_digest(t: Optional[torch.Tensor]) -> Optional[str]:
    """sha256 (hex, 16 chars) of one tensor's dtype, shape and bytes (for tensors read from files)."""
    if t is None:
        return None
    h = hashlib.sha256()
    _hash_tensor(h, "", t)
    return h.hexdigest()[:16]


def file_digest(path: Optional[Union[str, os.PathLike]]) -> Optional[str]:
    """sha256 (hex, 16 chars) of a file's bytes. None for None."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def json_digest(obj: Any) -> str:
    """sha256 (hex, 16 chars) of an object's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def approx(values: Any, atol: float = 1e-3) -> Dict[str, Any]:
    """A settings value compared with an absolute tolerance ``atol`` instead of exactly (nested float lists)."""
    return {_APPROX: np.round(np.asarray(values, dtype=np.float64), 6).tolist(), "atol": float(atol)}


def classifier_summary(weights: Optional[torch.Tensor], dims: int = 8) -> Optional[Dict[str, Any]]:
    """A tolerance-compared fingerprint of ``[C, D]`` classifier weights: each row projected on ``dims``
    fixed random directions (seed 0).

    Text features are recomputed on every run and may differ in the last bits between thread counts or
    devices; two different class names differ by ~1e-2 per projection, rounding noise by ~1e-6, so
    ``atol=1e-3`` tells them apart.
    """
    if weights is None:
        return None
    w = weights.detach().float().cpu()
    if w.dim() != 2:
        raise ValueError(f"weights: expected [C, D] classifier weights, got {list(w.shape)}")
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(w.shape[1], dims, generator=g), dim=0)
    return approx(w @ directions, atol=1e-3)


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and _APPROX in a and _APPROX in b:
        x, y = np.asarray(a[_APPROX], dtype=np.float64), np.asarray(b[_APPROX], dtype=np.float64)
        return x.shape == y.shape and bool(np.allclose(x, y, rtol=0, atol=max(a["atol"], b["atol"])))
    return a == b


def _show(v: Any) -> str:
    if isinstance(v, dict) and _APPROX in v:
        return "<computed values>"
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def settings_diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """``["key: old -> new", ...]`` for every setting that differs (nested dicts are walked)."""
    old, new = _canonical(old), _canonical(new)
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and _APPROX not in a and _APPROX not in b:
            out.extend(settings_diff(a, b, name + "."))
        elif not _equal(a, b):
            out.append(f"{name}: {_show(a)} -> {_show(b)}")
    return out


class ResumeLog:
    """A JSONL progress file: the first line holds the run's settings, then one line per finished item.

    Args:
        path: the progress file (created with its folder when absent).
        settings: JSON-able dict of everything that changes results.
        restart: when the file holds another run's settings (or none), move it to ``<path>.old`` and
            start over instead of refusing.
    Raises:
        SettingsMismatch: the file was written by a run with other settings (the message lists them),
            or by an older version that did not record settings; and ``restart`` is False.

    ``records`` holds the finished items read back (a half-written last line, left by a crash, is
    dropped). ``append(record)`` writes one line and flushes it.
    """

    def __init__(self, path: Union[str, os.PathLike], settings: Dict[str, Any], restart: bool = False) -> None:
        self.path = Path(path)
        self.settings = _canonical(settings)
        self.records: List[Dict[str, Any]] = []
        if self.path.is_file():
            problem = self._read()
            if problem is not None:
                if not restart:
                    raise SettingsMismatch(
                        f"progress file {self.path} {problem}; its results are not this run's. Rerun with "
                        "--restart (restart=True) to move it aside and start over, or write to another --out / --state")
                old = self.path.with_name(self.path.name + ".old")
                os.replace(self.path, old)
                logger.warning("restart: %s %s; moved it to %s and starting over", self.path, problem, old)
                self.records = []
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w") as f:
                f.write(json.dumps({"settings": self.settings}, sort_keys=True) + "\n")
        elif self.records:
            logger.info("resuming: %d items already done in %s (same settings)", len(self.records), self.path)
        self._fh = open(self.path, "a")

    def _read(self) -> Optional[str]:
        """Read the file; return why it cannot be resumed, or None."""
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # a crash in the middle of the last write: drop that line
            logger.warning("%s: dropping a half-written last line", self.path)
            text = text[:text.rfind("\n") + 1]
            with open(self.path, "r+") as f:
                f.truncate(len(text.encode()))
        lines = text.splitlines()
        if not lines:
            return None
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or set(head) != {"settings"}:
            return "was written without its settings (by an older version, or it is not a progress file)"
        diff = settings_diff(head["settings"], self.settings)
        if diff:
            return "was written by a run with other settings (" + "; ".join(diff) + ")"
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"progress file {self.path}: line {n} is not JSON; delete the file to start "
                                 "over") from None
        return None

    def append(self, record: Dict[str, Any]) -> None:
        """Write one finished item (a JSON-able dict) and flush it to disk."""
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def extend(self, records: Iterable[Dict[str, Any]]) -> None:
        for r in records:
            self._fh.write(json.dumps(r) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResumeLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
