"""Open-vocabulary region classification with Alpha-CLIP, framework-neutral (pure torch).

:class:`AlphaCLIPRegionClassifier` turns one image + K regions (xyxy boxes and/or masks) + a
vocabulary of C class names into ``[K, C]`` logits. It is what a detector (Detic / Detectron2, see
``alphaclip_integrations.detectron2``) calls to rescore its proposals, and what the pseudo-labeller
(``alphaclip_train.pseudolabel``) calls to pick the region of an image-labelled picture that shows
its class.

Choices (the paper is silent on them; ViLD and Detic are the models):

- **The image stays whole.** Alpha-CLIP reads the region through the alpha map, so by default
  (``expansion=None``) every region sees the whole image (padded to a square, ``mode="pad"``, so no
  region is cut off) and only its alpha differs; the image is prepared once per image.
- **Context expansion** (``expansion=r``, r >= 1): each region is instead cropped out of the image
  with its box scaled by ``r`` about its centre (clipped to the image), the crop padded to a square,
  and the alpha marks the region inside the crop. ``r = 1`` is a tight crop, ViLD's 1.5 adds
  context. Boxes smaller than ``min_crop`` pixels are grown to that size first.
- **Prompt ensembling**: each class's text embedding is the normalised mean over ``templates``
  (:data:`DETECTION_TEMPLATES` by default) of the normalised per-template embeddings.
- **Geometric-mean ensemble** with a detector's own class probabilities (ViLD-ensemble):
  ``p = p_det ** (1 - w) * p_clip ** w`` per class, ``w`` a float or one weight per class (e.g.
  larger for novel classes). :func:`geometric_ensemble` is the formula, alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .alpha import _image_to_tensor, boxes_to_masks, prepare, to_masks
# box geometry and vocabulary files lived here before the core was split (issue 16): they still import from here
from .boxes import _mask_boxes, _snap_thin_boxes, box_iou, expand_boxes, snap_boxes
from .regions import preprocess_params, region_batch_size, score_regions, text_classifier
from .vocabulary import category_name, embedding_dim, load_text_classifier, read_vocabulary, save_text_classifier

__all__ = ["DETECTION_TEMPLATES", "RegionLogits", "AlphaCLIPRegionClassifier", "geometric_ensemble",
           "box_iou", "expand_boxes", "snap_boxes", "category_name", "read_vocabulary", "save_text_classifier",
           "load_text_classifier", "embedding_dim"]

#: prompt ensemble for object classes (a subset of CLIP's ImageNet templates, as ViLD/Detic use).
DETECTION_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
)


def geometric_ensemble(detector_probs: torch.Tensor, clip_probs: torch.Tensor,
                       weight: Union[float, torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """ViLD-style geometric mean of two class-probability tables: ``det ** (1 - w) * clip ** w``.

    Args:
        detector_probs: ``[K, C]`` the detector's probabilities in ``[0, 1]`` (foreground classes only).
        clip_probs: ``[K, C]`` Alpha-CLIP's probabilities in ``[0, 1]``.
        weight: ``w`` in ``[0, 1]``: a float, or ``[C]`` one weight per class (e.g. 2/3 for novel
            classes, 1/3 for base classes as in ViLD). ``w = 0`` returns the detector's scores,
            ``w = 1`` Alpha-CLIP's.
        eps: added inside the powers' logarithm so that a zero probability stays finite.
    Returns:
        ``[K, C]`` combined scores in ``[0, 1]`` (not renormalised).
    """
    if detector_probs.shape != clip_probs.shape or detector_probs.dim() != 2:
        raise ValueError(f"detector_probs / clip_probs: expected two [K, C] tensors of the same shape, got "
                         f"{list(detector_probs.shape)} and {list(clip_probs.shape)}")
    for name, t in (("detector_probs", detector_probs), ("clip_probs", clip_probs)):
        if t.numel() and (float(t.min()) < -1e-6 or float(t.max()) > 1 + 1e-6):
            raise ValueError(f"{name}: expected probabilities in [0, 1], got range "
                             f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    w = torch.as_tensor(weight, dtype=torch.float32, device=detector_probs.device)
    if w.dim() not in (0, 1) or (w.dim() == 1 and w.shape[0] != detector_probs.shape[1]):
        raise ValueError(f"weight: expected a float or [C={detector_probs.shape[1]}] per-class weights, "
                         f"got shape {list(w.shape)}")
    if w.numel() and (float(w.min()) < 0 or float(w.max()) > 1):
        raise ValueError(f"weight: expected values in [0, 1], got range [{float(w.min())}, {float(w.max())}]")
    det = detector_probs.float().clamp(0, 1)
    clip = clip_probs.float().clamp(0, 1)
    return torch.exp((1 - w) * torch.log(det + eps) + w * torch.log(clip + eps)).clamp(0, 1)


@dataclass
class RegionLogits:
    """What :class:`AlphaCLIPRegionClassifier` returns for K regions over C classes.

    Attributes:
        logits: ``[K, C]`` ``logit_scale * cosine``.
        probs: ``[K, C]`` softmax of ``logits`` over the vocabulary (rows sum to 1).
        scores: ``[K, C]`` the final scores: ``probs``, or their geometric ensemble with the
            detector's probabilities when those were given.
        cosine: ``[K, C]`` cosine similarities in ``[-1, 1]``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    scores: torch.Tensor
    cosine: torch.Tensor


class AlphaCLIPRegionClassifier:
    """Classify regions of an image over an open vocabulary with Alpha-CLIP.

    Args:
        model: an Alpha-CLIP (``encode_image(image, alpha, normalize=)``, ``encode_text``), eval mode.
        tokenizer: ``tokenizer(list_of_str) -> LongTensor [N, context]`` (open_clip's).
        vocabulary: the C class names.
        templates: prompt templates (each with one ``{}``), averaged per class.
        expansion: ``None`` = the whole image with the region as alpha; a float ``r >= 1`` = crop the
            box scaled by ``r`` (see the module docstring).
        mode: the paired transform's geometry (``pad`` keeps every region; ``crop``; ``squash``).
        ensemble_weight: ``w`` of :func:`geometric_ensemble`; float or ``[C]``.
        logit_scale: multiplies the cosine; ``None`` = the model's ``logit_scale.exp()`` (100 for CLIP).
        batch_size: regions per forward pass (None: :func:`~alphaclip_core.regions.region_batch_size`,
            sized to GPU memory on CUDA, 32 elsewhere).
        min_crop: smallest crop side in pixels when ``expansion`` is set.
        text_features: precomputed ``[C, D]`` unit rows (skips the text tower).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Optional[Callable], vocabulary: Sequence[str], *,
                 templates: Sequence[str] = DETECTION_TEMPLATES, expansion: Optional[float] = None,
                 mode: str = "pad", ensemble_weight: Union[float, torch.Tensor] = 0.5,
                 logit_scale: Optional[float] = None, batch_size: Optional[int] = None, min_crop: float = 8.0,
                 text_features: Optional[torch.Tensor] = None) -> None:
        if isinstance(vocabulary, str) or not vocabulary:
            raise ValueError("vocabulary: expected a non-empty sequence of class names")
        if expansion is not None and not expansion >= 1.0:
            raise ValueError(f"expansion: expected None (whole image) or a ratio >= 1, got {expansion}")
        if mode not in ("crop", "pad", "squash"):
            raise ValueError(f"mode: expected 'crop', 'pad' or 'squash', got {mode!r}")
        if batch_size is None:
            batch_size = region_batch_size(model)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.model = model
        self.vocabulary = list(vocabulary)
        self.templates = tuple(templates)
        self.expansion = expansion
        self.mode = mode
        self.batch_size = batch_size
        self.min_crop = float(min_crop)
        self.ensemble_weight = ensemble_weight
        if logit_scale is None:
            logit_scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
        self.logit_scale = float(logit_scale)
        if text_features is None:
            if tokenizer is None:
                raise ValueError("tokenizer: needed to embed the vocabulary (or pass text_features)")
            text_features = text_classifier(model, tokenizer, self.vocabulary, self.templates)
        dim = embedding_dim(model)
        if text_features.dim() != 2 or text_features.shape[0] != len(self.vocabulary) or (
                dim is not None and text_features.shape[1] != dim):
            raise ValueError(f"text_features: expected [C={len(self.vocabulary)}, D={dim or 'D'}] (one row per class, "
                             f"D the model's embedding size), got {list(text_features.shape)}")
        self.text_features = F.normalize(text_features.float(), dim=-1)
        self._params = preprocess_params(model)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    # --------------------------------------------------------------------------------------------
    def region_masks(self, height: int, width: int, boxes: Optional[torch.Tensor] = None,
                     masks: Any = None, offset: int = 0) -> torch.Tensor:
        """``[K, H, W]`` float masks: the given masks, else the rasterised boxes (``offset``: index of
        the first region, for error messages)."""
        if masks is not None:
            m = to_masks(masks, height, width)
        elif boxes is not None:
            try:
                m = boxes_to_masks(_snap_thin_boxes(boxes, height, width), height, width)
            except ValueError as e:
                if not offset:
                    raise
                raise ValueError(f"{e} (box indices counted from region {offset})") from None
        else:
            raise ValueError("boxes / masks: give the regions to classify ([K, 4] xyxy boxes or [K, H, W] masks)")
        empty = (m.flatten(1).amax(1) <= 0).nonzero().flatten()
        if len(empty):
            raise ValueError(f"masks: region {offset + int(empty[0])} is empty (all zeros)")
        return m

    @torch.no_grad()
    def cosine(self, image: Any, boxes: Optional[Any] = None, masks: Any = None) -> torch.Tensor:
        """``[K, C]`` cosine similarity of each region with each class, in ``[-1, 1]``.

        Args:
            image: one image: PIL, ``HxWx3`` uint8 array, or ``[3, H, W]`` tensor (uint8, or float in [0, 1]).
            boxes: ``[K, 4]`` xyxy pixels in the image's frame.
            masks: ``[K, H, W]`` binary masks (take precedence over ``boxes`` as the alpha; boxes, when
                also given, set the crops under ``expansion``).

        Regions are rasterised ``batch_size`` at a time, so memory stays bounded for many regions of
        a large image.
        """
        img = _image_to_tensor(image)
        if img.shape[0] != 1:
            raise ValueError(f"image: expected one image, got a batch of {img.shape[0]}")
        h, w = img.shape[-2:]
        box_t = None
        if boxes is not None:
            box_t = torch.as_tensor(np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes,
                                               dtype=np.float32))
            if box_t.dim() != 2 or box_t.shape[1] != 4:
                raise ValueError(f"boxes: expected [K, 4] xyxy pixels, got {list(box_t.shape)}")
        if masks is not None:
            if isinstance(masks, (list, tuple)):
                masks = to_masks(masks, h, w) if masks else torch.zeros(0, h, w)
            if masks.ndim != 3:
                raise ValueError(f"masks: expected [K, H, W], got shape {list(masks.shape)}")
            count = masks.shape[0]
            if box_t is not None and box_t.shape[0] != count:
                raise ValueError(f"boxes / masks: got {box_t.shape[0]} boxes but {count} masks")
        elif box_t is not None:
            count = box_t.shape[0]
        else:
            raise ValueError("boxes / masks: give the regions to classify ([K, 4] xyxy boxes or [K, H, W] masks)")
        out = [torch.zeros(0, self.num_classes)]
        for start in range(0, count, self.batch_size):
            end = min(start + self.batch_size, count)
            chunk_boxes = None if box_t is None else box_t[start:end]
            m = self.region_masks(h, w, chunk_boxes, None if masks is None else masks[start:end], offset=start)
            if self.expansion is None:
                pixels, alpha = prepare(img, mask=m, mode=self.mode, **self._params)
                out.append(score_regions(self.model, pixels, alpha, self.text_features, self.batch_size).cpu())
            else:
                if chunk_boxes is None:
                    chunk_boxes = _mask_boxes(m)
                crops = expand_boxes(chunk_boxes, self.expansion, h, w, self.min_crop)
                out.append(self._score_crops(img, m, crops, offset=start))
        return torch.cat(out)

    def _score_crops(self, img: torch.Tensor, masks: torch.Tensor, crops: torch.Tensor, offset: int = 0
                     ) -> torch.Tensor:
        """One crop per region (image + its mask cut to the crop), encoded in batches."""
        device = next(self.model.parameters()).device
        text = self.text_features.to(device)
        out, pix_batch, alpha_batch = [], [], []

        def flush() -> None:
            if pix_batch:
                feats = self.model.encode_image(torch.cat(pix_batch).to(device), torch.cat(alpha_batch).to(device),
                                                normalize=True).float()
                out.append((feats @ text.T).cpu())
                pix_batch.clear()
                alpha_batch.clear()

        for k in range(masks.shape[0]):
            x0, y0 = int(np.floor(float(crops[k, 0]))), int(np.floor(float(crops[k, 1])))
            x1, y1 = int(np.ceil(float(crops[k, 2]))), int(np.ceil(float(crops[k, 3])))
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            mk = masks[k, y0:y1, x0:x1]
            if not mk.any():
                raise ValueError(f"boxes / masks: region {offset + k} has no pixel inside its crop {crops[k].tolist()}")
            pixels, alpha = prepare(img[:, :, y0:y1, x0:x1], mask=mk, mode=self.mode, **self._params)
            pix_batch.append(pixels)
            alpha_batch.append(alpha)
            if len(pix_batch) == self.batch_size:
                flush()
        flush()
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, image: Any, boxes: Optional[Any] = None, masks: Any = None,
                 detector_probs: Optional[torch.Tensor] = None) -> RegionLogits:
        """Classify K regions of one image over the vocabulary.

        Args:
            image, boxes, masks: as in :meth:`cosine`.
            detector_probs: ``[K, C]`` the detector's foreground probabilities for the same regions and
                classes; when given, ``scores`` is their :func:`geometric_ensemble` with Alpha-CLIP's.
        Returns:
            :class:`RegionLogits` with ``[K, C]`` tensors on the CPU.
        """
        cos = self.cosine(image, boxes, masks)
        logits = self.logit_scale * cos
        probs = logits.softmax(dim=-1)
        scores = probs
        if detector_probs is not None:
            scores = self.ensemble(detector_probs, probs)
        return RegionLogits(logits=logits, probs=probs, scores=scores, cosine=cos)

    def ensemble(self, detector_probs: torch.Tensor, clip_probs: torch.Tensor) -> torch.Tensor:
        """:func:`geometric_ensemble` with this classifier's ``ensemble_weight``."""
        if detector_probs.dim() != 2 or detector_probs.shape != clip_probs.shape:
            raise ValueError(f"detector_probs: expected [K={clip_probs.shape[0]}, C={self.num_classes}], "
                             f"got {list(detector_probs.shape)}")
        return geometric_ensemble(detector_probs.detach().float().cpu(), clip_probs, self.ensemble_weight)
