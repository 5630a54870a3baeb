"""Reading and writing Alpha-CLIP weights, safely.

Formats understood:

- ``alpha-reference``: the reference release's ``.pth`` — a state dict of the VISUAL tower only, no
  ``visual.`` prefix (``module.`` allowed), fused qkv stored as ``attn.in_proj.{weight,bias}``.
- ``clip``: a whole plain CLIP in OpenAI/open_clip key names (an OpenAI TorchScript ``.pt`` archive,
  a plain state dict, or an open_clip ``.bin``/``.pt``/``.safetensors``; also open_clip's
  ``CustomTextCLIP`` with a timm ViT tower: ``visual.trunk.*`` + ``text.*``).
- ``open_clip-alpha``: a whole Alpha-CLIP in open_clip key names (``visual.conv1_alpha.weight``
  present; for a timm ViT tower ``visual.trunk.patch_embed.conv1_alpha.weight``, beside timm's
  ``visual.trunk.patch_embed.proj.weight``) — what ``alphaclip convert`` and training write.

Nothing runs code from a file: ``.safetensors`` via safetensors, pickled files with
``torch.load(weights_only=True)``, TorchScript archives (OpenAI's ``.pt``) with a restricted
unpickler that rebuilds their tensors and module attributes only (never ``torch.jit.load``, which
would run the archive's ``__setstate__`` code). See ``docs/errors.md``.

This module holds the formats themselves: recognising them, the key maps between them, loading
weights into a model with checks, saving, and describing a file. Reading files safely is
:mod:`alphaclip_core.safe_load` (with :mod:`alphaclip_core.torchscript`), writing files atomically
:mod:`alphaclip_core.atomic`; their names are re-exported here, so ``from alphaclip_core.checkpoints
import read_state_dict, atomic_write`` keeps working.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .atomic import atomic_folder, atomic_write, remove_stale_temp_files
from .errors import CheckpointError
from .safe_load import load_pickled, read_state_dict
from .torchscript import _is_torchscript, _zip_names

__all__ = [
    "CheckpointError", "VisionArch", "KNOWN_ARCHS", "TIMM_PATCH_KEY", "TIMM_ALPHA_KEY", "ALPHA_KEYS", "read_state_dict", "detect_format",
    "reference_to_open_clip", "rename_reference_keys", "open_clip_to_reference", "vision_arch", "load_state_dict_checked",
    "load_alpha_clip", "save_safetensors", "save_reference", "atomic_write", "atomic_folder", "describe",
    "load_pickled", "remove_stale_temp_files",
]

PathLike = Union[str, os.PathLike]

#: open_clip keys of a timm ViT tower's RGB patch conv and of the alpha conv beside it (AlphaTimmModel)
TIMM_PATCH_KEY = "visual.trunk.patch_embed.proj.weight"
TIMM_ALPHA_KEY = "visual.trunk.patch_embed.conv1_alpha.weight"
#: where a whole open_clip Alpha-CLIP keeps its alpha conv (one of them), e.g. for ``allow_missing``
ALPHA_KEYS = ("visual.conv1_alpha.weight", TIMM_ALPHA_KEY)
_REFERENCE_REQUIRED = ("conv1.weight", "conv1_alpha.weight", "class_embedding", "positional_embedding",
                       "ln_pre.weight", "ln_post.weight", "proj")


@dataclass(frozen=True)
class VisionArch:
    """The shape of a ViT vision tower, read off its weights."""

    width: int
    patch_size: int
    layers: int
    image_size: int
    has_alpha: bool = False

    @property
    def name(self) -> Optional[str]:
        """The open_clip alpha model name of this shape (e.g. ``alpha-ViT-L-14``), or None."""
        for name, arch in KNOWN_ARCHS.items():
            if (arch.width, arch.patch_size, arch.layers, arch.image_size) == (
                    self.width, self.patch_size, self.layers, self.image_size):
                return name
        return None

    def describe(self) -> str:
        known = self.name
        shape = f"ViT width {self.width}, patch {self.patch_size}, {self.layers} layers, {self.image_size}px"
        return f"{shape} ({known[len('alpha-'):]})" if known else shape


KNOWN_ARCHS: Dict[str, VisionArch] = {
    "alpha-ViT-B-16": VisionArch(768, 16, 12, 224, True),
    "alpha-ViT-L-14": VisionArch(1024, 14, 24, 224, True),
    "alpha-ViT-L-14-336": VisionArch(1024, 14, 24, 336, True),
}


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the format of a state dict: ``alpha-reference``, ``open_clip-alpha``, ``clip``,
    ``clip-visual`` (a plain visual tower), ``hf`` (transformers names) or ``unknown``."""
    if "conv1_alpha.weight" in sd and "conv1.weight" in sd:
        return "alpha-reference"
    if "visual.conv1_alpha.weight" in sd or TIMM_ALPHA_KEY in sd:
        return "open_clip-alpha"
    if ("visual.conv1.weight" in sd or TIMM_PATCH_KEY in sd) and (
            "token_embedding.weight" in sd or "text.token_embedding.weight" in sd):
        return "clip"
    if "conv1.weight" in sd and "class_embedding" in sd:
        return "clip-visual"
    if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        return "hf"
    return "unknown"


# ------------------------------------------------------------------------------------------------
# key maps
def reference_to_open_clip(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Reference visual-only keys -> open_clip keys (``visual.`` prefix, ``in_proj.weight`` -> ``in_proj_weight``)."""
    missing = [k for k in _REFERENCE_REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(f"not a reference Alpha-CLIP visual checkpoint: missing {missing}")
    return {"visual." + k: v for k, v in rename_reference_keys(sd).items()}


def rename_reference_keys(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The reference's fused-qkv names -> open_clip's (``attn.in_proj.weight`` -> ``attn.in_proj_weight``);
    every other key unchanged, no prefix added, nothing validated."""
    return {k.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(".attn.in_proj.bias", ".attn.in_proj_bias"): v
            for k, v in sd.items()}


def open_clip_to_reference(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip keys of an alpha model (whole model or ``visual.*``) -> the reference visual-only keys."""
    out = {}
    for k, v in sd.items():
        if not k.startswith("visual."):
            continue
        k = k[len("visual."):]
        k = k.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(".attn.in_proj_bias", ".attn.in_proj.bias")
        out[k] = v
    if "conv1_alpha.weight" not in out:
        raise CheckpointError("state dict has no visual.conv1_alpha.weight: not an Alpha-CLIP model")
    return out


def vision_arch(sd: Mapping[str, torch.Tensor]) -> VisionArch:
    """Read the ViT shape off a state dict in reference (no prefix) or open_clip (``visual.``) names."""
    prefix = "visual." if "visual.conv1.weight" in sd else ""
    try:
        conv1 = sd[prefix + "conv1.weight"]
        pos = sd[prefix + "positional_embedding"]
    except KeyError as e:
        raise CheckpointError(f"state dict has no ViT vision tower (missing {e.args[0]})") from None
    width, _, patch, _ = conv1.shape
    grid = round((pos.shape[0] - 1) ** 0.5)
    block = prefix + "transformer.resblocks."
    layers = len({k[len(block):].split(".", 1)[0] for k in sd if k.startswith(block)})
    return VisionArch(int(width), int(patch), layers, grid * int(patch), (prefix + "conv1_alpha.weight") in sd)


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                            allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """``module.load_state_dict`` with errors that say what does not fit and what the file looks like.

    Every key of ``module`` must be in ``sd`` except ``allow_missing``; every key of ``sd`` must be
    in ``module`` except ``allow_unexpected``; all shapes must match.
    """
    own = module.state_dict()
    allow_missing, allow_unexpected = set(allow_missing), set(allow_unexpected)
    missing = [k for k in own if k not in sd and k not in allow_missing]
    unexpected = [k for k in sd if k not in own and k not in allow_unexpected]
    mismatched = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        hint = ""
        try:
            file_arch, model_arch = vision_arch(sd), vision_arch(own)
            if file_arch != model_arch:
                hint = f" The file's vision tower is {file_arch.describe()}; the model's is {model_arch.describe()}."
        except CheckpointError:
            pass
        parts = []
        for label, keys in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {keys[:5]}{more}")
        raise CheckpointError(f"{source} does not fit the model.{hint} " + "; ".join(parts) + ".")
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def load_alpha_clip(model: nn.Module, alpha_checkpoint: PathLike, base: Optional[PathLike] = None) -> nn.Module:
    """Load weights into an :class:`~alphaclip_core.model.AlphaCLIP`, in place.

    Args:
        model: an AlphaCLIP of the checkpoint's architecture.
        alpha_checkpoint: a reference visual-only ``.pth`` (then ``base`` is required and supplies the
            text tower), or a whole ``open_clip-alpha`` file (``base`` then must be None).
        base: the plain CLIP weights of the same architecture (OpenAI ``.pt`` or open_clip file).
    Returns:
        ``model``.
    """
    alpha_sd = read_state_dict(alpha_checkpoint, "alpha_checkpoint")
    fmt = detect_format(alpha_sd)
    if fmt == "open_clip-alpha":
        if base is not None:
            raise ValueError(f"base: {alpha_checkpoint} already holds a whole Alpha-CLIP (text tower included); "
                             "pass base=None")
        load_state_dict_checked(model, alpha_sd, f"alpha_checkpoint {alpha_checkpoint}",
                                allow_missing=("logit_bias",))
        return model
    if fmt != "alpha-reference":
        extra = " It is a plain CLIP; pass it as base= with an Alpha-CLIP file." if fmt in ("clip", "clip-visual") else ""
        raise CheckpointError(f"alpha_checkpoint: {alpha_checkpoint} is not an Alpha-CLIP checkpoint "
                              f"(format '{fmt}', no conv1_alpha.weight).{extra}")
    if base is None:
        raise ValueError("base: the reference Alpha-CLIP file holds only the vision tower; pass base= the plain "
                         "CLIP weights of the same architecture (e.g. OpenAI's ViT-L-14.pt) for the text tower")
    base_sd = read_state_dict(base, "base")
    if detect_format(base_sd) != "clip":
        raise CheckpointError(f"base: {base} is not a whole CLIP checkpoint (format '{detect_format(base_sd)}')")
    load_state_dict_checked(model, base_sd, f"base {base}",
                            allow_missing=("visual.conv1_alpha.weight", "logit_bias"))
    visual_sd = {k[len("visual."):]: v for k, v in reference_to_open_clip(alpha_sd).items()}
    load_state_dict_checked(model.visual, visual_sd, f"alpha_checkpoint {alpha_checkpoint}")
    return model


def _cpu_contiguous(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_safetensors(model_or_sd: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write a model's (or a state dict's) tensors to ``path`` as safetensors, atomically."""
    from safetensors.torch import save_file
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    tensors = _cpu_contiguous(sd)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def save_reference(model: nn.Module, path: PathLike) -> Path:
    """Write the vision tower in the reference release's visual-only ``.pth`` format, atomically."""
    ref = _cpu_contiguous(open_clip_to_reference(model.state_dict()))
    return atomic_write(path, lambda tmp: torch.save(ref, tmp))


def _describe_timm(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The shape of an open_clip timm ViT tower (``visual.trunk.*``), or None."""
    if TIMM_PATCH_KEY not in sd:
        return None
    width, _, patch, _ = sd[TIMM_PATCH_KEY].shape
    blocks = len({k.split(".")[3] for k in sd if k.startswith("visual.trunk.blocks.")})
    pooling = "attention pooling (SigLIP-style)" if "visual.trunk.attn_pool.latent" in sd else "token pooling"
    return f"timm ViT width {width}, patch {patch}, {blocks} blocks, {pooling}"


#: weights files looked for when :func:`describe` is given a model folder
MODEL_FOLDER_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                      "pytorch_model.bin")


def describe(path: PathLike) -> Dict[str, object]:
    """What a checkpoint is: format, vision architecture, alpha conv, parameter count, dtypes.

    ``path`` is a weights file, or a model folder (open_clip ``local-dir`` or transformers) holding one
    of :data:`MODEL_FOLDER_FILES`, whose weights are described.
    """
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in MODEL_FOLDER_FILES if (path / n).is_file()), None)
        if found is None:
            raise CheckpointError(f"checkpoint: {path} is a folder without a weights file; expected a weights file "
                                  f"or a model folder holding one of {list(MODEL_FOLDER_FILES)}")
        path = found
    sd = read_state_dict(path)
    fmt = detect_format(sd)
    names = _zip_names(path)
    container = ("safetensors" if path.suffix == ".safetensors" else
                 "TorchScript archive" if names is not None and _is_torchscript(names) else "torch.save")
    info: Dict[str, object] = {"path": str(path), "format": fmt, "container": container, "tensors": len(sd),
                               "parameters": int(sum(v.numel() for v in sd.values())),
                               "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})}
    try:
        arch = vision_arch(sd)
        info.update(vision=arch.describe(), arch=arch.name, has_conv1_alpha=arch.has_alpha)
        alpha_key = "conv1_alpha.weight" if fmt == "alpha-reference" else "visual.conv1_alpha.weight"
        if alpha_key in sd:
            info["conv1_alpha_abs_mean"] = float(sd[alpha_key].float().abs().mean())
    except CheckpointError:
        info.update(vision=_describe_timm(sd), arch=None, has_conv1_alpha=TIMM_ALPHA_KEY in sd)
        if TIMM_ALPHA_KEY in sd:
            info["conv1_alpha_abs_mean"] = float(sd[TIMM_ALPHA_KEY].float().abs().mean())
    info["has_text_tower"] = "token_embedding.weight" in sd or "text.token_embedding.weight" in sd
    return info
