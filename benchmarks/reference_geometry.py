#!/usr/bin/env python
"""How far ``--mode crop`` (CLIP's resize-then-crop, antialiased, clamped) is from ``--mode reference`` (the
reference ImageNet-S script's geometry: square centre crop, then resize without antialias, no clamp).

``mode="reference"`` itself equals the reference script's torchvision steps to the bit (``tests/test_eval_runs.py``
checks it to 1e-6); this script measures the distance of the default ``crop`` mode from it:

1. inputs, on a real photo installed with matplotlib (``grace_hopper.jpg``, 512x600) cut to ImageNet's usual
   sizes (500x375, 375x500, 500x333, 333x500, 500x500) and a mask of the face region: mean / max absolute
   difference of the normalised pixels, and the share of alpha pixels whose side (foreground vs background)
   differs or whose value differs by more than 0.1 (in [0, 1] units);
2. decoding: the reference reads JPEGs with OpenCV, this project with PIL (when ``cv2`` is installed);
3. predictions, with the shipped toy Alpha-CLIP (``alphaclip_train.synthetic.load_tiny``, trained on the
   synthetic shapes world at 64 px): for every object of synthetic scenes widened or heightened to ImageNet
   aspect ratios and upscaled 4x (so that both modes downsize, as with photos larger than the model's
   input), the "colour shape" logits from crop-mode vs reference-mode inputs: top-1 agreement and
   the largest logit difference (objects that the centre crop cuts off are skipped: there crop mode pads
   instead and reference mode sees an all-background alpha).

    python benchmarks/reference_geometry.py

Results: ``benchmarks/results/reference_geometry.json|md``.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from alphaclip_core.alpha import ALPHA_MEAN, ALPHA_STD, PairedTransform
from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.regions import preprocess_params, text_classifier
from _common import describe, machine as machine_info

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500)]


def photo() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def input_differences(size: int = 224) -> list:
    full = Image.open(photo()).convert("RGB")
    rows = []
    for w, h in SIZES:
        image = full.resize((w, h), Image.BICUBIC)
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).ellipse([w * 0.3, h * 0.12, w * 0.72, h * 0.62], fill=1)   # about the face
        m = np.asarray(mask, bool)
        crop_pix, crop_alpha = PairedTransform(size, "crop")(image, m)
        ref_pix, ref_alpha = PairedTransform(size, "reference")(image, m)
        d = (crop_pix - ref_pix).abs()
        a_crop, a_ref = crop_alpha * ALPHA_STD + ALPHA_MEAN, ref_alpha * ALPHA_STD + ALPHA_MEAN
        rows.append({"size": f"{w}x{h}", "pixel_mean_abs": float(d.mean()), "pixel_max_abs": float(d.max()),
                     "alpha_side_differs": float(((a_crop > 0.5) != (a_ref > 0.5)).float().mean()),
                     "alpha_differs_by_0.1": float(((a_crop - a_ref).abs() > 0.1).float().mean())})
    return rows


def decode_difference() -> dict:
    try:
        import cv2
    except ImportError:
        return {"available": False}
    pil = np.asarray(Image.open(photo()).convert("RGB"), dtype=np.int32)
    bgr = cv2.imread(str(photo()))
    cv = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int32)
    d = np.abs(pil - cv)
    return {"available": True, "cv2": cv2.__version__, "max_abs": int(d.max()), "mean_abs": float(d.mean()),
            "share_differing": float((d > 0).mean())}


def widen(scene_image: Image.Image, masks: np.ndarray, w: int, h: int, rng: random.Random):
    """Put a square scene somewhere in a w x h canvas of its corner's colour, then upscale it all 4x."""
    side = scene_image.width
    canvas = Image.new("RGB", (w, h), scene_image.getpixel((0, 0)))
    x, y = rng.randint(0, w - side), rng.randint(0, h - side)
    canvas.paste(scene_image, (x, y))
    out = np.zeros((len(masks), h, w), bool)
    out[:, y:y + side, x:x + side] = masks
    # photos are larger than the model's input: upscale 4x, so both modes downsize (4x) as with ImageNet
    big = canvas.resize((4 * w, 4 * h), Image.BICUBIC)
    return big, out.repeat(4, axis=1).repeat(4, axis=2)


@torch.no_grad()
def prediction_agreement(scenes: int = 120) -> dict:
    from alphaclip_train.synthetic import LABELS, label_of, load_tiny, render_scene

    model, tokenizer = load_tiny()
    params = preprocess_params(model)
    classifier = text_classifier(model, tokenizer, list(LABELS), ["a {}"])       # its training phrases: "a red circle"
    crop, ref = PairedTransform(mode="crop", **params), PairedTransform(mode="reference", **params)
    rng = random.Random(0)
    agree = total = skipped = correct_crop = correct_ref = 0
    max_dlogit = 0.0
    for seed in range(scenes):
        scene = render_scene(seed, size=64)
        if not len(scene.objects):
            continue
        w, h = [(85, 64), (64, 85), (96, 64), (64, 64)][seed % 4]
        image, masks = widen(scene.image, scene.masks, w, h, rng)
        try:
            pc, ac = crop(image, masks)
        except ValueError:   # an object outside the centre crop: crop pads it, reference sees no region
            skipped += len(masks)
            continue
        pr, ar = ref(image, masks)
        lc = 100 * model.encode_image(pc.expand(len(masks), -1, -1, -1), ac, normalize=True) @ classifier.T
        lr = 100 * model.encode_image(pr.expand(len(masks), -1, -1, -1), ar, normalize=True) @ classifier.T
        target = torch.tensor([LABELS.index(label_of(o)) for o in scene.objects])
        agree += int((lc.argmax(1) == lr.argmax(1)).sum())
        correct_crop += int((lc.argmax(1) == target).sum())
        correct_ref += int((lr.argmax(1) == target).sum())
        total += len(masks)
        max_dlogit = max(max_dlogit, float((lc - lr).abs().max()))
    return {"regions": total, "skipped_outside_crop": skipped, "top1_agreement": agree / total,
            "top1_crop": correct_crop / total, "top1_reference": correct_ref / total, "max_abs_logit_diff": max_dlogit}


def main() -> int:
    info = machine_info()
    inputs, decode, preds = input_differences(), decode_difference(), prediction_agreement()
    lines = ["## `--mode crop` vs `--mode reference` (the reference ImageNet-S script's geometry)", "",
             f"Machine: {describe(info)}. `reference` equals the reference script's torchvision steps to the bit "
             "(tested); below, how far the default `crop` is from it.", "",
             "Inputs (224 px; grace_hopper.jpg from matplotlib, resized to each size; alpha = an ellipse about the face):", "",
             "| image | normalised pixels: mean abs diff | max abs diff | alpha pixels on the other side of 0.5 | "
             "alpha pixels differing by > 0.1 |", "|---|---|---|---|---|"]
    for r in inputs:
        lines.append(f"| {r['size']} | {r['pixel_mean_abs']:.4f} | {r['pixel_max_abs']:.3f} | "
                     f"{100 * r['alpha_side_differs']:.2f}% | {100 * r['alpha_differs_by_0.1']:.2f}% |")
    if decode["available"]:
        lines += ["", f"JPEG decoding (the reference uses OpenCV {decode['cv2']}, this project PIL), same photo: "
                  f"{100 * decode['share_differing']:.2f}% of the values differ, by at most {decode['max_abs']} "
                  f"(mean {decode['mean_abs']:.4f}) on 0..255."]
    lines += ["", f"Predictions of the shipped toy Alpha-CLIP (64 px, synthetic shapes world) for {preds['regions']} "
              f"objects of 64 px scenes widened to 85x64 / 64x85 / 96x64 (and square 64x64) and upscaled 4x (340x256 ...): top-1 agrees for "
              f"{100 * preds['top1_agreement']:.1f}% of them; largest logit difference {preds['max_abs_logit_diff']:.2f} "
              f"(logit scale 100); top-1 accuracy {100 * preds['top1_crop']:.1f}% (crop) vs "
              f"{100 * preds['top1_reference']:.1f}% (reference). {preds['skipped_outside_crop']} objects outside "
              "the centre crop skipped."]
    md = "\n".join(lines) + "\n"
    payload = {"machine": info, "inputs": inputs, "decode": decode, "predictions": preds}
    RESULTS.mkdir(exist_ok=True)
    atomic_write(RESULTS / "reference_geometry.json", lambda t: Path(t).write_text(json.dumps(payload, indent=2) + "\n"))
    atomic_write(RESULTS / "reference_geometry.md", lambda t: Path(t).write_text(md))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
