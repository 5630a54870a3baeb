"""The options every model-using ``alphaclip`` subcommand shares, and the checks behind them.

:func:`add_model_arguments` adds ``--model/--checkpoint/--base/--device/--precision``;
:func:`load_model` builds the model they describe; :func:`check_device` and :func:`check_model_name`
turn a bad value into an :class:`~alphaclip_core.errors.InputError` naming the option. The
subcommands of ``alphaclip_train`` and ``alphaclip_integrations`` use them too. open_clip and the
open_clip integration (which registers the ``alpha-<name>`` configs) are imported lazily, inside the
functions that need them, so the core imports no integration when it is imported.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import List

from .errors import InputError, closest
from .precision import PRECISIONS

__all__ = ["add_model_arguments", "check_device", "check_model_name", "load_model"]

logger = logging.getLogger("alphaclip")  # the command's logger, as in alphaclip_core.cli


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model/--checkpoint/--base/--device/--precision`` as every model-using subcommand takes them."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="alpha-ViT-B-16",
                   help="open_clip alpha model name (alpha-ViT-B-16, alpha-ViT-L-14, alpha-ViT-L-14-336) "
                        "or local-dir:FOLDER")
    g.add_argument("--checkpoint", help="Alpha-CLIP weights: reference .pth (with --base) or a converted file; "
                                        "or a pretrained tag (grit1m, grit20m, ...) resolved in $ALPHACLIP_CACHE")
    g.add_argument("--base", help="plain OpenAI CLIP weights of the same architecture (for a reference .pth)")
    g.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="weights' precision (default auto: bf16 on a CPU with native bf16 where measured faster, "
                        "fp16 on CUDA, else fp32; see `alphaclip info --system`)")


def check_device(device: str, arg: str = "--device"):
    """``torch.device(device)`` after checking this machine has it: an :class:`InputError` naming ``arg``
    for a string that is not a device, CUDA without a GPU (or an index past the last GPU), MPS without
    Apple's backend."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{arg}: {device!r} is not a torch device; expected cpu, cuda, cuda:N, mps, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{arg}: {device}: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                             "False); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"{arg}: {device}: this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"{arg}: {device}: the MPS backend is not available here; use --device cpu")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise InputError(f"{arg}: {device}: this machine has no {dev.type} device; use --device cpu")
    return dev


def check_model_name(name: str, arg: str = "--model") -> str:
    """Check ``name`` is an open_clip model (after the alpha configs are registered) or ``local-dir:``
    / ``hf-hub:``; an unknown name is an :class:`InputError` suggesting the closest registered names."""
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401  (registers the alpha configs)

    if name.startswith("hf-hub:"):
        return name
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(f"{arg}: {name}: expected a folder holding open_clip_config.json (as "
                             "`alphaclip convert --to local-dir` or `alphaclip train` write)"
                             + ("" if folder.is_dir() else f"; {folder} does not exist"))
        return name
    try:
        if open_clip.get_model_config(name) is not None:  # also alpha-<name> for any ViT config, listed or not
            return name
    except ValueError as e:  # alpha-<name> of a tower that cannot take an alpha conv (ResNet, ConvNeXt...)
        raise InputError(f"{arg}: {e}") from None
    known = open_clip.list_models()
    near = closest(name, known)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise InputError(f"{arg}: unknown model {name!r}; {hint}(`alphaclip info` lists the "
                     f"{sum(n.startswith('alpha-') for n in known)} alpha-<name> models; local-dir:FOLDER and "
                     "hf-hub:NAME work too)")


def load_model(args: argparse.Namespace):
    """Build the model the shared options describe: ``(model, tokenizer)``, model in eval mode.

    ``args.precision`` (``auto`` from :func:`add_model_arguments`; fp32 when the namespace has none)
    is applied with :func:`alphaclip_core.precision.apply_precision`; the choice is logged with its reason.
    """
    import open_clip

    import alphaclip_integrations.open_clip as aoc  # registers the alpha configs (lazy: see module docstring)

    check_device(args.device)
    check_model_name(args.model)
    if args.model.startswith("local-dir:"):
        model = open_clip.create_model(args.model, device=args.device)
    elif not args.checkpoint:
        raise InputError("--checkpoint: required (a weights file or a pretrained tag), or use --model local-dir:FOLDER")
    elif Path(args.checkpoint).is_file():
        model, _ = aoc.load(args.model, args.checkpoint, args.base, device=args.device)
    elif Path(args.checkpoint).is_dir():
        raise InputError(f"--checkpoint: {args.checkpoint} is a folder; expected a weights file (for an open_clip "
                         f"folder use --model local-dir:{args.checkpoint})")
    else:
        cfg = open_clip.factory.get_pretrained_cfg(args.model, args.checkpoint)  # alpha-<name>: <name>'s tags too
        if not cfg:
            if os.sep in args.checkpoint or Path(args.checkpoint).suffix:
                raise FileNotFoundError(f"--checkpoint: no such file: {args.checkpoint}")
            tags = open_clip.list_pretrained_tags_by_model(args.model)
            raise InputError(f"--checkpoint: {args.checkpoint!r} is neither a file nor a pretrained tag of "
                             f"{args.model} (its tags: {', '.join(tags) if tags else 'none'})")
        try:
            cfg["file"]  # a local tag (released Alpha-CLIP) says here which file to fetch and how to convert it
        except FileNotFoundError as e:
            raise InputError(f"--checkpoint: {e}") from None
        except KeyError:
            pass
        model = open_clip.create_model(args.model, pretrained=args.checkpoint, device=args.device)
    from .precision import apply_precision

    choice = apply_precision(model, getattr(args, "precision", "fp32"), args.device)
    logger.info("precision: %s", choice)
    return model.eval(), open_clip.get_tokenizer(args.model)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _parse_box(text: str) -> List[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box: expected x0,y0,x1,y1 in pixels, got {text!r}") from None
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--box: expected 4 numbers x0,y0,x1,y1, got {text!r}")
    return box
