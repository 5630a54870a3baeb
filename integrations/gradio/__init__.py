"""The interactive region app (``alphaclip app``): mark regions of a picture, see what Alpha-CLIP sees.

- :mod:`.engine`: what the page computes (framework-free): regions from brushed layers, clicked boxes and
  SAM points; classification with the plain-CLIP baselines beside it; "where is"; region questions to
  an alpha LLaVA.
- :mod:`.app` (imports ``gradio``): the page, :func:`build_app` and :func:`launch`.
- :mod:`.variations` (imports gradio and diffusers): :func:`~.variations.variations_panel`, the
  "Variations" tab (Stable Diffusion image variations of the marked regions) that
  ``alphaclip app --pipeline FOLDER`` adds.
- :mod:`.cli`: the ``alphaclip app`` subcommand (imports gradio only when it runs, diffusers only with
  ``--pipeline``).

``build_app``, ``launch``, ``PanelContext`` and ``RegionEngine`` are importable from this package; the
Gradio names import gradio on first use, so ``alphaclip app`` can say how to install it when it is missing.
"""
from __future__ import annotations

from typing import Any

__all__ = ["RegionEngine", "build_app", "launch", "PanelContext", "scene_examples"]

_APP = ("build_app", "launch", "PanelContext", "scene_examples")


def __getattr__(name: str) -> Any:
    if name == "RegionEngine":
        from .engine import RegionEngine
        return RegionEngine
    if name in _APP:
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'alphaclip_integrations.gradio' has no attribute {name!r}")
