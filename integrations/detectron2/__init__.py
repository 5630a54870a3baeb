"""Alpha-CLIP in Detectron2 / Detic: config keys, rescoring ROI heads, zero-shot classifier weights.

Importing this module (it imports detectron2) registers in ``ROI_HEADS_REGISTRY``:

- ``AlphaCLIPStandardROIHeads``: :class:`~detectron2.modeling.StandardROIHeads` that, at inference,
  rescores every proposal's per-class probabilities with Alpha-CLIP BEFORE per-class NMS
  (ViLD-ensemble: ``p = p_det ** (1 - w) * p_clip ** w``);
- ``AlphaCLIPCascadeROIHeads``: :class:`~detectron2.modeling.CascadeROIHeads` whose final detections
  are rescored post hoc (``score = score_det ** (1 - w) * p_clip[class] ** w``);
  :func:`register_rescoring_roi_heads` makes the same for any registered ROI heads, e.g. Detic's
  ``CustomCascadeROIHeads`` -> ``AlphaCLIPCustomCascadeROIHeads``.

Both read ``MODEL.ALPHA_CLIP.*`` (:func:`add_alphaclip_config`). Alpha-CLIP is held OUTSIDE the
detector's module tree: detector checkpoints neither contain nor expect its weights, and the
Alpha-CLIP model follows the images' device on first use.

:func:`dump_zeroshot_classifier` writes Detic's zero-shot classifier file (``.npy``, ``[C, D]``, one
unit row per class) from the Alpha-CLIP text tower (which is CLIP's, unchanged);
``python -m alphaclip_integrations.detectron2 --help`` does it from the command line.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads  # noqa: F401  (registers it)
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances

from alphaclip_core.region_classifier import (DETECTION_TEMPLATES, AlphaCLIPRegionClassifier, save_text_classifier,
                                              snap_boxes)
from alphaclip_core.regions import text_classifier

__all__ = ["add_alphaclip_config", "config_path", "load_vocabulary", "AlphaCLIPRescorer",
           "AlphaCLIPStandardROIHeads", "AlphaCLIPCascadeROIHeads", "with_alpha_clip", "register_rescoring_roi_heads",
           "dump_zeroshot_classifier", "main"]

logger = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"


def add_alphaclip_config(cfg: CN) -> CN:
    """Add the ``MODEL.ALPHA_CLIP`` keys (with defaults) to a detectron2 config, in place; returns ``cfg``.

    Keys:
        ARCH: alpha open_clip model name (``alpha-ViT-B-16``...) or ``local-dir:FOLDER``.
        CHECKPOINT: Alpha-CLIP weights (reference ``.pth`` + BASE, or an ``alphaclip convert`` file).
        BASE: the plain OpenAI CLIP of the same architecture (for a reference ``.pth``).
        VOCABULARY: class names in the detector's class order.
        VOCABULARY_FILE: instead of VOCABULARY: a ``.txt`` (one name a line) or ``.json`` (a list of
            names, or a COCO/LVIS file whose ``categories`` sorted by id give the names).
        ZERO_SHOT_WEIGHT_PATH: ``[C, D]`` ``.npy`` class embeddings (skips the text tower).
        PROMPTS: prompt templates, averaged per class.
        ENSEMBLE_WEIGHT: ``w`` of the geometric ensemble (0 = detector only, 1 = Alpha-CLIP only).
        NOVEL_CLASSES / ENSEMBLE_WEIGHT_NOVEL: class indices that get their own weight (ViLD uses
            1/3 for base, 2/3 for novel classes); a negative weight disables it.
        EXPANSION: 0 = each region sees the whole image with its box as alpha; r >= 1 = crop the box
            scaled by r.
        MODE: the paired transform's geometry (``pad``, ``crop``, ``squash``).
        BATCH_SIZE: regions per Alpha-CLIP forward pass.
        MAX_REGIONS: rescore only each image's top-N proposals by detector score (0 = all); the
            others keep the detector's probabilities.
        PRECISION: ``fp32``, ``fp16`` or ``bf16`` for the Alpha-CLIP model.
    """
    cfg.MODEL.ALPHA_CLIP = CN()
    c = cfg.MODEL.ALPHA_CLIP
    c.ARCH = "alpha-ViT-B-16"
    c.CHECKPOINT = ""
    c.BASE = ""
    c.VOCABULARY = []
    c.VOCABULARY_FILE = ""
    c.ZERO_SHOT_WEIGHT_PATH = ""
    c.PROMPTS = list(DETECTION_TEMPLATES)
    c.ENSEMBLE_WEIGHT = 0.5
    c.NOVEL_CLASSES = []
    c.ENSEMBLE_WEIGHT_NOVEL = -1.0
    c.EXPANSION = 0.0
    c.MODE = "pad"
    c.BATCH_SIZE = 64
    c.MAX_REGIONS = 300
    c.PRECISION = "fp32"
    return cfg


def config_path(name: str = "alphaclip_rescore.yaml") -> str:
    """The path of a config shipped in ``alphaclip_integrations/detectron2/configs/``."""
    path = CONFIG_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"name: no config {name!r}; shipped: {shipped}")
    return str(path)


def load_vocabulary(vocabulary: Union[str, Sequence[str]]) -> List[str]:
    """Class names from a list, a ``.txt``/``.json`` file (see ``VOCABULARY_FILE`` in
    :func:`add_alphaclip_config`), or a comma-separated string."""
    if not isinstance(vocabulary, str):
        names = [str(v) for v in vocabulary]
    elif vocabulary.endswith((".txt", ".json")):
        path = Path(vocabulary)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary: no such file: {path}")
        if path.suffix == ".txt":
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                cats = sorted(data.get("categories", []), key=lambda c: c["id"])
                names = [(c.get("synonyms") or [c["name"]])[0].replace("_", " ") for c in cats]
            else:
                names = [str(v) for v in data]
    else:
        names = [v.strip() for v in vocabulary.split(",") if v.strip()]
    if not names:
        raise ValueError("vocabulary: no class names given")
    return names


def _load_alpha_clip(cfg: CN) -> Tuple[torch.nn.Module, Callable]:
    from alphaclip_core.cli import load_model

    c = cfg.MODEL.ALPHA_CLIP
    if not c.CHECKPOINT and not c.ARCH.startswith("local-dir:"):
        raise ValueError("MODEL.ALPHA_CLIP.CHECKPOINT: required (Alpha-CLIP weights file or pretrained tag), "
                         "unless MODEL.ALPHA_CLIP.ARCH is local-dir:FOLDER")
    args = argparse.Namespace(model=c.ARCH, checkpoint=c.CHECKPOINT or None, base=c.BASE or None, device="cpu")
    model, tokenizer = load_model(args)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(c.PRECISION)
    if dtype is None:
        raise ValueError(f"MODEL.ALPHA_CLIP.PRECISION: expected fp32, fp16 or bf16, got {c.PRECISION!r}")
    return model.to(dtype=dtype).eval(), tokenizer


class AlphaCLIPRescorer:
    """Rescores detector outputs with an :class:`AlphaCLIPRegionClassifier` (a plain object, not a module).

    Args:
        classifier: over the detector's C foreground classes, in their order.
        pixel_mean, pixel_std: the detector's input normalisation (``cfg.MODEL.PIXEL_MEAN/STD``, 0..255 scale).
        input_format: ``BGR`` or ``RGB`` (``cfg.INPUT.FORMAT``).
        max_regions: rescore at most this many proposals per image (top by detector score); 0 = all.
    """

    def __init__(self, classifier: AlphaCLIPRegionClassifier, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], input_format: str = "BGR", max_regions: int = 0) -> None:
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format: expected 'BGR' or 'RGB', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean / pixel_std: expected 3 values each (0..255 scale)")
        self.classifier = classifier
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        self.input_format = input_format
        self.max_regions = int(max_regions)

    @classmethod
    def from_config(cls, cfg: CN, num_classes: int) -> "AlphaCLIPRescorer":
        """Build from ``MODEL.ALPHA_CLIP.*`` (weights loaded now); ``num_classes`` must match the vocabulary."""
        c = cfg.MODEL.ALPHA_CLIP
        if bool(c.VOCABULARY) == bool(c.VOCABULARY_FILE):
            raise ValueError("MODEL.ALPHA_CLIP.VOCABULARY / VOCABULARY_FILE: give exactly one (class names or a file)")
        vocabulary = load_vocabulary(c.VOCABULARY_FILE or list(c.VOCABULARY))
        if len(vocabulary) != num_classes:
            raise ValueError(f"MODEL.ALPHA_CLIP.VOCABULARY: {len(vocabulary)} class names, but the detector has "
                             f"{num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES); give one name per class, in order")
        model, tokenizer = _load_alpha_clip(cfg)
        text = None
        if c.ZERO_SHOT_WEIGHT_PATH:
            import numpy as np

            text = torch.from_numpy(np.load(c.ZERO_SHOT_WEIGHT_PATH, allow_pickle=False)).float()
        weight: Union[float, torch.Tensor] = float(c.ENSEMBLE_WEIGHT)
        if c.ENSEMBLE_WEIGHT_NOVEL >= 0:
            bad = [i for i in c.NOVEL_CLASSES if not 0 <= i < num_classes]
            if bad:
                raise ValueError(f"MODEL.ALPHA_CLIP.NOVEL_CLASSES: indices {bad} outside [0, {num_classes})")
            weight = torch.full((num_classes,), float(c.ENSEMBLE_WEIGHT))
            weight[list(c.NOVEL_CLASSES)] = float(c.ENSEMBLE_WEIGHT_NOVEL)
        classifier = AlphaCLIPRegionClassifier(
            model, tokenizer, vocabulary, templates=tuple(c.PROMPTS), expansion=c.EXPANSION or None, mode=c.MODE,
            ensemble_weight=weight, batch_size=c.BATCH_SIZE, text_features=text)
        return cls(classifier, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT, c.MAX_REGIONS)

    # --------------------------------------------------------------------------------------------
    def images_rgb(self, images: ImageList) -> List[torch.Tensor]:
        """Undo the detector's normalisation: ``[3, h, w]`` RGB floats in ``[0, 1]`` per image (padding cut off)."""
        out = []
        mean, std = self.pixel_mean.to(images.tensor.device), self.pixel_std.to(images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            x = images.tensor[i, :, :h, :w].float() * std + mean
            if self.input_format == "BGR":
                x = x.flip(0)
            out.append((x / 255.0).clamp(0, 1).cpu())
        return out

    def _device(self, images: ImageList) -> None:
        model = self.classifier.model
        if next(model.parameters()).device != images.tensor.device:
            model.to(images.tensor.device)

    def clip_probs(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``[R, C]`` Alpha-CLIP probabilities for boxes ``[R, 4]`` (snapped to whole pixels) of one RGB image."""
        if boxes.shape[0] == 0:
            return torch.zeros(0, self.classifier.num_classes)
        h, w = image.shape[-2:]
        return self.classifier(image, boxes=snap_boxes(boxes.detach().float().cpu(), h, w)).probs

    @torch.no_grad()
    def rescore_probs(self, images: ImageList, boxes: Sequence[torch.Tensor], probs: Sequence[torch.Tensor]
                      ) -> List[torch.Tensor]:
        """Ensemble the detector's ``[R, C + 1]`` probabilities (last column background) with Alpha-CLIP's.

        Args:
            images: the detector's input batch.
            boxes: per image ``[R, 4]`` xyxy proposal boxes in the input frame.
            probs: per image ``[R, C + 1]`` the box predictor's probabilities.
        Returns:
            per image ``[R, C + 1]``: foreground columns replaced by the geometric ensemble (for the
            top ``max_regions`` proposals), background column unchanged.
        """
        self._device(images)
        out = []
        for image, b, p in zip(self.images_rgb(images), boxes, probs):
            c = self.classifier.num_classes
            if p.shape[1] != c + 1:
                raise ValueError(f"probs: expected [R, {c + 1}] (C classes + background), got {list(p.shape)}")
            p = p.clone()
            idx = torch.arange(p.shape[0], device=p.device)
            if self.max_regions and p.shape[0] > self.max_regions:
                idx = p[:, :c].max(dim=1).values.topk(self.max_regions).indices
            if len(idx):
                clip = self.clip_probs(image, b[idx])
                p[idx, :c] = self.classifier.ensemble(p[idx, :c], clip).to(p)
            out.append(p)
        return out

    @torch.no_grad()
    def rescore_instances(self, images: ImageList, instances: Sequence[Instances]) -> List[Instances]:
        """Post-hoc: ``scores = scores ** (1 - w) * p_clip[pred_classes] ** w`` for final detections.

        Adds the fields ``det_scores`` (the detector's) and ``clip_scores`` (Alpha-CLIP's probability of
        the predicted class). Instances must be in the input frame (before ``detector_postprocess``).
        """
        self._device(images)
        for image, inst in zip(self.images_rgb(images), instances):
            clip = self.clip_probs(image, inst.pred_boxes.tensor)
            classes = inst.pred_classes.cpu()
            clip_cls = clip[torch.arange(len(classes)), classes] if len(classes) else torch.zeros(0)
            det = inst.scores
            one_hot = torch.zeros(len(classes), self.classifier.num_classes)
            if len(classes):
                one_hot[torch.arange(len(classes)), classes] = 1.0
            # the ensemble over the C columns, read at the predicted class (per-class weights honoured)
            mixed = self.classifier.ensemble(one_hot * det.detach().float().cpu()[:, None],
                                             one_hot * clip_cls[:, None])
            inst.det_scores = det
            inst.clip_scores = clip_cls.to(det)
            inst.scores = (mixed * one_hot).sum(dim=1).to(det)
        return list(instances)


@ROI_HEADS_REGISTRY.register()
class AlphaCLIPStandardROIHeads(StandardROIHeads):
    """StandardROIHeads whose inference ensembles every proposal's class probabilities with Alpha-CLIP
    before per-class NMS. Training is unchanged. ``MODEL.ROI_HEADS.NAME: AlphaCLIPStandardROIHeads``."""

    @configurable
    def __init__(self, *, alpha_clip: Optional[AlphaCLIPRescorer] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha_clip = alpha_clip  # a plain object: not in the state dict
        self._images: Optional[ImageList] = None

    @classmethod
    def from_config(cls, cfg: CN, input_shape: Dict[str, Any]) -> Dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        ret["alpha_clip"] = AlphaCLIPRescorer.from_config(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        return ret

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None):
        self._images = images
        try:
            return super().forward(images, features, proposals, targets)
        finally:
            self._images = None

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.training or self.alpha_clip is None or self._images is None:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [x.proposal_boxes for x in proposals]))
        predictions = self.box_predictor(box_features)
        del box_features
        predictor = self.box_predictor
        boxes = predictor.predict_boxes(predictions, proposals)
        scores = predictor.predict_probs(predictions, proposals)
        scores = self.alpha_clip.rescore_probs(self._images, [p.proposal_boxes.tensor for p in proposals], scores)
        instances, _ = fast_rcnn_inference(boxes, scores, [x.image_size for x in proposals],
                                           predictor.test_score_thresh, predictor.test_nms_thresh,
                                           predictor.test_topk_per_image)
        return instances


def with_alpha_clip(base: Type[torch.nn.Module], name: Optional[str] = None) -> Type[torch.nn.Module]:
    """A subclass of the ROI heads class ``base`` whose final detections are rescored post hoc.

    Works for any ROI heads whose ``forward(images, features, proposals, targets, ...)`` returns
    ``(instances, losses)`` at inference (detectron2's and Detic's). State dict keys are unchanged.
    """

    class Rescoring(base):  # type: ignore[misc, valid-type]
        @configurable
        def __init__(self, *, alpha_clip: Optional[AlphaCLIPRescorer] = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.alpha_clip = alpha_clip

        @classmethod
        def from_config(cls, cfg: CN, input_shape: Dict[str, Any]) -> Dict[str, Any]:
            ret = super().from_config(cfg, input_shape)
            ret["alpha_clip"] = AlphaCLIPRescorer.from_config(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
            return ret

        def forward(self, images, features, proposals, targets=None, *args: Any, **kwargs: Any):
            instances, extra = super().forward(images, features, proposals, targets, *args, **kwargs)
            if not self.training and self.alpha_clip is not None:
                instances = self.alpha_clip.rescore_instances(images, instances)
            return instances, extra

    Rescoring.__name__ = Rescoring.__qualname__ = name or f"AlphaCLIP{base.__name__}"
    Rescoring.__doc__ = f"{base.__name__} with its final detections rescored by Alpha-CLIP (post hoc)."
    return Rescoring


def register_rescoring_roi_heads(base_name: str, name: Optional[str] = None) -> Type[torch.nn.Module]:
    """Register ``AlphaCLIP<base_name>`` (or ``name``): the registered ROI heads ``base_name`` + post-hoc
    Alpha-CLIP rescoring (:func:`with_alpha_clip`). Idempotent. E.g. after importing Detic:
    ``register_rescoring_roi_heads("CustomCascadeROIHeads")``."""
    name = name or f"AlphaCLIP{base_name}"
    if name in ROI_HEADS_REGISTRY:
        return ROI_HEADS_REGISTRY.get(name)
    if base_name not in ROI_HEADS_REGISTRY:
        raise KeyError(f"base_name: no ROI heads {base_name!r} in ROI_HEADS_REGISTRY (import the project that "
                       "defines it first)")
    cls = with_alpha_clip(ROI_HEADS_REGISTRY.get(base_name), name)
    ROI_HEADS_REGISTRY.register(cls)
    return cls


AlphaCLIPCascadeROIHeads = register_rescoring_roi_heads("CascadeROIHeads")


# ------------------------------------------------------------------------------------------------
def dump_zeroshot_classifier(model: torch.nn.Module, tokenizer: Callable, vocabulary: Union[str, Sequence[str]],
                             path: Union[str, Path], templates: Sequence[str] = DETECTION_TEMPLATES) -> str:
    """Write Detic's zero-shot classifier weights: ``.npy`` float32 ``[C, D]``, row c = the unit text
    embedding of class c (mean over ``templates``). Use as ``MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH``
    with ``ZEROSHOT_WEIGHT_DIM`` = D (512 for B/16, 768 for L/14)."""
    names = load_vocabulary(vocabulary)
    return save_text_classifier(path, text_classifier(model, tokenizer, names, templates).cpu())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m alphaclip_integrations.detectron2 --vocabulary lvis.json -o lvis_alphaclip.npy --checkpoint ...``"""
    from alphaclip_core.cli import add_model_arguments, load_model

    p = argparse.ArgumentParser(prog="python -m alphaclip_integrations.detectron2",
                                description="Dump Detic-style zero-shot classifier weights from the "
                                            "Alpha-CLIP text tower.")
    p.add_argument("--vocabulary", required=True, help=".txt (one name a line), .json (list or COCO/LVIS), or a,b,c")
    p.add_argument("--output", "-o", required=True, help="output .npy ([C, D] float32)")
    p.add_argument("--template", action="append",
                   help="prompt template with {} (repeatable; default: a detection ensemble)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    model, tokenizer = load_model(args)
    path = dump_zeroshot_classifier(model, tokenizer, args.vocabulary, args.output,
                                    tuple(args.template or DETECTION_TEMPLATES))
    print(path)
    return 0
