"""The ``zero-shot-region-classification`` pipeline: an image, its regions and candidate labels -> scores.

``pipeline("zero-shot-region-classification", model=folder)(image, candidate_labels=[...],
masks=..., boxes=...)`` returns one ranked list per region (regions in the order masks, boxes,
polygons, RLEs; none = the whole image): ``[[{"label": ..., "score": ...}, ...], ...]``, scores a
softmax over the labels of ``logit_scale * cosine``. The cosines come from
:func:`alphaclip_core.score_regions` (the image prepared once, regions in batches).

Precision: ``pipeline(..., precision="auto" | "fp32" | "bf16" | "fp16")`` puts the vision tower in
that precision (``auto``: measured, see :mod:`alphaclip_core.precision`; the text tower as
:data:`~alphaclip_core.precision.TEXT_PRECISION` says). Without ``precision``, a model loaded in
float32 (transformers' default) gets ``auto``; a model loaded in another dtype (``dtype=...``) is
left as the caller loaded it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Pipeline
from transformers.image_utils import load_image

from alphaclip_core.precision import Precision, apply_precision
from alphaclip_core.regions import score_regions

__all__ = ["ZeroShotRegionClassificationPipeline", "HFAlphaCLIPAdapter", "TASK"]

TASK = "zero-shot-region-classification"


class HFAlphaCLIPAdapter(nn.Module):
    """An ``AlphaCLIPModel`` seen through alpha-clip's model protocol, so the core's region tools run on it:
    ``encode_image(image [B,3,S,S], alpha [B,1,S,S] | None, normalize) -> [B, D]`` and
    ``encode_text(input_ids [L,T], normalize, attention_mask) -> [L, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, image: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                     normalize: bool = False) -> torch.Tensor:
        dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        alpha = alpha.to(dtype) if alpha is not None else None
        feats = self.model.get_image_features(pixel_values=image.to(dtype), alpha_values=alpha).pooler_output
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(feats, dim=-1) if normalize else feats


class ZeroShotRegionClassificationPipeline(Pipeline):
    """Zero-shot classification of REGIONS of an image with Alpha-CLIP.

    Call with ``image`` (PIL, path, numpy ``HxWx3``, torch ``[3,H,W]``), ``candidate_labels`` and any of
    ``masks`` / ``boxes`` / ``polygons`` / ``rles`` (as :class:`AlphaCLIPImageProcessor` takes them for one
    image), plus optional ``hypothesis_template`` (default ``"a photo of a {}."``), ``mode``
    (crop/pad/squash) and ``region_batch_size``. A list of images applies the same regions to each.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args: Any, precision: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the :class:`~alphaclip_core.precision.Precision` applied (None: the model's dtype as loaded)
        self.precision: Optional[Precision] = None
        if precision is None and self.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float32:
            precision = "auto"
        if precision is not None:
            self.precision = apply_precision(self.model, precision, self.device,
                                             vision=[self.model.vision_model,
                                                     getattr(self.model, "visual_projection", None)])

    def _sanitize_parameters(self, **kwargs: Any):
        pre: Dict[str, Any] = {}
        for key in ("candidate_labels", "hypothesis_template", "masks", "boxes", "polygons", "rles", "mode",
                    "timeout"):
            if key in kwargs:
                pre[key] = kwargs.pop(key)
        forward = {"region_batch_size": kwargs.pop("region_batch_size")} if "region_batch_size" in kwargs else {}
        if kwargs:
            raise TypeError(f"{TASK} pipeline got unexpected arguments {sorted(kwargs)}")
        return pre, forward, {}

    def __call__(self, image: Any, candidate_labels: Optional[Sequence[str]] = None, **kwargs: Any):
        if candidate_labels is None or len(candidate_labels) == 0:
            raise ValueError("candidate_labels: expected at least one label")
        return super().__call__(image, candidate_labels=list(candidate_labels), **kwargs)

    def preprocess(self, image: Any, candidate_labels: List[str], hypothesis_template: str = "a photo of a {}.",
                   masks: Any = None, boxes: Any = None, polygons: Any = None, rles: Any = None,
                   mode: Optional[str] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        if "{}" not in hypothesis_template:
            raise ValueError(f"hypothesis_template: needs a '{{}}' for the label, got {hypothesis_template!r}")
        if isinstance(image, str):
            image = load_image(image, timeout=timeout)
        inputs = self.image_processor(image, masks=masks, boxes=boxes, polygons=polygons, rles=rles, mode=mode)
        texts = [hypothesis_template.format(label) for label in candidate_labels]
        text_inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"][:1], "alpha_values": inputs["alpha_values"],
                "input_ids": text_inputs["input_ids"], "attention_mask": text_inputs["attention_mask"],
                "candidate_labels": candidate_labels}

    def _forward(self, model_inputs: Dict[str, Any], region_batch_size: Optional[int] = None) -> Dict[str, Any]:
        adapter = HFAlphaCLIPAdapter(self.model)
        text = adapter.encode_text(model_inputs["input_ids"], normalize=True,
                                   attention_mask=model_inputs["attention_mask"]).float()
        cos = score_regions(adapter, model_inputs["pixel_values"], model_inputs["alpha_values"], text,
                            batch_size=region_batch_size)
        logits = self.model.logit_scale.exp().float() * cos
        return {"logits": logits, "candidate_labels": model_inputs["candidate_labels"]}

    def postprocess(self, model_outputs: Dict[str, Any]) -> List[List[Dict[str, Any]]]:
        labels = model_outputs["candidate_labels"]
        probs = model_outputs["logits"].softmax(dim=-1).tolist()
        return [[{"score": s, "label": label} for s, label in sorted(zip(row, labels), key=lambda x: -x[0])]
                for row in probs]
