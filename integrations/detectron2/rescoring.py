"""ROI heads that rescore a detector's detections with Alpha-CLIP, and the rescorer they share."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, Union

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads  # noqa: F401  (registers it)
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances

from alphaclip_core.precision import PRECISIONS, apply_precision
from alphaclip_core.region_classifier import (DETECTION_TEMPLATES, AlphaCLIPRegionClassifier, embedding_dim,
                                              load_text_classifier, read_vocabulary)

__all__ = ["AlphaCLIPRescorer", "AlphaCLIPStandardROIHeads", "AlphaCLIPCascadeROIHeads", "with_alpha_clip",
           "register_rescoring_roi_heads", "rescoring_heads_name", "is_rescoring_heads", "set_vocabulary",
           "detector_num_classes"]

logger = logging.getLogger(__name__)
PREFIX = "AlphaCLIP"


# ------------------------------------------------------------------------------------------------ model
def _load_alpha_clip(cfg: CN):
    from alphaclip_core.cli import load_model

    from .config import looks_like_path

    c = cfg.MODEL.ALPHA_CLIP
    if not c.CHECKPOINT and not c.ARCH.startswith("local-dir:"):
        raise ValueError("MODEL.ALPHA_CLIP.CHECKPOINT: required (Alpha-CLIP weights file or pretrained tag), "
                         "unless MODEL.ALPHA_CLIP.ARCH is local-dir:FOLDER")
    if c.CHECKPOINT and looks_like_path(c.CHECKPOINT) and not Path(c.CHECKPOINT).is_file():
        raise FileNotFoundError(f"MODEL.ALPHA_CLIP.CHECKPOINT: no such file: {c.CHECKPOINT}")
    if c.BASE and not Path(c.BASE).is_file():
        raise FileNotFoundError(f"MODEL.ALPHA_CLIP.BASE: no such file: {c.BASE}")
    if c.PRECISION not in PRECISIONS:
        raise ValueError(f"MODEL.ALPHA_CLIP.PRECISION: expected auto, fp32, fp16 or bf16, got {c.PRECISION!r}")
    args = argparse.Namespace(model=c.ARCH, checkpoint=c.CHECKPOINT or None, base=c.BASE or None, device="cpu",
                              precision="fp32")
    try:
        model, tokenizer = load_model(args)
    except Exception as e:  # open_clip / checkpoint errors: say which keys to look at
        raise ValueError(f"MODEL.ALPHA_CLIP.CHECKPOINT: could not load {c.CHECKPOINT!r} as MODEL.ALPHA_CLIP.ARCH "
                         f"{c.ARCH!r} (BASE {c.BASE!r}): {e}") from e
    # the model moves to the detector's device at its first batch: resolve `auto` for that device
    device = str(getattr(cfg.MODEL, "DEVICE", "cpu") or "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    choice = apply_precision(model, c.PRECISION, device)
    logger.info("Alpha-CLIP precision: %s", choice)
    return model.eval(), tokenizer


# ------------------------------------------------------------------------------------------------ classes
def _box_predictors(heads: torch.nn.Module) -> List[torch.nn.Module]:
    preds = getattr(heads, "box_predictor", None)
    if preds is None:
        return []
    return list(preds) if isinstance(preds, torch.nn.ModuleList) else [preds]


def _zero_shot_weights(heads: torch.nn.Module) -> List[torch.Tensor]:
    """Detic's zero-shot classifiers' ``zs_weight`` (``[D, C + 1]``, last column background), per stage."""
    out = []
    for p in _box_predictors(heads):
        w = getattr(getattr(p, "cls_score", None), "zs_weight", None)
        if isinstance(w, torch.Tensor):
            out.append(w)
    return out


def detector_num_classes(heads: torch.nn.Module) -> int:
    """The number of foreground classes the heads predict NOW: the columns of Detic's zero-shot classifier
    (which its custom-vocabulary reset replaces) when there is one, else ``heads.num_classes``."""
    zs = _zero_shot_weights(heads)
    return int(zs[-1].shape[1] - 1) if zs else int(heads.num_classes)


def _fingerprint(heads: torch.nn.Module) -> List[Optional[torch.Tensor]]:
    """A cheap signature of each stage's zero-shot classifier: a fixed random projection of its columns
    ``[C + 1]`` (``None`` for a learned ``zs_weight`` parameter, which training changes)."""
    out: List[Optional[torch.Tensor]] = []
    for w in _zero_shot_weights(heads):
        if isinstance(w, torch.nn.Parameter):
            out.append(None)
            continue
        r = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(0))
        out.append((r.to(w.device) @ w.detach().float()).cpu())
    return out


def _same_fingerprint(a: List[Optional[torch.Tensor]], b: List[Optional[torch.Tensor]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x is None) != (y is None):
            return False
        if x is not None and (x.shape != y.shape or not torch.allclose(x, y, rtol=1e-3, atol=1e-3)):
            return False
    return True


# ------------------------------------------------------------------------------------------------ rescorer
class AlphaCLIPRescorer:
    """Rescores detector outputs with an :class:`AlphaCLIPRegionClassifier` (a plain object, not a module,
    so detector checkpoints neither contain nor expect Alpha-CLIP's weights).

    Args:
        model, tokenizer: the Alpha-CLIP model (eval) and its open_clip tokenizer.
        pixel_mean, pixel_std: the detector's input normalisation (``cfg.MODEL.PIXEL_MEAN/STD``, 0..255 scale).
        input_format: ``BGR`` or ``RGB`` (``cfg.INPUT.FORMAT``).
        max_regions: (pre-NMS) rescore at most this many proposals per image (top by detector score); 0 = all.
        ensemble_weight: ``w`` for every class, in [0, 1].
        novel_weight: ``w`` for the classes :meth:`set_vocabulary` calls novel (``None``: no novel classes).
        templates, expansion, mode, batch_size: as in :class:`AlphaCLIPRegionClassifier`.

    The vocabulary comes with :meth:`set_vocabulary`; until then :attr:`classifier` is ``None``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], input_format: str = "BGR", max_regions: int = 0, *,
                 ensemble_weight: float = 0.5, novel_weight: Optional[float] = None,
                 templates: Sequence[str] = DETECTION_TEMPLATES, expansion: Optional[float] = None,
                 mode: str = "pad", batch_size: int = 64) -> None:
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format: expected 'BGR' or 'RGB', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean / pixel_std: expected 3 values each (0..255 scale)")
        for name, w in (("ensemble_weight", ensemble_weight), ("novel_weight", novel_weight)):
            if w is not None and not 0.0 <= w <= 1.0:
                raise ValueError(f"{name}: expected a weight in [0, 1], got {w}")
        self.model = model
        self.tokenizer = tokenizer
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        self.input_format = input_format
        self.max_regions = int(max_regions)
        self.ensemble_weight = float(ensemble_weight)
        self.novel_weight = novel_weight
        self.classifier_kwargs = dict(templates=tuple(templates), expansion=expansion, mode=mode,
                                      batch_size=batch_size)
        self.classifier: Optional[AlphaCLIPRegionClassifier] = None
        self._fingerprint: List[Optional[torch.Tensor]] = []

    @classmethod
    def from_config(cls, cfg: CN, num_classes: int) -> "AlphaCLIPRescorer":
        """Build from ``MODEL.ALPHA_CLIP.*`` (weights loaded now); a vocabulary, when the config gives one,
        must have ``num_classes`` names."""
        from .config import check_alphaclip_config, config_vocabulary, vocabulary_mismatch

        c = cfg.MODEL.ALPHA_CLIP
        check_alphaclip_config(cfg)
        vocabulary = config_vocabulary(cfg)
        if vocabulary is not None and len(vocabulary) != num_classes:
            raise ValueError(vocabulary_mismatch(len(vocabulary), num_classes))
        if c.TEXT_EMBEDDINGS and vocabulary is None:
            raise ValueError("MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS: give the VOCABULARY (or VOCABULARY_FILE) the "
                             "embeddings were written for")
        model, tokenizer = _load_alpha_clip(cfg)
        rescorer = cls(model, tokenizer, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT, c.MAX_REGIONS,
                       ensemble_weight=c.ENSEMBLE_WEIGHT,
                       novel_weight=c.ENSEMBLE_WEIGHT_NOVEL if c.ENSEMBLE_WEIGHT_NOVEL >= 0 else None,
                       templates=tuple(c.PROMPTS), expansion=c.EXPANSION or None, mode=c.MODE,
                       batch_size=c.BATCH_SIZE)
        if vocabulary is None:
            logger.info("MODEL.ALPHA_CLIP: no vocabulary yet; call set_vocabulary(model, names) before inference")
            return rescorer
        text = None
        if c.TEXT_EMBEDDINGS:
            text = load_text_classifier(c.TEXT_EMBEDDINGS, vocabulary, embedding_dim(model), c.ARCH,
                                        arg="MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS")
        rescorer.set_vocabulary(vocabulary, text, c.NOVEL_CLASSES)
        return rescorer

    def set_vocabulary(self, vocabulary: Sequence[str], text_features: Optional[torch.Tensor] = None,
                       novel_classes: Sequence[int] = ()) -> None:
        """Classify over ``vocabulary`` (C names, the detector's class order) from now on.

        Args:
            text_features: ``[C, D]`` precomputed class embeddings (skips the text tower).
            novel_classes: indices that get ``novel_weight``.
        """
        names = read_vocabulary(vocabulary)
        weight: Union[float, torch.Tensor] = self.ensemble_weight
        if len(novel_classes):
            if self.novel_weight is None:
                raise ValueError("novel_classes: given, but no novel weight (MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT_NOVEL "
                                 "is negative)")
            bad = [i for i in novel_classes if not 0 <= i < len(names)]
            if bad:
                raise ValueError(f"novel_classes: indices {bad} outside [0, {len(names)})")
            weight = torch.full((len(names),), self.ensemble_weight)
            weight[list(novel_classes)] = float(self.novel_weight)
        self.classifier = AlphaCLIPRegionClassifier(self.model, self.tokenizer, names, ensemble_weight=weight,
                                                    text_features=text_features, **self.classifier_kwargs)

    # -------------------------------------------------------------------------------------------- sync
    def bind(self, heads: torch.nn.Module) -> None:
        """Record the detector classifier this vocabulary belongs to (see :meth:`check`)."""
        self._fingerprint = _fingerprint(heads)

    def check(self, heads: torch.nn.Module) -> AlphaCLIPRegionClassifier:
        """Fail clearly, before rescoring, when the Alpha-CLIP vocabulary no longer matches the detector's
        classes (e.g. after Detic's ``reset_cls_test``); returns the classifier."""
        if self.classifier is None:
            raise RuntimeError("Alpha-CLIP rescoring has no vocabulary: set MODEL.ALPHA_CLIP.VOCABULARY "
                               "(or VOCABULARY_FILE), or call alphaclip_integrations.detectron2.set_vocabulary("
                               "model, names) after the detector's classes are set")
        n = detector_num_classes(heads)
        if n != self.classifier.num_classes:
            raise RuntimeError(f"the detector now predicts {n} classes but the Alpha-CLIP vocabulary has "
                               f"{self.classifier.num_classes}: after changing the detector's classes (Detic's "
                               "reset_cls_test), call alphaclip_integrations.detectron2.set_vocabulary(model, names)")
        if not _same_fingerprint(self._fingerprint, _fingerprint(heads)):
            raise RuntimeError("the detector's zero-shot classifier changed since the Alpha-CLIP vocabulary was set "
                               "(Detic's reset_cls_test?): call alphaclip_integrations.detectron2.set_vocabulary("
                               "model, names) with the new class names, in the new order")
        return self.classifier

    # -------------------------------------------------------------------------------------------- scoring
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
        if next(self.model.parameters()).device != images.tensor.device:
            self.model.to(images.tensor.device)

    def _classifier(self) -> AlphaCLIPRegionClassifier:
        if self.classifier is None:
            raise RuntimeError("Alpha-CLIP rescoring has no vocabulary yet (see set_vocabulary)")
        return self.classifier

    def clip_probs(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``[R, C]`` Alpha-CLIP probabilities for xyxy boxes ``[R, 4]`` of one ``[3, h, w]`` RGB image
        (boxes thinner than a pixel are snapped by the classifier)."""
        clf = self._classifier()
        if boxes.shape[0] == 0:
            return torch.zeros(0, clf.num_classes)
        return clf(image, boxes=boxes.detach().float().cpu()).probs

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
        clf = self._classifier()
        self._device(images)
        out = []
        for image, b, p in zip(self.images_rgb(images), boxes, probs):
            c = clf.num_classes
            if p.shape[1] != c + 1:
                raise ValueError(f"probs: expected [R, {c + 1}] (C classes + background), got {list(p.shape)}")
            p = p.clone()
            idx = torch.arange(p.shape[0], device=p.device)
            if self.max_regions and p.shape[0] > self.max_regions:
                idx = p[:, :c].max(dim=1).values.topk(self.max_regions).indices
            if len(idx):
                clip = self.clip_probs(image, b[idx])
                p[idx, :c] = clf.ensemble(p[idx, :c], clip).to(p)
            out.append(p)
        return out

    @torch.no_grad()
    def rescore_instances(self, images: ImageList, instances: Sequence[Instances]) -> List[Instances]:
        """Post-hoc: ``scores = scores ** (1 - w) * p_clip[pred_classes] ** w`` for final detections.

        Adds the fields ``det_scores`` (the detector's) and ``clip_scores`` (Alpha-CLIP's probability of
        the predicted class). Instances must be in the input frame (before ``detector_postprocess``).
        """
        clf = self._classifier()
        self._device(images)
        for image, inst in zip(self.images_rgb(images), instances):
            clip = self.clip_probs(image, inst.pred_boxes.tensor)
            classes = inst.pred_classes.cpu()
            clip_cls = clip[torch.arange(len(classes)), classes] if len(classes) else torch.zeros(0)
            det = inst.scores
            one_hot = torch.zeros(len(classes), clf.num_classes)
            if len(classes):
                one_hot[torch.arange(len(classes)), classes] = 1.0
            # the ensemble over the C columns, read at the predicted class (per-class weights honoured)
            mixed = clf.ensemble(one_hot * det.detach().float().cpu()[:, None],
                                             one_hot * clip_cls[:, None])
            inst.det_scores = det
            inst.clip_scores = clip_cls.to(det)
            inst.scores = (mixed * one_hot).sum(dim=1).to(det)
        return list(instances)


# ------------------------------------------------------------------------------------------------ heads
def _rescorer_from_config(cfg: CN) -> AlphaCLIPRescorer:
    return AlphaCLIPRescorer.from_config(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def _check_classifier_info(args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    """Detic's heads take ``classifier_info=(classifier, ...)``: a per-call classifier would change the
    classes behind Alpha-CLIP's back."""
    info = kwargs.get("classifier_info", args[1] if len(args) > 1 else None)
    if info is not None and info[0] is not None:
        raise ValueError("classifier_info: a per-call classifier changes the detector's classes; Alpha-CLIP "
                         "rescoring needs them fixed (reset them and call set_vocabulary(model, names) instead)")


@ROI_HEADS_REGISTRY.register()
class AlphaCLIPStandardROIHeads(StandardROIHeads):
    """StandardROIHeads whose inference ensembles every proposal's class probabilities with Alpha-CLIP
    before per-class NMS. Training is unchanged. Chosen by :func:`enable_alphaclip` for ``StandardROIHeads``."""

    alphaclip_base = "StandardROIHeads"

    @configurable
    def __init__(self, *, alpha_clip: Optional[AlphaCLIPRescorer] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha_clip = alpha_clip  # a plain object: not in the state dict
        if alpha_clip is not None:
            alpha_clip.bind(self)
        self._images: Optional[ImageList] = None

    @classmethod
    def from_config(cls, cfg: CN, input_shape: Dict[str, Any]) -> Dict[str, Any]:
        rescorer = _rescorer_from_config(cfg)  # first: its errors name MODEL.ALPHA_CLIP keys
        return {**super().from_config(cfg, input_shape), "alpha_clip": rescorer}

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
        self.alpha_clip.check(self)
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


def with_alpha_clip(base: Type[torch.nn.Module], name: Optional[str] = None,
                    base_name: Optional[str] = None) -> Type[torch.nn.Module]:
    """A subclass of the ROI heads class ``base`` whose final detections are rescored post hoc.

    Works for any ROI heads whose ``forward(images, features, proposals, targets, ...)`` returns
    ``(instances, losses)`` at inference (detectron2's, Detic's ``DeticCascadeROIHeads`` and
    ``CustomRes5ROIHeads``, CenterNet2's). Training, the classifier and the state dict keys are the base's.
    """

    class Rescoring(base):  # type: ignore[misc, valid-type]
        alphaclip_base = base_name or base.__name__

        @configurable
        def __init__(self, *, alpha_clip: Optional[AlphaCLIPRescorer] = None, **kwargs: Any) -> None:
            # the base's own __init__, not its @configurable wrapper: heads whose from_config passes `cfg`
            # along (Detic's CustomRes5ROIHeads) would otherwise be re-read from the config, as ours
            getattr(base.__init__, "__wrapped__", base.__init__)(self, **kwargs)
            self.alpha_clip = alpha_clip
            if alpha_clip is not None:
                alpha_clip.bind(self)

        @classmethod
        def from_config(cls, cfg: CN, input_shape: Dict[str, Any]) -> Dict[str, Any]:
            rescorer = _rescorer_from_config(cfg)  # first: its errors name MODEL.ALPHA_CLIP keys
            return {**super().from_config(cfg, input_shape), "alpha_clip": rescorer}

        def forward(self, images, features, proposals, targets=None, *args: Any, **kwargs: Any):
            rescore = not self.training and self.alpha_clip is not None
            if rescore:
                _check_classifier_info(args, kwargs)
                self.alpha_clip.check(self)
            instances, extra = super().forward(images, features, proposals, targets, *args, **kwargs)
            if rescore:
                instances = self.alpha_clip.rescore_instances(images, instances)
            return instances, extra

    Rescoring.__name__ = Rescoring.__qualname__ = name or f"{PREFIX}{base.__name__}"
    Rescoring.__doc__ = f"{base.__name__} with its final detections rescored by Alpha-CLIP (post hoc)."
    return Rescoring


def register_rescoring_roi_heads(base_name: str, name: Optional[str] = None) -> Type[torch.nn.Module]:
    """Register ``AlphaCLIP<base_name>`` (or ``name``): the registered ROI heads ``base_name`` + post-hoc
    Alpha-CLIP rescoring (:func:`with_alpha_clip`). Idempotent. :func:`enable_alphaclip` calls it for
    the heads the config names."""
    name = name or f"{PREFIX}{base_name}"
    if name in ROI_HEADS_REGISTRY:
        return ROI_HEADS_REGISTRY.get(name)
    if base_name not in ROI_HEADS_REGISTRY:
        raise KeyError(f"MODEL.ROI_HEADS.NAME: no ROI heads {base_name!r} in ROI_HEADS_REGISTRY; import the project "
                       "that defines them first (Detic: `import detic` with Detic and its third_party/CenterNet2 "
                       "on sys.path)")
    cls = with_alpha_clip(ROI_HEADS_REGISTRY.get(base_name), name, base_name)
    ROI_HEADS_REGISTRY.register(cls)
    return cls


def is_rescoring_heads(name: str) -> bool:
    """Whether the registered ROI heads ``name`` rescore with Alpha-CLIP."""
    return name in ROI_HEADS_REGISTRY and hasattr(ROI_HEADS_REGISTRY.get(name), "alphaclip_base")


def rescoring_heads_name(name: str) -> str:
    """The registered rescoring version of the ROI heads ``name`` (registered now if needed): ``name``
    itself when it already rescores, ``AlphaCLIPStandardROIHeads`` (pre-NMS) for ``StandardROIHeads``,
    else ``AlphaCLIP<name>`` (post hoc)."""
    if is_rescoring_heads(name):
        return name
    return register_rescoring_roi_heads(name).__name__ if name != "StandardROIHeads" else "AlphaCLIPStandardROIHeads"


AlphaCLIPCascadeROIHeads = register_rescoring_roi_heads("CascadeROIHeads")


# ------------------------------------------------------------------------------------------------ vocabulary
def set_vocabulary(model: torch.nn.Module, vocabulary: Union[str, Sequence[str]], *,
                   text_embeddings: Union[None, str, Path, torch.Tensor] = None,
                   novel_classes: Sequence[int] = ()) -> None:
    """Make a built detector's Alpha-CLIP vocabulary follow its (changed) classes.

    Call it after anything that changes the detector's classes, e.g. Detic's custom vocabulary
    ``reset_cls_test(model, embeddings, len(names))``, with the same names in the same order. Until
    it is called, inference fails (the class count or the zero-shot classifier no longer matches)
    rather than rescoring class i with another class's name.

    Args:
        model: a detector built after :func:`enable_alphaclip` (``model.roi_heads`` rescoring); DDP-wrapped is fine.
        vocabulary: names (or a ``.txt`` / ``.json`` file, see :func:`read_vocabulary`), one per class.
        text_embeddings: ``[C, D]`` Alpha-CLIP class embeddings, a tensor or a ``.npy`` from
            ``python -m alphaclip_integrations.detectron2`` (else the text tower runs now).
        novel_classes: indices that get ``MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT_NOVEL``.
    """
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    rescorer = getattr(heads, "alpha_clip", None)
    if not isinstance(rescorer, AlphaCLIPRescorer):
        raise ValueError(f"model: its ROI heads ({type(heads).__name__}) do not rescore with Alpha-CLIP; build it "
                         "after enable_alphaclip(cfg)")
    names = read_vocabulary(vocabulary)
    n = detector_num_classes(heads)
    if len(names) != n:
        raise ValueError(f"vocabulary: {len(names)} names, but the detector predicts {n} classes; set the detector's "
                         "classes first (Detic: reset_cls_test(model, embeddings, len(names)))")
    text = text_embeddings
    if text_embeddings is not None and not isinstance(text_embeddings, torch.Tensor):
        text = load_text_classifier(text_embeddings, names, embedding_dim(rescorer.model), arg="text_embeddings")
    rescorer.set_vocabulary(names, text, novel_classes)
    rescorer.bind(heads)
