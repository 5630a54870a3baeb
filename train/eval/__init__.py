"""Evaluation: ImageNet-S zero-shot, referring expressions, where-is search (``alphaclip locate``).

Modules: :mod:`.imagenet_s`, :mod:`.rec`, :mod:`.locate`, :mod:`.baselines` (plain-CLIP region views),
:mod:`.sam` (lazy Segment Anything), :mod:`.resume` (progress files that record their run's settings),
:mod:`.cli` (``alphaclip locate`` / ``alphaclip eval``).
"""
from .locate import LocateResult, locate

__all__ = ["LocateResult", "locate"]
