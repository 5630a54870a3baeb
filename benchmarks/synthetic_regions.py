"""The paper's tables in miniature: the shipped toy Alpha-CLIP on held-out scenes of the synthetic world.

Scores the toy Alpha-CLIP (stage 2 of ``python -m alphaclip_train.synthetic``) and its stage-1 base
(a plain CLIP) with :mod:`alphaclip_train.toy_eval`:

* region top-1 over the 24 labels: Alpha-CLIP with mask / box / whole-image alpha against the base
  CLIP shown the paper's baselines (whole image, crop, crop + margin, background masked out,
  background blurred, red circle);
* the toy referring-expression suite (twins told apart only by context);
* whole-scene retrieval R@1 (base vs Alpha-CLIP with whole-image alpha) and single-object zero-shot;
* ablations (``--ablation NAME=FOLDER``, e.g. the r_s runs): mask-alpha top-1, REC and retrieval.

    python benchmarks/synthetic_regions.py                       # the shipped model, a few minutes
    python benchmarks/synthetic_regions.py --folder WORK/export  # another toy (see install_assets)

Writes benchmarks/results/synthetic_regions.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import describe, machine  # noqa: E402

from alphaclip_train.synthetic import ASSETS, LABELS, load_tiny, load_tiny_base, rec_suite  # noqa: E402
from alphaclip_train.toy_eval import (BASELINES, SEED_BLOCK, held_out_scenes, rec_top1, region_top1,  # noqa: E402
                                      retrieval, single_object_scenes, zero_shot)

RESULTS = Path(__file__).parent / "results"
REC_BASELINES = ["crop", "crop + margin", "background masked", "background blurred", "red circle"]

#: the paper's numbers each row is read against (SPEC.md)
PAPER = {
    "region": "ImageNet-S top-1, L/14: CLIP 73.48 (whole image); Alpha-CLIP mask 77.41, box 75.62, whole image 73.37; "
              "Red Circle 73.37; MaskAdaptedCLIP 63.50",
    "rec": "RefCOCO val: Alpha-CLIP 55.7 vs Red Circle 49.8, ReCLIP (crop + blur) 45.8, CPT 32.2",
    "rs": "r_s 0.0 -> 68.06, 0.1 -> 68.25, 1.0 -> 63.96 top-1 (B/16)",
}


def _visual_swap(model, folder: Path):
    """``model`` (a copy of the toy) with the vision tower of another toy folder (open_clip folder)."""
    other, _ = load_tiny(folder=folder)
    text_keys = [k for k in model.state_dict() if not k.startswith("visual.")]
    a, b = model.state_dict(), other.state_dict()
    if any(not torch.equal(a[k], b[k]) for k in text_keys):
        raise ValueError(f"--ablation {folder}: its text tower differs from the toy's (not a stage-2 run of this base)")
    return other


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=str(ASSETS), help="toy folder (open_clip files + base_visual.safetensors)")
    ap.add_argument("--scenes", type=int, default=400, help="held-out scenes for region top-1")
    ap.add_argument("--rec-scenes", type=int, default=300, help="held-out twin scenes (2 expressions each)")
    ap.add_argument("--retrieval-scenes", type=int, default=500)
    ap.add_argument("--zero-shot-scenes", type=int, default=480)
    ap.add_argument("--seed-block", type=int, default=SEED_BLOCK, help="held-out seed block (training: 0 and 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=FOLDER",
                    help="another stage-2 model of the same base (open_clip folder): mask alpha, REC, retrieval")
    ap.add_argument("--out", default=str(RESULTS / "synthetic_regions"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    t0 = time.perf_counter()
    folder = Path(args.folder)
    alpha, tok = load_tiny(folder=folder)
    base, _ = load_tiny_base(folder=folder)
    scenes = held_out_scenes(args.scenes, seed_block=args.seed_block)
    rscenes = held_out_scenes(args.retrieval_scenes, offset=5_000_000, seed_block=args.seed_block)
    zscenes = single_object_scenes(args.zero_shot_scenes, seed_block=args.seed_block)
    suite = rec_suite(args.rec_scenes, seed=args.seed_block)
    pr = args.progress
    region = {f"base CLIP: {k}": v for k, v in region_top1(base, tok, scenes, list(BASELINES), pr).items()}
    region.update({f"Alpha-CLIP: {k[7:]} alpha": v for k, v in
                   region_top1(alpha, tok, scenes, ["alpha: mask", "alpha: box", "alpha: whole image"], pr).items()})
    rec = {f"base CLIP: {k}": v for k, v in rec_top1(base, tok, suite, REC_BASELINES, pr).items()}
    rec.update({f"Alpha-CLIP: {k[7:]} alpha": v for k, v in
                rec_top1(alpha, tok, suite, ["alpha: mask", "alpha: box"], pr).items()})
    ret = {"base CLIP (stage 1)": retrieval(base, tok, rscenes),
           "Alpha-CLIP (stage 2), whole-image alpha": retrieval(alpha, tok, rscenes)}
    zs = {"base CLIP (stage 1)": zero_shot(base, tok, zscenes),
          "Alpha-CLIP (stage 2), whole-image alpha": zero_shot(alpha, tok, zscenes)}
    ablations = {}
    for item in args.ablation:
        if "=" not in item:
            ap.error(f"--ablation: expected NAME=FOLDER, got {item!r}")
        name, path = item.split("=", 1)
        m = _visual_swap(alpha, Path(path))
        ablations[name] = {"region mask alpha": region_top1(m, tok, scenes, ["alpha: mask"])["alpha: mask"],
                           "rec mask alpha": rec_top1(m, tok, suite, ["alpha: mask"])["alpha: mask"],
                           **retrieval(m, tok, rscenes)}
    training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
    n_regions = sum(len(s.objects) for s in scenes)
    out = {"benchmark": "synthetic_regions", "folder": str(folder), "seed_block": args.seed_block,
           "regions": n_regions, "scenes": args.scenes, "labels": len(LABELS), "chance_top1": 100.0 / len(LABELS),
           "region_top1": region, "rec_expressions": len(suite),
           "rec_chance": 100.0 * sum(1 / len(r.scene.objects) for r in suite) / max(1, len(suite)),
           "rec_top1": rec, "retrieval": ret, "retrieval_scenes": args.retrieval_scenes, "zero_shot_top1": zs,
           "zero_shot_scenes": args.zero_shot_scenes, "ablations": ablations, "training": training,
           "paper": PAPER, "machine": info, "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out + ".md").write_text(render_markdown(out) + "\n")
    print(render_markdown(out))
    return 0


def render_markdown(out: dict) -> str:
    """The results as Markdown tables."""
    lines = ["# Synthetic region suite (the paper's tables in miniature)", "",
             f"Held-out seed block {out['seed_block']}; machine: {describe(out['machine'])}, "
             f"load average {', '.join(f'{x:.1f}' for x in out['machine']['loadavg'])}; {out['seconds']} s.", "",
             f"## Region top-1 ({out['regions']} objects in {out['scenes']} scenes, {out['labels']} labels, "
             f"chance {out['chance_top1']:.1f}%)", "", "| model: region input | top-1 % |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in out["region_top1"].items()]
    lines += ["", f"## Toy referring expressions ({out['rec_expressions']} expressions, twins told apart by a "
              f"relation; candidates: every object of the scene, chance {out['rec_chance']:.1f}%)", "",
              "| model: region input | accuracy % |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in out["rec_top1"].items()]
    lines += ["", f"## Whole-scene retrieval ({out['retrieval_scenes']} scenes) and single-object zero-shot "
              f"({out['zero_shot_scenes']} scenes)", "",
              "| model | image->text R@1 | text->image R@1 | zero-shot top-1 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['image->text R@1']:.1f} | {v['text->image R@1']:.1f} | {out['zero_shot_top1'][k]:.1f} |"
              for k, v in out["retrieval"].items()]
    if out["ablations"]:
        lines += ["", "## Ablations (same base, stage 2 varied)", "",
                  "| run | region top-1, mask alpha | REC, mask alpha | image->text R@1 | text->image R@1 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['region mask alpha']:.1f} | {v['rec mask alpha']:.1f} | {v['image->text R@1']:.1f} | "
                  f"{v['text->image R@1']:.1f} |" for k, v in out["ablations"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
