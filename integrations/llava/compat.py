"""Run llava-torch 1.2.2.post1's ``LlavaLlamaForCausalLM`` under transformers 5.x.

What breaks (checked against transformers 5.24): the model builds, and ``forward`` works (with a
FutureWarning for ``past_key_values``), but ``generate`` fails with
``TypeError: LlavaLlamaForCausalLM.forward() got an unexpected keyword argument 'cache'``:
transformers 5 renamed ``past_key_values`` to ``cache`` and passes it (and other keyword
arguments) to ``forward``, whose LLaVA signature has no ``**kwargs``.

The minimal fix, :func:`install`: replace ``LlavaLlamaForCausalLM.forward`` with one that takes
both names and any further keyword arguments, runs LLaVA's own
``prepare_inputs_labels_for_multimodal`` exactly as before, and calls ``LlamaForCausalLM.forward``
with ``cache=``; and drop the ``past_key_values=None`` that LLaVA's ``prepare_inputs_for_generation``
adds next to transformers' ``cache`` (a FutureWarning on every step otherwise). Nothing else in
LLaVA changes. Under transformers 4.x (LLaVA's pinned 4.37.2) it is
a no-op. (``llava.train.train`` does not import under transformers 5: it imports
``ALL_LAYERNORM_LAYERS`` from ``transformers.trainer``; training needs LLaVA's pinned environment.)
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from transformers import LlamaForCausalLM

__all__ = ["needed", "install", "uninstall"]

_ORIGINAL_FORWARD = LlavaLlamaForCausalLM.forward
_ORIGINAL_PREPARE = LlavaLlamaForCausalLM.prepare_inputs_for_generation


def needed() -> bool:
    """True when transformers' Llama takes ``cache`` but LLaVA's forward cannot (transformers >= 5)."""
    llama = inspect.signature(LlamaForCausalLM.forward).parameters
    llava = inspect.signature(_ORIGINAL_FORWARD).parameters
    return "cache" in llama and "cache" not in llava and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in llava.values())


def _forward(self: LlavaLlamaForCausalLM, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
             past_key_values: Any = None, inputs_embeds: Any = None, labels: Any = None, use_cache: Optional[bool] = None,
             output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
             images: Any = None, image_sizes: Any = None, return_dict: Optional[bool] = None, cache: Any = None,
             **kwargs: Any):
    """LLaVA's forward (images spliced in by ``prepare_inputs_labels_for_multimodal``), transformers-5 style."""
    if cache is None:
        cache = past_key_values
    if inputs_embeds is None:
        input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = \
            self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask, cache, labels,
                                                      images, image_sizes)
    for key, value in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states),
                       ("return_dict", return_dict)):
        if value is not None:
            kwargs[key] = value
    return LlamaForCausalLM.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                                    labels=labels, use_cache=use_cache, **kwargs)


def _prepare_inputs_for_generation(self: LlavaLlamaForCausalLM, input_ids: Any, cache: Any = None,
                                   inputs_embeds: Any = None, **kwargs: Any) -> dict:
    """LLaVA's step preparation without its ``past_key_values=`` keyword (transformers 5 names it ``cache``;
    passing both warns on every step)."""
    images = kwargs.pop("images", None)
    image_sizes = kwargs.pop("image_sizes", None)
    kwargs.pop("past_key_values", None)
    inputs = LlamaForCausalLM.prepare_inputs_for_generation(self, input_ids, cache=cache, inputs_embeds=inputs_embeds,
                                                            **kwargs)
    if images is not None:
        inputs["images"] = images
    if image_sizes is not None:
        inputs["image_sizes"] = image_sizes
    return inputs


_forward.__wrapped__ = _ORIGINAL_FORWARD  # type: ignore[attr-defined]
_forward._alphaclip_compat = True  # type: ignore[attr-defined]


def install() -> bool:
    """Apply the shim when :func:`needed` (idempotent). Returns whether it is in effect."""
    if getattr(LlavaLlamaForCausalLM.forward, "_alphaclip_compat", False):
        return True
    if not needed():
        return False
    LlavaLlamaForCausalLM.forward = _forward
    LlavaLlamaForCausalLM.prepare_inputs_for_generation = _prepare_inputs_for_generation
    return True


def uninstall() -> None:
    """Restore LLaVA's own ``forward``."""
    LlavaLlamaForCausalLM.forward = _ORIGINAL_FORWARD
    LlavaLlamaForCausalLM.prepare_inputs_for_generation = _ORIGINAL_PREPARE

