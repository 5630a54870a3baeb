"""Grounding pipeline: GRIT-style shards (image + phrases with boxes) -> SAM masks -> training shards.

Input: webdataset tars as img2dataset writes them: per sample ``<key>.jpg`` (or png/webp),
``<key>.json`` and usually ``<key>.txt`` (the caption). The json is GRIT's: ``caption`` plus
``ref_exps`` and/or ``noun_chunks``, lists of ``[start, end, x0, y0, x1, y1, score]`` where
``caption[start:end]`` is the phrase and the box is NORMALISED to ``[0, 1]`` (relative to the image,
so it holds for img2dataset's resized images too).

Per image, SAM computes the image embedding once and predicts one mask per box prompt, all the
image's boxes in one batched decoder call (single-mask output). Masks are stored as COCO RLE in
:mod:`alphaclip_train.schema` records; the original image bytes are kept.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from alphaclip_core.alpha import rle_encode

from alphaclip_train.schema import describe_error
from alphaclip_train.sources import source_name

from .common import (IMAGE_EXTS, ShardStats, decode_image, encode_for_shard, expand_inputs, iter_webdataset,
                     run_shards)

logger = logging.getLogger("alphaclip.prepare")

__all__ = ["SPAN_FIELDS", "parse_grit_regions", "prepare_grounding"]

#: GRIT's span lists, in the order regions are taken from them
SPAN_FIELDS = ("ref_exps", "noun_chunks")


def parse_grit_regions(meta: Dict[str, Any], caption: str, width: int, height: int, *,
                       spans: Sequence[str] = ("ref_exps",), min_box_size: float = 2.0, tolerance: float = 0.01,
                       ) -> Tuple[List[Tuple[str, List[float]]], Counter]:
    """Phrases and pixel boxes of one GRIT record, and what was dropped (by reason).

    Args:
        meta: the sample's json (``ref_exps`` / ``noun_chunks`` lists of ``[start, end, x0, y0, x1, y1, score]``,
            boxes normalised to ``[0, 1]``).
        caption: the text the spans index into.
        width, height: the decoded image's size in pixels.
        spans: which span lists to read, in order.
        min_box_size: a box narrower or shorter than this many pixels is ``degenerate_box``.
        tolerance: normalised coordinates within ``[-tolerance, 1 + tolerance]`` are clipped to the image;
            beyond that the box is ``outside_image``.
    Returns:
        ``([(phrase, [x0, y0, x1, y1] pixels), ...], Counter(reason -> count))``; reasons:
        ``malformed_span``, ``bad_span`` (empty phrase / span outside the caption), ``degenerate_box``,
        ``outside_image``, ``duplicate`` (same phrase and box seen before in this record).
    """
    for name in spans:
        if name not in SPAN_FIELDS:
            raise ValueError(f"spans: expected names from {SPAN_FIELDS}, got {name!r}")
    regions: List[Tuple[str, List[float]]] = []
    dropped: Counter = Counter()
    seen = set()
    for name in spans:
        entries = meta.get(name) or []
        if not isinstance(entries, list):
            dropped["malformed_span"] += 1
            continue
        for entry in entries:
            if not (isinstance(entry, (list, tuple)) and len(entry) >= 6
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry[:6])):
                dropped["malformed_span"] += 1
                continue
            start, end = int(entry[0]), int(entry[1])
            phrase = caption[start:end].strip() if 0 <= start < end <= len(caption) else ""
            if not phrase:
                dropped["bad_span"] += 1
                continue
            x0, y0, x1, y1 = (float(v) for v in entry[2:6])
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                dropped["degenerate_box"] += 1
                continue
            if min(x0, y0, x1, y1) < -tolerance or max(x0, y0, x1, y1) > 1 + tolerance:
                dropped["outside_image"] += 1
                continue
            box = [min(max(x0, 0.0), 1.0) * width, min(max(y0, 0.0), 1.0) * height,
                   min(max(x1, 0.0), 1.0) * width, min(max(y1, 0.0), 1.0) * height]
            box = [round(v, 2) for v in box]
            if min(box[2] - box[0], box[3] - box[1]) < max(min_box_size, 1e-6):
                dropped["degenerate_box"] += 1
                continue
            ident = (phrase, tuple(box))
            if ident in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(ident)
            regions.append((phrase, box))
    return regions, dropped


def _caption(parts: Dict[str, bytes], meta: Dict[str, Any]) -> str:
    if isinstance(meta.get("caption"), str):
        return meta["caption"]
    if "txt" in parts:
        return parts["txt"].decode("utf-8", errors="replace")
    return ""


def prepare_grounding(inputs: Sequence[Union[str, os.PathLike]], output_dir: Union[str, os.PathLike], sam, *,
                      spans: Sequence[str] = ("ref_exps",), min_box_size: float = 2.0, box_batch: int = 64,
                      sam_name: str = "sam", rank: Optional[int] = None, world: Optional[int] = None,
                      progress: bool = True, restart: bool = False) -> Dict[str, Any]:
    """Turn GRIT-style input shards into training shards with one SAM mask per phrase box.

    Args:
        inputs: input tar files and/or folders of ``*.tar`` (sorted), local or remote (``https://``, ``s3://``,
            ``pipe:``..., brace ranges: see :mod:`alphaclip_train.sources`); output shard ``i`` has input ``i``'s
            name.
        output_dir: where the output shards, their ``.stats.json`` files and ``summary.json`` go.
        sam: a ``segment_anything`` ``Sam`` model (see :func:`alphaclip_train.sam.load_sam`) or a
            ``SamPredictor``; it runs on its own device.
        spans: GRIT span lists to read (``ref_exps``, ``noun_chunks``).
        min_box_size: boxes smaller than this (pixels, either side) are dropped as degenerate.
        box_batch: box prompts per SAM decoder call (1 = one prompt at a time).
        sam_name: recorded as each region's ``source`` (``sam-<sam_name>``).
        rank, world: this process's share (default: torchrun's environment).
        progress: tqdm bars.
        restart: redo the finished shards of an earlier run with other settings (default: refuse with a
            ``ValueError`` naming the settings that differ).
    Returns:
        the run's summary (also in ``output_dir/summary.json``): images, regions, dropped (by reason),
        failed (by reason), skipped_images, box_only, shards done/total.

    A region whose SAM mask comes out empty is kept with ``mask: null`` (box only) and counted as
    ``box_only``; an image that keeps no region is not written (``skipped_images``). Unreadable images
    or json are counted under ``failed`` and skipped.
    """
    import torch
    from segment_anything import SamPredictor
    from tqdm import tqdm

    from ..sam import predict_boxes

    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("inputs: no input shards (*.tar) found")
    predictor = sam if isinstance(sam, SamPredictor) else SamPredictor(sam)
    source = f"sam-{sam_name}"
    config = {"spans": list(spans), "min_box_size": min_box_size, "sam": sam_name, "box_batch": box_batch,
              "inputs": [str(p) for p in paths]}
    parse_grit_regions({}, "", 1, 1, spans=spans)  # validates ``spans`` before any work

    def process(i: int, write, stats: ShardStats) -> None:
        path = paths[i]
        name = source_name(path)
        bar = tqdm(desc=name, unit="img", disable=not progress, leave=False)
        samples = iter_webdataset(path)
        try:
            while True:
                try:
                    key, parts = next(samples)
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001 - truncated/corrupt tar, 404, failed pipe: keep what was read
                    logger.error("%s: input shard is damaged or unreadable after %d samples (%s); kept what was "
                                 "readable", path, bar.n, describe_error(e))
                    stats.failed["corrupt_shard"] += 1
                    break
                bar.update(1)
                _one_sample(key, parts, name, write, stats)
        finally:
            samples.close()
            bar.close()

    def _one_sample(key: str, parts: Dict[str, bytes], shard_name: str, write, stats: ShardStats) -> None:
        img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
        if not key:
            stats.failed["bad_key"] += 1
            return
        if img_ext is None:
            stats.failed["missing_image"] += 1
            return
        if "json" not in parts:
            stats.failed["missing_json"] += 1
            return
        try:
            meta = json.loads(parts["json"])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError as e:
            logger.warning("%s/%s: json unreadable (%s), skipped", shard_name, key, e)
            stats.failed["bad_json"] += 1
            return
        try:
            image = decode_image(parts[img_ext])
        except ValueError as e:
            logger.warning("%s/%s: %s, skipped", shard_name, key, e)
            stats.failed["corrupt_image"] += 1
            return
        caption = _caption(parts, meta)
        w, h = image.size
        found, dropped = parse_grit_regions(meta, caption, w, h, spans=spans, min_box_size=min_box_size)
        stats.dropped.update(dropped)
        if not found:
            stats.skipped_images += 1
            return
        with torch.inference_mode():
            masks, scores = predict_boxes(predictor, np.asarray(image), np.array([b for _, b in found]),
                                          batch_size=box_batch)
        regions = []
        for (phrase, box), mask, score in zip(found, masks, scores):
            if mask.any():
                rle = rle_encode(mask)
            else:
                rle = None
                stats.box_only += 1
            regions.append({"phrase": phrase, "box": box, "mask": rle, "score": round(float(score), 4),
                            "source": source})
        record = {"key": key, "width": w, "height": h, "caption": caption, "regions": regions,
                  "meta": {"source": "grounding", "input_shard": shard_name,
                           **({"url": meta["url"]} if isinstance(meta.get("url"), str) else {})}}
        data, ext = encode_for_shard(parts[img_ext], image)
        write(data, record, ext)
        stats.images += 1
        stats.regions += len(regions)

    return run_shards(output_dir, [source_name(p) for p in paths], process, pipeline="grounding", config=config,
                      rank=rank, world=world, progress=progress, restart=restart)
