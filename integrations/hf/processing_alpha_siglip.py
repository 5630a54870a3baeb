"""Alpha-SigLIP processors: images + regions -> ``pixel_values`` + ``alpha_values``; texts -> ``input_ids``.

The images and their alpha maps go through alpha-clip's ONE paired transform
(:func:`alphaclip_core.prepare`, via :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor`)
with SigLIP's image defaults: mean/std 0.5 and a plain resize (``squash``), as SigLIP was trained.
The alpha normalisation stays the model family's (0.5 / 0.26: foreground +1.9231, background -1.9231).

Texts are padded to the context length (``padding="max_length"``) and no ``attention_mask`` is
returned: SigLIP's text tower was trained on fixed-length, unmasked sequences and pools the LAST
token (transformers' own SigLIP processor does the same).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
from transformers.image_processing_base import BatchFeature

from .processing_alpha_clip import AlphaCLIPImageProcessor, AlphaCLIPProcessor

__all__ = ["AlphaSiglipImageProcessor", "AlphaSiglipProcessor", "SIGLIP_MEAN", "SIGLIP_STD"]

#: SigLIP's image normalisation (images only; alpha keeps 0.5 / 0.26)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
_RESIZE_MODES = {"squash": "squash", "shortest": "crop", "longest": "pad"}


class AlphaSiglipImageProcessor(AlphaCLIPImageProcessor):
    """:class:`AlphaCLIPImageProcessor` with SigLIP's defaults (``mode="squash"``, mean/std 0.5).

    Args:
        size: the model's input side S; mode: ``squash`` (SigLIP's resize), ``crop`` or ``pad``;
        image_mean, image_std: RGB normalisation.
    """

    def __init__(self, size: int = 224, mode: str = "squash", image_mean: Sequence[float] = SIGLIP_MEAN,
                 image_std: Sequence[float] = SIGLIP_STD, **kwargs: Any) -> None:
        super().__init__(size=size, mode=mode, image_mean=image_mean, image_std=image_std, **kwargs)

    @classmethod
    def from_open_clip(cls, model: torch.nn.Module, mode: Optional[str] = None) -> "AlphaSiglipImageProcessor":
        """The image processor of an open_clip model: its input size, mean/std (SigLIP's 0.5 when the model's
        preprocess config does not say) and, unless ``mode`` is given, its resize mode (squash / shortest ->
        crop / longest -> pad)."""
        from alphaclip_core.regions import preprocess_params

        params = preprocess_params(model)
        cfg = dict(getattr(getattr(model, "visual", model), "preprocess_cfg", {}) or {})
        if mode is None:
            mode = _RESIZE_MODES.get(cfg.get("resize_mode"), "squash")
        return cls(size=params["size"], mode=mode, image_mean=params.get("mean", SIGLIP_MEAN),
                   image_std=params.get("std", SIGLIP_STD))


class AlphaSiglipProcessor(AlphaCLIPProcessor):
    """:class:`AlphaSiglipImageProcessor` + the SigLIP tokenizer of the model.

    ``processor(text=[...], images=image, masks=..., boxes=...)`` returns ``input_ids [T, context_length]``,
    ``pixel_values`` and ``alpha_values``, ready for ``AlphaSiglipModel(**inputs)``.

    Args:
        image_processor: the image processor.
        tokenizer: a transformers tokenizer (``SiglipTokenizer``, ``GemmaTokenizerFast`` for SigLIP2, ...).
        context_length: the text length every prompt is padded / truncated to (SigLIP: 64; open_clip's
            SigLIP configs: their ``text_cfg.context_length``).
    """

    def __init__(self, image_processor: Optional[AlphaSiglipImageProcessor] = None, tokenizer: Any = None,
                 context_length: int = 64, **kwargs: Any) -> None:
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length <= 0:
            raise ValueError(f"context_length: expected a positive int, got {context_length!r}")
        self.context_length = context_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Union[str, List[str], None] = None, masks: Any = None,
                 boxes: Any = None, polygons: Any = None, rles: Any = None, *, mode: Optional[str] = None,
                 return_tensors: Optional[str] = "pt", return_region_index: bool = False,
                 padding: Union[bool, str] = "max_length", truncation: bool = True, **text_kwargs: Any
                 ) -> BatchFeature:
        """Tokenise ``text`` (padded to ``context_length``, no attention mask) and prepare ``images`` with their
        regions (see :meth:`AlphaCLIPImageProcessor.preprocess`)."""
        text_kwargs.setdefault("max_length", self.context_length)
        out = super().__call__(images=images, text=text, masks=masks, boxes=boxes, polygons=polygons, rles=rles,
                               mode=mode, return_tensors=return_tensors, return_region_index=return_region_index,
                               padding=padding, truncation=truncation, **text_kwargs)
        out.pop("attention_mask", None)
        return out

    @classmethod
    def from_open_clip(cls, model: torch.nn.Module, tokenizer: Any, mode: Optional[str] = None
                       ) -> "AlphaSiglipProcessor":
        """The processor matching an open_clip SigLIP model and its tokenizer (a transformers tokenizer, or
        open_clip's ``HFTokenizer`` from ``open_clip.get_tokenizer(name)``, whose transformers tokenizer is used)."""
        inner = getattr(tokenizer, "tokenizer", tokenizer)
        if not callable(getattr(inner, "save_pretrained", None)):
            raise TypeError(f"tokenizer: expected a transformers tokenizer or open_clip's HFTokenizer, got "
                            f"{type(tokenizer).__name__}")
        context = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None) or 64
        return cls(AlphaSiglipImageProcessor.from_open_clip(model, mode=mode), inner, context_length=int(context))

    @property
    def model_input_names(self) -> List[str]:
        names = [n for n in self.tokenizer.model_input_names if n != "attention_mask"]
        return list(dict.fromkeys(names + self.image_processor.model_input_names))
