"""``MODEL.ALPHA_CLIP.*`` config keys and the one call that turns Alpha-CLIP rescoring on.

The detector's config owns what the detector is (``ROI_HEADS.NAME``, ``NUM_CLASSES``, its
classifier files); ``MODEL.ALPHA_CLIP`` owns the Alpha-CLIP side. ``alphaclip_rescore.yaml`` sets only
``MODEL.ALPHA_CLIP`` keys, so it merges before or after the detector's config with the same result;
:func:`enable_alphaclip`, called after the merges, swaps the ROI heads the detector's config names for
their rescoring version.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from detectron2.config import CfgNode as CN
from detectron2.modeling import ROI_HEADS_REGISTRY

from alphaclip_core.region_classifier import DETECTION_TEMPLATES, read_vocabulary

from .rescoring import is_rescoring_heads, rescoring_heads_name

__all__ = ["add_alphaclip_config", "enable_alphaclip", "disable_alphaclip", "check_alphaclip_config", "config_path",
           "config_vocabulary"]

CONFIG_DIR = Path(__file__).parent / "configs"
_RENAMED = {
    "MODEL.ALPHA_CLIP.ZERO_SHOT_WEIGHT_PATH": "MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS",
    "MODEL.ALPHA_CLIP.ZEROSHOT_WEIGHT_PATH": "MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS",
}
_RENAMED_NOTE = ("it holds Alpha-CLIP text embeddings for the rescorer (written by `python -m "
                 "alphaclip_integrations.detectron2`); Detic's own classifier file stays in "
                 "MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH")


def add_alphaclip_config(cfg: CN) -> CN:
    """Add the ``MODEL.ALPHA_CLIP`` keys (with defaults) to a detectron2 config, in place; returns ``cfg``.

    Call it with the other ``add_*_config`` (Detic's, CenterNet2's) before merging any file.
    Nothing here changes the detector; :func:`enable_alphaclip` does, after the merges.

    Keys:
        ARCH: alpha open_clip model name (``alpha-ViT-B-16``...) or ``local-dir:FOLDER``.
        CHECKPOINT: Alpha-CLIP weights (reference ``.pth`` + BASE, an ``alphaclip convert`` file, or a
            pretrained tag).
        BASE: the plain OpenAI CLIP of the same architecture (for a reference ``.pth``).
        VOCABULARY: class names in the detector's class order (one per ``ROI_HEADS.NUM_CLASSES``).
            Empty (and no VOCABULARY_FILE) = set later with ``set_vocabulary(model, names)``, e.g. after
            Detic's custom-vocabulary reset.
        VOCABULARY_FILE: instead of VOCABULARY: a ``.txt`` (one name a line) or ``.json`` (a list of
            names, or a COCO/LVIS file whose ``categories`` sorted by id give the names, LVIS ``name``
            with ``_`` as a space, as Detic names them).
        TEXT_EMBEDDINGS: a ``.npy`` of ``[C, D]`` Alpha-CLIP class embeddings (from ``python -m
            alphaclip_integrations.detectron2``) used instead of running the text tower at build time;
            checked against the vocabulary and the model's D at load.
        PROMPTS: prompt templates, averaged per class (default: :data:`DETECTION_TEMPLATES`).
        ENSEMBLE_WEIGHT: ``w`` of the geometric ensemble ``p_det ** (1 - w) * p_clip ** w``
            (0 = detector only, 1 = Alpha-CLIP only).
        NOVEL_CLASSES / ENSEMBLE_WEIGHT_NOVEL: class indices that get their own weight (ViLD uses
            1/3 for base, 2/3 for novel classes); a negative weight = off.
        EXPANSION: 0 = each region sees the whole image with its box as alpha; r >= 1 = crop the box
            scaled by r.
        MODE: the paired transform's geometry (``pad``, ``crop``, ``squash``).
        BATCH_SIZE: regions per Alpha-CLIP forward pass.
        MAX_REGIONS: (pre-NMS heads) rescore only each image's top-N proposals by detector score
            (0 = all); the others keep the detector's probabilities.
        PRECISION: ``auto`` (default: measured for ``MODEL.DEVICE``: fp16 on CUDA, bf16 on a CPU with
            native bf16, else fp32; see ``alphaclip info --system``), ``fp32``, ``fp16`` or ``bf16``
            for the Alpha-CLIP model (its image tower; the text tower as ``TEXT_PRECISION`` says).
    """
    cfg.MODEL.ALPHA_CLIP = CN()
    c = cfg.MODEL.ALPHA_CLIP
    c.ARCH = "alpha-ViT-B-16"
    c.CHECKPOINT = ""
    c.BASE = ""
    c.VOCABULARY = []
    c.VOCABULARY_FILE = ""
    c.TEXT_EMBEDDINGS = ""
    c.PROMPTS = list(DETECTION_TEMPLATES)
    c.ENSEMBLE_WEIGHT = 0.5
    c.NOVEL_CLASSES = []
    c.ENSEMBLE_WEIGHT_NOVEL = -1.0
    c.EXPANSION = 0.0
    c.MODE = "pad"
    c.BATCH_SIZE = 64
    c.MAX_REGIONS = 300
    c.PRECISION = "auto"
    for old, new in _RENAMED.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, new, _RENAMED_NOTE)
    return cfg


def config_path(name: str = "alphaclip_rescore.yaml") -> str:
    """The path of a config shipped in ``alphaclip_integrations/detectron2/configs/``."""
    path = CONFIG_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"name: no config {name!r}; shipped: {shipped}")
    return str(path)


def config_vocabulary(cfg: CN) -> Optional[list]:
    """The class names ``MODEL.ALPHA_CLIP.VOCABULARY`` / ``VOCABULARY_FILE`` give (``None`` when neither)."""
    c = cfg.MODEL.ALPHA_CLIP
    if c.VOCABULARY and c.VOCABULARY_FILE:
        raise ValueError("MODEL.ALPHA_CLIP.VOCABULARY / VOCABULARY_FILE: give one of them, not both")
    if c.VOCABULARY_FILE:
        return read_vocabulary(c.VOCABULARY_FILE, arg="MODEL.ALPHA_CLIP.VOCABULARY_FILE")
    if c.VOCABULARY:
        return read_vocabulary(list(c.VOCABULARY), arg="MODEL.ALPHA_CLIP.VOCABULARY")
    return None


def enable_alphaclip(cfg: CN, **keys: Any) -> CN:
    """Turn Alpha-CLIP rescoring on for the detector ``cfg`` describes; call it LAST, once the detector's
    config (and, in either order, ``alphaclip_rescore.yaml``) are merged. Returns ``cfg``.

    - ``MODEL.ROI_HEADS.NAME`` becomes its rescoring version, whatever heads the detector uses:
      ``StandardROIHeads`` -> ``AlphaCLIPStandardROIHeads`` (rescores every proposal before NMS), any
      other registered heads, e.g. Detic's ``DeticCascadeROIHeads`` ->
      ``AlphaCLIPDeticCascadeROIHeads`` (rescores the final detections); the detector is otherwise
      unchanged (same classifier, same checkpoint keys). Import the project that registers the heads
      (``detic``) first. Idempotent.
    - ``keys`` set ``MODEL.ALPHA_CLIP`` keys by their lower-case names, e.g.
      ``enable_alphaclip(cfg, checkpoint="clip_b16_grit1m_fultune_8xe.pth", base="ViT-B-16.pt",
      vocabulary_file="lvis_v1_val.json")``.
    - Checked now: the keys exist, a vocabulary has one name per ``MODEL.ROI_HEADS.NUM_CLASSES``,
      the ensemble weights lie in [0, 1] (the checkpoint and embedding files when the model is built).
    - A config merged AFTER this call may set ``MODEL.ROI_HEADS.NAME`` back to the plain heads
      (detectron2 offers no hook to notice): call it again after any later merge.
      :func:`disable_alphaclip` undoes it.
    """
    if cfg.is_frozen():
        raise ValueError("cfg: frozen; call enable_alphaclip(cfg) before cfg.freeze()")
    if "ALPHA_CLIP" not in cfg.MODEL:
        add_alphaclip_config(cfg)
    c = cfg.MODEL.ALPHA_CLIP
    values = {}
    for name, value in keys.items():
        key = name.upper()
        if key not in c:
            raise TypeError(f"enable_alphaclip: {name!r} is not a MODEL.ALPHA_CLIP key (keys: "
                            f"{', '.join(k.lower() for k in c)})")
        if isinstance(c[key], str) and isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(c[key], list) and isinstance(value, tuple):
            value = list(value)
        if isinstance(c[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(c[key]):
            raise TypeError(f"{name}: expected {type(c[key]).__name__} for MODEL.ALPHA_CLIP.{key}, got "
                            f"{type(value).__name__}")
        values[key] = value
    trial = cfg.clone()  # checked before anything is changed: a failed call leaves cfg as it was
    trial.MODEL.ALPHA_CLIP.update(values)
    check_alphaclip_config(trial)
    name = rescoring_heads_name(cfg.MODEL.ROI_HEADS.NAME)
    c.update(values)
    cfg.MODEL.ROI_HEADS.NAME = name
    return cfg


def disable_alphaclip(cfg: CN) -> CN:
    """Undo :func:`enable_alphaclip`: ``MODEL.ROI_HEADS.NAME`` back to the detector's own heads."""
    if is_rescoring_heads(cfg.MODEL.ROI_HEADS.NAME):
        cfg.MODEL.ROI_HEADS.NAME = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME).alphaclip_base
    return cfg


def check_alphaclip_config(cfg: CN) -> None:
    """The checks of ``MODEL.ALPHA_CLIP`` against the detector's config that need no model (files are
    checked when the model is built, where they are read)."""
    c = cfg.MODEL.ALPHA_CLIP
    vocabulary = config_vocabulary(cfg)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if vocabulary is not None and len(vocabulary) != num_classes:
        raise ValueError(vocabulary_mismatch(len(vocabulary), num_classes))
    for key in ("ENSEMBLE_WEIGHT",) + (("ENSEMBLE_WEIGHT_NOVEL",) if c.NOVEL_CLASSES else ()):
        if not 0.0 <= c[key] <= 1.0:
            raise ValueError(f"MODEL.ALPHA_CLIP.{key}: expected a weight in [0, 1], got {c[key]}")
    bad = [i for i in c.NOVEL_CLASSES if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"MODEL.ALPHA_CLIP.NOVEL_CLASSES: indices {bad} outside [0, {num_classes})")


def vocabulary_mismatch(names: int, classes: int) -> str:
    return (f"MODEL.ALPHA_CLIP.VOCABULARY: {names} class names, but the detector has {classes} classes "
            "(MODEL.ROI_HEADS.NUM_CLASSES); give one name per detector class, in its order (for Detic's "
            "custom vocabulary leave it empty and call set_vocabulary(model, names) after the reset)")


def looks_like_path(value: str) -> bool:
    """A checkpoint value that names a file (rather than a pretrained tag such as ``grit1m``)."""
    return "/" in value or "\\" in value or value.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))

