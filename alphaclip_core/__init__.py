"""alphaclip_core: Alpha-CLIP, framework-neutral.

The alpha vision towers (:mod:`.towers`) and whole models (:mod:`.model`), alpha maps and regions as
masks (:mod:`.alpha`), the paired image+alpha transform (:mod:`.transform`), the COCO RLE codec
(:mod:`.rle`), image files (:mod:`.images`), weight formats and key maps (:mod:`.checkpoints`), reading
weights safely (:mod:`.safe_load`, :mod:`.torchscript`), atomic writes (:mod:`.atomic`), region tasks
(:mod:`.regions`), region classification (:mod:`.region_classifier`, with box geometry in :mod:`.boxes`
and vocabularies and text-classifier files in :mod:`.vocabulary`), weights' precision (:mod:`.precision`,
:mod:`.system`), overlay pictures (:mod:`.viz`), the errors the package raises on purpose
(:mod:`.errors`) and the ``alphaclip`` command (:mod:`.cli`, its shared model options in :mod:`.options`).
"""
from .alpha import (ALPHA_MEAN, ALPHA_STD, PairedTransform, boxes_to_masks, normalize_alpha, open_image,
                    polygons_to_masks, prepare, region_masks, rle_decode, rle_encode, rle_to_masks, to_masks,
                    whole_image_alpha)
from .checkpoints import CheckpointError, describe, load_alpha_clip, read_state_dict, save_reference, save_safetensors
from .errors import InputError, RunError
from .model import (WHOLE_IMAGE_ALPHA, AlphaCLIP, AlphaCustomTextCLIP, AlphaModel, AlphaTimmModel,
                    AlphaVisionTransformer, add_alpha, alpha_tower)
from .regions import RegionScores, classify_regions, score_regions, text_classifier

#: the package version, in this one place (pyproject.toml reads it; policy: CHANGELOG.md, "Versions")
__version__ = "0.2.0.dev0"

__all__ = [
    "ALPHA_MEAN", "ALPHA_STD", "WHOLE_IMAGE_ALPHA", "PairedTransform", "prepare", "normalize_alpha",
    "whole_image_alpha", "to_masks", "boxes_to_masks", "polygons_to_masks", "rle_encode", "rle_decode",
    "rle_to_masks", "region_masks", "AlphaCLIP", "AlphaCustomTextCLIP", "AlphaModel", "AlphaVisionTransformer",
    "AlphaTimmModel", "add_alpha", "alpha_tower", "CheckpointError",
    "read_state_dict", "load_alpha_clip", "save_safetensors", "save_reference", "describe", "RegionScores",
    "classify_regions", "score_regions", "text_classifier", "open_image", "InputError", "RunError", "__version__",
]
