"""Pseudo-labelling speed: images/s and regions/s of ``alphaclip_train.pseudolabel.PseudoLabeler``.

Each synthetic image (random pixels, ``--height`` x ``--width``) has one label and ``--regions``
candidate boxes (or box-shaped RLE masks with ``--masks``); the labeller scores every candidate over
a ``--classes`` vocabulary and keeps the best. Weights are random (speed does not depend on them).
The text tower runs once per vocabulary, not per image, so it is left out: the class embeddings
are random unit vectors ``[C, D]`` (``--text-tower`` embeds ``--text-classes`` real prompts once and
reports that time separately). Everything per image (image/alpha transform, alpha rasterisation,
RLE decoding, the vision tower, scoring, selection) is timed.

    python benchmarks/pseudolabel_speed.py                          # CPU, writes results/pseudolabel_cpu.*
    python benchmarks/pseudolabel_speed.py --device cuda --precision fp16 --images 64 --regions 64

Writes ``benchmarks/results/pseudolabel_<tag>.json`` and ``.md`` (tag: ``--tag`` or the device).
"""
from __future__ import annotations

import argparse
import json
import time
import os
from pathlib import Path

import numpy as np
import torch


import open_clip  # noqa: E402

import alphaclip_integrations.open_clip  # noqa: E402,F401
from _common import describe, machine, sync  # noqa: E402
from alphaclip_core.alpha import boxes_to_masks, prepare, rle_decode, rle_encode  # noqa: E402
from alphaclip_core.regions import text_classifier  # noqa: E402
from alphaclip_train.pseudolabel import Candidate, PseudoLabelConfig, PseudoLabeler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_candidates(rng: np.random.Generator, n: int, h: int, w: int, masks: bool):
    out = []
    for _ in range(n):
        bw, bh = rng.integers(w // 8, w // 2), rng.integers(h // 8, h // 2)
        x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        box = [float(x0), float(y0), float(x0 + bw), float(y0 + bh)]
        mask = rle_encode(boxes_to_masks(box, h, w)[0].numpy()) if masks else None
        out.append(Candidate(box, mask, float(rng.random())))
    return out


def run_case(model, text_features, args, masks: bool, batch_size: int) -> dict:
    cats = [{"id": i + 1, "name": f"class {i}"} for i in range(args.classes)]
    cfg = PseudoLabelConfig(batch_size=batch_size, mode="pad")
    labeler = PseudoLabeler(model, None, cats, cfg, text_features=text_features)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(args.images)]
    cands = [make_candidates(rng, args.regions, args.height, args.width, masks) for _ in images]
    labeler.label_image(images[0], [1], cands[0][:batch_size])  # warm-up
    sync(args.device)
    start = time.perf_counter()
    kept = 0
    for img, c in zip(images, cands):
        kept += len(labeler.label_image(img, [int(rng.integers(1, args.classes + 1))], c))
    sync(args.device)
    seconds = time.perf_counter() - start
    # the part that is not the vision tower: rasterising/decoding regions + the paired transform
    clf = labeler.classifier
    start = time.perf_counter()
    for img, c in zip(images, cands):
        m = np.stack([rle_decode(x.mask) for x in c]) if masks else None
        for s in range(0, len(c), batch_size):
            boxes = torch.tensor([x.box for x in c[s:s + batch_size]])
            region = clf.region_masks(args.height, args.width, boxes, None if m is None else m[s:s + batch_size])
            prepare(img, mask=region, mode="pad", **clf._params)
    prep = time.perf_counter() - start
    return {"regions": "masks (RLE)" if masks else "boxes", "batch_size": batch_size, "images": args.images,
            "regions_per_image": args.regions, "seconds": round(seconds, 3),
            "images_per_s": round(args.images / seconds, 3),
            "regions_per_s": round(args.images * args.regions / seconds, 2),
            "preprocess_share": round(prep / seconds, 3), "annotations": kept}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="alpha-ViT-B-16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--regions", type=int, default=16, help="candidates per image")
    p.add_argument("--classes", type=int, default=1203, help="vocabulary size (LVIS: 1203)")
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500, help="ImageNet's typical 500x375")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--text-tower", action="store_true", help="also time the text tower on --text-classes x 8 prompts")
    p.add_argument("--text-classes", type=int, default=64)
    p.add_argument("--tag", help="results file suffix (default: the device type)")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    model = open_clip.create_model(args.model).to(device=args.device, dtype=dtype).eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    text_seconds = None
    if args.text_tower:
        names = [f"class {i}" for i in range(args.text_classes)]
        start = time.perf_counter()
        text_classifier(model, tokenizer, names, PseudoLabelConfig().templates)
        sync(args.device)
        text_seconds = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    text_features = torch.nn.functional.normalize(torch.randn(args.classes, model.text_projection.shape[1],
                                                              generator=g), dim=-1)
    rows = []
    for bs in args.batch_sizes:
        for masks in (False, True):
            rows.append(run_case(model, text_features, args, masks, bs))
            print(json.dumps(rows[-1]), flush=True)
    tag = args.tag or args.device.split(":")[0]
    result = {"benchmark": "pseudolabel_speed", "model": args.model, "device": args.device,
              "precision": args.precision, "machine": describe(machine(args.device)), "torch": torch.__version__,
              "image_size": [args.height, args.width], "classes": args.classes,
              "text_tower": None if text_seconds is None else {"classes": args.text_classes, "prompts": 8,
                                                               "seconds": round(text_seconds, 3)},
              "load_average_1min_at_end": round(os.getloadavg()[0], 2),
              "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"pseudolabel_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Pseudo-labelling speed: {args.model}, {args.device}, {args.precision}", "",
             f"Machine: {result['machine']}; torch {torch.__version__}. Synthetic {args.width}x{args.height} images, "
             f"{args.regions} candidates each, {args.classes}-class vocabulary, random weights; the text tower "
             "runs once per vocabulary and is not in the rates"
             + ("" if text_seconds is None else f" ({args.text_classes} classes x 8 prompts took {text_seconds:.1f} s)")
             + ". "
             f"Load average at the end: {os.getloadavg()[0]:.1f} (other jobs share the machine when it exceeds "
             f"the core count).",
             "", "| regions | batch | images | images/s | regions/s | share not in the vision tower |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regions']} | {r['batch_size']} | {r['images']} | {r['images_per_s']} | "
                     f"{r['regions_per_s']} | {r['preprocess_share']:.1%} |")
    if not args.device.startswith("cuda"):
        lines += ["", "GPU: the same script runs on any CUDA machine (`--device cuda --precision fp16 --images 64 "
                  "--regions 64 --batch-sizes 64`); no GPU was available when these numbers were taken."]
    (RESULTS / f"pseudolabel_{tag}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / f'pseudolabel_{tag}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
