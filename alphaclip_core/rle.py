"""COCO run-length encoding (RLE) of binary masks, written by hand so the core needs no pycocotools.

:func:`rle_encode` gives the exact ``counts`` string ``pycocotools.mask.encode`` gives (tested
against it); :func:`rle_decode` reads compressed strings and uncompressed run lists, and refuses
corrupt input with a ValueError that says what is wrong. The shard format
(``alphaclip_train.schema``) stores region masks this way; :func:`alphaclip_core.alpha.rle_to_masks`
turns RLEs into the float masks the model's alpha is made from.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["rle_encode", "rle_decode"]


def rle_encode(mask: Any) -> dict:
    """Encode an [H, W] binary mask (numpy/torch, bool or 0/1) as COCO compressed RLE.

    Returns ``{"size": [H, W], "counts": str}``; ``counts`` is byte-identical to
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()``
    (column-major runs starting with zeros, 5-bit LEB128-like ascii with delta
    coding of counts[i] - counts[i-2] for i > 2, chars offset by 48).
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask for rle_encode must be [H, W], got shape {m.shape}")
    flat = (m != 0).ravel(order="F")
    if flat.size == 0:
        counts = [0]
    else:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            counts = [0] + counts
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": "".join(chars)}


def _rle_string_to_counts(s: str | bytes) -> list[int]:
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError as e:
            raise ValueError(f"rle counts string has a non-ascii character at position {e.start}") from None
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("rle counts string is truncated (last character has the continuation bit)")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"rle counts string has invalid character {chr(s[p])!r} at position {p} "
                                 "(valid: '0'..'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE dict to a uint8 [H, W] array of 0/1.

    rle: ``{"size": [H, W], "counts": ...}`` with counts a compressed string
    (str or bytes) or an uncompressed list of run lengths (column-major,
    starting with zeros).  Corrupt input (missing keys, bad size, invalid
    characters, negative runs, runs not summing to H*W) raises ValueError.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        got = sorted(rle) if isinstance(rle, dict) else type(rle).__name__
        raise ValueError(f"rle must be a dict with keys 'size' and 'counts', got {got}")
    size = rle["size"]
    try:
        h, w = (int(v) for v in size)
        assert h >= 0 and w >= 0 and all(float(v) == int(v) for v in size)
    except Exception:
        raise ValueError(f"rle 'size' must be [H, W] with non-negative integers, got {size!r}") from None
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        counts = _rle_string_to_counts(raw)
    else:
        try:
            arr = np.asarray(raw)
            assert arr.ndim == 1 and (arr.size == 0 or arr.dtype.kind in "iu")
            counts = arr.astype(np.int64).tolist()
        except Exception:
            raise ValueError("rle 'counts' must be a compressed string/bytes or a list of integer run lengths, "
                             f"got {type(raw).__name__}") from None
    if any(c < 0 for c in counts):
        raise ValueError("rle counts contain a negative run length")
    if sum(counts) != h * w:
        raise ValueError(f"rle counts sum to {sum(counts)} but size {h}x{w} needs {h * w} pixels")
    flat = np.repeat(np.arange(len(counts), dtype=np.uint8) % 2, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)
