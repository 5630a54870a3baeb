"""The Alpha-CLIP vision tower in mmengine's ``MODELS`` registry.

Importing this module registers :class:`AlphaCLIPViT` (also under the alias
``AlphaCLIPVisionTransformer``) in ``mmengine.registry.MODELS``, the root registry that
mmdet / mmseg / mmpretrain registries fall back to. A config builds it with::

    custom_imports = dict(imports=["alphaclip_integrations.mmengine"], allow_failed_imports=False)
    model = dict(type="AlphaCLIPViT", arch="alpha-ViT-B-16", checkpoint="clip_b16_grit1m_fultune_8xe.pth",
                 out_type="featmap", out_indices=(3, 5, 7, 11))

``forward(x, alpha=None)`` returns a tuple (mm* backbone convention): feature maps
``[B, width, H/patch, W/patch]`` at ``out_indices`` (``out_type="featmap"``), or the projected CLIP
embedding ``[B, embed_dim]`` (``out_type="embedding"``). ``alpha=None`` is the whole image, so a
detector that calls ``backbone(img)`` gets plain whole-image features. Inputs of another size than
the tower's (multiples of the patch size) get a bicubically interpolated positional embedding.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import open_clip
import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from open_clip.model import CLIPVisionCfg, _build_vision_tower

import alphaclip_integrations.open_clip  # noqa: F401  (registers the alpha-ViT-* configs)
from alphaclip_core.checkpoints import (CheckpointError, detect_format, load_state_dict_checked, read_state_dict,
                                        reference_to_open_clip)
from alphaclip_core.model import AlphaVisionTransformer
from alphaclip_core.precision import apply_precision

__all__ = ["AlphaCLIPViT", "visual_state_dict"]

OUT_TYPES = ("featmap", "embedding")


def visual_state_dict(sd: Dict[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The vision tower's weights (open_clip names, no ``visual.`` prefix) out of any supported file's state dict.

    Accepts a reference visual-only Alpha-CLIP, a whole open_clip Alpha-CLIP, or a plain CLIP (whose
    tower then keeps a zero ``conv1_alpha``).
    """
    fmt = detect_format(sd)
    if fmt == "alpha-reference":
        sd = reference_to_open_clip(sd)
    elif fmt not in ("open_clip-alpha", "clip"):
        raise CheckpointError(f"{source}: format '{fmt}' holds no CLIP vision tower")
    return {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}


@MODELS.register_module(name="AlphaCLIPVisionTransformer", force=True)
@MODELS.register_module(force=True)
class AlphaCLIPViT(BaseModule):
    """Alpha-CLIP's vision tower as an mmengine module.

    Args:
        arch: an alpha open_clip model name (``alpha-ViT-B-16``, ``alpha-ViT-L-14``, ``alpha-ViT-L-14-336``,
            ``alpha-ViT-Tiny-8``), or a dict with ``embed_dim``, ``vision_cfg`` (open_clip's
            ``CLIPVisionCfg`` fields) and optionally ``quick_gelu``.
        checkpoint: weights file: a reference ``.pth`` (visual only), an ``alphaclip convert`` file,
            or a plain CLIP (zero alpha conv); read safely.
        out_type: ``featmap`` (tuple of ``[B, width, gh, gw]``) or ``embedding`` (tuple of one ``[B, embed_dim]``).
        out_indices: blocks whose output tokens become feature maps (negative = from the end).
        final_norm: apply the tower's ``ln_post`` to the feature maps.
        frozen_stages: ``-1`` trains everything; ``0`` freezes the patch embedding (``conv1``,
            ``conv1_alpha``, class/positional embeddings, ``ln_pre``); ``i > 0`` also blocks ``0..i-1``;
            ``num_layers`` or more freezes the whole tower (``ln_post`` and ``proj`` too).
        precision: the tower's weights: ``fp32`` (default: an mm* backbone usually trains, and
            mmengine's ``AmpOptimWrapper`` does mixed precision), ``auto`` (measured for the device the
            runner will use: CUDA when available, else this CPU; see ``alphaclip info --system``),
            ``bf16`` or ``fp16``. Outputs come back in the input's dtype whatever the precision.
        init_cfg: mmengine's init config.
    """

    def __init__(self, arch: Union[str, Dict[str, Any]] = "alpha-ViT-B-16", checkpoint: Optional[str] = None,
                 out_type: str = "featmap", out_indices: Union[int, Sequence[int]] = -1, final_norm: bool = False,
                 frozen_stages: int = -1, precision: str = "fp32", init_cfg: Optional[Dict[str, Any]] = None
                 ) -> None:
        super().__init__(init_cfg=init_cfg)
        if out_type not in OUT_TYPES:
            raise ValueError(f"out_type: expected one of {OUT_TYPES}, got {out_type!r}")
        if isinstance(arch, str):
            cfg = open_clip.get_model_config(arch)
            if cfg is None or not cfg.get("alpha_clip"):
                alpha = [n for n in open_clip.list_models() if n.startswith("alpha-")]
                raise ValueError(f"arch: unknown Alpha-CLIP model {arch!r}; expected one of {alpha} or a dict")
        elif isinstance(arch, dict) and "embed_dim" in arch and "vision_cfg" in arch:
            cfg = arch
        else:
            raise ValueError("arch: expected a model name or a dict with 'embed_dim' and 'vision_cfg'")
        vision_cfg = CLIPVisionCfg(**cfg["vision_cfg"])
        self.visual = AlphaVisionTransformer.from_plain(
            _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=bool(cfg.get("quick_gelu", False))))
        self.num_layers = len(self.visual.transformer.resblocks)
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        bad = [i for i in indices if not -self.num_layers <= i < self.num_layers]
        if not indices or bad:
            raise ValueError(f"out_indices: expected block indices in [-{self.num_layers}, {self.num_layers - 1}], "
                             f"got {out_indices}")
        self.out_indices = [i % self.num_layers for i in indices]
        self.out_type, self.final_norm, self.frozen_stages = out_type, final_norm, frozen_stages
        if checkpoint is not None:
            sd = visual_state_dict(read_state_dict(os.fspath(checkpoint), "checkpoint"), f"checkpoint {checkpoint}")
            missing_ok = () if "conv1_alpha.weight" in sd else ("conv1_alpha.weight",)
            load_state_dict_checked(self.visual, sd, f"checkpoint {checkpoint}", allow_missing=missing_ok)
        #: the resolved :class:`~alphaclip_core.precision.Precision` of the tower
        self.precision = apply_precision(self.visual, precision, "cuda" if torch.cuda.is_available() else "cpu")
        self._freeze()

    def init_weights(self) -> None:
        """Keep loaded/open_clip-initialised weights unless ``init_cfg`` says otherwise."""
        if self.init_cfg:
            super().init_weights()

    def _frozen_modules(self):
        v = self.visual
        if self.frozen_stages >= 0:
            yield from (v.conv1, v.conv1_alpha, v.ln_pre)
            v.class_embedding.requires_grad_(False)
            v.positional_embedding.requires_grad_(False)
        yield from list(v.transformer.resblocks)[:max(self.frozen_stages, 0)]
        if self.frozen_stages >= self.num_layers:
            yield v.ln_post
            if v.proj is not None:
                v.proj.requires_grad_(False)

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "AlphaCLIPViT":
        super().train(mode)
        self._freeze()
        return self

    def forward(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        """Args: ``x`` ``[B, 3, H, W]`` CLIP-normalised; ``alpha`` ``[B, 1, H, W]`` normalised (None = whole image).

        ``H`` and ``W`` must be multiples of the patch size; at other sizes than the tower's own the
        positional embedding is interpolated (bicubic), as detection backbones need.
        Returns a tuple: ``len(out_indices)`` maps ``[B, width, H/patch, W/patch]`` (featmap) or one
        ``[B, embed_dim]`` embedding.
        """
        v = self.visual
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected [B, 3, H, W] images, got {list(x.shape)}")
        if tuple(x.shape[-2:]) != tuple(v.image_size):
            out = self._forward_any_size(x, alpha)
        elif self.out_type == "embedding":
            out = (v(x, alpha),)
        else:
            out = tuple(v.forward_intermediates(x, alpha, indices=self.out_indices, intermediates_only=True,
                                                normalize_intermediates=self.final_norm,
                                                output_fmt="NCHW")["image_intermediates"])
        return tuple(t.to(x.dtype) for t in out) if x.is_floating_point() else out

    def positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """``[1 + grid_h * grid_w, width]``: the class position + the patch grid resized (bicubic) to
        ``grid_h x grid_w``."""
        v = self.visual
        pos = v.positional_embedding
        g0h, g0w = v.grid_size
        if (grid_h, grid_w) == (g0h, g0w):
            return pos
        grid = pos[1:].reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2).float()
        grid = torch.nn.functional.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])

    def _forward_any_size(self, x: torch.Tensor, alpha: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        v = self.visual
        ph, pw = v.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise ValueError(f"x: height and width must be multiples of the patch size {ph}, got {list(x.shape[-2:])}")
        gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
        x = x.to(dtype=v.conv1.weight.dtype)
        t = v.conv1(x) + v.embed_alpha(x, alpha)          # the alpha is added to the patch embedding
        t = t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(t.dtype).view(1, 1, -1).expand(t.shape[0], -1, -1)
        t = torch.cat([cls, t], dim=1) + self.positional_embedding(gh, gw).to(t.dtype)
        t = v.ln_pre(v.patch_dropout(t))
        t, intermediates = v.transformer.forward_intermediates(t, indices=self.out_indices)
        if self.out_type == "embedding":
            pooled, _ = v._pool(t)
            return (pooled @ v.proj if v.proj is not None else pooled,)
        maps = []
        for y in intermediates:
            y = v.ln_post(y) if self.final_norm else y
            maps.append(y[:, 1:].reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous())
        return tuple(maps)
