"""The RGBA region-text shard format: the one schema the data preparation writes and training reads.

A shard is a webdataset-style tar: for each sample ``<key>.jpg`` (the image) and ``<key>.json``
(its record). A record (version 1)::

    {
      "key": "000123",                      # unique within the shard, no dots or slashes
      "width": 640, "height": 480,          # the image's size in pixels
      "caption": "a dog on a sofa",          # whole-image caption ("" if none)
      "regions": [                           # zero or more regions
        {"phrase": "a brown dog",            # the region's text
         "box": [x0, y0, x1, y1],            # xyxy pixels, 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height
         "mask": {"size": [480, 640], "counts": "..."} | null,   # COCO compressed RLE, or null (box only)
         "score": 0.93,                      # optional: the producer's confidence
         "source": "sam-vit_h"}              # optional: what made the mask
      ],
      "meta": {...}                          # optional, free-form (source dataset, class id, ...)
    }

Shards are written to a temporary name and renamed when complete, so a shard that exists is whole.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from PIL import Image

from alphaclip_core.alpha import rle_decode, to_8bit

__all__ = ["SCHEMA_VERSION", "validate_record", "ShardWriter", "iter_shard", "iter_webdataset", "decode_image", "Sample"]

SCHEMA_VERSION = 1
Sample = Tuple[str, bytes, Dict[str, Any]]  # (key, image bytes, record)


def validate_record(record: Dict[str, Any], decode_masks: bool = True) -> List[str]:
    """Problems with a record (empty list = valid). Decodes every mask when ``decode_masks``."""
    problems: List[str] = []
    for field, typ in (("key", str), ("width", int), ("height", int), ("caption", str), ("regions", list)):
        if not isinstance(record.get(field), typ):
            problems.append(f"field '{field}' missing or not {typ.__name__}")
    if problems:
        return problems
    key, w, h = record["key"], record["width"], record["height"]
    if not key or "." in key or "/" in key:
        problems.append(f"key {key!r} must be non-empty without '.' or '/'")
    if w <= 0 or h <= 0:
        problems.append(f"image size {w}x{h} is not positive")
    for i, r in enumerate(record["regions"]):
        where = f"region {i}"
        if not isinstance(r, dict):
            problems.append(f"{where}: not an object")
            continue
        if not isinstance(r.get("phrase"), str) or not r["phrase"].strip():
            problems.append(f"{where}: 'phrase' missing or empty")
        box = r.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            problems.append(f"{where}: 'box' must be [x0, y0, x1, y1]")
        elif not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
            problems.append(f"{where}: box {box} is degenerate or outside the {w}x{h} image")
        mask = r.get("mask")
        if mask is not None:
            if not isinstance(mask, dict) or list(mask.get("size", [])) != [h, w]:
                problems.append(f"{where}: mask size {mask.get('size') if isinstance(mask, dict) else mask} "
                                f"!= image [{h}, {w}]")
            elif decode_masks:
                try:
                    if not rle_decode(mask).any():
                        problems.append(f"{where}: mask is empty")
                except ValueError as e:
                    problems.append(f"{where}: mask does not decode: {e}")
    return problems


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (so a truncated file fails here, not later) to an RGB PIL image.

    Raises ``ValueError`` for bytes PIL cannot decode. EXIF orientation is NOT applied: masks and boxes
    refer to the stored pixel grid, which is what every reader of the shards decodes.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_8bit(im)  # 16-bit images scaled to 8 bits (PIL's convert("RGB") would turn them white)
    except Exception as e:  # PIL raises many types for bad data
        raise ValueError(f"image bytes do not decode ({type(e).__name__}: {e})") from None


class ShardWriter:
    """Write samples to one tar shard; the file appears under its final name only on :meth:`close`.

    Use as a context manager. On an exception inside the ``with`` block the partial shard is removed.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._tar: Optional[tarfile.TarFile] = tarfile.open(self._tmp, "w")
        self.count = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, image_bytes: bytes, record: Dict[str, Any], ext: str = "jpg") -> None:
        """Add one sample: encoded image bytes (``ext``: jpg or png) and its record (validated)."""
        if self._tar is None:
            raise ValueError("ShardWriter: write after close")
        problems = validate_record(record, decode_masks=False)
        if problems:
            raise ValueError(f"record: invalid ({'; '.join(problems[:3])})")
        self._add(f"{record['key']}.{ext}", image_bytes)
        self._add(f"{record['key']}.json", json.dumps(record, separators=(",", ":")).encode())
        self.count += 1

    def close(self) -> Path:
        """Finish the shard and move it into place atomically."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_webdataset(path: Union[str, os.PathLike]) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Stream a webdataset/img2dataset tar: ``(key, {ext: bytes})`` per sample, in file order.

    The key is a member's file name up to its first dot (``000123.jpg`` -> ``000123``); consecutive
    members with one key form one sample. Memory holds one sample at a time. A truncated or corrupt
    tar raises ``tarfile.TarError`` after the samples before the damage were yielded.
    """
    key: Optional[str] = None
    parts: Dict[str, bytes] = {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = Path(member.name).name.partition(".")
            if k != key and key is not None:
                yield key, parts          # the previous sample is complete before this member is read
                parts = {}
            key = k
            parts[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, parts


_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def iter_shard(path: Union[str, os.PathLike]) -> Iterator[Sample]:
    """Yield ``(key, image_bytes, record)`` for each complete sample of a shard, in order (streaming).

    Image members may be ``.jpg``, ``.jpeg``, ``.png`` or ``.webp``; a sample without an image or
    without a record is skipped. A record that is not JSON raises ``ValueError`` naming the member.
    """
    for key, parts in iter_webdataset(path):
        image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
        if image is None or "json" not in parts:
            continue
        try:
            record = json.loads(parts["json"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: member {key}.json is not valid JSON: {e}") from None
        yield key, image, record
