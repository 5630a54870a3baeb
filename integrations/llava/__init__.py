"""LLaVA-1.5 with an Alpha-CLIP vision tower: transformers-native and the original LLaVA code.

Importing this module (transformers only; llava-torch is not needed) registers, in transformers:

- ``AutoConfig``: ``alpha_llava`` -> :class:`AlphaLlavaConfig`;
- ``AutoModelForImageTextToText`` -> :class:`AlphaLlavaForConditionalGeneration`,
  ``AutoModel`` -> :class:`AlphaLlavaModel`;
- ``AutoProcessor`` -> :class:`AlphaLlavaProcessor`, ``AutoImageProcessor`` -> alpha-clip's
  ``AlphaCLIPImageProcessor``.

:func:`convert_llava` turns a transformers ``llava-1.5`` folder + an Alpha-CLIP checkpoint into an
alpha LLaVA folder. The original LLaVA code base (``llava-torch``) lives in
:mod:`alphaclip_integrations.llava.original` (imported on demand: it imports ``llava``);
``python -m alphaclip_integrations.llava`` runs LLaVA's entry points with the alpha tower.

Under transformers 4.x (LLaVA's pinned environment, where LLaVA trains) only the original-LLaVA part
imports; the transformers-native names then raise ImportError when used.
"""
from __future__ import annotations

from typing import Any

import transformers

from .inputs import paired_batch
from .weights import PREFIX, load_alpha_visual, parse_tower_name

__all__ = ["AlphaLlavaConfig", "AlphaLlavaModel", "AlphaLlavaForConditionalGeneration", "AlphaLlavaProcessor",
           "convert_llava", "load_alpha_visual", "parse_tower_name", "paired_batch", "PREFIX", "register"]

_NATIVE = ("AlphaLlavaConfig", "AlphaLlavaModel", "AlphaLlavaForConditionalGeneration", "AlphaLlavaProcessor",
           "convert_llava", "register")

if int(transformers.__version__.split(".")[0]) >= 5:
    from .native import (AlphaLlavaConfig, AlphaLlavaForConditionalGeneration, AlphaLlavaModel,  # noqa: F401
                         AlphaLlavaProcessor, convert_llava, register)

    register()
else:  # LLaVA's pinned environment: alphaclip_integrations.llava.original works, the native model does not

    def __getattr__(name: str) -> Any:
        if name in _NATIVE:
            raise ImportError(f"alphaclip_integrations.llava.{name} needs transformers >= 5 (found "
                              f"{transformers.__version__}); under LLaVA's pinned environment use "
                              "alphaclip_integrations.llava.original")
        raise AttributeError(f"module 'alphaclip_integrations.llava' has no attribute {name!r}")
