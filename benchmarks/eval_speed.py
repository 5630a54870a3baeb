#!/usr/bin/env python
"""ImageNet-S evaluation throughput: one image at a time (the old loop) vs batched with DataLoader workers.

Runs :func:`alphaclip_train.eval.imagenet_s.evaluate` with ALL eight methods of the paper's table (3 alpha
rows through an Alpha-CLIP, 5 plain-CLIP views) on a synthetic ImageNet-S folder written to a temporary
directory: JPEGs of ImageNet's usual sizes (500x375, 375x500, 500x333, 500x500 ...) with smooth random
content, and one region per image (an ellipse: a quarter of them reach all four borders, so their box is the
whole image, as ImageNet objects often do; the others are medium or small and off-centre). Configurations, side by side in one run:

- ``before``: one image at a time, no workers, every row encoded (what ``evaluate`` did before batching);
- ``batched``: ``--batch-size`` images per batch, rows through the model together, no workers;
- ``batched+workers``: the same with ``--workers`` DataLoader workers decoding and preparing inputs;
- ``after``: batched + workers + identical rows encoded once (the default of ``alphaclip eval imagenet-s``).

Every configuration must give the same predictions as ``before`` (checked: the top-5 of every method for
every image). Models are random-init (speed does not depend on the weights): the toy ``alpha-ViT-Tiny-8``
and the full ``alpha-ViT-B-16`` (fp32; the plain baselines use a second model of the same architecture).
Images/s counts images (each image = 3 alpha rows + 5 plain views).

    python benchmarks/eval_speed.py                        # toy + B/16 on CPU
    python benchmarks/eval_speed.py --device cuda --tag cuda --images-b16 256

Results: ``benchmarks/results/eval_speed[_TAG].json|md`` with the machine and its load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image, ImageDraw

import alphaclip_integrations.open_clip as aoc
from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.regions import text_classifier
from alphaclip_train.eval.imagenet_s import ImageNetS, evaluate
from _common import describe, machine as machine_info

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (333, 500), (500, 400), (640, 480), (400, 300)]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def write_dataset(root: Path, n: int, seed: int = 0) -> ImageNetS:
    """``n`` JPEGs in the ImageNet-S layout, with one ellipse region each (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        w, h = SIZES[k % len(SIZES)]
        low = rng.random((h // 25 + 2, w // 25 + 2, 3)) * 255
        img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8))
        wnid = WNIDS[k % len(WNIDS)]
        cid = WNIDS.index(wnid) + 1
        seg = Image.new("RGB", (w, h), (0, 0, 0))
        kind = k % 4
        if kind == 0:     # large: reaches the image's borders (its box is the whole image), corners left out
            box = [-w * 0.2, -h * 0.2, w * 1.2, h * 1.2]
        elif kind == 1:   # medium, near the centre
            box = [w * 0.25, h * 0.2, w * 0.75, h * 0.85]
        else:             # small, off-centre
            x, y = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
            box = [x, y, x + w * 0.3, y + h * 0.3]
        ImageDraw.Draw(seg).ellipse(box, fill=(cid, 0, 0))
        for sub, obj, ext, kw in (("validation", img, "JPEG", {"quality": 90}), ("validation-segmentation", seg, "png", {})):
            (root / sub / wnid).mkdir(parents=True, exist_ok=True)
            obj.save(root / sub / wnid / f"img_{k:04d}.{ext}", **kw)
    return ImageNetS(root)


CONFIGS = {
    "before": dict(batch_size=1, workers=0, dedupe=False),
    "batched": dict(workers=0, dedupe=False),
    "batched+workers": dict(dedupe=False),
    "after": dict(),
}


def run_model(name: str, n_images: int, args: argparse.Namespace, work: Path) -> Dict[str, object]:
    torch.manual_seed(0)
    alpha, _ = aoc.build(name)
    plain, _ = aoc.build(name)
    alpha = alpha.to(args.device).eval()
    plain = plain.to(args.device).eval()
    ds = write_dataset(work / name, n_images)
    ds.wnids = list(WNIDS)  # the class list (a real run passes ImageNet-S's 919 categories)
    tok = __import__("open_clip").get_tokenizer(name)
    names = [f"class {i}" for i in range(len(ds.wnids))]
    cls, plain_cls = text_classifier(alpha, tok, names), text_classifier(plain, tok, names)
    configs = [c for c in CONFIGS if c in args.configs]
    out: Dict[str, object] = {"model": name, "images": n_images, "configs": {}}
    reference = None
    for config in configs:
        batch = args.batch_size_toy if "Tiny" in name else args.batch_size_b16
        spec = {**dict(batch_size=batch, workers=args.workers, dedupe=True), **CONFIGS[config]}
        state = work / f"{name}.{config}.jsonl"
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = evaluate(ds, cls, alpha, plain, plain_cls, state_path=state, progress=False,
                       batch_size=spec["batch_size"], num_workers=spec["workers"], dedupe=spec["dedupe"])
        seconds = time.perf_counter() - t0
        records = {r["i"]: r for r in (json.loads(line) for line in state.read_text().splitlines()[1:])}
        if reference is None:
            reference = records
        same = records == reference
        out["configs"][config] = {**spec, "seconds": seconds, "images_per_s": n_images / seconds,
                                  "rows": res["rows"], "same_predictions_as_before": same,
                                  "loadavg_start": load0, "loadavg_end": os.getloadavg()[0]}
        print(f"{name} {config}: {n_images / seconds:.2f} images/s ({seconds:.1f} s), rows {res['rows']}, "
              f"same predictions: {same}, load {load0:.1f}", flush=True)
        if not same:
            raise SystemExit(f"{name} {config}: predictions differ from one image at a time")
    base = out["configs"].get("before")
    for c in out["configs"].values():
        c["speedup"] = c["images_per_s"] / base["images_per_s"] if base else None
    return out


def markdown(results: List[Dict[str, object]], info: Dict[str, object], args: argparse.Namespace,
             load_end: float) -> str:
    lines = [f"## ImageNet-S evaluation throughput ({args.device}, fp32)", "",
             f"Machine: {describe(info)}; load average {info['loadavg'][0]:.1f} at start, "
             f"{load_end:.1f} at end ({info['cpus']} cores shared with other jobs: the numbers are noisy; compare "
             "the ratios, measured side by side in one run). All 8 methods (3 alpha rows + 5 plain views per "
             "image); random-init weights; synthetic ImageNet-sized JPEGs (a quarter with a region whose box is the "
             "whole image). Every configuration gave the same top-5 predictions as `before` for every image and "
             "method.", "",
             "| model | images | configuration | batch | workers | dedupe | images/s | speed-up vs before | "
             "rows encoded (alpha / plain of requested) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, c in r["configs"].items():
            rows = f"{c['rows']['alpha'][1]}/{c['rows']['alpha'][0]} + {c['rows']['plain'][1]}/{c['rows']['plain'][0]}"
            lines.append(f"| {r['model']} | {r['images']} | {name} | {c['batch_size']} | {c['workers']} | "
                         f"{'yes' if c['dedupe'] else 'no'} | {c['images_per_s']:.3g} | {c['speedup']:.2f}x | {rows} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["alpha-ViT-Tiny-8", "alpha-ViT-B-16"])
    p.add_argument("--images-toy", type=int, default=64)
    p.add_argument("--images-b16", type=int, default=16)
    p.add_argument("--batch-size-toy", type=int, default=16)
    p.add_argument("--batch-size-b16", type=int, default=4,
                   help="images per batch for B/16 (8 rows each: 32 rows per forward; several batches so that "
                        "workers prepare the next one while the model runs)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)
    info = machine_info(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            n = args.images_toy if "Tiny" in name else args.images_b16
            results.append(run_model(name, n, args, Path(tmp)))
    RESULTS.mkdir(exist_ok=True)
    stem = f"eval_speed_{args.tag}" if args.tag else "eval_speed"
    payload = {"machine": info, "loadavg_end": os.getloadavg(), "args": vars(args), "results": results}
    md = markdown(results, info, args, payload["loadavg_end"][0])
    atomic_write(RESULTS / f"{stem}.json", lambda t: Path(t).write_text(json.dumps(payload, indent=2) + "\n"))
    atomic_write(RESULTS / f"{stem}.md", lambda t: Path(t).write_text(md))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
