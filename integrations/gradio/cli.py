"""``alphaclip app``: the interactive region page. Imports gradio (and SAM, transformers) only when it runs."""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any, Tuple

__all__ = ["register", "build_engine", "build_panels", "INSTALL_HINT"]

logger = logging.getLogger("alphaclip.app")

INSTALL_HINT = "pip install 'alpha-clip[app]'   (or: pip install gradio)"
PIPELINE_HINT = "pip install 'alpha-clip[diffusers]'"
TOY_NAME = "the shipped toy Alpha-CLIP (synthetic world: 4 shapes x 6 colours; not for real photos)"
_WEIGHTS = (".pt", ".pth", ".bin", ".safetensors")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``app`` subcommand to the ``alphaclip`` command."""
    from alphaclip_core.cli import add_model_arguments

    p = subparsers.add_parser(
        "app", help="the interactive region page (Gradio): mark regions of a picture, classify, search, ask",
        description="Serve a web page where you mark regions of a picture (brush, boxes, SAM points) and see what "
                    "Alpha-CLIP sees: ranked labels per region beside the plain-CLIP views, 'where is ...' with a "
                    "heat map, region questions with an alpha LLaVA. With neither --model nor --checkpoint it runs "
                    "the shipped toy model with the bundled scenes as examples (no download). Needs "
                    + INSTALL_HINT + ".")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--sam", metavar="CKPT", help="segment-anything weights (sam_vit_*.pth): SAM point prompts and "
                                                 "automatic masks for 'where is'")
    p.add_argument("--sam-type", choices=("vit_h", "vit_l", "vit_b", "tiny"),
                   help="SAM architecture (default: read off the file name, e.g. sam_vit_b_01ec64.pth)")
    p.add_argument("--sam-points-per-side", type=int, default=16, help="SAM automatic mask grid (default 16)")
    p.add_argument("--llava", metavar="FOLDER", help="an alpha LLaVA folder (see 'alphaclip_integrations.llava "
                                                     "convert'): region captions and questions")
    p.add_argument("--pipeline", metavar="FOLDER", help="an Alpha-CLIP image-variation folder (see 'alphaclip generate "
                                                         "convert'): adds the Variations tab (needs diffusers)")
    p.add_argument("--template", action="append", help="default prompt template with {} (repeatable; default "
                                                       "'a photo of a {}.', the toy model's 'a {}.')")
    p.add_argument("--labels", help="the labels box's starting text (comma-separated or a text file, one per line)")
    p.add_argument("--concurrency", type=int, default=1, help="model calls run at once (default 1)")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting in the queue at most (default 16)")
    p.add_argument("--no-examples", action="store_true", help="do not offer the bundled synthetic scenes")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_app, model=None)


def _check_file(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{flag}: {path} does not exist (expected a weights file)")
    return p


def build_engine(args: argparse.Namespace):
    """The :class:`~alphaclip_integrations.gradio.engine.RegionEngine` the command line describes.

    No ``--model``/``--checkpoint``: the shipped toy model. Otherwise the shared model options
    (:func:`alphaclip_core.cli.load_model`), plus SAM (``--sam``) and an alpha LLaVA (``--llava``).
    """
    from alphaclip_core.cli import check_device, load_model

    from .engine import RegionEngine

    check_device(args.device)  # before any model is built (the toy model too)

    if args.checkpoint and (any(args.checkpoint.endswith(s) for s in _WEIGHTS) or "/" in args.checkpoint):
        _check_file(args.checkpoint, "--checkpoint")
    if args.base:
        _check_file(args.base, "--base")
    sam_type = None
    if args.sam:
        _check_file(args.sam, "--sam")
        sam_type = args.sam_type or _sam_type(args.sam)
    if args.llava and not Path(args.llava).is_dir():
        raise FileNotFoundError(f"--llava: {args.llava} is not a folder (expected an alpha LLaVA folder)")
    if args.concurrency < 1 or args.queue_size < 1:
        raise ValueError(f"--concurrency / --queue-size: expected >= 1, got {args.concurrency} / {args.queue_size}")

    if args.model is None and args.checkpoint is None:
        from alphaclip_train.synthetic import load_tiny

        model, tokenizer = load_tiny(args.device)
        from alphaclip_core.precision import apply_precision

        logger.info("precision: %s", apply_precision(model, args.precision, args.device))
        name, templates = TOY_NAME, ["a {}."]
    else:
        args.model = args.model or "alpha-ViT-B-16"
        model, tokenizer = load_model(args)
        name, templates = f"{args.model}" + (f" + {Path(args.checkpoint).name}" if args.checkpoint else ""), \
            ["a photo of a {}."]
    if args.template:
        templates = list(args.template)
    sam = None
    if args.sam:
        from alphaclip_train.sam import load_sam

        sam = load_sam(sam_type, args.sam, device=args.device)
    llava = _load_llava(args.llava, args.device) if args.llava else None
    return RegionEngine(model, tokenizer, sam=sam, llava=llava, templates=templates, name=name,
                        sam_points_per_side=args.sam_points_per_side)


def build_panels(args: argparse.Namespace) -> list:
    """The extra tabs the command line asks for: the Variations tab with ``--pipeline`` (the pipeline loaded
    on ``--device``, the app's model device). diffusers is imported here only when ``--pipeline`` is given."""
    if not args.pipeline:
        return []
    folder = Path(args.pipeline)
    if not folder.is_dir():
        raise FileNotFoundError(f"--pipeline: {folder} is not a folder (expected an Alpha-CLIP image-variation "
                                "pipeline folder; make one with 'alphaclip generate convert')")
    try:
        from alphaclip_integrations.diffusers.generate import load_pipeline

        from .variations import variations_panel
    except ImportError as e:
        raise SystemExit(f"error: --pipeline needs diffusers, which is not installed: {PIPELINE_HINT} ({e})") from None
    from alphaclip_core.cli import check_device

    check_device(args.device)
    try:  # the page shows the denoising progress; no progress bar in the server's terminal
        pipe = load_pipeline(folder, device=args.device, progress=False, arg="--pipeline")
    except OSError as e:  # a folder that says it is one but whose files diffusers cannot read
        raise ValueError(f"--pipeline: {folder} could not be loaded as an Alpha-CLIP image-variation pipeline "
                         f"({e})") from None
    logger.info("variations: %s on %s", folder, pipe.device)
    return [variations_panel(pipe)]


def _sam_type(path: str) -> str:
    m = re.search(r"vit_([hlb])", Path(path).name)
    if not m:
        raise ValueError(f"--sam-type: cannot tell the SAM architecture from the file name {Path(path).name!r}; "
                         "pass --sam-type vit_h, vit_l or vit_b")
    return f"vit_{m.group(1)}"


def _load_llava(folder: str, device: str) -> Tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import alphaclip_integrations.llava  # noqa: F401  (registers the alpha LLaVA with the Auto classes)

    try:
        model = AutoModelForImageTextToText.from_pretrained(folder).to(device).eval()
        processor = AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--llava: {folder} is not a loadable alpha LLaVA folder ({e})") from None
    return model, processor


def _labels_text(value: str) -> str:
    if not value:
        return ""
    p = Path(value)
    return p.read_text() if p.is_file() else "\n".join(v.strip() for v in value.split(",") if v.strip())


def _cmd_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: 'alphaclip app' needs Gradio, which is not installed: {INSTALL_HINT}") from None
    from .app import launch

    panels = build_panels(args)  # first: a wrong --pipeline fails before any model is loaded
    engine = build_engine(args)
    labels = _labels_text(args.labels)
    if not labels and args.model is None and args.checkpoint is None:
        from alphaclip_train.synthetic import LABELS

        labels = "\n".join(LABELS)
    if args.share:
        logger.warning("--share: the page is reachable by anyone with the public link while the app runs")
    import signal

    def stop(signum, frame):  # `kill PID` stops the server like Ctrl+C does, so its temporary folder is removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"alphaclip app: http://{args.host}:{args.port}  (model: {engine.name}; Ctrl+C stops it)", flush=True)
    try:
        launch(engine, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
               queue_size=args.queue_size, examples=not args.no_examples, labels=labels, panels=panels)
    except KeyboardInterrupt:  # stopped while still starting up: launch has removed its folder already
        logger.info("stopped")
    return 0
