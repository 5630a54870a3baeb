"""Data preparation: RGBA region-text shards from grounding and classification data.

- :func:`prepare_grounding`: GRIT-style shards (phrases + boxes) -> one SAM mask per box -> training shards.
- :func:`prepare_classification`: class-labelled images -> SAM masks -> CLIP-scored crops -> captions.
- :func:`check_shards`, :func:`sample_overlay`: validate shards, draw a sample.
- ``tiny_sam``, ``load_sam``, ``predict_boxes`` (in :mod:`.sam`, which imports segment_anything; loaded lazily).

Output format: :mod:`alphaclip_train.schema`. Command line: ``alphaclip data ...``.
"""
from .check import CheckReport, check_shards, sample_overlay
from .classification import Captioner, list_images, prepare_classification, read_class_names, score_crops
from .common import ShardStats, dist_env, iter_webdataset, partition, read_summary, write_webdataset
from .grounding import parse_grit_regions, prepare_grounding

__all__ = ["prepare_grounding", "parse_grit_regions", "prepare_classification", "list_images", "read_class_names",
           "Captioner", "score_crops", "check_shards", "sample_overlay", "CheckReport", "ShardStats", "partition",
           "dist_env", "iter_webdataset", "write_webdataset", "read_summary", "tiny_sam", "load_sam", "predict_boxes"]


def __getattr__(name: str):
    if name in ("tiny_sam", "load_sam", "predict_boxes", "SAM_TYPES"):
        from .. import sam

        return getattr(sam, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
