"""RGBA region-text training data: webdataset shards or JSONL files, local or streamed from anywhere.

A *record* is one image with its caption and regions (the layout of :mod:`alphaclip_train.schema`).
A *sample* is one region of a record with its phrase. With probability ``whole_image_ratio`` (r_s,
default 0.1) the first region whose draw succeeds is replaced by the whole image, an all-ones alpha
and the record's caption (at most one whole-image sample per record; the region count stays the
same, so each shard's sample count is known from its index). r_s = 1 means whole images only: one
whole-image sample per captioned record. A record without regions gives one whole-image sample when
it has a caption; a record without a caption gives its regions.

Sources (:func:`alphaclip_train.sources.expand_sources`): ``.tar`` shards written by
:class:`alphaclip_train.schema.ShardWriter` (or any webdataset tar with ``<key>.jpg`` + ``<key>.json``
members holding such records) and ``.jsonl`` files (one record per line with an extra ``"image"``
field, relative to the file's folder); local paths, folders, globs, ``{000..099}`` brace ranges,
fsspec URLs (``https://``, ``s3://``, ``gs://``...) and open_clip's ``pipe:`` commands.

Order and exact resume. Every shard's sample count is known without reading it
(:mod:`alphaclip_train.index`), so the per-rank stream is a pure function of ``(sources, their
counts, seed, rank, world_size, shuffle_buffer, interleave, r_s)`` and any position in it is found by
arithmetic:

1. Epoch ``e`` orders the sources by a seeded permutation; their samples, concatenated, are cut into
   ``world_size`` contiguous ranges of equal size (+-1 sample): rank ``r`` takes samples
   ``[r*T/W, (r+1)*T/W)`` of the epoch's ``T``. Ranks are balanced however the shards divide (a shard
   cut by a range boundary is read by both ranks, each up to its part); with equal shards and
   ``T`` a multiple of ``W`` shards every rank reads whole shards only.
2. A rank's part is a list of shard segments; consecutive groups of ``interleave`` segments form
   *windows*. A window reads its segments side by side in a seeded random order (a shuffled
   schedule of the segments' samples) and passes them through a shuffle buffer of ``shuffle_buffer``
   samples that is emptied at the window's end.
3. Epochs follow each other forever (training is counted in steps); batch ``b`` is samples
   ``[b*B, (b+1)*B)`` of the rank's stream.

Resuming at batch ``c`` computes the window that holds sample ``c*B`` and opens only its shards and
the ones after it: the cost is at most one window's reading (records parsed, no image decoded), the
same early or late in an epoch. The batches after a resume equal an uninterrupted run's.

With ``num_workers = W`` DataLoader workers (:func:`make_loader`) the shards are read once, by a
thread of the main process, and the workers decode (image decode + paired transform + alpha) whole
batches in turn; the order does not depend on W.

Corrupt samples (unreadable image, invalid record, undecodable mask, a region the transform cuts
off) are skipped and counted (``batch["skipped"]``); they never stop a run. A shard that cannot be
read (missing file, HTTP 404, a truncated stream, a ``pipe:`` command that fails) gives its unread
samples as skipped ones, with the shard's location in a logged warning: the positions of every other
sample stay where they were. A batch is therefore at most B samples; the loss handles uneven batches.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from alphaclip_core.alpha import PairedTransform, boxes_to_masks, normalize_alpha, rle_decode

from . import sources as _sources
from .index import ShardCounts, load_counts
from .schema import decode_image, describe_error, iter_records, validate_record
from .sources import expand_sources

__all__ = ["Descriptor", "expand_sources", "iter_records", "RegionBatches", "make_loader", "collate_stats"]

logger = logging.getLogger(__name__)

#: a shard whose read fails (other than a missing file) is opened again this many times, waiting
#: RETRY_WAIT x attempt seconds before each
RETRIES = 2
RETRY_WAIT = 1.0

PathLike = Union[str, os.PathLike]
Segment = Tuple[int, int, int]  # (source index, first sample, end sample) within the source's samples


@dataclass
class Descriptor:
    """One sample before decoding: the image bytes (or its location), its record and which region."""

    image: Union[bytes, str]
    record: Dict[str, Any]
    region: int  # index into record["regions"], or -1 for the whole image
    text: str


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
        sources: shards / JSONL files, local or remote (see :func:`expand_sources`).
        tokenizer: ``tokenizer(list_of_str) -> LongTensor [n, context]`` (open_clip's).
        batch_size: samples per batch on this rank.
        image_size: S, the model's input size.
        whole_image_ratio: r_s in [0, 1].
        mode: the paired transform's geometry (``crop``, ``pad``, ``squash``).
        mean, std: image normalisation (CLIP's by default).
        seed: the data seed.
        rank, world_size: this process's share of the data.
        shuffle_buffer: samples held for shuffling within a window (0 or 1 = no shuffling).
        interleave: shard segments read side by side (a window); 1 = one shard at a time.
        start_batch: the first batch to produce (resume position).
        index: an index file (``index.json``) for sources whose folder has none (``pipe:`` commands).
        progress: show a progress bar while shards without an index are counted.
    """

    def __init__(self, sources: Sequence[PathLike], tokenizer: Callable, batch_size: int, image_size: int, *,
                 whole_image_ratio: float = 0.1, mode: str = "crop", mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, interleave: int = 4, start_batch: int = 0,
                 index: Optional[str] = None, progress: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0.0 <= whole_image_ratio <= 1.0:
            raise ValueError(f"whole_image_ratio: expected a fraction in [0, 1], got {whole_image_ratio}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if interleave < 1:
            raise ValueError(f"interleave: expected >= 1 shards read side by side, got {interleave}")
        if start_batch < 0:
            raise ValueError(f"start_batch: expected >= 0, got {start_batch}")
        kw = {}
        if mean is not None:
            kw["mean"] = mean
        if std is not None:
            kw["std"] = std
        self.transform = PairedTransform(image_size, mode, **kw)
        self.tokenizer = tokenizer
        self.batch_size, self.whole_image_ratio = batch_size, whole_image_ratio
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.interleave, self.start_batch = shuffle_buffer, interleave, start_batch
        self.sources: List[str] = expand_sources(sources)
        self.counts: List[ShardCounts] = load_counts(self.sources, index, progress=progress)
        self.whole_only = whole_image_ratio >= 1.0
        self.items: List[int] = [c.items(self.whole_only) for c in self.counts]
        total = sum(self.items)
        usable = total - sum(c.invalid for c in self.counts)
        if usable <= 0:
            raise ValueError(f"data: no usable sample in {len(self.sources)} source(s) (every record invalid "
                             f"or empty?)")
        self.epoch_start = total * rank // world_size
        self.epoch_items = total * (rank + 1) // world_size - self.epoch_start
        if self.epoch_items == 0:
            raise ValueError(f"data: {total} sample(s) per epoch cannot feed rank {rank} of {world_size}: "
                             f"expected at least world_size samples")

    # --- the plan: pure arithmetic on the counts ----------------------------------------------------
    def fingerprint(self) -> str:
        """A digest of everything that fixes the sample order (sources, counts, settings but the rank)."""
        h = hashlib.sha256()
        h.update(json.dumps([[_sources.source_name(s) for s in self.sources], self.items,
                             [self.seed, self.world_size, self.batch_size, self.whole_image_ratio,
                              self.shuffle_buffer, self.interleave]]).encode())
        return h.hexdigest()[:16]

    def epoch_segments(self, epoch: int) -> List[Segment]:
        """This rank's ``(source, first, end)`` segments of epoch ``epoch``, in reading order."""
        order = list(range(len(self.sources)))
        random.Random(_seed(self.seed, epoch, 1)).shuffle(order)
        lo, hi = self.epoch_start, self.epoch_start + self.epoch_items
        segs: List[Segment] = []
        pos = 0
        for src in order:
            n = self.items[src]
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                segs.append((src, a - pos, b - pos))
            pos += n
            if pos >= hi:
                break
        return segs

    def epoch_windows(self, epoch: int) -> List[List[Segment]]:
        """This rank's windows of epoch ``epoch`` (groups of ``interleave`` segments)."""
        segs = self.epoch_segments(epoch)
        return [segs[i:i + self.interleave] for i in range(0, len(segs), self.interleave)]

    def locate(self, item: int) -> Tuple[int, int, int]:
        """``(epoch, window, offset in the window)`` of sample ``item`` of this rank's stream."""
        epoch, off = divmod(item, self.epoch_items)
        for w, segs in enumerate(self.epoch_windows(epoch)):
            n = sum(b - a for _, a, b in segs)
            if off < n:
                return epoch, w, off
            off -= n
        raise AssertionError("unreachable: the windows of an epoch hold epoch_items samples")

    # --- the descriptor stream -----------------------------------------------------------------------
    def _record_samples(self, image, record, rng: random.Random) -> List[Union[Descriptor, str]]:
        """A record's samples: exactly :func:`alphaclip_train.index.record_items` of them."""
        if image is None:
            return [str(record)]
        if not isinstance(record, dict):
            return ["record is not a JSON object"]
        problems = validate_record(record, decode_masks=False)
        if problems:
            return [f"record {record.get('key')!r}: {problems[0]}"]
        caption = record["caption"].strip()
        regions = record["regions"]
        if caption and (self.whole_only or not regions):
            return [Descriptor(image, record, -1, caption)]
        out: List[Union[Descriptor, str]] = []
        whole_done = False
        for i, region in enumerate(regions):
            if caption and rng.random() < self.whole_image_ratio and not whole_done:
                out.append(Descriptor(image, record, -1, caption))
                whole_done = True
            else:
                out.append(Descriptor(image, record, i, region["phrase"].strip()))
        return out

    def _source_samples(self, epoch: int, src: int) -> Iterator[Union[Descriptor, str]]:
        """Exactly ``self.items[src]`` samples of source ``src`` in epoch ``epoch`` (strings: problems).

        A read error other than a missing file is retried ``RETRIES`` times (the shard is opened again and
        read up to where it failed: the same records give the same samples). A source that still fails
        (missing, 404, truncated, pipe exit status) or holds fewer samples than its index says gives the
        rest as problems; extra samples beyond the index are dropped (warned).
        """
        url, expected = self.sources[src], self.items[src]
        done = records_done = attempts = 0
        reason: Optional[str] = None
        while True:
            records = iter_records(url)
            try:
                for n, (image, record) in enumerate(records):
                    if n < records_done:
                        continue  # yielded before a retry
                    for s in self._record_samples(image, record, random.Random(_seed(self.seed, epoch, src, n, 2))):
                        if done == expected:
                            logger.warning("data: %s holds more samples than its index says (%d): the index is "
                                           "stale, extra samples are not used; run `alphaclip data index --recount`",
                                           url, expected)
                            return
                        yield s
                        done += 1
                    records_done = n + 1
                reason = None
                break
            except Exception as e:  # noqa: BLE001 - any read error of a shard: retry, then skip its remaining samples
                reason = describe_error(e)
                attempts += 1
                if attempts > RETRIES or isinstance(e, FileNotFoundError) or done == expected:
                    break
                logger.warning("data: %s failed after %d of %d samples (%s): opening it again (%d of %d)", url, done,
                               expected, reason, attempts, RETRIES)
                time.sleep(RETRY_WAIT * attempts)
            finally:
                try:
                    records.close()
                except Exception as e:  # noqa: BLE001 - e.g. a pipe: command's exit status, seen on close
                    reason = reason or describe_error(e)
        if done < expected:
            why = reason or "the shard ended early (its index is stale?)"
            logger.warning("data: shard %s unreadable after %d of %d samples (%s): the remaining %d are skipped",
                           url, done, expected, why, expected - done)
            problem = f"{url}: unreadable ({why})"
            for _ in range(expected - done):
                yield problem

    def _window_samples(self, epoch: int, w: int, segs: List[Segment]) -> Iterator[Union[Descriptor, str]]:
        """The samples of one window: its segments interleaved by a seeded schedule, then shuffled
        through the buffer (emptied at the window's end). Positions depend on the counts only."""
        schedule = [j for j, (_, a, b) in enumerate(segs) for _ in range(b - a)]
        random.Random(_seed(self.seed, epoch, self.rank, w, 4)).shuffle(schedule)
        gens = [self._source_samples(epoch, src) for src, _, _ in segs]  # each opens its shard when first read
        readers = [itertools.islice(g, a, b) for g, (_, a, b) in zip(gens, segs)]
        rng = random.Random(_seed(self.seed, epoch, self.rank, w, 3))
        buf: List[Union[Descriptor, str]] = []
        try:
            for j in schedule:
                d = next(readers[j])
                if self.shuffle_buffer <= 1:
                    yield d
                elif len(buf) < self.shuffle_buffer:
                    buf.append(d)
                else:
                    k = rng.randrange(len(buf))
                    buf[k], d = d, buf[k]
                    yield d
            rng.shuffle(buf)
            yield from buf
        finally:
            for g in gens:
                g.close()

    def samples(self, start: int = 0) -> Iterator[Union[Descriptor, str]]:
        """This rank's infinite sample stream from sample ``start`` (strings are problems)."""
        epoch, w0, off = self.locate(start)
        while True:
            for w, segs in enumerate(self.epoch_windows(epoch)):
                if w < w0:
                    continue
                it = self._window_samples(epoch, w, segs)
                yield from itertools.islice(it, off, None)
                off = 0
            epoch, w0 = epoch + 1, 0

    def batch_descriptors(self, start_batch: int = 0) -> Iterator[Tuple[int, List[Descriptor], List[str]]]:
        """``(batch index, descriptors, problems)`` from batch ``start_batch`` on; problems count toward
        the batch size."""
        b, items, problems = start_batch, [], []
        for d in self.samples(start_batch * self.batch_size):
            if isinstance(d, str):
                problems.append(d)
            else:
                items.append(d)
            if len(items) + len(problems) == self.batch_size:
                yield b, items, problems
                b, items, problems = b + 1, [], []

    # --- decoding ----------------------------------------------------------------------------------
    def _load(self, d: Descriptor) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(d.image, bytes):
            data = d.image
        else:
            data = _sources.read_bytes(d.image)
            if data is None:
                raise FileNotFoundError(f"image {d.image} does not exist")
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
        """Read and decode in this process, from ``start_batch`` on (:func:`make_loader` for workers)."""
        for b, items, problems in self.batch_descriptors(self.start_batch):
            yield self.make_batch(b, items, problems)


# ------------------------------------------------------------------------------------------------ the loader
class _Decode(torch.utils.data.Dataset):
    """Map-style view for DataLoader workers: ``ds[(b, items, problems)]`` decodes one batch."""

    def __init__(self, ds: RegionBatches) -> None:
        self.ds = ds

    def __getitem__(self, job: Tuple[int, List[Descriptor], List[str]]) -> Dict[str, Any]:
        return self.ds.make_batch(*job)


class _ReadAhead(torch.utils.data.Sampler):
    """The DataLoader's "sampler": batches of descriptors (bytes + records) read by a thread of the main
    process, ``depth`` batches ahead, so that the shards are read once however many workers decode.

    A thread rather than a process: reading is network/disk bound (the GIL is released while waiting),
    and parsing a record's JSON is tens of microseconds against milliseconds of decoding per sample.
    """

    def __init__(self, ds: RegionBatches, depth: int) -> None:
        self.ds, self.depth = ds, max(1, depth)

    def __iter__(self) -> Iterator[Tuple[int, List[Descriptor], List[str]]]:
        q: "queue.Queue[Any]" = queue.Queue(self.depth)
        stop = threading.Event()
        end = object()

        def read() -> None:
            try:
                for job in self.ds.batch_descriptors(self.ds.start_batch):
                    while not stop.is_set():
                        try:
                            q.put(job, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                q.put(e)
            q.put(end)

        thread = threading.Thread(target=read, name="alphaclip-data-reader", daemon=True)
        thread.start()
        try:
            while True:
                job = q.get()
                if job is end:
                    return
                if isinstance(job, BaseException):
                    raise job
                yield job
        finally:
            stop.set()


def make_loader(dataset: RegionBatches, num_workers: int = 0, prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader over ready-made batches (``batch_size=None``), in batch order, from
    ``dataset.start_batch`` on.

    With ``num_workers > 0`` a thread of this process reads the shards (once) and the workers decode
    whole batches; the batches are the same for any number of workers.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
    if num_workers == 0:
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0)
    return torch.utils.data.DataLoader(
        _Decode(dataset), batch_size=None, sampler=_ReadAhead(dataset, num_workers * prefetch_factor + 2),
        num_workers=num_workers, prefetch_factor=prefetch_factor, persistent_workers=False)


def collate_stats(batch: Dict[str, Any]) -> Dict[str, int]:
    """Sample counts of a batch: ``samples``, ``whole_image``, ``skipped``."""
    return {"samples": int(batch["image"].shape[0]), "whole_image": int(batch["whole"].sum()),
            "skipped": int(batch["skipped"])}
