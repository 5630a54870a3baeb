"""Alpha-CLIP as the image encoder of diffusers pipelines: generation that follows the region.

- :class:`AlphaCLIPImageVariationPipeline`: Stable Diffusion image variations of a region
  (``pipe(image, box=...)`` / ``mask=...`` / nothing = whole image);
- :class:`AlphaCLIPShapEImg2ImgPipeline`: Shap-E image-to-3D of a region;
- :func:`convert_pipeline`: a stock image-variation (or Shap-E img2img) folder + an Alpha-CLIP
  checkpoint -> a pipeline folder that loads with the class's ``from_pretrained``;
- :func:`load_pipeline`, :func:`region_variations`: what the CLI (``alphaclip generate variation``)
  and the app call: image + region -> images.

Names resolve on first use (PEP 562), so ``alphaclip_integrations.diffusers.cli`` imports without
diffusers; the modules that define them import diffusers and transformers at their top.
``PreTrainedModel`` and ``ImageProcessingMixin`` are re-exported because ``model_index.json`` names
this module as the library of the Alpha-CLIP components, and diffusers looks their base classes up
there to find the loading methods.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AlphaCLIPImageVariationPipeline", "AlphaCLIPShapEImg2ImgPipeline", "processor_from_clip",
           "convert_pipeline", "alpha_encoder_from_checkpoint", "load_pipeline", "region_variations",
           "AlphaCLIPVisionModelWithProjection", "AlphaCLIPVisionModel", "AlphaCLIPImageProcessor"]

_WHERE = {
    "AlphaCLIPImageVariationPipeline": ".pipelines", "AlphaCLIPShapEImg2ImgPipeline": ".pipelines",
    "processor_from_clip": ".pipelines", "LIBRARY": ".pipelines",
    "convert_pipeline": ".convert", "alpha_encoder_from_checkpoint": ".convert",
    "load_pipeline": ".generate", "region_variations": ".generate",
    "AlphaCLIPVisionModelWithProjection": "alphaclip_integrations.hf",
    "AlphaCLIPVisionModel": "alphaclip_integrations.hf", "AlphaCLIPImageProcessor": "alphaclip_integrations.hf",
    "PreTrainedModel": "transformers", "ImageProcessingMixin": "transformers",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_WHERE))
