"""The ``alphaclip`` command.

Core subcommands: ``classify`` (regions of an image over labels, ranked table + overlay PNG),
``convert`` (between weight formats) and ``info`` (what a checkpoint is; without a file, the
supported backbones). Other packages of this
distribution add subcommands through :data:`COMMAND_MODULES`: each listed module has
``register(subparsers)`` and imports its heavy frameworks only inside its own command.
The options every model-using subcommand shares (``--model``, ``--checkpoint``, ``--device``, ...,
:func:`~alphaclip_core.options.load_model`) live in :mod:`alphaclip_core.options`.

Errors: :func:`main` is the one error boundary of every subcommand. Whatever a command raises ends
as one line ``error: <what>: <why>`` on stderr and exit code 2 (bad input: an
:class:`~alphaclip_core.errors.InputError`, a ValueError, a missing file, an unreadable image...) or
1 (the run could not go on: disk full, read-only output, ...); ``--debug`` (anywhere on the command
line) or ``ALPHACLIP_DEBUG=1`` also prints the traceback. See ``docs/errors.md``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from . import __version__
from .errors import InputError, describe_error
# the shared model options lived here before the core was split (issue 16): they still import from here
from .options import (_parse_box, _positive_int, add_model_arguments, check_device,  # noqa: F401
                      check_model_name, load_model)

logger = logging.getLogger("alphaclip")

#: environment variable: ``1`` prints the traceback of any error (as ``--debug`` does)
DEBUG_ENV = "ALPHACLIP_DEBUG"

#: modules that add subcommands (skipped when their optional dependencies are absent)
COMMAND_MODULES: List[str] = [
    "alphaclip_train.cli",            # demo, train
    "alphaclip_train.prepare.cli",    # data prepare/check/show
    "alphaclip_train.eval.cli",       # locate, eval
    "alphaclip_train.pseudolabel",    # pseudolabel (Detic box pseudo-labels)
    "alphaclip_integrations.diffusers.cli",  # generate variation/convert (diffusers imported inside)
    "alphaclip_integrations.gradio.cli",  # app (the interactive region page; gradio imported when it runs)
]


# ------------------------------------------------------------------------------------------------
# classify
def _cmd_classify(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .alpha import open_image, region_masks
    from .regions import classify_regions
    from .viz import overlay_regions

    image = open_image(args.image, "image")
    masks = [np.asarray(open_image(m, "--mask", mode="L")) for m in args.mask]
    names = [f"mask {Path(m).name}" for m in args.mask] + [f"box {i}" for i in range(len(args.box))]
    if not names:
        names = ["whole image"]
    model, tokenizer = load_model(args)
    kw = dict(mask=masks or None, box=args.box or None)
    scores = classify_regions(model, tokenizer, image, args.labels, templates=args.template or ["a photo of a {}."],
                              mode=args.mode, **kw)
    if args.json:
        print(json.dumps([{"region": n, "top": scores.top(i, args.top)} for i, n in enumerate(names)], indent=2))
    else:
        print(scores.table(k=args.top, names=names))
    overlay = Path(args.overlay or f"{Path(args.image).stem}.regions.png")
    region = region_masks(image.height, image.width, **kw)
    captions = [f"{n}: {scores.top(i, 1)[0][0]} {scores.top(i, 1)[0][1]:.2f}" for i, n in enumerate(names)]
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay_regions(image, region, captions).save(overlay)
    logger.info("wrote %s", overlay)
    return 0


# ------------------------------------------------------------------------------------------------
# convert / info
def _cmd_convert(args: argparse.Namespace) -> int:
    import open_clip

    import alphaclip_integrations.open_clip as aoc
    from alphaclip_integrations.cards import CARD_NAME, Provenance
    from .checkpoints import (ALPHA_KEYS, CheckpointError, atomic_folder, detect_format, load_alpha_clip,
                              load_state_dict_checked, read_state_dict, save_reference, save_safetensors,
                              vision_arch)

    if args.arch:
        check_model_name(args.arch, "--arch")
    if Path(args.source).is_dir():  # a transformers folder, back to open_clip / reference
        from alphaclip_integrations.hf.convert import load_open_clip_from_hf
        model, arch = load_open_clip_from_hf(args.source), "from transformers"
    else:
        sd = read_state_dict(args.source, "source")
        fmt = detect_format(sd)
        arch = args.arch or vision_arch(sd).name
        if arch is None:
            raise InputError(f"--arch: cannot tell the architecture of {args.source} ({vision_arch(sd).describe()}); "
                             "pass --arch")
        model = open_clip.create_model(arch)
        if fmt == "clip" and args.base is None:
            # a plain CLIP becomes an Alpha-CLIP with a zero alpha conv: the starting point for training
            load_state_dict_checked(model, sd, f"source {args.source}", allow_missing=ALPHA_KEYS)
        elif fmt in ("alpha-reference", "open_clip-alpha"):
            load_alpha_clip(model, args.source, args.base)
        else:
            raise CheckpointError(f"source: {args.source} has format '{fmt}'; expected an Alpha-CLIP or CLIP checkpoint")
    out = Path(args.output)
    # a folder's model card names the files converted (file names only)
    card = False if args.card == "none" else Provenance(args.source, args.base, folder_name=out.name,
                                                         model_name=None if Path(args.source).is_dir() else arch)
    if args.to in ("hf", "local-dir"):
        with atomic_folder(out) as tmp:  # a failed write (full disk) leaves no half-written folder
            if args.card == "write" and (out / CARD_NAME).is_file():
                shutil.copy2(out / CARD_NAME, tmp / CARD_NAME)  # the folder is replaced; its README.md is kept
            if args.to == "hf":
                from alphaclip_integrations.hf import convert_to_hf  # transformers only here
                convert_to_hf(model, tmp, card=card, overwrite_card=args.card == "overwrite")
            else:
                aoc.save_pretrained(model, tmp, card=card, overwrite_card=args.card == "overwrite")
    elif args.to == "reference":
        save_reference(model, out)
    else:
        save_safetensors(model, out)
    logger.info("wrote %s (%s, %s)", out, args.to, arch)
    print(out)
    return 0


def _cmd_backbones(as_json: bool) -> int:
    """``alphaclip info`` without a file: the ``alpha-<name>`` backbones open_clip can build, and how to start one."""
    import alphaclip_integrations.open_clip as aoc

    rows = [b.row() for b in aoc.backbones()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<38} {'vision tower':<52} {'size':>4}  pretrained tags (the base's; released Alpha-CLIP)")
    for r in rows:
        tags = r["released_tags"] + r["base_tags"]
        more = f" +{len(tags) - 3}" if len(tags) > 3 else ""
        print(f"{r['name']:<38} {r['tower']:<52} {r['image_size']:>4}  {', '.join(tags[:3]) or '-'}{more}")
    print(f"\n{len(rows)} backbones: every open_clip model with a ViT vision tower, as alpha-<name> (ResNet, ConvNeXt "
          "and conv-stem towers have no patch embedding to add the alpha to).\n"
          "Start one: open_clip.create_model_and_transforms('alpha-<name>', pretrained='<tag of <name>>') after "
          "`import alphaclip_integrations.open_clip`:\nthe base weights load and conv1_alpha starts at zero. Train it: "
          "alphaclip train SHARDS --model alpha-<name> --init <tag or file> -o RUN. See docs/backbones.md.")
    return 0


def _print_system(as_json: bool) -> None:
    from .system import system_info

    info = system_info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k == "gpus":
            for g in v or [{"name": "none"}]:
                print(f"{'gpu':<22} " + ", ".join(f"{a}={b}" for a, b in g.items()))
        elif k == "attention":
            print(f"{k:<22} " + ", ".join(f"{a}={b}" for a, b in v.items()))
        elif k == "auto_precision":
            for dev, c in v.items():
                print(f"{'precision auto ' + dev:<22} {c['precision']}: {c['reason']}")
                if c.get("timings_ms"):
                    print(f"{'':<22} measured ms: " + ", ".join(f"{a} {b:.2f}" for a, b in c["timings_ms"].items()))
        else:
            print(f"{k:<22} {v}")


def _cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import describe

    if not args.json:
        print(f"{'package':<22} alpha-clip {__version__}")
    if args.system:
        _print_system(args.json)
        if args.file is None and not args.backbones:
            return 0
    if args.file is None or args.backbones:
        return _cmd_backbones(args.json)
    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:<22} {v}")
    return 0


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaclip", description="Alpha-CLIP: CLIP that looks where you point.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, also print the Python traceback (anywhere on the line; or {DEBUG_ENV}=1)")
    parser.add_argument("--version", action="version", version=f"alphaclip (alpha-clip) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify regions of an image over labels; prints a table, writes an overlay")
    p.add_argument("image", help="image file")
    p.add_argument("--mask", action="append", default=[], help="binary mask PNG of the image's size (repeatable)")
    p.add_argument("--box", action="append", default=[], type=_parse_box, help="x0,y0,x1,y1 in pixels (repeatable)")
    p.add_argument("--labels", nargs="+", required=True, help="candidate labels")
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; default 'a photo of a {}.')")
    p.add_argument("--mode", choices=("crop", "pad", "squash"), default="crop", help="paired transform geometry")
    p.add_argument("--top", type=_positive_int, default=3, help="labels shown per region")
    p.add_argument("--overlay", help="overlay PNG path (default: IMAGE_STEM.regions.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("convert", help="convert weights between formats")
    p.add_argument("source", help="reference .pth, open_clip alpha file, a plain CLIP (zero alpha conv added), "
                                  "or a transformers folder")
    p.add_argument("--base", help="plain OpenAI CLIP weights (needed for a reference visual-only .pth)")
    p.add_argument("--arch", help="alpha model name; read off the weights when omitted")
    p.add_argument("--to", choices=("open_clip", "reference", "local-dir", "hf"), default="open_clip",
                   help="open_clip: one safetensors file; reference: visual-only .pth; local-dir: open_clip folder; "
                        "hf: transformers folder (model, processor, remote code)")
    p.add_argument("--output", "-o", required=True, help="output file or folder")
    p.add_argument("--card", choices=("write", "overwrite", "none"), default="write",
                   help="folders (hf, local-dir) get a model card README.md naming the files converted: write "
                        "(keeps a README.md already there), overwrite, or none")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="say what a checkpoint is; without a file, list the supported backbones; "
                                     "--system: this machine and the precision `auto` picks")
    p.add_argument("file", nargs="?", help="checkpoint file (omit it to list the alpha-<name> backbones)")
    p.add_argument("--backbones", action="store_true", help="list the alpha-<name> backbones open_clip can build")
    p.add_argument("--system", action="store_true",
                   help="print the software, CPU/GPU, attention kernels and the `auto` precision with its reason")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # optional dependency absent: the subcommand is simply not offered
            logger.debug("subcommands of %s unavailable: %s", name, e)
            continue
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``alphaclip ARGV``; returns the exit code (0 ok, 1 runtime error, 2 bad input or usage).

    The one error boundary of every subcommand: any exception becomes ``error: <message>`` on one
    line of stderr (see :func:`alphaclip_core.errors.describe_error`); with ``--debug`` or
    ``ALPHACLIP_DEBUG=1`` the traceback is printed first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or _debug_env()
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit:
        raise  # argparse: usage errors print usage + "alphaclip ...: error: ..." and exit 2; --help exits 0
    except Exception as e:  # noqa: BLE001 - a subcommand module that fails to register
        return _report(e, debug)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return guarded(lambda: args.func(args), debug)


def guarded(run: Callable[[], Optional[int]], debug: Optional[bool] = None) -> int:
    """Call ``run()`` behind the command line's error boundary; returns the exit code.

    For other entry points of the same commands (``python -m alphaclip_train.pseudolabel``, the
    benchmark scripts): any exception becomes one ``error: ...`` line and exit code 2 or 1, as in
    :func:`main`. ``debug`` defaults to ``ALPHACLIP_DEBUG``.
    """
    if debug is None:
        debug = _debug_env()
    try:
        return int(run() or 0)
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("error: ...") inside a command: a usage error
            msg = e.code[len("error:"):].strip() if e.code.startswith("error:") else e.code
            if debug:
                traceback.print_exc()
            print(f"error: {msg}", file=sys.stderr)
            return 2
        raise
    except BaseException as e:  # noqa: BLE001 - the boundary: no traceback for the user unless asked
        if not isinstance(e, (Exception, KeyboardInterrupt)):
            raise
        return _report(e, debug)


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _report(e: BaseException, debug: bool) -> int:
    code, message = describe_error(e)
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__)
    elif code == 1 and message.endswith("report it)"):
        logger.debug("unexpected error", exc_info=e)
    # one line: a message that suggests a command on its own line keeps it, joined
    print("error: " + " ".join(part.strip() for part in message.splitlines() if part.strip()), file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
