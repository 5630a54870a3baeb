"""Region classification and whole-scene retrieval in the synthetic world (held-out scenes).

Compares the toy Alpha-CLIP (stage 2 of ``python -m alphaclip_train.synthetic``) given a mask, a
box or the whole image as alpha, with its base CLIP (stage 1) given the region-focusing baselines
of the paper: whole image, crop, crop with context margin, background masked out, background
blurred, red circle. Also whole-scene retrieval (caption <-> scene, R@1), to check that the
whole-image ability is kept.

    python -m alphaclip_train.synthetic WORK --install        # makes WORK/clip and WORK/alpha
    python benchmarks/synthetic_regions.py WORK                # ~1 minute on 2 CPU cores

Writes benchmarks/results/synthetic_regions.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw, ImageFilter

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.alpha import prepare
from alphaclip_core.regions import preprocess_params, score_regions, text_classifier
from alphaclip_train.synthetic import LABELS, label_of, load_tiny, render_scene

RESULTS = Path(__file__).parent / "results"
TEMPLATES = ["a {}."]


def _feats(model, image, **region):
    p = preprocess_params(model)
    pix, alpha = prepare(image, size=p["size"], mode="pad", **region)
    return pix, alpha


@torch.no_grad()
def evaluate(model, tokenizer, scenes, use_alpha: bool, methods):
    """Top-1 accuracy of each method over every region of ``scenes``."""
    clf = text_classifier(model, tokenizer, list(LABELS), TEMPLATES)
    hits = {m: 0 for m in methods}
    total = 0
    for scene in scenes:
        img = scene.image
        mean = tuple(int(255 * v) for v in (0.48145466, 0.4578275, 0.40821073))
        for obj, mask in zip(scene.objects, scene.masks):
            truth = LABELS.index(label_of(obj))
            total += 1
            x0, y0, x1, y1 = obj["box"]
            for m in methods:
                if m == "alpha: mask":
                    pix, alpha = _feats(model, img, mask=mask)
                elif m == "alpha: box":
                    pix, alpha = _feats(model, img, box=[obj["box"]])
                elif m.endswith("whole image"):
                    pix, alpha = _feats(model, img)
                elif m == "crop":
                    pix, alpha = _feats(model, img.crop((x0, y0, x1, y1)))
                elif m == "crop + context margin":
                    w, h = x1 - x0, y1 - y0
                    pix, alpha = _feats(model, img.crop((max(0, x0 - w // 2), max(0, y0 - h // 2),
                                                        min(img.width, x1 + w // 2), min(img.height, y1 + h // 2))))
                elif m == "background masked out":
                    arr = np.asarray(img).copy()
                    arr[~mask] = mean
                    pix, alpha = _feats(model, Image.fromarray(arr))
                elif m == "background blurred":
                    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(3)))
                    arr = np.where(mask[..., None], np.asarray(img), blurred)
                    pix, alpha = _feats(model, Image.fromarray(arr.astype(np.uint8)))
                elif m == "red circle":
                    c = img.copy()
                    d = ImageDraw.Draw(c)
                    pad = max(2, (x1 - x0) // 4)
                    d.ellipse([x0 - pad, y0 - pad, x1 + pad, y1 + pad], outline=(255, 0, 0),
                              width=max(1, img.width // 40))
                    pix, alpha = _feats(model, c)
                else:
                    raise ValueError(m)
                a = alpha if use_alpha else None
                if a is None:
                    feats = model.encode_image(pix, None, normalize=True) if hasattr(model.visual, "conv1_alpha") \
                        else model.encode_image(pix, normalize=True)
                    cos = feats.float() @ clf.T
                else:
                    cos = score_regions(model, pix, a, clf)
                hits[m] += int(cos.argmax(-1)[0] == truth)
    return {m: 100.0 * h / total for m, h in hits.items()}, total


@torch.no_grad()
def retrieval(model, tokenizer, scenes):
    """Whole-scene retrieval R@1 (image->text, text->image) with whole-image input."""
    p = preprocess_params(model)
    pix = torch.cat([prepare(s.image, size=p["size"])[0] for s in scenes])
    img = model.encode_image(pix, None, normalize=True).float()
    txt = model.encode_text(tokenizer([s.caption for s in scenes]), normalize=True).float()
    sim = img @ txt.T
    n = len(scenes)
    caps = [s.caption for s in scenes]
    # a caption can repeat (identical scenes content): count a hit when the retrieved caption text matches
    i2t = np.mean([caps[int(sim[i].argmax())] == caps[i] for i in range(n)]) * 100
    t2i = np.mean([caps[int(sim[:, i].argmax())] == caps[i] for i in range(n)]) * 100
    return {"image->text R@1": float(i2t), "text->image R@1": float(t2i)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", help="the folder given to python -m alphaclip_train.synthetic")
    ap.add_argument("--scenes", type=int, default=300, help="held-out scenes")
    ap.add_argument("--retrieval-scenes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=777, help="held-out seed block (training used seed 0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alpha", help="Alpha-CLIP open_clip folder (default: WORKDIR/alpha/final)")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=FOLDER",
                    help="another Alpha-CLIP (e.g. an ablation) to score with mask alpha + retrieval")
    ap.add_argument("--out", default=str(RESULTS / "synthetic_regions"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    t0 = time.perf_counter()
    base = open_clip.create_model(f"local-dir:{work / 'clip' / 'final'}").eval()
    alpha = open_clip.create_model(f"local-dir:{args.alpha or work / 'alpha' / 'final'}").eval()
    shipped, tokenizer = load_tiny()
    scenes = [render_scene(args.seed * 10**7 + i) for i in range(args.scenes)]
    rscenes = [render_scene(args.seed * 10**7 + 5_000_000 + i) for i in range(args.retrieval_scenes)]
    baselines = ["whole image", "crop", "crop + context margin", "background masked out", "background blurred",
                 "red circle"]
    alpha_methods = ["alpha: mask", "alpha: box", "alpha: whole image"]
    res_base, n = evaluate(base, tokenizer, scenes, False, baselines)
    res_alpha, _ = evaluate(alpha, tokenizer, scenes, True, alpha_methods)
    res_shipped, _ = evaluate(shipped, tokenizer, scenes, True, ["alpha: mask"])
    ret = {"base CLIP (stage 1)": retrieval(base, tokenizer, rscenes),
           "Alpha-CLIP (stage 2), whole-image alpha": retrieval(alpha, tokenizer, rscenes)}
    for item in args.extra:
        label, folder = item.split("=", 1)
        m = open_clip.create_model(f"local-dir:{folder}").eval()
        res_alpha_x, _ = evaluate(m, tokenizer, scenes, True, ["alpha: mask", "alpha: whole image"])
        for k, v in res_alpha_x.items():
            res_shipped[f"{label}: {k.split(': ', 1)[1]} alpha"] = v
        ret[f"{label}, whole-image alpha"] = retrieval(m, tokenizer, rscenes)
    summary = json.loads((work / "summary.json").read_text()) if (work / "summary.json").exists() else {}
    out = {
        "benchmark": "synthetic_regions", "regions": n, "scenes": args.scenes, "labels": len(LABELS),
        "chance_top1": 100.0 / len(LABELS), "templates": TEMPLATES,
        "region_top1": {**{f"base CLIP: {k}": v for k, v in res_base.items()},
                        **{f"Alpha-CLIP: {k.split(': ', 1)[1]} alpha": v for k, v in res_alpha.items()},
                        "shipped fp16 Alpha-CLIP: mask alpha": res_shipped.pop("alpha: mask"),
                        **res_shipped},
        "retrieval": ret, "training": summary,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Synthetic region suite", "",
             f"{n} regions in {args.scenes} held-out scenes (seed block {args.seed}), {len(LABELS)} labels "
             f"(colour x shape, template `a {{}}.`), chance {100 / len(LABELS):.1f}%. Toy models trained by "
             "`python -m alphaclip_train.synthetic` (see `training` in the JSON). Machine: " + out["machine"] + ".",
             "", "| model: region input | top-1 % |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in out["region_top1"].items()]
    lines += ["", f"Whole-scene retrieval ({args.retrieval_scenes} held-out scenes, caption <-> scene):", "",
              "| model | image->text R@1 | text->image R@1 |", "|---|---|---|"]
    lines += [f"| {k} | {v['image->text R@1']:.1f} | {v['text->image R@1']:.1f} |" for k, v in ret.items()]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
