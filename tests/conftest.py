"""Shared fixtures: tiny random-init models built in-process, and files in the real formats."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch
from open_clip.model import CLIP

from alphaclip_core.model import AlphaCLIP

#: a tiny CLIP: 32px images, 8px patches (4x4 grid), 2 vision blocks, 1 text block.
TINY_CFG = dict(
    embed_dim=32,
    quick_gelu=True,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)


def tiny_cfg(**vision_overrides) -> dict:
    cfg = copy.deepcopy(TINY_CFG)
    cfg["vision_cfg"].update(vision_overrides)
    return cfg


def micro_world(base: Path, samples: int, per_shard: int, model: bool = True) -> Path:
    """A training world under ``base``: ``samples`` synthetic 32 px scenes in shards of ``per_shard`` (``base/data``)
    and, with ``model``, the micro open_clip model folder (``base/model``, MICRO_CFG, seed 0)."""
    from alphaclip_train.synthetic import MICRO_CFG, init_model_dir, write_shards

    if model:
        init_model_dir(base / "model", MICRO_CFG, seed=0)
    write_shards(base / "data", samples, per_shard=per_shard, seed=1, size=32)
    return base


def train_config(world: Path, out, **kw):
    """A small CPU training run over a :func:`micro_world`: batch 8, one thread, no progress bar, seed 3,
    the world's micro model; ``kw`` overrides any TrainConfig field."""
    from alphaclip_train.loop import TrainConfig

    d = dict(data=[str(world / "data")], output=str(out), model=f"local-dir:{world / 'model'}", batch_size=8,
             warmup=1, log_every=1, shuffle_buffer=8, threads=1, progress=False, seed=3)
    d.update(kw)
    return TrainConfig(**d)


def randomize_alpha_conv(model: AlphaCLIP, seed: int = 1, scale: float = 0.5) -> AlphaCLIP:
    g = torch.Generator().manual_seed(seed)
    w = model.visual.conv1_alpha.weight
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=g) * scale)
    return model


@pytest.fixture
def plain_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(**TINY_CFG).eval()


@pytest.fixture
def alpha_clip() -> AlphaCLIP:
    torch.manual_seed(0)
    return AlphaCLIP(**TINY_CFG).eval()


def reference_state_dict(model: AlphaCLIP) -> dict:
    """The vision tower in the reference release's key names, spelled out here from SPEC.md."""
    v = model.visual
    sd = {
        "conv1.weight": v.conv1.weight,
        "conv1_alpha.weight": v.conv1_alpha.weight,
        "class_embedding": v.class_embedding,
        "positional_embedding": v.positional_embedding,
        "ln_pre.weight": v.ln_pre.weight, "ln_pre.bias": v.ln_pre.bias,
        "ln_post.weight": v.ln_post.weight, "ln_post.bias": v.ln_post.bias,
        "proj": v.proj,
    }
    for i, blk in enumerate(v.transformer.resblocks):
        p = f"transformer.resblocks.{i}."
        sd[p + "attn.in_proj.weight"] = blk.attn.in_proj_weight
        sd[p + "attn.in_proj.bias"] = blk.attn.in_proj_bias
        sd[p + "attn.out_proj.weight"] = blk.attn.out_proj.weight
        sd[p + "attn.out_proj.bias"] = blk.attn.out_proj.bias
        for name in ("ln_1", "ln_2"):
            sd[p + f"{name}.weight"] = getattr(blk, name).weight
            sd[p + f"{name}.bias"] = getattr(blk, name).bias
        for name in ("c_fc", "c_proj"):
            sd[p + f"mlp.{name}.weight"] = getattr(blk.mlp, name).weight
            sd[p + f"mlp.{name}.bias"] = getattr(blk.mlp, name).bias
    return {k: t.detach().clone() for k, t in sd.items()}


def openai_state_dict(model: torch.nn.Module) -> dict:
    """A whole plain CLIP as OpenAI's state dicts hold it (open_clip names + the scalar extras)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if "conv1_alpha" not in k}
    sd["input_resolution"] = torch.tensor(model.visual.image_size[0])
    sd["context_length"] = torch.tensor(model.context_length)
    sd["vocab_size"] = torch.tensor(model.vocab_size)
    return sd


def write_torchscript_archive(sd: dict, path, parameters: bool = False) -> None:
    """Write ``sd`` as a TorchScript archive (the container OpenAI's .pt files use): nested modules
    holding the tensors as buffers, or as parameters (how OpenAI's files hold them) with ``parameters``."""

    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, Holder())
            mod = getattr(mod, p)
        if parameters:
            mod.register_parameter(leaf, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


class _Hostile(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) creates the file named in its
    state with ``torch.from_file(..., shared=True)``: the shape of a weight file that writes files."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]
        t = torch.from_file(state[1], shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)
        self.weight = self.weight + t.sum().float() * 0  # keeps the call in the compiled code


def write_hostile_torchscript(path, marker) -> None:
    """A TorchScript archive that creates the file ``marker`` when ``torch.jit.load`` opens it."""
    torch.jit.save(torch.jit.script(_Hostile(str(marker))), str(path))


class MakeDir:
    """Pickled (``torch.save`` / ``pickle.dumps``), this object makes an unsafe unpickler create the
    folder ``path`` (``os.mkdir``): proof that loading ran code."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def doc_blocks(page: str, heading: Optional[str] = None, lang: str = "python") -> List[str]:
    """The fenced ``lang`` code blocks of a Markdown page of the repository (``README.md``, ``docs/x.md``).

    With ``heading``, only the section whose heading (any level) starts with ``heading``, up to the
    next heading of the same or a higher level.
    """
    lines = (ROOT / page).read_text().splitlines(keepends=True)
    if heading is not None:
        fenced, level, keep = False, None, []
        for line in lines:
            if line.startswith("```"):
                fenced = not fenced
            m = None if fenced else re.match(r"(#+) (.*)", line)
            if m and level is not None and len(m.group(1)) <= level:
                break
            if m and level is None and m.group(2).startswith(heading):
                level = len(m.group(1))
            if level is not None:
                keep.append(line)
        if level is None:
            raise KeyError(f"{page}: no heading starting with {heading!r}")
        lines = keep
    text = "".join(lines)
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def readme_blocks(heading: str, lang: str = "python") -> List[str]:
    """The fenced ``lang`` code blocks of the README section whose heading starts with ``heading``."""
    return doc_blocks("README.md", heading, lang)
