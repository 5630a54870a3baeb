"""Alpha-CLIP as open_clip models: ``alpha-<name>`` for every open_clip model with a ViT vision tower.

Importing this module registers, in open_clip:

- **The naming rule.** ``alpha-<name>`` is ``<name>``'s config plus one zero-initialised alpha conv:
  ``open_clip.create_model('alpha-ViT-H-14')``, ``create_model_and_transforms('alpha-ViT-SO400M-14-SigLIP',
  pretrained='webli')``, ``alpha-EVA02-L-14``, ``alpha-ViT-bigG-14``, ... ``<name>`` may be any model
  config open_clip knows, also one added later with ``open_clip.add_model_config``. Supported vision
  towers: open_clip's ``VisionTransformer`` (OpenAI, LAION, DataComp, MetaCLIP, DFN, CLIPA, ...) and
  ``TimmModel`` with a timm ViT (timm's ``vision_transformer``, ``eva`` and ``vision_transformer_relpos``
  families: SigLIP / SigLIP2, EVA01 / EVA02, PE-Core, MobileCLIP2-L, ...; a timm model from another
  family is accepted when it has a ViT patch embedding). ResNet, ConvNeXt and conv-stem towers
  (ViTamin, FastViT / MobileCLIP-S, MobileCLIP-B) and CoCa models are refused with an error that says so.
- **Listing.** ``open_clip.list_models()`` shows ``alpha-<name>`` for every supported config known at
  import (call :func:`register` again after adding configs to list theirs; they resolve either way);
  :func:`backbones` describes them.
- **Pretrained tags.** ``alpha-<name>`` accepts every pretrained tag of ``<name>``: the base weights
  load (open_clip's own download / cache) and the alpha conv starts at zero, so the model computes
  exactly the base model. ``list_pretrained_tags_by_model('alpha-<name>')`` lists them. A local file
  of the base (``pretrained='/path/open_clip_model.safetensors'``) loads the same way.
- **The released checkpoints.** ``alpha-ViT-B-16``, ``alpha-ViT-L-14``, ``alpha-ViT-L-14-336`` (and the toy
  ``alpha-ViT-Tiny-8``) are the reference release's OpenAI (QuickGELU) architectures, i.e.
  ``alpha-ViT-B-16`` is ``alpha-ViT-B-16-quickgelu``. They list the tags named after the eight released
  checkpoints (:data:`RELEASED`), resolved to files in a local cache folder (``$ALPHACLIP_CACHE``,
  default ``~/.cache/alphaclip``), and accept the tags of their QuickGELU base (``openai``, ``dfn2b``,
  ``metaclip_*``).

Configs carry the key ``"alpha_clip": true``; open_clip's factory builds
:class:`~alphaclip_core.model.AlphaCLIP` / :class:`~alphaclip_core.model.AlphaCustomTextCLIP` for such a
config (a small hook installed on import), also for folders loaded with ``local-dir:``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import open_clip
import open_clip.factory
import open_clip.pretrained
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from alphaclip_core.checkpoints import load_alpha_clip, save_safetensors
from alphaclip_core.model import AlphaCLIP, AlphaCustomTextCLIP, AlphaModel

from ..cards import Provenance, card_provenance, model_card, tower_from_open_clip, write_model_card

__all__ = ["MODEL_NAMES", "RELEASED", "PREFIX", "TIMM_VIT_MODULES", "Backbone", "backbones", "base_name",
           "alpha_config", "cache_dir", "pretrained_path", "build", "load", "save_pretrained", "register"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_NAMES = ("alpha-ViT-B-16", "alpha-ViT-L-14", "alpha-ViT-L-14-336")
CACHE_ENV = "ALPHACLIP_CACHE"
#: the prefix that turns any open_clip model name into its Alpha-CLIP
PREFIX = "alpha-"
#: timm model families (timm module names) whose models are ViTs with timm's patch embedding
TIMM_VIT_MODULES = ("vision_transformer", "eva", "vision_transformer_relpos")
#: the explicit alpha configs of the reference release and the open_clip config each one equals
_EXPLICIT_BASE = {"alpha-ViT-B-16": "ViT-B-16-quickgelu", "alpha-ViT-L-14": "ViT-L-14-quickgelu",
                  "alpha-ViT-L-14-336": "ViT-L-14-336-quickgelu"}

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


# ------------------------------------------------------------------------------------------------ the rule
@functools.lru_cache(maxsize=None)
def _timm_vit_names() -> frozenset:
    import timm
    return frozenset(n for m in TIMM_VIT_MODULES for n in timm.list_models(module=m))


@functools.lru_cache(maxsize=None)
def _timm_trunk_problem(timm_name: str) -> Optional[str]:
    """Why a timm model outside :data:`TIMM_VIT_MODULES` cannot get an alpha conv (None: it can), read off
    the model built on the meta device (no memory, no download)."""
    import timm

    from alphaclip_core.towers import _timm_patch_embed

    try:
        with torch.device("meta"):
            trunk = timm.create_model(timm_name, pretrained=False)
    except Exception as e:  # not buildable here: the build itself will say what is wrong
        logger.debug("cannot inspect timm model %s on the meta device: %s", timm_name, e)
        return None
    try:
        _timm_patch_embed(trunk)
    except TypeError as e:
        return str(e).replace("visual: ", "", 1)
    return None


def _tower(cfg: Dict[str, Any]) -> str:
    """The kind of vision tower a model config builds (``open_clip ViT`` / ``timm <module>``); raises
    ValueError saying why an alpha conv cannot be added."""
    if "multimodal_cfg" in cfg:
        raise ValueError("is a CoCa model (with a captioning decoder); Alpha-CLIP supports open_clip's contrastive "
                         "CLIP and CustomTextCLIP models")
    vision = cfg.get("vision_cfg", {})
    timm_name = vision.get("timm_model_name")
    if timm_name:
        if timm_name in _timm_vit_names():
            return "timm ViT"
        problem = _timm_trunk_problem(timm_name)
        if problem:
            raise ValueError(f"has a timm vision tower ({timm_name}) that is not a ViT: {problem}")
        return "timm ViT"
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError("has a ResNet vision tower (ModifiedResNet); Alpha-CLIP needs a ViT tower (the reference's "
                         "ResNet stem variant was never released)")
    return "open_clip ViT"


def base_name(name: str) -> Optional[str]:
    """The open_clip config an ``alpha-`` name is built from (``alpha-ViT-B-16`` -> ``ViT-B-16-quickgelu``,
    ``alpha-EVA02-L-14`` -> ``EVA02-L-14``); None for names without the prefix."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    return _EXPLICIT_BASE.get(name, name[len(PREFIX):])


def alpha_config(name: str) -> Optional[Dict[str, Any]]:
    """The open_clip model config of ``alpha-<name>``: ``<name>``'s config with ``"alpha_clip": true``.

    Returns None when ``<name>`` is not a known open_clip config (open_clip then says so).
    Raises:
        ValueError: ``<name>``'s vision tower cannot get an alpha conv (ResNet, ConvNeXt, conv-stem, CoCa).
    """
    base = base_name(name)
    if base is None:
        raise ValueError(f"model_name: {name!r} does not start with {PREFIX!r}")
    cfg = _ORIGINAL["get_model_config"](base)
    if cfg is None:
        return None
    try:
        _tower(cfg)
    except ValueError as e:
        raise ValueError(f"model_name: {name} is not available: {base} {e}") from None
    cfg = copy.deepcopy(cfg)
    cfg["alpha_clip"] = True
    return cfg


@dataclass(frozen=True)
class Backbone:
    """One ``alpha-`` model name: its base config, its vision tower and its pretrained tags."""

    name: str
    base: str
    tower: str            #: ``open_clip ViT`` or ``timm <timm model name>``
    image_size: int
    text: str             #: ``CLIP`` (open_clip's text tower under the root) or ``CustomText``
    tags: Tuple[str, ...]  #: pretrained tags of the base (released Alpha-CLIP tags for the reference names)
    released: Tuple[str, ...] = ()

    def row(self) -> Dict[str, Any]:
        return {"name": self.name, "base": self.base, "tower": self.tower, "image_size": self.image_size,
                "text": self.text, "base_tags": list(self.tags), "released_tags": list(self.released)}


def backbones() -> List[Backbone]:
    """Every listed ``alpha-`` model (see the module docstring), sorted as ``open_clip.list_models()``."""
    out = []
    for name in open_clip.list_models():
        base = base_name(name)
        if base is None or name == "alpha-ViT-Tiny-8":
            continue
        cfg = open_clip.factory._MODEL_CONFIGS.get(name) or {}
        vision = cfg.get("vision_cfg", {})
        tower = f"timm {vision['timm_model_name']}" if vision.get("timm_model_name") else \
            f"open_clip ViT (width {vision.get('width')}, patch {vision.get('patch_size')}, {vision.get('layers')} layers)"
        size = vision.get("image_size", 224)
        tags = tuple(open_clip.list_pretrained_tags_by_model(base))
        out.append(Backbone(name, base, tower, int(size if isinstance(size, int) else size[0]),
                            "CustomText" if cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {})
                            else "CLIP", tags, tuple(RELEASED.get(name, {}))))
    return out


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


#: open_clip's own functions, before the hooks below wrap them
_ORIGINAL: Dict[str, Callable] = {}


def _install_factory_hook() -> None:
    """Make open_clip's factory build the alpha classes for configs with ``"alpha_clip": true`` and resolve
    ``alpha-<name>`` names and their pretrained tags (idempotent)."""
    factory = open_clip.factory
    if getattr(factory.CLIP, "_alphaclip_hook", False):
        return
    _ORIGINAL.update(CLIP=factory.CLIP, CustomTextCLIP=factory.CustomTextCLIP, CoCa=factory.CoCa,
                     get_model_config=factory.get_model_config, get_pretrained_cfg=factory.get_pretrained_cfg)

    def builder(name: str, alpha_class: Optional[type]) -> Callable:
        def build(**cfg: Any):
            if cfg.get("alpha_clip"):
                if alpha_class is None:
                    raise TypeError(f"model: {name} models (captioning) have no Alpha-CLIP; use a CLIP or "
                                    "CustomTextCLIP config")
                return alpha_class(**cfg)
            cfg.pop("alpha_clip", None)
            return _ORIGINAL[name](**cfg)

        build.__name__ = name
        build._alphaclip_hook = True  # type: ignore[attr-defined]
        return build

    def get_model_config(model_name: str):
        if isinstance(model_name, str) and model_name.startswith(PREFIX) and model_name not in factory._MODEL_CONFIGS:
            return alpha_config(model_name)
        return _ORIGINAL["get_model_config"](model_name)

    def get_pretrained_cfg(model: str, tag: str):
        cfg = _ORIGINAL["get_pretrained_cfg"](model, tag)
        base = base_name(model)
        if not cfg and base is not None:  # alpha-<name> takes <name>'s tags: base weights, zero alpha conv
            cfg = _ORIGINAL["get_pretrained_cfg"](base, tag)
        return cfg

    factory.CLIP = builder("CLIP", AlphaCLIP)
    factory.CustomTextCLIP = builder("CustomTextCLIP", AlphaCustomTextCLIP)
    factory.CoCa = builder("CoCa", None)
    factory.get_model_config = get_model_config
    open_clip.get_model_config = get_model_config
    factory.get_pretrained_cfg = get_pretrained_cfg


def _list_alpha_models() -> None:
    """Put ``alpha-<name>`` in open_clip's config table for every supported config (listing only: they
    resolve without it) and give it ``<name>``'s pretrained tags; keeps the table sorted."""
    table = open_clip.factory._MODEL_CONFIGS
    tags = open_clip.pretrained._PRETRAINED
    added = {}
    for name, cfg in list(table.items()):
        alpha = PREFIX + name
        if name.startswith(PREFIX) or alpha in table:
            continue
        vision = cfg.get("vision_cfg", {})
        if vision.get("timm_model_name") and vision["timm_model_name"] not in _timm_vit_names():
            continue  # not listed (deciding would build the model); alpha-<name> still resolves if it is a ViT
        try:
            _tower(cfg)
        except ValueError:
            continue
        added[alpha] = dict(copy.deepcopy(cfg), alpha_clip=True)
        if name in tags:
            mirrored = tags.setdefault(alpha, {})
            for tag, tag_cfg in tags[name].items():
                mirrored.setdefault(tag, tag_cfg)
    if added:
        merged = {**table, **added}
        table.clear()
        table.update(sorted(merged.items(), key=lambda kv: open_clip.factory._natural_key(kv[0])))


def register() -> None:
    """Register the alpha configs, names, tags and factory hooks with open_clip (idempotent; runs on import).

    Call it again after ``open_clip.add_model_config`` to list the new configs' ``alpha-`` names too.
    """
    _install_factory_hook()
    if CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)
    _list_alpha_models()
    for name, tags in RELEASED.items():
        table = open_clip.pretrained._PRETRAINED.setdefault(name, {})
        for tag in tags:
            table.setdefault(tag, _LocalTagCfg(name, tag))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _weights_follow():
    """open_clip warns "No pretrained weights loaded ... Model initialized randomly" (on the root logger)
    for every model built without its own weights; our loaders load the weights right after building,
    so that warning is dropped while they build (only that message, only for that call)."""
    quiet = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def build(name: str) -> Tuple[torch.nn.Module, Callable]:
    """``(model, preprocess)``: the architecture ``name`` on the CPU, for weights loaded next (by the
    caller), built through open_clip's factory without its "initialized randomly" warning."""
    with _weights_follow():
        model, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu")
    return model, preprocess


def load(name: str, alpha_checkpoint: Union[str, os.PathLike], base: Optional[Union[str, os.PathLike]] = None, *,
         device: Union[str, torch.device] = "cpu", precision: str = "fp32") -> Tuple[AlphaModel, Callable]:
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
    model, preprocess = build(name)
    load_alpha_clip(model, alpha_checkpoint, base)
    # cast/move only after loading, the way open_clip's factory does
    open_clip.factory._set_model_device_and_precision(model, device, precision, hasattr(model.visual, "trunk"))
    return model.eval(), preprocess


def save_pretrained(model: AlphaModel, folder: Union[str, os.PathLike], *, card: Union[bool, Provenance] = True,
                    overwrite_card: bool = False) -> Path:
    """Write ``model`` as an open_clip folder: ``open_clip_config.json`` + ``open_clip_model.safetensors``,
    and a model card (``README.md``, see :mod:`alphaclip_integrations.cards`).

    The folder loads back with ``open_clip.create_model_and_transforms('local-dir:' + folder)``
    (after ``import alphaclip_integrations.open_clip``).

    Args:
        model: an ``AlphaCLIP`` / ``AlphaCustomTextCLIP`` built from a config.
        folder: the output folder (created if needed).
        card: ``True``: write a card saying the weights' origin was not recorded; a
            :class:`~alphaclip_integrations.cards.Provenance`: write a card with it; ``False``: no card.
        overwrite_card: replace a ``README.md`` already in ``folder`` (default: keep it).
    """
    if not isinstance(model, AlphaModel) or model.model_cfg is None:
        raise ValueError("model: expected an AlphaCLIP built from a config (open_clip.create_model or AlphaCLIP(...))")
    provenance = card_provenance(card)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = dict(open_clip.model.get_model_preprocess_cfg(model))
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": preprocess}
    save_safetensors(model, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if provenance is not None:
        mode = {"squash": "squash", "longest": "pad"}.get(preprocess.get("resize_mode"), None)
        write_model_card(folder, model_card("open_clip", tower_from_open_clip(model), provenance,
                                            folder=folder.name, mode=mode), overwrite=overwrite_card)
    return folder


register()
