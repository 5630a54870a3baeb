#!/usr/bin/env python
"""Region scoring speed: many regions of ONE image, batched vs one region at a time, and per precision.

Measures
1. regions/s for K = 1, 8, 32, 128 regions of one 640x480 image (at ``--precision``, default auto):
   - one at a time: for each region, ``prepare(image, mask=that_mask)`` (the image is prepared again)
     then ``score_regions`` on that one region (the naive loop);
   - batched: ``prepare(image, mask=all K masks)`` once (image prepared once, K alphas in one paired
     transform on tensors) then ``score_regions`` in batches of ``--batch-size``.
2. ``classify_regions`` (the whole core call: paired transform, text classifier over 8 labels, batched
   scoring) at K = ``--precision-k`` (32) regions for each of ``--compare`` precisions (default fp32 and
   auto), alternating over ``--rounds`` rounds; median and best regions/s and the ratio to fp32.
3. preparation of one image + K bool masks: one ``PairedTransform`` call on tensors already on the device
   (uint8 ``[3, H, W]`` image, bool ``[K, H, W]`` masks) vs the reference's per-mask PIL way (CLIP's PIL preprocessing for the image, then per mask
   ``Image.fromarray`` -> Resize -> CenterCrop -> ToTensor -> Normalize(0.5, 0.26)); best of 3.

The model is random-init (speed does not depend on the weights). Default: the ViT-B/16 input geometry
(224 px, 16 px patches, 197 tokens) with a smaller tower (width 384, 4 layers, 6 heads) so the CPU run
stays under ~3 minutes; ``--model alpha-ViT-B-16`` runs the full-size tower (use it on a GPU).
One-at-a-time runs time at most ``--max-sequential`` regions (the per-region cost does not depend on K)
and report the rate over those; the table says how many were timed.

GPU: ``python benchmarks/region_speed.py --device cuda --model alpha-ViT-B-16 --tag cuda``
(synchronises the device around every timed section). Results: ``benchmarks/results/region_speed[_TAG].json|md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch

from alphaclip_core.alpha import PairedTransform, prepare
from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.model import AlphaCLIP
from alphaclip_core.precision import PRECISIONS, apply_precision
from alphaclip_core.regions import classify_regions, region_batch_size, score_regions
from _common import describe, machine as machine_info, timed

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(name: str, device: str, precision: str = "fp32") -> AlphaCLIP:
    """A random-init alpha model (``small-b16-geometry``, ``tiny`` or an open_clip alpha name) on ``device``,
    in eval mode, put in ``precision`` (``auto`` resolved by measurement) by ``apply_precision``."""
    if name == "small-b16-geometry":
        model = AlphaCLIP(embed_dim=512, vision_cfg=dict(image_size=224, patch_size=16, width=384, layers=4,
                                                         head_width=64),
                          text_cfg=dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=1),
                          quick_gelu=True)
    elif name == "tiny":  # for tests of the benchmark code paths
        model = AlphaCLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=1, head_width=32),
                          text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                          quick_gelu=True)
    else:
        import open_clip

        import alphaclip_integrations.open_clip  # noqa: F401  (registers alpha configs)

        model = open_clip.create_model(name)
    model = model.to(device=device).eval()
    apply_precision(model, precision, device)
    return model


def random_masks(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """K random rectangles-with-holes as bool [K, H, W] (none empty), inside the centre square (kept by the crop)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((k, h, w), bool)
    side = min(h, w)
    ox, oy = (w - side) // 2, (h - side) // 2
    for i in range(k):
        x0, y0 = ox + rng.integers(0, side - 40), oy + rng.integers(0, side - 40)
        x1, y1 = rng.integers(x0 + 20, ox + side + 1), rng.integers(y0 + 20, oy + side + 1)
        out[i, y0:y1, x0:x1] = True
        out[i, y0 + (y1 - y0) // 3:y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 3:x1 - (x1 - x0) // 3] = False
    return out


def per_mask_pil(image, masks: np.ndarray, size: int):
    """The reference's way: the PIL image through CLIP's PIL preprocessing, then each mask through PIL resize +
    centre crop + ToTensor + Normalize(0.5, 0.26), one mask at a time."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from PIL import Image
    from torchvision import transforms as T

    img_tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                        T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    mask_tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size),
                         T.ToTensor(), T.Normalize(0.5, 0.26)])
    return img_tf(image)[None], torch.stack([mask_tf(Image.fromarray(m.astype(np.uint8) * 255)) for m in masks])


def measure_batching(model, image: torch.Tensor, all_masks: np.ndarray, ks: List[int], batch_size: int,
                     max_sequential: int, repeats: int, device: str) -> List[dict]:
    """regions/s one region at a time vs batched (image prepared once), for each K; rows as in the table."""
    size = preprocess_size(model)
    text = torch.nn.functional.normalize(torch.randn(4, model.text_projection.shape[1]), dim=-1)
    rows = []
    with torch.inference_mode():
        p, a = prepare(image, mask=all_masks[:2], size=size, device=device)   # warm-up (allocator, kernels)
        score_regions(model, p, a, text, 2)
        for k in ks:
            masks = all_masks[:k]
            n_seq = min(k, max_sequential)

            def one_at_a_time() -> None:
                for i in range(n_seq):
                    p, a = prepare(image, mask=masks[i], size=size, device=device)
                    score_regions(model, p, a, text, 1)

            def batched() -> None:
                p, a = prepare(image, mask=torch.from_numpy(masks).to(device), size=size, device=device)
                score_regions(model, p, a, text, batch_size)

            t_seq = t_bat = float("inf")
            for _ in range(repeats):             # interleaved, best of: the machine may be shared
                t_seq = min(t_seq, timed(one_at_a_time, device))
                t_bat = min(t_bat, timed(batched, device))
            row = {"K": k, "sequential_regions_timed": n_seq, "sequential_regions_per_s": n_seq / t_seq,
                   "batched_regions_per_s": k / t_bat, "batched_seconds": t_bat, "batch_size": batch_size}
            row["speedup"] = row["batched_regions_per_s"] / row["sequential_regions_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def measure_precisions(name: str, precisions: List[str], image: torch.Tensor, masks: np.ndarray, rounds: int,
                       device: str) -> List[dict]:
    """``classify_regions`` over 8 labels on ``len(masks)`` regions, per precision, alternating rounds."""
    import open_clip

    labels = ["cat", "dog", "car", "tree", "person", "bicycle", "cup", "chair"]
    tokenizer = open_clip.tokenizer.tokenize
    torch.manual_seed(0)
    base = build_model(name, device, "fp32")
    models, chosen = {}, {}
    for prec in precisions:
        m = copy.deepcopy(base)
        chosen[prec] = apply_precision(m, prec, device)
        models[prec] = m
    times: dict = {p: [] for p in precisions}
    with torch.inference_mode():
        for prec in precisions:  # warm-up
            classify_regions(models[prec], tokenizer, image, labels, mask=masks[:2])
        for r in range(rounds):
            for prec in (precisions if r % 2 == 0 else precisions[::-1]):
                times[prec].append(timed(lambda: classify_regions(models[prec], tokenizer, image, labels, mask=masks),
                                         device))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in precisions), flush=True)
    ref = "fp32" if "fp32" in precisions else precisions[0]
    rows = []
    for prec in precisions:
        med, best = statistics.median(times[prec]), min(times[prec])
        c = chosen[prec]
        rows.append({"precision": prec, "resolved": c.name + ("" if c.text == c.name else f" (text tower {c.text})"),
                     "reason": c.reason, "K": len(masks), "labels": len(labels),
                     "median_s": med, "min_s": best, "regions_per_s_median": len(masks) / med,
                     "regions_per_s_best": len(masks) / best,
                     "speedup_median": statistics.median(times[ref]) / med, "speedup_best": min(times[ref]) / best})
    return rows


def preprocess_size(model) -> int:
    return model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-b16-geometry",
                    help="small-b16-geometry (default), tiny, or an open_clip alpha model name, e.g. alpha-ViT-B-16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS, help="precision of the batching table")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--batch-size", default="auto",
                    help="regions per forward pass when batched (auto: alphaclip_core.regions.region_batch_size)")
    ap.add_argument("--max-sequential", type=int, default=16, help="regions timed one at a time per K (at most)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per K (best is kept)")
    ap.add_argument("--compare", nargs="*", default=["fp32", "auto"], choices=PRECISIONS,
                    help="precisions compared on classify_regions (none: skip)")
    ap.add_argument("--precision-k", type=int, default=32, help="regions for the precision comparison")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the precision comparison")
    ap.add_argument("--prep-ks", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is steadier on a "
                                                 "shared machine")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. cuda)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    model = build_model(args.model, device, args.precision)
    size = preprocess_size(model)
    batch_size = region_batch_size(model) if args.batch_size == "auto" else int(args.batch_size)
    h, w = 480, 640
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    all_masks = random_masks(max(args.ks + args.prep_ks + [args.precision_k]), h, w)
    load0 = os.getloadavg()

    speed = measure_batching(model, image, all_masks, args.ks, batch_size, args.max_sequential, args.repeats, device)
    precisions = (measure_precisions(args.model, args.compare, image, all_masks[:args.precision_k], args.rounds, device)
                  if args.compare else [])
    load_mid = os.getloadavg()

    prep = []
    with torch.inference_mode():
        tf = PairedTransform(size)
        from PIL import Image

        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        tf(image.to(device), torch.from_numpy(all_masks[:1]).to(device)), per_mask_pil(pil, all_masks[:1], size)
        for k in args.prep_ks:
            m = all_masks[:k]
            # the same inputs both ways: a PIL image and K bool masks; best of 3
            img_dev, m_dev = image.to(device), torch.from_numpy(m).to(device)    # tensors on the device
            t_tensor = min(timed(lambda: tf(img_dev, m_dev), device) for _ in range(3))
            t_pil = min(timed(lambda: per_mask_pil(pil, m, size), device) for _ in range(3))
            row = {"K": k, "tensor_ms": 1000 * t_tensor, "per_mask_pil_ms": 1000 * t_pil, "speedup": t_pil / t_tensor}
            prep.append(row)
            print(json.dumps(row), flush=True)

    machine = {**machine_info(device), "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
               "loadavg_start": load0, "loadavg_after_scoring": load_mid, "loadavg_end": os.getloadavg()}
    from alphaclip_core.precision import precision_of

    cfg = {"model": args.model, "input": size, "precision": args.precision, "resolved_precision": precision_of(model),
           "image": f"{w}x{h}", "batch_size": batch_size, "repeats": args.repeats,
           "params_visual": sum(p.numel() for p in model.visual.parameters())}
    payload = {"config": cfg, "machine": machine, "region_scoring": speed, "precision_comparison": precisions,
               "alpha_preparation": prep}
    lines = [f"## Region scoring speed ({cfg['model']}, {size}px, {args.precision} = {cfg['resolved_precision']}, "
             f"device {machine['device']})", "",
             f"Machine: {describe(machine)}; load average (1 min) {load0[0]:.1f} at start, {load_mid[0]:.1f} after "
             f"scoring, {machine['loadavg_end'][0]:.1f} at end (the machine is shared). Vision tower "
             f"{cfg['params_visual'] / 1e6:.1f}M parameters; one {w}x{h} image; batch size {batch_size}; best of "
             f"{args.repeats} timed run(s).", "",
             "| K regions | one at a time (regions/s) | batched, image prepared once (regions/s) | speed-up |",
             "|---|---|---|---|"]
    for r in speed:
        note = "" if r["sequential_regions_timed"] == r["K"] else f" (timed {r['sequential_regions_timed']})"
        lines.append(f"| {r['K']} | {r['sequential_regions_per_s']:.2f}{note} | {r['batched_regions_per_s']:.2f} | "
                     f"{r['speedup']:.2f}x |")
    if precisions:
        lines += ["", f"`classify_regions`, K = {args.precision_k} regions, 8 labels, per precision (median and best "
                      f"of {args.rounds} alternating rounds):", "",
                  "| precision | resolved | regions/s (median) | regions/s (best) | vs fp32 (median) | vs fp32 (best) |",
                  "|---|---|---|---|---|---|"]
        for r in precisions:
            lines.append(f"| {r['precision']} | {r['resolved']} | {r['regions_per_s_median']:.2f} | "
                         f"{r['regions_per_s_best']:.2f} | {r['speedup_median']:.2f}x | {r['speedup_best']:.2f}x |")
    lines += ["", "| K masks | image + K masks on tensors, one PairedTransform (ms) | PIL image + per-mask PIL (ms) | speed-up |", "|---|---|---|---|"]
    for r in prep:
        lines.append(f"| {r['K']} | {r['tensor_ms']:.1f} | {r['per_mask_pil_ms']:.1f} | {r['speedup']:.2f}x |")
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    stem = "region_speed" + (f"_{args.tag}" if args.tag else "")
    for suffix, text_out in ((".json", json.dumps(payload, indent=2) + "\n"), (".md", md)):
        atomic_write(out / f"{stem}{suffix}", lambda tmp, s=text_out: Path(tmp).write_text(s))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
