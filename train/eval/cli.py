"""``alphaclip locate`` and ``alphaclip eval imagenet-s|rec``.

Registered by ``alphaclip_core.cli`` through ``register(subparsers)``. segment_anything is imported
only inside ``locate`` when SAM is asked for; open_clip models are loaded with the core's shared
``--model/--checkpoint/--base/--device`` options.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.cli import _parse_box, add_model_arguments, load_model

logger = logging.getLogger("alphaclip")

__all__ = ["register", "imagenet_s_main", "rec_main", "load_plain"]


# ------------------------------------------------------------------------------------------------ helpers
def load_plain(model_name: str, base: str, device: str = "cpu", precision: str = "fp32"):
    """The plain CLIP of ``model_name``'s architecture from OpenAI/open_clip weights ``base``.

    Built as the alpha architecture with ``conv1_alpha`` left at zero, which computes exactly what the
    plain CLIP computes; call ``encode_image(pixels)`` without alpha. ``precision``: as ``--precision``
    (``alphaclip_core.precision.apply_precision``).
    """
    from alphaclip_core.precision import apply_precision

    import alphaclip_integrations.open_clip as aoc
    from alphaclip_core.checkpoints import load_state_dict_checked, read_state_dict

    model, _ = aoc.build(model_name)
    load_state_dict_checked(model, read_state_dict(base, "plain base"), f"plain base {base}",
                            allow_missing=("visual.conv1_alpha.weight",))
    model = model.to(device).eval()
    apply_precision(model, precision, device)
    return model


def _slug(*parts: Any) -> str:
    """A file-name-safe run name from its parts (None parts dropped)."""
    text = "-".join(str(p) for p in parts if p)
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_")


def _run_folder(args: argparse.Namespace, task: str, *parts: Any) -> Path:
    """``--out``, or by default a folder in the current directory named after the run."""
    if args.out:
        return Path(args.out)
    ckpt = Path(args.checkpoint).stem if getattr(args, "checkpoint", None) else None
    model = args.model.split(":", 1)[-1].rstrip("/").split("/")[-1]
    return Path(_slug(task, model, ckpt, *parts))


def _model_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The CLI's description of the model(s), recorded in progress files (weights are also digested)."""
    return {"model": args.model, "checkpoint": args.checkpoint, "base": args.base}


def _write_results(out_dir: Path, stem: str, payload: Dict[str, Any], markdown: str) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in ((".json", json.dumps(payload, indent=2) + "\n"), (".md", markdown)):
        path = out_dir / f"{stem}{suffix}"

        def write(tmp: str, text: str = text) -> None:
            Path(tmp).write_text(text)

        atomic_write(path, write)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ locate
def _cmd_locate(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .locate import locate, render

    from alphaclip_core.alpha import open_image

    image = open_image(args.image, "image")
    masks = [np.asarray(open_image(m, "--mask", mode="L")) > 127 for m in args.mask] or None
    boxes = args.box or None
    generator = None
    if masks is None and boxes is None:
        if not args.sam_checkpoint:
            raise SystemExit("error: give --box/--mask regions or --sam-checkpoint for SAM's automatic masks")
        from .. import sam as sam_lib

        sam = sam_lib.load_sam(args.sam_type, args.sam_checkpoint, args.device)
        generator = sam_lib.automatic_mask_generator(sam, points_per_side=args.points_per_side,
                                             pred_iou_thresh=args.pred_iou_thresh,
                                             stability_score_thresh=args.stability_score_thresh)
    model, tokenizer = load_model(args)
    result = locate(model, tokenizer, image, args.phrase, masks=masks, boxes=boxes, mask_generator=generator,
                    template=args.template, batch_size=args.batch_size, mode=args.mode, min_area=args.min_area)
    best = result.top(args.top)
    stem = Path(args.image).stem
    overlay_path = Path(args.overlay or f"{stem}.locate.png")
    heat_path = Path(args.heatmap or f"{stem}.heat.png")
    overlay, heat = render(image, result, args.top, args.heat)
    overlay.save(overlay_path)
    heat.save(heat_path)
    if args.json:
        print(json.dumps({"phrase": args.phrase, "regions": len(result.cosine), "best": best,
                          "overlay": str(overlay_path), "heatmap": str(heat_path)}, indent=2))
    else:
        print(f"{len(result.cosine)} regions scored for {args.phrase!r}")
        for rank, b in enumerate(best, 1):
            print(f"#{rank} region {b['index']:<4} box {b['box']}  cosine {b['cosine']:.4f}  prob {b['prob']:.3f}")
    logger.info("wrote %s and %s", overlay_path, heat_path)
    return 0


# ------------------------------------------------------------------------------------------------ ImageNet-S
def _add_speed_arguments(p: argparse.ArgumentParser, batch: int, what: str) -> None:
    p.add_argument("--batch-size", type=int, default=batch, help=f"{what} per batch (default {batch})")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes decoding images and preparing inputs (default 2; 0 = none)")
    p.add_argument("--restart", action="store_true",
                   help="discard a progress file written with other settings (moved to *.old) instead of refusing")


def add_imagenet_s_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="ImageNet-S folder holding validation/ and validation-segmentation/ "
                                "(ImageNetS919, or its parent)")
    p.add_argument("--categories", help="categories file (wnids; default: the sorted validation/ folder names)")
    p.add_argument("--names", default="paper",
                   help="class names: 'paper' (default: WordNet's first lemma, underscores kept, as the reference "
                        "script names them, e.g. cab, great_white_shark), 'openai' (open_clip's curated ImageNet "
                        "names, e.g. taxicab), or a file ('wnid name' lines, one name per line, JSON {wnid: name})")
    p.add_argument("--template", action="append", help="prompt template (repeatable; default 'a photo of a {}.')")
    p.add_argument("--methods", nargs="+", help="subset of alpha_whole alpha_box alpha_mask clip_whole clip_crop "
                                                "clip_red_circle clip_masked clip_blurred (default: all that the "
                                                "given models allow)")
    p.add_argument("--plain-base", help="plain CLIP weights for the clip_* baselines (OpenAI .pt or open_clip file)")
    p.add_argument("--no-alpha", action="store_true", help="run only the plain-CLIP baselines (no --checkpoint)")
    p.add_argument("--mode", choices=("crop", "pad", "squash", "reference"), default="crop",
                   help="paired transform geometry; 'reference' = the reference script's exact geometry (square "
                        "centre crop, then resize without antialias; a region outside the crop gets all-background "
                        "alpha) to reproduce the paper's numbers to the digit")
    p.add_argument("--limit", type=int, help="evaluate an evenly spread subset of this many images")
    p.add_argument("--split", default="validation")
    p.add_argument("--state", help="JSONL progress file; a rerun with the same settings resumes from it "
                                   "(default: <out>/<stem>.state.jsonl)")
    p.add_argument("--out", help="folder for <stem>.json, <stem>.md and the progress file (default: a folder in the "
                                 "current directory named after the run, e.g. imagenet_s-alpha-ViT-B-16-<checkpoint>-crop-paper)")
    p.add_argument("--stem", help="output file stem (default: imagenet_s_<model>)")
    _add_speed_arguments(p, 32, "images")
    add_model_arguments(p)


def run_imagenet_s(args: argparse.Namespace) -> int:
    import open_clip

    from alphaclip_core.regions import text_classifier

    from .imagenet_s import ImageNetS, arch_column, class_names, evaluate, results_markdown
    from .resume import json_digest, module_digest

    ds = ImageNetS(args.root, args.categories, args.split)
    names = class_names(ds.wnids, args.names)
    templates = args.template or ["a photo of a {}."]
    alpha_model = plain = None
    classifier = plain_classifier = None
    if not args.no_alpha:
        alpha_model, tokenizer = load_model(args)
        classifier = text_classifier(alpha_model, tokenizer, names, templates)
    if args.plain_base:
        plain = load_plain(args.model, args.plain_base, args.device, args.precision)
        if alpha_model is not None and module_digest(plain, "visual.") == module_digest(alpha_model, "visual."):
            plain_classifier = classifier    # the same text tower (Alpha-CLIP keeps its base's): embed once
        else:
            plain_classifier = text_classifier(plain, open_clip.get_tokenizer(args.model), names, templates)
    if alpha_model is None and plain is None:
        raise SystemExit("error: --no-alpha needs --plain-base")
    stem = args.stem or f"imagenet_s_{args.model.replace('/', '-').replace(':', '-')}"
    names_label = args.names if args.names in ("paper", "openai") else Path(args.names).name
    out = _run_folder(args, "imagenet_s", "plain" if args.no_alpha else None, args.mode, names_label)
    state = Path(args.state) if args.state else out / f"{stem}.state.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    settings = {**_model_settings(args), "plain_base": args.plain_base, "names": names_label,
                "names_digest": json_digest(names), "templates": templates}
    result = evaluate(ds, classifier if classifier is not None else plain_classifier, alpha_model, plain,
                      plain_classifier, args.methods, args.mode, args.limit, state, batch_size=args.batch_size,
                      num_workers=args.workers, settings=settings, restart=args.restart)
    column = arch_column(args.model)
    md = results_markdown(result["metrics"], column)
    md += (f"\n{result['n']} images ({result['n_empty_mask']} without a pixel of their class, skipped; "
           f"{result['n_pad_fallback']} prepared with padding because the centre crop cut the region off). "
           f"Mode {args.mode}; class names: {names_label}; templates: {templates}. Model: {args.model}, checkpoint "
           f"{args.checkpoint}, plain base {args.plain_base}.\n")
    payload = {"task": "imagenet-s", "model": args.model, "checkpoint": args.checkpoint, "plain_base": args.plain_base,
               "names": names_label, "templates": templates, "mode": args.mode, "limit": args.limit, **result}
    for path in _write_results(out, stem, payload, md):
        logger.info("wrote %s", path)
    print(md)
    return 0


# ------------------------------------------------------------------------------------------------ REC
def add_rec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="refer data root (holding refcoco/, refcoco+/, refcocog/) or a plain JSON file")
    p.add_argument("--datasets", nargs="+", default=["refcoco", "refcoco+", "refcocog"],
                   help="refer datasets to run (refer layout only)")
    p.add_argument("--splits", nargs="+", help="splits to run (default: the paper's: val testA testB / val test)")
    p.add_argument("--images", help="image folder (refer: COCO train2014; plain JSON: default its folder)")
    p.add_argument("--proposals", help="JSON {image_id: [[x0,y0,x1,y1(,score)], ...]} replacing the GT candidates")
    p.add_argument("--views", nargs="+", default=["image", "blur"], choices=("image", "blur"),
                   help="views averaged per region (default: image and background-blurred copy)")
    p.add_argument("--ensemble", action="append", default=[], metavar="MODEL=CHECKPOINT[,BASE]",
                   help="another Alpha-CLIP to average in (repeatable), e.g. alpha-ViT-L-14=l14.pth,ViT-L-14.pt")
    p.add_argument("--sam-checkpoint", help="turn every candidate box into a SAM mask (box prompt)")
    p.add_argument("--sam-type", default="vit_h", help="SAM variant: vit_h, vit_l, vit_b")
    p.add_argument("--blur-radius", type=float, help="Gaussian blur radius in pixels (default 4%% of the longer side)")
    p.add_argument("--sentence-key", default="sent", choices=("sent", "raw"), help="refer sentence field")
    p.add_argument("--limit", type=int, help="only the first N refs per dataset")
    p.add_argument("--state", help="JSONL progress file prefix (default: <out>/<stem>.<dataset>.state.jsonl); a "
                                   "rerun with the same settings resumes from it")
    p.add_argument("--out", help="folder for <stem>.json, <stem>.md and the progress files (default: a folder in the "
                                 "current directory named after the run, e.g. rec-alpha-ViT-B-16-<checkpoint>-image+blur)")
    p.add_argument("--stem", default="rec", help="output file stem")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader worker processes decoding images and preparing inputs (default 2; 0 = none)")
    p.add_argument("--restart", action="store_true",
                   help="discard progress files written with other settings (moved to *.old) instead of refusing")
    add_model_arguments(p)


def _ensemble_member(spec: str, device: str, precision: str = "fp32"):
    import open_clip

    import alphaclip_integrations.open_clip as aoc
    from alphaclip_core.precision import apply_precision

    if "=" not in spec:
        raise SystemExit(f"error: --ensemble expects MODEL=CHECKPOINT[,BASE], got {spec!r}")
    name, files = spec.split("=", 1)
    ckpt, _, base = files.partition(",")
    model, _ = aoc.load(name, ckpt, base or None, device=device)
    apply_precision(model, precision, device)
    return model.eval(), open_clip.get_tokenizer(name)


def run_rec(args: argparse.Namespace) -> int:
    from .rec import (REFER_SPLITS, RecScorer, evaluate_rec, load_plain_json, load_proposals, load_refer,
                      rec_markdown, sam_box_masks)

    from .resume import file_digest

    models = [load_model(args)] + [_ensemble_member(s, args.device, args.precision) for s in args.ensemble]
    mask_fn = None
    if args.sam_checkpoint:
        from .. import sam as sam_lib

        mask_fn = sam_box_masks(sam_lib.box_predictor(sam_lib.load_sam(args.sam_type, args.sam_checkpoint, args.device)))
    scorer = RecScorer(models, views=args.views, mask_fn=mask_fn, blur_radius=args.blur_radius)
    proposals = load_proposals(args.proposals) if args.proposals else None
    out = _run_folder(args, "rec", "+".join(args.views), "ensemble" if args.ensemble else None,
                      "sam" if args.sam_checkpoint else None)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**_model_settings(args), "ensemble": list(args.ensemble), "sentence_key": args.sentence_key,
                "sam": None if not args.sam_checkpoint else {"type": args.sam_type,
                                                            "weights": file_digest(args.sam_checkpoint)}}
    data = Path(args.data)
    if data.suffix == ".json":
        sets = {"plain": load_plain_json(data, args.images)}
    else:
        sets = {}
        for d in args.datasets:
            splits = args.splits or REFER_SPLITS.get(d, ("", ("val",)))[1]
            sets[d] = load_refer(data, d, image_dir=args.images, splits=splits, sentence_key=args.sentence_key)
    results: Dict[str, Any] = {}
    for d, samples in sets.items():
        if args.limit:
            samples = samples[:args.limit]
        state = Path(args.state + f".{d}") if args.state else out / f"{args.stem}.{d}.state.jsonl"
        results[d] = evaluate_rec(samples, scorer, proposals=proposals, state_path=state, num_workers=args.workers,
                                  settings=settings, restart=args.restart)
    md = rec_markdown(results)
    md += "\n" + "\n".join(f"- {d}: " + ", ".join(f"{s} {r['correct']}/{r['n']}" for s, r in res.items())
                           for d, res in results.items()) + "\n"
    payload = {"task": "rec", "models": [args.model] + [s.split("=")[0] for s in args.ensemble],
               "views": args.views, "sam": bool(args.sam_checkpoint), "proposals": args.proposals, "results": results}
    for path in _write_results(out, args.stem, payload, md):
        logger.info("wrote %s", path)
    print(md)
    return 0


# ------------------------------------------------------------------------------------------------ registration
def register(subparsers: Any) -> None:
    """Add ``locate`` and ``eval`` (``imagenet-s``, ``rec``) to the ``alphaclip`` command."""
    p = subparsers.add_parser("locate", help="where is PHRASE in IMAGE? ranks regions, writes overlay + heat map")
    p.add_argument("image", help="image file")
    p.add_argument("phrase", help="what to look for, e.g. 'the red umbrella'")
    p.add_argument("--box", action="append", default=[], type=_parse_box, help="candidate box x0,y0,x1,y1 (repeatable)")
    p.add_argument("--mask", action="append", default=[], help="candidate mask PNG (repeatable)")
    p.add_argument("--sam-checkpoint", help="SAM weights: candidates from SAM's automatic masks (no --box/--mask)")
    p.add_argument("--sam-type", default="vit_h", help="SAM variant: vit_h, vit_l, vit_b")
    p.add_argument("--points-per-side", type=int, default=32, help="SAM automatic grid")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="SAM automatic mask filter")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="SAM automatic mask filter")
    p.add_argument("--min-area", type=int, default=100, help="drop automatic masks smaller than this (pixels)")
    p.add_argument("--template", default="{}", help="prompt template for the phrase (default: the phrase as is)")
    p.add_argument("--top", type=int, default=3, help="best regions shown")
    p.add_argument("--batch-size", type=int, default=32, help="regions per forward pass")
    p.add_argument("--mode", choices=("crop", "pad", "squash"), default="pad", help="paired transform geometry")
    p.add_argument("--heat", choices=("cosine", "prob"), default="cosine",
                   help="heat-map score: best cosine per pixel (graded) or softmax probability (peaked)")
    p.add_argument("--overlay", help="best-regions PNG (default IMAGE_STEM.locate.png)")
    p.add_argument("--heatmap", help="heat-map PNG (default IMAGE_STEM.heat.png)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_locate)

    ev = subparsers.add_parser("eval", help="benchmarks: ImageNet-S zero-shot, referring expressions")
    evsub = ev.add_subparsers(dest="eval_task", required=True)
    p = evsub.add_parser("imagenet-s", help="ImageNet-S zero-shot region classification (paper table rows)")
    add_imagenet_s_arguments(p)
    p.set_defaults(func=run_imagenet_s)
    p = evsub.add_parser("rec", help="RefCOCO/+/g referring expression comprehension (ReCLIP-style)")
    add_rec_arguments(p)
    p.set_defaults(func=run_rec)


def _standalone(add, run, argv: Optional[Sequence[str]], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("-v", "--verbose", action="store_true")
    add(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from alphaclip_core.cli import guarded

    return guarded(lambda: run(args))  # one-line errors, as `alphaclip eval`


def imagenet_s_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/imagenet_s.py ...`` (same options as ``alphaclip eval imagenet-s``)."""
    return _standalone(add_imagenet_s_arguments, run_imagenet_s, argv, "benchmarks/imagenet_s.py")


def rec_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/rec.py ...`` (same options as ``alphaclip eval rec``)."""
    return _standalone(add_rec_arguments, run_rec, argv, "benchmarks/rec.py")

