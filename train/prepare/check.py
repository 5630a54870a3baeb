"""Looking at prepared shards: validate them against the schema, and draw one sample's regions."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch
from PIL import Image

from alphaclip_core.alpha import boxes_to_masks, rle_decode
from alphaclip_train.schema import describe_error, iter_shard, validate_record
from alphaclip_train.sources import source_name

from .common import decode_image, expand_inputs

logger = logging.getLogger("alphaclip.prepare")

__all__ = ["CheckReport", "check_shards", "sample_overlay"]


@dataclass
class CheckReport:
    """What :func:`check_shards` found. ``problems`` holds ``"<shard>/<key>: <problem>"`` strings."""

    shards: int = 0
    samples: int = 0
    regions: int = 0
    masks: int = 0
    box_only: int = 0
    problems: List[str] = field(default_factory=list)
    num_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.num_problems == 0

    def to_json(self) -> Dict[str, Any]:
        return {"shards": self.shards, "samples": self.samples, "regions": self.regions, "masks": self.masks,
                "box_only": self.box_only, "problems": self.num_problems, "first_problems": self.problems}


def check_shards(paths: Sequence[Union[str, os.PathLike]], max_problems: int = 20) -> CheckReport:
    """Validate shards: every record against the schema (every mask decoded), every image decoded and
    its size compared with the record's, keys unique per shard.

    Args:
        paths: shard files and/or folders of ``*.tar``, local or remote (see :mod:`alphaclip_train.sources`).
        max_problems: how many problem strings to keep (all are counted).
    """
    report = CheckReport()

    def problem(text: str) -> None:
        report.num_problems += 1
        if len(report.problems) < max_problems:
            report.problems.append(text)

    for path in expand_inputs(paths, unique_names=False):
        report.shards += 1
        seen = set()
        try:
            for key, data, record in iter_shard(path):
                report.samples += 1
                where = f"{source_name(path)}/{key}"
                if key in seen:
                    problem(f"{where}: key appears twice")
                seen.add(key)
                if record.get("key") != key:
                    problem(f"{where}: record key {record.get('key')!r} != member key")
                for p in validate_record(record, decode_masks=True):
                    problem(f"{where}: {p}")
                try:
                    image = decode_image(data)
                    if isinstance(record.get("width"), int) and image.size != (record["width"], record.get("height")):
                        problem(f"{where}: image is {image.size[0]}x{image.size[1]} but the record says "
                                f"{record['width']}x{record.get('height')}")
                except ValueError as e:
                    problem(f"{where}: {e}")
                for r in record.get("regions") or []:
                    if isinstance(r, dict):
                        report.regions += 1
                        if r.get("mask") is None:
                            report.box_only += 1
                        else:
                            report.masks += 1
        except Exception as e:  # noqa: BLE001 - truncated tar, bad JSON member, 404, failed pipe: command
            problem(f"{source_name(path)}: unreadable shard ({describe_error(e)})")
    return report


def sample_overlay(shard: Union[str, os.PathLike], key: str, opacity: float = 0.45) -> Image.Image:
    """The image of sample ``key`` in ``shard`` with its regions (mask, else box) and phrases drawn on it."""
    from alphaclip_core.viz import overlay_regions

    for k, data, record in iter_shard(shard):
        if k != key:
            continue
        image = decode_image(data)
        w, h = image.size
        masks = []
        for r in record["regions"]:
            if r.get("mask") is not None:
                masks.append(torch.from_numpy(rle_decode(r["mask"]).astype(np.float32)))
            else:
                masks.append(boxes_to_masks(r["box"], h, w)[0])
        stack = torch.stack(masks) if masks else torch.zeros(0, h, w)
        return overlay_regions(image, stack, [r["phrase"] for r in record["regions"]], opacity=opacity)
    raise KeyError(f"key: no sample {key!r} in {shard}")
