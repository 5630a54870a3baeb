"""Alpha-CLIP in Detectron2 / Detic: rescoring ROI heads, config keys, class-embedding dumps.

Importing this module (it imports detectron2) registers in ``ROI_HEADS_REGISTRY``
``AlphaCLIPStandardROIHeads`` (every proposal's class probabilities ensembled with Alpha-CLIP's before
per-class NMS, ViLD-style) and ``AlphaCLIPCascadeROIHeads`` (final detections rescored post hoc).

Use (see docs/detection.md)::

    cfg = get_cfg(); add_detic_config(cfg)...; add_alphaclip_config(cfg)
    cfg.merge_from_file(detector_yaml); cfg.merge_from_file(config_path())   # either order
    enable_alphaclip(cfg, vocabulary_file=..., checkpoint=..., base=...)     # last: wraps ROI_HEADS.NAME

:func:`enable_alphaclip` wraps whatever heads ``MODEL.ROI_HEADS.NAME`` names (Detic's
``DeticCascadeROIHeads`` -> ``AlphaCLIPDeticCascadeROIHeads``, post hoc), so the detector keeps its
own classifier, class count and checkpoint keys; Alpha-CLIP sits outside the module tree and follows
the images' device. :func:`set_vocabulary` keeps Alpha-CLIP's classes in step with Detic's
custom-vocabulary reset; inference fails clearly when they differ.

:func:`dump_zeroshot_classifier` (``python -m alphaclip_integrations.detectron2``) writes ``[C, D]``
Alpha-CLIP class embeddings as ``.npy`` (+ a ``.npy.json`` sidecar naming the classes): for
``MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS`` (skips the text tower at build time), or as the zero-shot
classifier (``MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH``) of a Detic you (re)train on Alpha-CLIP's
text space. Released Detic models were trained on CLIP ViT-B/32 "a {}" embeddings: keep Detic's own
files for them.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from alphaclip_core.region_classifier import DETECTION_TEMPLATES, read_vocabulary, save_text_classifier
from alphaclip_core.regions import text_classifier

from .config import (add_alphaclip_config, check_alphaclip_config, config_path, config_vocabulary,
                     disable_alphaclip, enable_alphaclip)
from .rescoring import (AlphaCLIPCascadeROIHeads, AlphaCLIPRescorer, AlphaCLIPStandardROIHeads,
                        detector_num_classes, is_rescoring_heads, register_rescoring_roi_heads,
                        rescoring_heads_name, set_vocabulary, with_alpha_clip)

__all__ = ["add_alphaclip_config", "enable_alphaclip", "disable_alphaclip", "check_alphaclip_config", "config_path",
           "config_vocabulary", "load_vocabulary", "AlphaCLIPRescorer", "AlphaCLIPStandardROIHeads",
           "AlphaCLIPCascadeROIHeads", "with_alpha_clip", "register_rescoring_roi_heads", "rescoring_heads_name",
           "is_rescoring_heads", "set_vocabulary", "detector_num_classes", "dump_zeroshot_classifier", "main"]

#: class names from a list, a ``.txt``/``.json`` (COCO/LVIS) file or ``"a,b,c"`` (the core's reader)
load_vocabulary = read_vocabulary


def dump_zeroshot_classifier(model: torch.nn.Module, tokenizer: Callable, vocabulary: Union[str, Sequence[str]],
                             path: Union[str, Path], templates: Sequence[str] = DETECTION_TEMPLATES,
                             model_name: Optional[str] = None) -> str:
    """Write Alpha-CLIP class embeddings: ``.npy`` float32 ``[C, D]``, row c = the unit text embedding of
    class c (mean over ``templates``), plus the sidecar ``<path>.json`` (names, templates, model).

    What the file is for:

    - ``MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS``: the rescorer uses the rows instead of running the text
      tower at build time (checked against the vocabulary and the model at load);
    - Detic's ``MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH`` (``ZEROSHOT_WEIGHT_DIM`` = D: 512 for B/16,
      768 for L/14) when you (re)train a Detic on Alpha-CLIP's text space. NOT for the released Detic
      models: they were trained on CLIP ViT-B/32 "a {}" embeddings (Detic's ``*_clip_a+cname.npy``).

    Args:
        vocabulary: names, or a ``.txt``/``.json`` file (:func:`read_vocabulary`: LVIS ``name``, as Detic).
        model_name: recorded in the sidecar (e.g. ``alpha-ViT-B-16``), checked when the file is loaded.
    Returns:
        the ``.npy`` path.
    """
    names = load_vocabulary(vocabulary)
    weights = text_classifier(model, tokenizer, names, templates).cpu()
    return save_text_classifier(path, weights, names, templates=list(templates), model=model_name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m alphaclip_integrations.detectron2 --vocabulary lvis_v1_val.json -o lvis_b16.npy --checkpoint ...``"""
    from alphaclip_core.cli import add_model_arguments, load_model

    p = argparse.ArgumentParser(
        prog="python -m alphaclip_integrations.detectron2",
        description="Write [C, D] Alpha-CLIP class embeddings (.npy + .npy.json sidecar) for "
                    "MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS, or for Detic's MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH when "
                    "(re)training Detic on Alpha-CLIP's text space. Released Detic models need their own CLIP "
                    "ViT-B/32 files, not these.")
    p.add_argument("--vocabulary", required=True,
                   help=".txt (one name a line), .json (list, or COCO/LVIS: category 'name'), or a,b,c")
    p.add_argument("--output", "-o", required=True, help="output .npy ([C, D] float32)")
    p.add_argument("--template", action="append",
                   help="prompt template with {} (repeatable; default: the 8 detection templates, "
                        "as MODEL.ALPHA_CLIP.PROMPTS)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    try:
        names = load_vocabulary(args.vocabulary)
        model, tokenizer = load_model(args)
        path = dump_zeroshot_classifier(model, tokenizer, names, args.output,
                                        tuple(args.template or DETECTION_TEMPLATES), model_name=args.model)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(path)
    return 0
