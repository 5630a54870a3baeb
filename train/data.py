"""RGBA region-text training data: webdataset shards or a JSONL file + image folder.

A *record* is one image with its caption and regions (the layout of :mod:`alphaclip_train.schema`).
A *sample* is one region of a record with its phrase; with probability ``whole_image_ratio``
(r_s, default 0.1) a region sample is replaced by the whole image, an all-ones alpha and the image's
caption (at most one whole-image sample per record, so r_s = 1 gives one whole-scene sample per
image). A record without regions gives one whole-image sample when it has a caption.

Sources:
  * ``*.tar``: shards written by :class:`alphaclip_train.schema.ShardWriter` (or any webdataset tar
    with ``<key>.jpg`` + ``<key>.json`` members holding such records);
  * ``*.jsonl``: one record per line with an extra ``"image"`` field, the image path relative to
    the JSONL file's folder (or absolute).
  A directory stands for every ``*.tar`` / ``*.jsonl`` in it; a string may contain ``{000..009}``
  brace ranges or glob patterns.

Order and exact resume. The per-rank sample stream is a pure function of ``(sources, seed, rank,
world_size)``: epoch ``e`` visits the sources in a seeded permutation (each rank takes every
``world_size``-th source when there are at least ``world_size`` sources, else every
``world_size``-th sample), passes descriptors through a seeded shuffle buffer, and epochs follow
each other forever (training is counted in steps). Batch ``b`` is descriptors ``[b*B, (b+1)*B)``
of that stream, so a run restarted at batch ``c`` sees exactly the batches an uninterrupted run
would have seen. Skipping to ``c`` reads records but decodes no image. With ``num_workers = W``
DataLoader workers, worker ``w`` builds batches ``c+w, c+w+W, ...``; the DataLoader's round robin
then returns them in order.

Corrupt samples (unreadable image, invalid record, undecodable mask, a region the transform cuts
off) are skipped and counted (``batch["skipped"]``); they never stop a run. A batch is therefore
at most B samples; the loss handles uneven batches.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from alphaclip_core.alpha import PairedTransform, boxes_to_masks, normalize_alpha, rle_decode

from .schema import decode_image, iter_shard, validate_record

__all__ = ["Descriptor", "expand_sources", "iter_records", "RegionBatches", "make_loader", "collate_stats"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass
class Descriptor:
    """One sample before decoding: the image bytes (or path), its record and which region."""

    image: Union[bytes, Path]
    record: Dict[str, Any]
    region: int  # index into record["regions"], or -1 for the whole image
    text: str


# ------------------------------------------------------------------------------------------------ sources
def _brace_expand(pattern: str) -> List[str]:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    out: List[str] = []
    for i in range(lo, hi + 1):
        out += _brace_expand(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


def expand_sources(sources: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Resolve data sources to a sorted-within-argument list of ``.tar`` / ``.jsonl`` files.

    Raises FileNotFoundError naming the source when nothing matches, ValueError for another suffix.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: List[Path] = []
    for src in sources:
        src = str(src)
        found: List[Path] = []
        for pat in _brace_expand(src):
            p = Path(pat)
            if p.is_dir():
                found += sorted(q for q in p.iterdir() if q.suffix in (".tar", ".jsonl"))
            elif any(c in pat for c in "*?["):
                found += sorted(Path(q) for q in glob.glob(pat))
            elif p.is_file():
                found.append(p)
        if not found:
            raise FileNotFoundError(f"data: no .tar shard or .jsonl file found for {src!r}")
        for f in found:
            if f.suffix not in (".tar", ".jsonl"):
                raise ValueError(f"data: {f} is neither a .tar shard nor a .jsonl file")
        files += found
    return files


def iter_records(path: Path) -> Iterator[Tuple[Union[bytes, Path, None], Any]]:
    """Yield ``(image bytes | image path, record)`` of one source; a bad line yields ``(None, reason)``."""
    if path.suffix == ".tar":
        try:
            for _key, image_bytes, record in iter_shard(path):
                yield image_bytes, record
        except (OSError, ValueError, EOFError, tarfile.TarError) as e:  # truncated / corrupt tar, bad JSON member
            yield None, f"{path}: {e}"
        return
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield None, f"{path}:{n}: not JSON ({e})"
                continue
            image = record.get("image") if isinstance(record, dict) else None
            if not isinstance(image, str):
                yield None, f"{path}:{n}: missing 'image' path"
                continue
            yield (path.parent / image if not os.path.isabs(image) else Path(image)), record


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# ------------------------------------------------------------------------------------------------ the dataset
class RegionBatches(torch.utils.data.IterableDataset):
    """Deterministic, resumable batches of (image, alpha, text) region samples.

    Each item is a dict: ``image [n, 3, S, S]`` float32 CLIP-normalised, ``alpha [n, 1, S, S]``
    float32 normalised (+1.9231 region, -1.9231 background), ``text [n, context]`` int64 tokens,
    ``whole [n]`` bool (whole-image samples), ``index`` (the batch number in the rank's stream),
    ``skipped`` (corrupt samples dropped from this batch) and ``reasons`` (their first few reasons);
    ``n <= batch_size``.

    Args:
        sources: shard / JSONL files (see :func:`expand_sources`).
        tokenizer: ``tokenizer(list_of_str) -> LongTensor [n, context]`` (open_clip's).
        batch_size: samples per batch on this rank.
        image_size: S, the model's input size.
        whole_image_ratio: r_s in [0, 1].
        mode: the paired transform's geometry (``crop``, ``pad``, ``squash``).
        mean, std: image normalisation (CLIP's by default).
        seed: the data seed.
        rank, world_size: this process's share of the data.
        shuffle_buffer: descriptors held for shuffling (0 or 1 = no shuffling).
        start_batch: the first batch to produce (resume position).
    """

    def __init__(self, sources: Sequence[PathLike], tokenizer: Callable, batch_size: int, image_size: int, *,
                 whole_image_ratio: float = 0.1, mode: str = "crop", mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, start_batch: int = 0) -> None:
        super().__init__()
        self.sources = expand_sources(sources)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0.0 <= whole_image_ratio <= 1.0:
            raise ValueError(f"whole_image_ratio: expected a fraction in [0, 1], got {whole_image_ratio}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        kw = {}
        if mean is not None:
            kw["mean"] = mean
        if std is not None:
            kw["std"] = std
        self.transform = PairedTransform(image_size, mode, **kw)
        self.tokenizer = tokenizer
        self.batch_size, self.whole_image_ratio = batch_size, whole_image_ratio
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch

    # --- the descriptor stream ---------------------------------------------------------------------
    def _record_samples(self, image, record, rng: random.Random) -> Tuple[List[Descriptor], Optional[str]]:
        if image is None:
            return [], str(record)
        if not isinstance(record, dict):
            return [], "record is not a JSON object"
        problems = validate_record(record, decode_masks=False)
        if problems:
            return [], f"record {record.get('key')!r}: {problems[0]}"
        caption = record["caption"].strip()
        out: List[Descriptor] = []
        whole_done = False
        regions = record["regions"]
        if not regions:
            return ([Descriptor(image, record, -1, caption)] if caption else []), None
        for i, region in enumerate(regions):
            if caption and rng.random() < self.whole_image_ratio:
                if not whole_done:
                    out.append(Descriptor(image, record, -1, caption))
                    whole_done = True
                continue
            out.append(Descriptor(image, record, i, region["phrase"].strip()))
        return out, None

    def _epoch_descriptors(self, epoch: int) -> Iterator[Union[Descriptor, str]]:
        order = list(range(len(self.sources)))
        random.Random(_seed(self.seed, epoch, 1)).shuffle(order)
        split_sources = len(order) >= self.world_size
        mine = order[self.rank::self.world_size] if split_sources else order
        counter = 0
        for src in mine:
            for n, (image, record) in enumerate(iter_records(self.sources[src])):
                if not split_sources:
                    counter += 1
                    if (counter - 1) % self.world_size != self.rank:
                        continue
                rng = random.Random(_seed(self.seed, epoch, src, n, 2))
                samples, problem = self._record_samples(image, record, rng)
                if problem is not None:
                    yield problem
                yield from samples

    def _stream(self) -> Iterator[Union[Descriptor, str]]:
        """The rank's infinite stream; strings are problems (count as skipped samples)."""
        epoch = 0
        while True:
            rng = random.Random(_seed(self.seed, epoch, self.rank, 3))
            buf: List[Descriptor] = []
            any_sample = False
            for d in self._epoch_descriptors(epoch):
                if isinstance(d, str):
                    yield d
                    continue
                any_sample = True
                if self.shuffle_buffer <= 1:
                    yield d
                    continue
                if len(buf) < self.shuffle_buffer:
                    buf.append(d)
                    continue
                j = rng.randrange(len(buf))
                buf[j], d = d, buf[j]
                yield d
            rng.shuffle(buf)
            yield from buf
            if not any_sample:
                raise ValueError(f"data: rank {self.rank} of {self.world_size} found no usable sample in "
                                 f"{len(self.sources)} source(s) (every record invalid or empty?)")
            epoch += 1

    def batch_descriptors(self) -> Iterator[Tuple[int, List[Descriptor], List[str]]]:
        """``(batch index, descriptors, problems)`` from batch 0 on; problems count toward the size."""
        b, items, problems = 0, [], []
        for d in self._stream():
            if isinstance(d, str):
                problems.append(d)
            else:
                items.append(d)
            if len(items) + len(problems) == self.batch_size:
                yield b, items, problems
                b, items, problems = b + 1, [], []

    # --- decoding ----------------------------------------------------------------------------------
    def _load(self, d: Descriptor) -> Tuple[torch.Tensor, torch.Tensor]:
        data = d.image if isinstance(d.image, bytes) else Path(d.image).read_bytes()
        img = decode_image(data)
        w, h = d.record["width"], d.record["height"]
        if img.size != (w, h):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]} but the record says {w}x{h}")
        if d.region < 0:
            mask = torch.ones(1, h, w)
        else:
            region = d.record["regions"][d.region]
            if region.get("mask") is not None:
                mask = torch.from_numpy(rle_decode(region["mask"]).astype(np.float32))[None]
                if not mask.any():
                    raise ValueError("mask is empty")
            else:
                mask = boxes_to_masks(region["box"], h, w)
        arr = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        t = self.transform
        if h == w == t.size and t.mode in ("crop", "squash"):
            # already the model's size: the paired transform's geometry is the identity, skip its overhead
            # (same numbers, tested against PairedTransform in tests/test_train_data.py)
            mean = torch.tensor(t.mean).view(3, 1, 1)
            std = torch.tensor(t.std).view(3, 1, 1)
            return (arr.float() / 255.0 - mean) / std, normalize_alpha(mask)
        pix, alpha = t(arr, mask)
        return pix[0], alpha[0]

    def make_batch(self, index: int, items: List[Descriptor], problems: List[str]) -> Dict[str, Any]:
        """Decode one batch's descriptors (skipping and counting the corrupt ones)."""
        images, alphas, texts, whole = [], [], [], []
        problems = list(problems)
        for d in items:
            try:
                pix, alpha = self._load(d)
            except Exception as e:  # noqa: BLE001 - any decoding problem skips the sample
                problems.append(f"sample {d.record.get('key')!r} region {d.region}: {type(e).__name__}: {e}")
                continue
            images.append(pix)
            alphas.append(alpha)
            texts.append(d.text)
            whole.append(d.region < 0)
        s = self.transform.size
        return {
            "index": index,
            "image": torch.stack(images) if images else torch.zeros(0, 3, s, s),
            "alpha": torch.stack(alphas) if alphas else torch.zeros(0, 1, s, s),
            "text": self.tokenizer(texts) if texts else torch.zeros(0, 1, dtype=torch.long),
            "whole": torch.tensor(whole, dtype=torch.bool),
            "skipped": len(problems),
            "reasons": problems[:3],
        }

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for b, items, problems in self.batch_descriptors():
            if b < self.start_batch or (b - self.start_batch) % nw != wid:
                continue
            yield self.make_batch(b, items, problems)


def make_loader(dataset: RegionBatches, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ready-made batches (``batch_size=None``), in batch order."""
    kw: Dict[str, Any] = {}
    if num_workers > 0:
        kw = dict(persistent_workers=False, prefetch_factor=2)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, **kw)


def collate_stats(batch: Dict[str, Any]) -> Dict[str, int]:
    """Sample counts of a batch: ``samples``, ``whole_image``, ``skipped``."""
    return {"samples": int(batch["image"].shape[0]), "whole_image": int(batch["whole"].sum()),
            "skipped": int(batch["skipped"])}
