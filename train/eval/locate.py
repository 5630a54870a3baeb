"""Where is "phrase"? Score many candidate regions of one image against a phrase with Alpha-CLIP.

Candidates come from SAM's automatic mask generator, or from given masks / boxes. The image is
prepared once with all K alpha maps (one paired transform), the regions are scored in batches
(:func:`alphaclip_core.regions.score_regions`), and the result ranks the regions and paints a
heat map (each pixel takes the highest score of the regions covering it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from alphaclip_core.alpha import PairedTransform, region_masks
from alphaclip_core.regions import preprocess_params, score_regions, text_classifier
from alphaclip_core.viz import heatmap_overlay, overlay_regions

from .baselines import mask_bbox

__all__ = ["LocateResult", "auto_masks", "locate", "render"]


@dataclass
class LocateResult:
    """Regions of one image scored against one phrase.

    Attributes:
        phrase: the phrase.
        masks: ``[K, H, W]`` float region masks in ``[0, 1]`` at the image's size.
        cosine: ``[K]`` cosine similarity of each region with the phrase, in ``[-1, 1]``.
        probs: ``[K]`` softmax over regions of ``logit_scale * cosine`` (sums to 1).
        order: ``[K]`` region indices, best first.
    """

    phrase: str
    masks: torch.Tensor
    cosine: torch.Tensor
    probs: torch.Tensor
    order: torch.Tensor

    def top(self, n: int = 3) -> List[dict]:
        """The ``n`` best regions: ``[{"index", "cosine", "prob", "box": [x0, y0, x1, y1]}, ...]``."""
        out = []
        for i in self.order[:n].tolist():
            out.append({"index": i, "cosine": float(self.cosine[i]), "prob": float(self.probs[i]),
                        "box": list(mask_bbox(self.masks[i] > 0.5))})
        return out

    def heat(self, kind: str = "cosine") -> torch.Tensor:
        """``[H, W]`` heat map: per pixel, the highest score of the regions covering it (mask > 0.5).

        kind: ``cosine`` (graded; pixels in no region get the lowest cosine) or ``prob`` (the softmax
        probabilities, peaked at the best region; 0 where no region).
        """
        if kind not in ("cosine", "prob"):
            raise ValueError(f"kind: expected 'cosine' or 'prob', got {kind!r}")
        inside = self.masks > 0.5
        if kind == "prob":
            return torch.where(inside, self.probs[:, None, None], torch.zeros(())).amax(0)
        low = self.cosine.min()
        return torch.where(inside, self.cosine[:, None, None], low).amax(0)


def auto_masks(image: Image.Image, generator: Any, min_area: int = 1, max_regions: Optional[int] = None
               ) -> torch.Tensor:
    """Masks from a SAM-style automatic generator (``generator.generate(HxWx3 uint8) -> [{"segmentation": bool
    [H, W], "area": int, ...}]``), largest first, those under ``min_area`` pixels dropped: float ``[K, H, W]``.

    Raises ValueError when no mask is left.
    """
    found = generator.generate(np.asarray(image.convert("RGB")))
    segs = [np.asarray(r["segmentation"], dtype=bool) for r in found]
    segs = [s for s in segs if s.sum() >= max(1, min_area)]
    segs.sort(key=lambda s: -int(s.sum()))
    if max_regions is not None:
        segs = segs[:max_regions]
    if not segs:
        raise ValueError(f"the mask generator found no region of at least {min_area} pixels; "
                         "pass boxes or masks instead, or lower the generator's thresholds")
    return torch.from_numpy(np.stack(segs)).float()


@torch.no_grad()
def locate(model: torch.nn.Module, tokenizer: Callable, image: Image.Image, phrase: str, *, masks: Any = None,
           boxes: Any = None, mask_generator: Any = None, template: str = "{}", batch_size: int = 32,
           mode: str = "pad", min_area: int = 1) -> LocateResult:
    """Score candidate regions of ``image`` against ``phrase``.

    Args:
        image: PIL image (H x W).
        phrase: what to look for, e.g. ``"the red umbrella"``; formatted into ``template``.
        masks: candidate regions as ``[K, H, W]`` masks (with ``boxes``: both kinds are candidates).
        boxes: candidate regions as ``[K, 4]`` xyxy pixel boxes.
        mask_generator: used when neither masks nor boxes are given: a SAM automatic mask generator
            (see :func:`alphaclip_train.sam.automatic_mask_generator`).
        batch_size: regions per forward pass.
        mode: the paired transform's geometry (default ``pad``: no region is cut off).
    Returns:
        :class:`LocateResult` with K regions.
    """
    image = image.convert("RGB")
    if masks is None and boxes is None:
        if mask_generator is None:
            raise ValueError("locate: give masks, boxes or a mask_generator")
        masks = auto_masks(image, mask_generator, min_area=min_area)
    regions = region_masks(image.height, image.width, mask=masks, box=boxes)
    pixels, alpha = PairedTransform(mode=mode, **preprocess_params(model))(image, regions)
    text = text_classifier(model, tokenizer, [phrase], (template,))
    cos = score_regions(model, pixels, alpha, text, batch_size)[:, 0].cpu()
    scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
    probs = (scale * cos).softmax(0)
    return LocateResult(phrase, regions.cpu(), cos, probs, cos.argsort(descending=True))


def render(image: Image.Image, result: LocateResult, top: int = 3, heat: str = "cosine"
           ) -> Tuple[Image.Image, Image.Image]:
    """``(overlay, heat)``: the ``top`` best regions drawn with their probabilities, and the heat-map overlay
    (``heat``: ``cosine`` or ``prob``, see :meth:`LocateResult.heat`)."""
    best = result.top(top)
    caps = [f"#{r + 1} {result.phrase}: {b['prob']:.2f}" for r, b in enumerate(best)]
    overlay = overlay_regions(image, result.masks[[b["index"] for b in best]], caps)
    return overlay, heatmap_overlay(image, result.heat(heat))
