"""Alpha-CLIP vision weights for LLaVA: tower names, any checkpoint format -> an open_clip alpha tower.

Framework-free (alphaclip_core + open_clip), shared by the original-LLaVA tower and the
transformers-native converter.

The tower name ``alpha-clip:<checkpoint>[@<base>]``: ``<checkpoint>`` is a reference Alpha-CLIP
``.pth`` (visual tower only), a whole Alpha-CLIP written by ``alphaclip convert`` (its ``visual.*``
part is used) or a plain CLIP (a zero alpha conv is added: the tower then computes exactly the
plain CLIP features, the starting point of the paper's recipe). ``@<base>`` is optional: a plain
CLIP of the same architecture whose vision weights are loaded first; the checkpoint's tensors then
replace them (so a checkpoint holding only ``conv1_alpha.weight`` works too). The separator is the
last ``@`` that follows a weights-file name (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), so a
released name such as ``clip_l14@336_grit1m_fultune_8xe.pth`` needs no quoting.

The architecture is read off the weights (width, patch, layers, image size, MLP width, projection);
attention heads are ``width // 64`` and the activation QuickGELU, as in every OpenAI CLIP ViT.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional, Tuple, Union

import torch
from open_clip.transformer import QuickGELU

from alphaclip_core.checkpoints import (CheckpointError, detect_format, load_state_dict_checked, read_state_dict,
                                        rename_reference_keys, vision_arch)
from alphaclip_core.model import AlphaVisionTransformer

__all__ = ["PREFIX", "HEAD_WIDTH", "parse_tower_name", "visual_state_dict", "read_visual", "load_alpha_visual"]

logger = logging.getLogger(__name__)

#: the vision tower name prefix that selects the Alpha-CLIP tower
PREFIX = "alpha-clip:"
#: attention head width of every OpenAI CLIP ViT (heads = width // 64)
HEAD_WIDTH = 64
_WEIGHT_FILE = re.compile(r"\.(pth|pt|bin|safetensors)@", re.IGNORECASE)


def parse_tower_name(name: str) -> Tuple[str, Optional[str]]:
    """``alpha-clip:<checkpoint>[@<base>]`` -> ``(checkpoint, base or None)``.

    The separator is the last ``@`` right after a weights-file suffix (``.pth``, ``.pt``, ``.bin``,
    ``.safetensors``); other ``@`` (as in ``clip_l14@336_...pth``) belong to the file name.
    """
    if not isinstance(name, str) or not name.startswith(PREFIX):
        raise ValueError(f"vision_tower: expected '{PREFIX}<checkpoint>[@<base>]', got {name!r}")
    rest = os.path.expanduser(name[len(PREFIX):])
    seps = list(_WEIGHT_FILE.finditer(rest))
    if seps:
        cut = seps[-1].end()
        checkpoint, base = rest[:cut - 1], os.path.expanduser(rest[cut:])
        if not base:
            raise ValueError(f"vision_tower: {name!r} ends with '@' but names no base checkpoint")
    else:
        checkpoint, base = rest, None
    if not checkpoint:
        raise ValueError(f"vision_tower: {name!r} names no checkpoint after '{PREFIX}'")
    return checkpoint, base


def visual_state_dict(sd: Dict[str, torch.Tensor], path: str, arg: str) -> Dict[str, torch.Tensor]:
    """The vision tower of any supported state dict, in open_clip names without the ``visual.`` prefix.

    Accepts a reference Alpha-CLIP visual state dict, a whole Alpha-CLIP / plain CLIP in open_clip
    names, a plain visual tower, or a file holding only ``conv1_alpha.weight``. ``path``/``arg`` name
    the source in errors.
    """
    fmt = detect_format(sd)
    if fmt in ("open_clip-alpha", "clip"):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    elif fmt not in ("alpha-reference", "clip-visual"):
        if fmt == "unknown" and set(sd) == {"conv1_alpha.weight"}:
            return dict(sd)
        raise CheckpointError(f"{arg}: {path} holds no CLIP ViT vision tower (format '{fmt}'); expected a reference "
                              "Alpha-CLIP .pth, a whole Alpha-CLIP (alphaclip convert) or a plain CLIP")
    return rename_reference_keys(sd)


def read_visual(checkpoint: Union[str, os.PathLike], base: Optional[Union[str, os.PathLike]] = None
                ) -> Dict[str, torch.Tensor]:
    """The vision tower weights named by ``alpha-clip:<checkpoint>[@<base>]``, in open_clip names
    without the ``visual.`` prefix (``base`` loaded first, the checkpoint's tensors replace its own).

    Raises:
        FileNotFoundError, CheckpointError: a file is missing, unreadable, not a ViT CLIP, or the two
            files' architectures differ.
    """
    sd = visual_state_dict(read_state_dict(checkpoint, "checkpoint"), str(checkpoint), "checkpoint")
    if base is not None:
        base_sd = visual_state_dict(read_state_dict(base, "base"), str(base), "base")
        if "conv1.weight" in sd:
            a, b = vision_arch(sd), vision_arch(base_sd)
            if (a.width, a.patch_size, a.layers, a.image_size) != (b.width, b.patch_size, b.layers, b.image_size):
                raise CheckpointError(f"base: {base} is a {b.describe()} but checkpoint {checkpoint} is a "
                                      f"{a.describe()}; they must have the same architecture")
        sd = {**base_sd, **sd}
    if "conv1.weight" not in sd:
        raise CheckpointError(f"checkpoint: {checkpoint} holds only {sorted(sd)}; pass the plain CLIP with its "
                              "other weights as base (alpha-clip:<checkpoint>@<base>)")
    return sd


def load_alpha_visual(checkpoint: Union[str, os.PathLike], base: Optional[Union[str, os.PathLike]] = None,
                      ) -> AlphaVisionTransformer:
    """Build an :class:`AlphaVisionTransformer` whose shape is read off the weights, and load them.

    Args:
        checkpoint: reference Alpha-CLIP ``.pth``, whole Alpha-CLIP (open_clip names) or plain CLIP.
        base: optional plain CLIP of the same architecture, loaded first (see the module docstring).
    Returns:
        the tower in eval mode, float32, on the CPU; ``conv1_alpha`` is zero when no file holds it.
    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_visual`.
    """
    sd = read_visual(checkpoint, base)
    arch = vision_arch(sd)
    if arch.width % HEAD_WIDTH:
        raise CheckpointError(f"checkpoint: width {arch.width} is not a multiple of the CLIP head width {HEAD_WIDTH}")
    fc = sd.get("transformer.resblocks.0.mlp.c_fc.weight")
    if fc is None:
        raise CheckpointError(f"checkpoint: {checkpoint} has no transformer.resblocks.0.mlp.c_fc.weight")
    proj = sd.get("proj")
    visual = AlphaVisionTransformer(
        image_size=arch.image_size, patch_size=arch.patch_size, width=arch.width, layers=arch.layers,
        heads=arch.width // HEAD_WIDTH, mlp_ratio=fc.shape[0] / arch.width,
        output_dim=int(proj.shape[1]) if proj is not None else arch.width, act_layer=QuickGELU)
    if proj is None:
        visual.proj = None
    load_state_dict_checked(visual, sd, f"checkpoint {checkpoint}" + (f" + base {base}" if base else ""),
                            allow_missing=("conv1_alpha.weight",))
    if "conv1_alpha.weight" not in sd:
        logger.info("%s has no conv1_alpha.weight: the alpha conv is zero (the tower equals the plain CLIP)", checkpoint)
    return visual.eval()
