"""Alpha-CLIP as open_clip models.

Importing this module registers, in open_clip:

- the model configs ``alpha-ViT-B-16``, ``alpha-ViT-L-14``, ``alpha-ViT-L-14-336`` (and the toy
  ``alpha-ViT-Tiny-8``), so ``open_clip.create_model('alpha-ViT-L-14')`` builds an
  :class:`~alphaclip_core.model.AlphaCLIP` and ``open_clip.get_tokenizer`` knows the names;
- pretrained tags named after the eight released checkpoints, resolved to files in a local cache
  folder (``$ALPHACLIP_CACHE``, default ``~/.cache/alphaclip``); see :data:`RELEASED`.

Configs carry the key ``"alpha_clip": true``; open_clip's factory builds ``AlphaCLIP`` for such a
config (a small hook installed on import), also for folders loaded with ``local-dir:``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import open_clip
import open_clip.factory
import open_clip.pretrained
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from alphaclip_core.checkpoints import load_alpha_clip, save_safetensors
from alphaclip_core.model import AlphaCLIP

__all__ = ["MODEL_NAMES", "RELEASED", "cache_dir", "pretrained_path", "load", "save_pretrained", "register"]

CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_NAMES = ("alpha-ViT-B-16", "alpha-ViT-L-14", "alpha-ViT-L-14-336")
CACHE_ENV = "ALPHACLIP_CACHE"

#: model name -> pretrained tag -> (reference release file, OpenAI base file)
RELEASED: Dict[str, Dict[str, Tuple[str, str]]] = {
    "alpha-ViT-B-16": {
        "grit1m": ("clip_b16_grit1m_fultune_8xe.pth", "ViT-B-16.pt"),
        "grit20m": ("clip_b16_grit20m_fultune_2xe.pth", "ViT-B-16.pt"),
        "grit1m_mim": ("clip_b16_grit+mim_fultune_4xe.pth", "ViT-B-16.pt"),
    },
    "alpha-ViT-L-14": {
        "grit1m": ("clip_l14_grit1m_fultune_8xe.pth", "ViT-L-14.pt"),
        "grit20m": ("clip_l14_grit20m_fultune_2xe.pth", "ViT-L-14.pt"),
        "grit1m_mim": ("clip_l14_grit+mim_fultune_6xe.pth", "ViT-L-14.pt"),
    },
    "alpha-ViT-L-14-336": {
        "grit1m": ("clip_l14@336_grit1m_fultune_8xe.pth", "ViT-L-14-336px.pt"),
        "grit20m": ("clip_l14_336_grit_20m_4xe.pth", "ViT-L-14-336px.pt"),
    },
}


def cache_dir() -> Path:
    """The folder pretrained tags resolve to: ``$ALPHACLIP_CACHE`` or ``~/.cache/alphaclip``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alphaclip").expanduser()


def pretrained_path(name: str, tag: str) -> Path:
    """The cache file a pretrained tag resolves to (whether or not it exists)."""
    return cache_dir() / f"{name}-{open_clip.pretrained._clean_tag(tag)}.safetensors"


def _missing_message(name: str, tag: str) -> str:
    ref, base = RELEASED[name][tag]
    target = pretrained_path(name, tag)
    return (f"pretrained tag '{tag}' of {name} needs {target}, which does not exist. Download {ref} from the "
            f"Alpha-CLIP model zoo and OpenAI's {base}, then run:\n"
            f"  alphaclip convert {ref} --base {base} --arch {name} --output {target}\n"
            f"(set ${CACHE_ENV} to use another folder)")


class _LocalTagCfg(dict):
    """An open_clip pretrained cfg whose ``file`` is looked up in the cache when it is used."""

    def __init__(self, name: str, tag: str) -> None:
        super().__init__(file=None, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, interpolation="bicubic",
                         resize_mode="shortest", quick_gelu=True)
        self._name, self._tag = name, tag

    def __getitem__(self, key: str) -> Any:
        if key == "file":
            path = pretrained_path(self._name, self._tag)
            if not path.is_file():
                raise FileNotFoundError(_missing_message(self._name, self._tag))
            return str(path)
        return super().__getitem__(key)


def _install_factory_hook() -> None:
    """Make open_clip's factory build AlphaCLIP for configs with ``"alpha_clip": true``."""
    current = open_clip.factory.CLIP
    if getattr(current, "_alphaclip_hook", False):
        return

    def build(**cfg: Any):
        if cfg.get("alpha_clip"):
            return AlphaCLIP(**cfg)
        return current(**cfg)

    build.__name__ = "CLIP"
    build._alphaclip_hook = True  # type: ignore[attr-defined]
    open_clip.factory.CLIP = build


def register() -> None:
    """Register the alpha configs, tags and factory hook with open_clip (idempotent; runs on import)."""
    _install_factory_hook()
    open_clip.add_model_config(CONFIG_DIR)
    for name, tags in RELEASED.items():
        table = open_clip.pretrained._PRETRAINED.setdefault(name, {})
        for tag in tags:
            table.setdefault(tag, _LocalTagCfg(name, tag))


def load(name: str, alpha_checkpoint: Union[str, os.PathLike], base: Optional[Union[str, os.PathLike]] = None, *,
         device: Union[str, torch.device] = "cpu", precision: str = "fp32") -> Tuple[AlphaCLIP, Callable]:
    """Build ``name`` and load a released (or self-trained) Alpha-CLIP into it, in one call.

    Args:
        name: ``alpha-ViT-B-16``, ``alpha-ViT-L-14``, ``alpha-ViT-L-14-336`` (or any registered alpha config).
        alpha_checkpoint: a reference visual-only ``.pth`` (then ``base`` supplies the text tower) or a
            whole Alpha-CLIP written by ``alphaclip convert`` / :func:`save_pretrained`.
        base: the plain OpenAI CLIP weights of the same architecture (TorchScript ``.pt`` or state dict).
        device, precision: as in ``open_clip.create_model`` (``fp32``, ``fp16``, ``bf16``, ``amp``...).
    Returns:
        ``(model, preprocess)``: the model in eval mode and open_clip's image transform (PIL image ->
        ``[3, S, S]``). For images WITH regions use :func:`alphaclip_core.prepare`, which applies the
        same geometry to the image and its alpha.
    """
    model, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu")
    load_alpha_clip(model, alpha_checkpoint, base)
    # cast/move only after loading, the way open_clip's factory does
    open_clip.factory._set_model_device_and_precision(model, device, precision, False)
    return model.eval(), preprocess


def save_pretrained(model: AlphaCLIP, folder: Union[str, os.PathLike]) -> Path:
    """Write ``model`` as an open_clip folder: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    The folder loads back with ``open_clip.create_model_and_transforms('local-dir:' + folder)``
    (after ``import alphaclip_integrations.open_clip``).
    """
    if not isinstance(model, AlphaCLIP) or model.model_cfg is None:
        raise ValueError("model: expected an AlphaCLIP built from a config (open_clip.create_model or AlphaCLIP(...))")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = dict(open_clip.model.get_model_preprocess_cfg(model))
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": preprocess}
    save_safetensors(model, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


register()
