"""``alphaclip data ...``: prepare-grounding, prepare-classification, check, show, index.

Heavy frameworks (segment_anything, transformers) are imported only inside the commands.
Run the prepare commands under ``torchrun --nproc_per_node N -m alphaclip_core.cli data ...`` to
spread the input shards over N processes.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger("alphaclip.prepare")


def _add_sam_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SAM")
    g.add_argument("--sam-type", default="vit_h", choices=("vit_h", "vit_l", "vit_b", "tiny"),
                   help="SAM registry size (default vit_h; 'tiny' = random-init test model)")
    g.add_argument("--sam-checkpoint", help="SAM weights (sam_vit_h_4b8939.pth, ...; read with weights_only=True)")


def _load_sam(args: argparse.Namespace):
    from .common import resolve_device
    from ..sam import load_sam

    args.device = resolve_device(args.device)
    return load_sam(args.sam_type, args.sam_checkpoint, args.device)


def _cmd_grounding(args: argparse.Namespace) -> int:
    from .common import dist_env
    from .grounding import prepare_grounding

    sam = _load_sam(args)
    summary = prepare_grounding(args.inputs, args.output, sam, spans=args.spans, min_box_size=args.min_box_size,
                                box_batch=args.box_batch, sam_name=args.sam_type, progress=not args.no_progress,
                                restart=args.restart)
    if dist_env()[0] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def _cmd_classification(args: argparse.Namespace) -> int:
    from alphaclip_core.cli import load_model

    from .classification import Captioner, prepare_classification, read_class_names
    from .common import dist_env

    sam = _load_sam(args)
    clip_model, tokenizer = load_model(args)
    captioner = Captioner(args.captioner, device=args.device, max_new_tokens=args.max_new_tokens,
                          prompt=args.caption_prompt)
    amg = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
           "stability_score_thresh": args.stability_score_thresh, "box_nms_thresh": args.box_nms_thresh}
    summary = prepare_classification(
        args.root, args.output, sam, clip_model, tokenizer, captioner, label_file=args.label_file,
        class_names=read_class_names(args.class_names) if args.class_names else None,
        images_per_shard=args.images_per_shard, top_k=args.top_k, min_score=args.min_score, min_area=args.min_area,
        crop_margin=args.crop_margin, phrase_template=args.phrase_template, amg_kwargs=amg, sam_name=args.sam_type,
        progress=not args.no_progress, restart=args.restart)
    if dist_env()[0] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check_shards

    report = check_shards(args.shards, max_problems=args.max_problems)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"shards {report.shards}  samples {report.samples}  regions {report.regions} "
              f"(masks {report.masks}, box only {report.box_only})  problems {report.num_problems}")
        for p in report.problems:
            print(f"  {p}")
    return 0 if report.ok else 1


def _cmd_index(args: argparse.Namespace) -> int:
    from ..index import INDEX_NAME, build_index
    from ..sources import join_location

    if args.threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {args.threads}")
    written = build_index(args.sources, threads=args.threads, recount=args.recount, write=not args.dry_run,
                          progress=not args.no_progress)
    rows = []
    for folder, entries in written.items():
        samples = sum(c.samples for c in entries.values())
        errors = {n: c.error for n, c in entries.items() if c.error}
        rows.append({"index": join_location(folder, INDEX_NAME), "shards": len(entries), "samples": samples,
                     "region_samples": sum(c.items() for c in entries.values()),
                     "invalid": sum(c.invalid for c in entries.values()), "unreadable_shards": errors})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['index']}{' (not written: --dry-run)' if args.dry_run else ''}: {r['shards']} shards, "
                  f"{r['samples']} samples, {r['region_samples']} region samples, {r['invalid']} invalid records")
            for name, err in list(r["unreadable_shards"].items())[:20]:
                print(f"  unreadable: {name}: {err}")
    return 1 if any(r["unreadable_shards"] for r in rows) else 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .check import sample_overlay

    try:
        image = sample_overlay(args.shard, args.key)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    out = Path(args.output or f"{args.key}.regions.png")
    image.save(out)
    print(out)
    return 0


def register(subparsers) -> None:
    """Add ``data`` with its subcommands to the ``alphaclip`` command."""
    from alphaclip_core.cli import add_model_arguments

    data = subparsers.add_parser("data", help="prepare, check and look at RGBA region-text shards")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("prepare-grounding", help="GRIT-style shards (phrases + boxes) -> SAM masks -> training shards")
    p.add_argument("inputs", nargs="+", help="input tar shards (img2dataset layout) or folders of *.tar: local, "
                                             "https://, s3://..., pipe: commands, {000..099} ranges")
    p.add_argument("--output", "-o", required=True, help="output folder (shards, stats, summary.json)")
    p.add_argument("--spans", nargs="+", default=["ref_exps"], choices=("ref_exps", "noun_chunks"),
                   help="GRIT span lists to read (default: ref_exps)")
    p.add_argument("--min-box-size", type=float, default=2.0, help="drop boxes smaller than this (pixels)")
    p.add_argument("--box-batch", type=int, default=64, help="box prompts per SAM decoder call")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if present, else cpu), cpu, cuda:0, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--restart", action="store_true",
                   help="redo finished output shards made with other settings (default: refuse to mix them)")
    _add_sam_arguments(p)
    p.set_defaults(func=_cmd_grounding)

    p = sub.add_parser("prepare-classification",
                       help="class-labelled images -> SAM masks -> CLIP-scored crops -> captions -> training shards")
    p.add_argument("root", help="image folder: root/<class_id>/<image>, or the base of --label-file's paths")
    p.add_argument("--output", "-o", required=True, help="output folder (shards, stats, summary.json)")
    p.add_argument("--label-file", help="lines 'relative/path<TAB>label' instead of class folders")
    p.add_argument("--class-names", help="class id -> name: JSON, or text lines '<id> <name>' (LOC_synset_mapping.txt)")
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--captioner", default="Salesforce/blip2-opt-2.7b",
                   help="transformers image-to-text model: hub name or local folder")
    p.add_argument("--caption-prompt", help="text prompt for the captioner (stripped from its output)")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--top-k", type=int, default=2, help="masks kept per image at most")
    p.add_argument("--min-score", type=float, default=0.3, help="min CLIP probability of the image's class")
    p.add_argument("--min-area", type=float, default=0.01, help="min mask area, fraction of the image")
    p.add_argument("--crop-margin", type=float, default=0.1, help="crop = mask box grown by this fraction per side")
    p.add_argument("--phrase-template", default="{caption}, {label}")
    p.add_argument("--points-per-side", type=int, default=32, help="SAM automatic mask generator grid")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--restart", action="store_true",
                   help="redo finished output shards made with other settings (default: refuse to mix them)")
    _add_sam_arguments(p)
    add_model_arguments(p)
    p.set_defaults(func=_cmd_classification, device="auto")

    p = sub.add_parser("check", help="validate shards against the schema (decodes every mask and image)")
    p.add_argument("shards", nargs="+", help="shard files or folders of *.tar (local or URLs, {000..099} ranges)")
    p.add_argument("--max-problems", type=int, default=20, help="problems listed (all are counted)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("index", help="count each shard's samples once and write the folder's index.json, so that "
                                     "training resumes without reading the shards again",
                       description="Write index.json next to the shards (local folders, s3://, gs://... with their "
                                   "fsspec package; an https:// server cannot be written to: index a local copy and "
                                   "upload its index.json). Counts already in sidecars or an index are reused.")
    p.add_argument("sources", nargs="+", help="shards, folders, globs, {000..099} ranges or URLs")
    p.add_argument("--recount", action="store_true", help="read every shard, ignoring existing counts")
    p.add_argument("--threads", type=int, default=16, help="shards read at a time (remote sources)")
    p.add_argument("--dry-run", action="store_true", help="count and print, write nothing")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("show", help="write an overlay PNG of one sample's regions and phrases")
    p.add_argument("shard", help="a shard: path, URL or pipe: command")
    p.add_argument("key")
    p.add_argument("--output", "-o", help="PNG path (default: KEY.regions.png)")
    p.set_defaults(func=_cmd_show)
