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
import posixpath
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from PIL import Image

from alphaclip_core.alpha import rle_decode, to_8bit

from . import sources

__all__ = ["SCHEMA_VERSION", "validate_record", "ShardWriter", "iter_shard", "iter_webdataset", "iter_records",
           "parse_sample", "describe_error", "decode_image", "Sample", "IMAGE_EXTS"]

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
    On close the shard's counts (:class:`alphaclip_train.index.ShardCounts`) are written beside it as
    ``<stem>.index.json`` (after the shard, so a sidecar never describes a shard that is not there),
    which lets training resume without reading the shard; ``index=False`` skips that.
    """

    def __init__(self, path: Union[str, os.PathLike], index: bool = True) -> None:
        from .index import ShardCounts

        self.path = Path(path)
        self.index = index
        self.counts = ShardCounts()
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
        self.counts.add(record)

    def close(self) -> Path:
        """Finish the shard and move it into place atomically."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            if self.index:
                from .index import write_sidecar

                self.counts.bytes = self.path.stat().st_size
                write_sidecar(str(self.path), self.counts)
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


def describe_error(e: BaseException) -> str:
    """``"Type: message"`` of a read error, without the stream object webdataset appends (`` @ <...>``)."""
    text = re.sub(r" @ <[^>]*>", "", str(e))
    return f"{type(e).__name__}: {text}"


def _split_member(name: str) -> Tuple[Optional[str], Optional[str]]:
    """A member's sample key and extension: its file name split at the first dot (``a/000123.seg.png`` ->
    ``("000123", "seg.png")``); webdataset's default keeps the folder in the key, the schema's keys have none."""
    base = posixpath.basename(name)
    key, dot, ext = base.partition(".")
    return (key, ext) if dot and key else (None, None)


def iter_webdataset(source: Union[str, os.PathLike]) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Stream a webdataset/img2dataset tar: ``(key, {ext: bytes})`` per sample, in file order.

    ``source`` is a local path or any source of :mod:`alphaclip_train.sources` (``https://``, ``s3://``,
    ``pipe:``...). The tar stream is parsed by webdataset (``tar_file_iterator`` + ``group_by_keys``);
    the key is a member's file name up to its first dot (``000123.jpg`` -> ``000123``), extensions are
    lower-cased, consecutive members with one key form one sample. Memory holds one sample at a time.
    A truncated or corrupt stream raises (``tarfile.TarError``, ``OSError``, ...) after the samples
    before the damage were yielded.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    src = os.fspath(source)
    damage: List[BaseException] = []

    def stop(e: BaseException) -> bool:  # a member that cannot be read ends the stream (the error is raised
        damage.append(e)                  # below), so the complete sample before it is still yielded
        return False

    with sources.open_source(src) as stream:
        files = ({**f, "__url__": src} for f in tar_file_iterator(stream, handler=stop))
        for sample in group_by_keys(files, keys=_split_member):
            key = sample["__key__"]
            yield key, {k: v for k, v in sample.items() if not k.startswith("__")}
    if damage:
        raise damage[0]


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def parse_sample(key: str, parts: Dict[str, bytes]) -> Optional[Tuple[bytes, Union[Dict[str, Any], str]]]:
    """The image bytes and record of one tar sample: ``(image, record)``, ``(image, problem)`` when the
    record is not a JSON object, or None when the sample has no image or no record (not a sample)."""
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    if image is None or "json" not in parts:
        return None
    try:
        record = json.loads(parts["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return image, f"member {key}.json is not valid JSON: {e}"
    if not isinstance(record, dict):
        return image, f"member {key}.json is not a JSON object"
    return image, record


def iter_shard(path: Union[str, os.PathLike]) -> Iterator[Sample]:
    """Yield ``(key, image_bytes, record)`` for each complete sample of a shard, in order (streaming).

    Image members may be ``.jpg``, ``.jpeg``, ``.png`` or ``.webp``; a sample without an image or
    without a record is skipped. A record that is not a JSON object raises ``ValueError`` naming the
    member. ``path`` may be any source (see :func:`iter_webdataset`).
    """
    for key, parts in iter_webdataset(path):
        parsed = parse_sample(key, parts)
        if parsed is None:
            continue
        image, record = parsed
        if isinstance(record, str):
            raise ValueError(f"{os.fspath(path)}: {record}")
        yield key, image, record


def iter_records(source: Union[str, os.PathLike]) -> Iterator[Tuple[Union[bytes, str, None], Any]]:
    """Every record of one source, in order: ``(image, record)`` where ``image`` is the image bytes
    (tar) or the image's location (JSONL: its ``"image"`` field, relative to the JSONL file's folder
    unless absolute or a URL), and ``record`` the parsed record; a record that cannot be used yields
    ``(None, reason)``. Read errors (missing file, HTTP 404, truncated stream) are raised after the
    records before them.
    """
    src = os.fspath(source)
    if sources.source_kind(src) == "tar":
        for key, parts in iter_webdataset(src):
            parsed = parse_sample(key, parts)
            if parsed is None:
                continue
            image, record = parsed
            yield (None, f"{src}: {record}") if isinstance(record, str) else (image, record)
        return
    folder = sources.source_folder(src) or ""
    with sources.open_source(src) as raw:
        for n, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield None, f"{src}:{n}: not JSON ({e})"
                continue
            image = record.get("image") if isinstance(record, dict) else None
            if not isinstance(image, str):
                yield None, f"{src}:{n}: missing 'image' path"
                continue
            if not (os.path.isabs(image) or "://" in image):
                image = sources.join_location(folder, image)
            yield image, record
