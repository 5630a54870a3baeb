"""The paper's tables in miniature: the shipped toy Alpha-CLIP on held-out scenes of the synthetic world.

Scores the toy Alpha-CLIP (stage 2 of ``python -m alphaclip_train.synthetic``) and its stage-1 base
(a plain CLIP) with :mod:`alphaclip_train.toy_eval`:

* region top-1 over the 24 labels: Alpha-CLIP with mask / box / whole-image alpha against the base
  CLIP shown the paper's baselines (whole image, crop, crop + margin, background masked out,
  background blurred, red circle);
* the toy referring-expression suite (twins told apart only by context);
* whole-scene retrieval R@1 (base vs Alpha-CLIP with whole-image alpha) and single-object zero-shot;
* position and relation words: a scene against its mirror image (:func:`~alphaclip_train.toy_eval.pair_top1`);
* ablations (``--ablation NAME=FOLDER``, e.g. the r_s runs): mask- and box-alpha top-1, REC and retrieval
  (``--keep-ablations`` keeps the rows an earlier run wrote to the same results, for ablations trained later);
* the demo scene (what ``alphaclip demo`` prints), and every target of issue 19 with met / not met.

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

from alphaclip_train.synthetic import (ASSETS, LABELS, LIGHTS, _check_fraction, _last_logged,  # noqa: E402
                                      _light_subset, load_tiny, load_tiny_base, rec_suite)
from alphaclip_train.toy_eval import (BASELINES, SEED_BLOCK, demo_scores, held_out_scenes, is_lookalike,  # noqa: E402
                                      pair_top1, partner_top1, rec_top1, region_top1, retrieval,
                                      single_object_scenes, zero_shot)

RESULTS = Path(__file__).parent / "results"
REC_BASELINES = ["crop", "crop + margin", "background masked", "background blurred", "red circle"]

#: the paper's numbers each row is read against (SPEC.md), and the claim each checks
CLAIMS = {
    "region": "Alpha-CLIP focuses on the region it is given, better than cropping, masking, blurring or circling it",
    "rec": "alpha keeps the context that crops and masks throw away (referring expressions)",
    "retrieval": "whole-image ability is kept (r_s = 0.1 mixes whole images with all-ones alpha into stage 2)",
    "rs": "r_s trades the two: 0 loses whole-image ability, 1.0 loses region accuracy",
}
PAPER = {
    "region": "ImageNet-S top-1, L/14: CLIP 73.48 (whole image); Alpha-CLIP mask 77.41, box 75.62, whole image 73.37; "
              "Red Circle 73.37; MaskAdaptedCLIP 63.50",
    "rec": "RefCOCO val: Alpha-CLIP 55.7 vs Red Circle 49.8, ReCLIP (crop + blur) 45.8, CPT 32.2",
    "rs": "r_s 0.0 -> 68.06, 0.1 -> 68.25, 1.0 -> 63.96 top-1 (B/16)",
    "retrieval": "zero-shot ImageNet with whole-image alpha: Alpha-CLIP 73.37 vs CLIP 73.48 (L/14)",
}
#: the ablation names :func:`targets` reads for the r_s row
RS_RUNS = ("r_s=0", "r_s=0.1", "r_s=1.0")


def _retrieval_kept(ret: dict) -> bool:
    """Whole-image ability kept: Alpha-CLIP's image->text R@1 within 2 points of the base's."""
    return (ret["Alpha-CLIP (stage 2), whole-image alpha"]["image->text R@1"]
            >= ret["base CLIP (stage 1)"]["image->text R@1"] - 2.0)


def _rs_runs(out: dict):
    """The r_s = 0 / 0.1 / 1.0 ablation rows, or None when they were not all run."""
    abl = out.get("ablations", {})
    return tuple(abl[k] for k in RS_RUNS) if all(k in abl for k in RS_RUNS) else None


def _rs_shape(r0: dict, r1: dict, r10: dict) -> bool:
    """The paper's shape: r_s = 0 loses whole-image R@1 and r_s = 1.0 loses mask-alpha top-1, against 0.1."""
    return r0["image->text R@1"] < r1["image->text R@1"] and r10["region mask alpha"] < r1["region mask alpha"]


def _shipped_data(out: dict) -> str:
    """The shipped toy's caption-only stage-2 records in words (its ``training.json`` recipe), or "none"."""
    recipe = (out.get("training") or {}).get("recipe")
    return _caption_only(recipe) if recipe else "none"


def _rs_names(out: dict) -> str:
    """How the r_s rows are named in the text: the middle one is the shipped toy's stage 2."""
    return "0 / 0.1 / 1.0" if _shipped_data(out) == "none" else "0 / 0.1 + caption-only records / 1.0"


def _training_record(folder: Path) -> dict:
    """A toy folder's ``training.json`` (what :func:`~alphaclip_train.synthetic.make_tiny` recorded), or {}."""
    record = folder / "training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def trained_world(folder: Path) -> tuple:
    """The world a toy folder's model was trained in: ``(light, lights)`` of the recipe in its ``training.json``
    (stage 2's scenes); ``(0.0, None)`` (white light) for a toy without a record or from before lights."""
    recipe = _training_record(folder).get("recipe") or {}
    lights = recipe.get("lights")
    return float(recipe.get("light") or 0.0), (list(lights) if lights else None)


def targets(out: dict) -> list:
    """Issue 19's targets against the measured numbers: ``[(measure, target, measured, met)]``."""
    reg, rec, ret = out["region_top1"], out["rec_top1"], out["retrieval"]
    mask, box = reg["Alpha-CLIP: mask alpha"], reg["Alpha-CLIP: box alpha"]
    best_base = max((v, k) for k, v in reg.items() if k.startswith("base CLIP"))
    rows = [("region top-1, mask alpha", ">= 95 and >= 5 points above every base-CLIP baseline",
             f"{mask:.1f} (best baseline: {best_base[1][11:]} {best_base[0]:.1f})",
             mask >= 95.0 and mask >= best_base[0] + 5.0),
            ("region top-1, box alpha", ">= 90", f"{box:.1f}", box >= 90.0)]
    base_r = ret["base CLIP (stage 1)"]["image->text R@1"]
    alpha_r = ret["Alpha-CLIP (stage 2), whole-image alpha"]["image->text R@1"]
    rows.append(("whole-image retrieval, image->text R@1", "within 2 points of the stage-1 base",
                 f"{alpha_r:.1f} vs base {base_r:.1f}", _retrieval_kept(ret)))
    rec_mask = rec["Alpha-CLIP: mask alpha"]
    rec_base = max((rec[f"base CLIP: {k}"], k) for k in ("crop", "background blurred", "background masked", "red circle"))
    rows.append(("toy referring expressions, mask alpha", ">= 20 points above crop, blur, masked, red circle",
                 f"{rec_mask:.1f} (best of those: {rec_base[1]} {rec_base[0]:.1f})", rec_mask >= rec_base[0] + 20.0))
    rs = _rs_runs(out)
    if rs is not None:
        r0, r1, r10 = rs
        rows.append(("r_s ablation", "r_s = 0 loses whole-image R@1, 1.0 loses region top-1 (vs 0.1)",
                     f"R@1 {r0['image->text R@1']:.1f} / {r1['image->text R@1']:.1f} / {r10['image->text R@1']:.1f}; "
                     f"region {r0['region mask alpha']:.1f} / {r1['region mask alpha']:.1f} / "
                     f"{r10['region mask alpha']:.1f} (r_s {_rs_names(out)})", _rs_shape(r0, r1, r10)))
    else:
        rows.append(("r_s ablation", "r_s = 0 loses whole-image R@1, 1.0 loses region top-1", "not run", False))
    demo = out["demo"]
    rows.append(("`alphaclip demo`", "every region of the bundled scene right",
                 f"{sum(demo['correct'])}/{len(demo['correct'])}", all(demo["correct"])))
    return rows


def _visual_swap(model, folder: Path):
    """Another stage-2 toy (an open_clip folder of a run of the same base), its weights rounded to fp16
    like the shipped toy's so that the two are compared on equal terms."""
    other, _ = load_tiny(folder=folder)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(p.half().float())
    a, b = model.state_dict(), other.state_dict()
    if any(not torch.equal(a[k], b[k]) for k in a if not k.startswith("visual.")):
        raise ValueError(f"--ablation {folder}: its text tower differs from the toy's (not a stage-2 run of this base)")
    return other


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=str(ASSETS), help="toy folder (open_clip files + base_visual.safetensors)")
    ap.add_argument("--scenes", type=int, default=400, help="held-out scenes for region top-1")
    ap.add_argument("--rec-scenes", type=int, default=300, help="held-out twin scenes (2 expressions each)")
    ap.add_argument("--retrieval-scenes", type=int, default=500)
    ap.add_argument("--zero-shot-scenes", type=int, default=480)
    ap.add_argument("--pairs", type=int, default=200, help="held-out mirror pairs of each kind (position, relation)")
    ap.add_argument("--seed-block", type=int, default=SEED_BLOCK, help="held-out seed block (training: 0 and 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--light", type=float, default=None,
                    help="chance that a held-out scene is lit by a coloured light (default: the world the toy was "
                         "trained in, its training.json's --light; 0 for a toy without one)")
    ap.add_argument("--lights", nargs="+", choices=sorted(LIGHTS), default=None,
                    help="which coloured lights a lit scene may have (default: without --light, the toy's "
                         "training.json's; with it, every one)")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=FOLDER",
                    help="another stage-2 model of the same base (open_clip folder): mask and box alpha, REC, retrieval")
    ap.add_argument("--keep-ablations", action="store_true",
                    help="keep the ablation rows of the --out JSON that are not run again (same base and scenes)")
    ap.add_argument("--out", default=str(RESULTS / "synthetic_regions"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.light is None:  # the world the toy was trained in
        args.light, trained_lights = trained_world(Path(args.folder))
        if args.lights is None and args.light:
            args.lights = trained_lights
    try:
        _check_fraction("--light", args.light)
    except ValueError as e:
        ap.error(str(e))
    if args.lights is not None and not args.light:
        ap.error("--lights: expected --light above 0 with it (without lights every scene is under white light)")
    if args.lights is not None and len(set(args.lights)) != len(args.lights):
        ap.error(f"--lights: expected distinct names, got {' '.join(args.lights)}")
    lights = _light_subset(args.lights)  # None for every light: the results keep the record they had
    torch.set_num_threads(args.threads)
    info = machine()
    t0 = time.perf_counter()
    folder = Path(args.folder)
    alpha, tok = load_tiny(folder=folder)
    base, _ = load_tiny_base(folder=folder)
    lit = {"light": args.light, "lights": lights}
    scenes = held_out_scenes(args.scenes, seed_block=args.seed_block, **lit)
    rscenes = held_out_scenes(args.retrieval_scenes, offset=5_000_000, seed_block=args.seed_block, **lit)
    zscenes = single_object_scenes(args.zero_shot_scenes, seed_block=args.seed_block, **lit)
    suite = rec_suite(args.rec_scenes, seed=args.seed_block, **lit)
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
    pairs = {name: {kind: pair_top1(m, tok, kind, args.pairs, seed_block=args.seed_block)
                    for kind in ("position", "relation")}
             for name, m in (("base CLIP (stage 1)", base), ("Alpha-CLIP (stage 2), whole-image alpha", alpha))}
    lookalike = {}
    if args.light:  # the objects whose colour only the light tells (lit white ones), and the light partners
        lookalike = {f"base CLIP: {k}": v for k, v in
                     region_top1(base, tok, scenes, list(BASELINES), select=is_lookalike).items()}
        lookalike.update({f"Alpha-CLIP: {k[7:]} alpha": v for k, v in
                          region_top1(alpha, tok, scenes, ["alpha: mask", "alpha: box"], select=is_lookalike).items()})
        light_partners = {name: dict(zip(("accuracy", "pairs"), partner_top1(m, tok, rscenes, "light")))
                          for name, m in (("base CLIP (stage 1)", base),
                                          ("Alpha-CLIP (stage 2), whole-image alpha", alpha))}
    ablations = {}
    for item in args.ablation:
        if "=" not in item:
            ap.error(f"--ablation: expected NAME=FOLDER, got {item!r}")
        name, path = item.rsplit("=", 1)  # names may hold "=" (r_s=0.1)
        m = _visual_swap(alpha, Path(path))
        top1 = region_top1(m, tok, scenes, ["alpha: mask", "alpha: box"])
        ablations[name] = {"region mask alpha": top1["alpha: mask"], "region box alpha": top1["alpha: box"],
                           "rec mask alpha": rec_top1(m, tok, suite, ["alpha: mask"])["alpha: mask"],
                           **retrieval(m, tok, rscenes)}
        if args.light:
            ablations[name]["region mask alpha, lookalikes"] = region_top1(
                m, tok, scenes, ["alpha: mask"], select=is_lookalike)["alpha: mask"]
        run_cfg = Path(path).parent / "config.json"  # a training run's folder records its settings
        if run_cfg.is_file():
            cfg = json.loads(run_cfg.read_text())
            # the patch scale is not a training setting: make_tiny's summary beside it records the recipe
            summary = Path(path).parent / "summary.json"
            recipe = json.loads(summary.read_text()).get("recipe", {}) if summary.is_file() else {}
            scale = recipe.get("patch_scale")
            ablations[name].update({"steps": cfg.get("steps"), "r_s": cfg.get("whole_image_ratio"), "lr": cfg.get("lr"),
                                    "lr_ratio": cfg.get("lr_ratio"),  # the rest of the vision tower's lr / lr
                                    "label_smoothing": cfg.get("label_smoothing"),
                                    "patch_scale": "?" if scale is None else f"{scale:g}",
                                    # recipes from before the setting used the world's phrases
                                    "region_phrases": recipe.get("alpha_region_phrases", "world" if recipe else "?"),
                                    # fraction of stage 2's regions given as boxes only (recipes before: none)
                                    "box_rate": recipe.get("alpha_box_rate", 0.0) if recipe else "?",
                                    # caption-only records mixed into stage 2's data (recipes before: none)
                                    "caption_only": _caption_only(recipe) if recipe else "?"})
            run = Path(path).parent  # the run's realised whole-image share of its samples, from its log
            samples = _last_logged(run, "samples") if (run / "log.jsonl").is_file() else None
            if samples:
                ablations[name]["whole_share"] = round(100.0 * (_last_logged(run, "whole_image") or 0) / samples, 1)
    scores, truth, best = demo_scores(alpha, tok)
    demo = {"truth": truth, "top1": best, "correct": [b == t for b, t in zip(best, truth)]}
    training = _training_record(folder)
    n_regions = sum(len(s.objects) for s in scenes)
    out = {"benchmark": "synthetic_regions", "folder": str(folder), "seed_block": args.seed_block,
           "regions": n_regions, "scenes": args.scenes, "labels": len(LABELS), "chance_top1": 100.0 / len(LABELS),
           "region_top1": region, "rec_expressions": len(suite),
           "rec_chance": 100.0 * sum(1 / len(r.scene.objects) for r in suite) / max(1, len(suite)),
           "rec_top1": rec, "retrieval": ret, "retrieval_scenes": args.retrieval_scenes, "zero_shot_top1": zs,
           "zero_shot_scenes": args.zero_shot_scenes, "pairs": pairs, "pair_count": args.pairs,
           "ablations": ablations, "demo": demo, "training": training,
           "paper": PAPER, "machine": info, "seconds": round(time.perf_counter() - t0, 1)}
    if args.light:  # results of the world under white light keep the record they had
        out.update({"light": args.light, "lookalike_top1": lookalike, "light_partners": light_partners,
                    "lookalikes": sum(is_lookalike(sc, o) for sc in scenes for o in sc.objects)})
    if lights:
        out["lights"] = lights
    if args.keep_ablations:
        previous = Path(args.out + ".json")
        if not previous.is_file():
            ap.error(f"--keep-ablations: expected earlier results at {previous}, found none")
        try:
            keep_ablations(json.loads(previous.read_text()), out)
        except ValueError as e:
            ap.error(f"--keep-ablations: {e}")
    out["targets"] = [dict(zip(("measure", "target", "measured", "met"), row)) for row in targets(out)]
    out["claims"] = [dict(zip(("claim", "paper", "toy", "holds"), row)) for row in claims(out)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out + ".md").write_text(render_markdown(out) + "\n")
    print(render_markdown(out))
    return 0


#: what must match for an earlier run's ablation rows to stand beside this run's, besides the same base (the
#: stage-1 record in the toy's training record: every ablation is a stage 2 of that base, scored with its text
#: tower): the same scenes (wherever the toy's folder lies)
_SAME_SCENES = ("seed_block", "scenes", "rec_expressions", "retrieval_scenes", "light", "lights")


def _caption_only(recipe: dict) -> str:
    """The caption-only records of a toy recipe's stage-2 data, in words ("none" for SPEC's data)."""
    pos, rel = recipe.get("alpha_position_pairs", 0.0), recipe.get("alpha_relation_pairs", 0.0)
    cap = recipe.get("alpha_caption_only", 0.0)
    parts = ([f"pairs {pos:g} + {rel:g}"] if pos or rel else []) + ([f"scenes {cap:g}"] if cap else [])
    return ", ".join(parts) or "none"


def keep_ablations(previous: dict, out: dict) -> list:
    """Put the ablation rows of an earlier run (``previous``, its JSON) into ``out`` before its own rows;
    rows named again are this run's. Each ablation is a stage 2 of the toy's base, scored on the same
    held-out scenes by the same functions with the base's text tower, so rows of two runs compare as long
    as the base and the scene counts are the same (a ``ValueError`` names the first that differs); the
    shipped stage 2 may differ (``out["ablations_other_toy"]`` then names the rows measured beside
    another one). The kept names go to ``out["ablations_kept"]`` (the Markdown says which rows an
    earlier run measured). Returns them.
    """
    if (previous.get("training") or {}).get("clip") != (out.get("training") or {}).get("clip"):
        raise ValueError("the earlier results score another base (the stage-1 record of their training "
                         "record differs from this one's)")
    for key in _SAME_SCENES:
        if previous.get(key) != out.get(key):
            raise ValueError(f"the earlier results' {key} is {previous.get(key)!r}, this run's {out.get(key)!r}")
    kept = {k: v for k, v in previous.get("ablations", {}).items() if k not in out["ablations"]}
    out["ablations"] = {**kept, **out["ablations"]}
    out["ablations_kept"] = list(kept)
    # a row kept twice keeps the toy it was first measured beside
    before = set(kept) if previous.get("training") != out.get("training") else set(previous.get("ablations_other_toy", ()))
    out["ablations_other_toy"] = [k for k in kept if k in before]
    return list(kept)


def _other_toy(out: dict) -> str:
    """The end of the kept rows' sentence: which of them stood beside another stage 2 of the same base."""
    other = out.get("ablations_other_toy") or []
    if not other:
        return "."
    if other == out["ablations_kept"]:
        return ", when another stage 2 of the same base was the shipped toy."
    return f". Rows {', '.join(repr(k) for k in other)}: when another stage 2 of the same base was the shipped toy."


def claims(out: dict) -> list:
    """The paper's claims beside the toy's numbers: ``[(claim, paper, toy, holds)]``.

    ``holds`` reads the claim literally on the toy: Alpha-CLIP's mask alpha above every base-CLIP
    baseline (regions, referring expressions), whole-image R@1 within 2 points of the base, the r_s
    ablation's shape. This is the table README.md shows.
    """
    reg, rec, ret, zs = out["region_top1"], out["rec_top1"], out["retrieval"], out["zero_shot_top1"]

    def listed(scores: dict, prefix: str) -> str:
        return ", ".join(f"{k[len(prefix):]} {v:.1f}" for k, v in scores.items() if k.startswith(prefix))

    mask = reg["Alpha-CLIP: mask alpha"]
    best_reg = max(v for k, v in reg.items() if k.startswith("base CLIP"))
    rows = [(CLAIMS["region"], PAPER["region"],
             f"Alpha-CLIP {listed(reg, 'Alpha-CLIP: ').replace(' alpha', '')} (alpha); "
             f"base CLIP {listed(reg, 'base CLIP: ')}", mask > best_reg)]
    rec_mask = rec["Alpha-CLIP: mask alpha"]
    best_rec = max(v for k, v in rec.items() if k.startswith("base CLIP"))
    rows.append((CLAIMS["rec"], PAPER["rec"],
                 f"Alpha-CLIP {listed(rec, 'Alpha-CLIP: ').replace(' alpha', '')} (alpha); "
                 f"base CLIP {listed(rec, 'base CLIP: ')}; chance {out['rec_chance']:.1f}", rec_mask > best_rec))
    b, a = "base CLIP (stage 1)", "Alpha-CLIP (stage 2), whole-image alpha"
    rows.append((CLAIMS["retrieval"], PAPER["retrieval"],
                 f"image->text R@1: Alpha-CLIP {ret[a]['image->text R@1']:.1f} vs base {ret[b]['image->text R@1']:.1f}; "
                 f"single-object zero-shot: {zs[a]:.1f} vs {zs[b]:.1f}"
                 + ("" if _shipped_data(out) == "none" else
                    f"; stage 2 read caption-only records beside r_s = 0.1: {_shipped_data(out)}"),
                 _retrieval_kept(ret)))
    rs = _rs_runs(out)
    if rs is not None:
        r0, r1, r10 = rs
        rows.append((CLAIMS["rs"], PAPER["rs"],
                     f"r_s {_rs_names(out)}: mask-alpha top-1 {r0['region mask alpha']:.1f} / {r1['region mask alpha']:.1f}"
                     f" / {r10['region mask alpha']:.1f}, image->text R@1 {r0['image->text R@1']:.1f} / "
                     f"{r1['image->text R@1']:.1f} / {r10['image->text R@1']:.1f}", _rs_shape(r0, r1, r10)))
    else:
        rows.append((CLAIMS["rs"], PAPER["rs"], "not run", False))
    return rows


def render_markdown(out: dict) -> str:
    """The results as Markdown tables."""
    lines = ["# Synthetic region suite (the paper's tables in miniature)", "",
             f"Held-out seed block {out['seed_block']}"
             + (f", scenes under a coloured light with chance {out['light']:g}" if out.get("light") else "")
             + (f" ({' or '.join(out['lights'])} only)" if out.get("lights") else "")
             + f"; machine: {describe(out['machine'])}, "
             f"load average {', '.join(f'{x:.1f}' for x in out['machine']['loadavg'])}; {out['seconds']} s.", "",
             "## Targets (issue 19)", "", "| measure | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['measure']} | {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |"
              for t in out["targets"]]
    lines += ["", "## Claims checked, the paper's numbers beside ours", "",
              "| the paper's claim | paper | toy (this run) | holds in the toy |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['toy']} | {'yes' if c['holds'] else 'no'} |" for c in out["claims"]]
    lines += ["", f"## Region top-1 ({out['regions']} objects in {out['scenes']} scenes, {out['labels']} labels, "
             f"chance {out['chance_top1']:.1f}%)", "", "| model: region input | top-1 % |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in out["region_top1"].items()]
    if out.get("lookalike_top1"):
        lines += ["", f"### Objects whose colour only the light tells ({out['lookalikes']} of them: lit objects with "
                  "another colour's pixels, e.g. a white one under the warm light)", "",
                  "| model: region input | top-1 % |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in out["lookalike_top1"].items()]
    if out.get("light_partners"):
        lines += ["", "### Light partners (whole image: its own caption over its light partner's, chance 50%)", "",
                  "| model | accuracy % | pairs |", "|---|---|---|"]
        lines += [f"| {k} | {v['accuracy']:.1f} | {v['pairs']} |" for k, v in out["light_partners"].items()]
    lines += ["", f"## Toy referring expressions ({out['rec_expressions']} expressions, twins told apart by a "
              f"relation; candidates: every object of the scene, chance {out['rec_chance']:.1f}%)", "",
              "| model: region input | accuracy % |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in out["rec_top1"].items()]
    lines += ["", f"## Whole-scene retrieval ({out['retrieval_scenes']} scenes) and single-object zero-shot "
              f"({out['zero_shot_scenes']} scenes)", "",
              "| model | image->text R@1 | text->image R@1 | zero-shot top-1 |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['image->text R@1']:.1f} | {v['text->image R@1']:.1f} | {out['zero_shot_top1'][k]:.1f} |"
              for k, v in out["retrieval"].items()]
    if out.get("pairs"):
        lines += ["", f"## Position and relation words ({out['pair_count']} mirror pairs of each kind, chance 50%)", "",
                  "A scene against its mirror image, each captioned with its own side (\"a red circle on the left\") "
                  "or relation (\"a red circle left of a blue square\"); whole-image input.", "",
                  "| model | position, image->text | position, text->image | relation, image->text | "
                  "relation, text->image |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['position']['image->text']:.1f} | {v['position']['text->image']:.1f} | "
                  f"{v['relation']['image->text']:.1f} | {v['relation']['text->image']:.1f} |"
                  for k, v in out["pairs"].items()]
    if out["ablations"]:
        # results from before the lr ratio was recorded keep their table as it was rendered then
        ratio = any("lr_ratio" in v for v in out["ablations"].values())
        head = ("| run | stage-2 steps | lr | " + ("lr ratio | " if ratio else "") + "label smoothing | patch scale | "
                "region phrases | box-only regions | r_s | caption-only records | whole-image share % | "
                "region top-1, mask alpha | region top-1, box alpha | REC, mask alpha | image->text R@1 | "
                "text->image R@1 |")
        lines += ["", "## Ablations (same base, stage 2 varied)", "", head, "|---" * (head.count(" | ") + 1) + "|"]
        if out.get("ablations_kept"):
            # each name quoted: run names may hold commas
            lines[-2:-2] = [f"Rows {', '.join(repr(k) for k in out['ablations_kept'])}: measured by an earlier run of this benchmark on "
                            "the same scenes (`--keep-ablations`)" + _other_toy(out), ""]
        lines += [f"| {k} | {v.get('steps', '?')} | {v.get('lr', '?')} | "
                  + (f"{v.get('lr_ratio', '?')} | " if ratio else "") + f"{v.get('label_smoothing', '?')} | "
                  f"{v.get('patch_scale', '?')} | {v.get('region_phrases', '?')} | {v.get('box_rate', '?')} | "
                  # rows of toy recipes from before caption-only records read SPEC's data (as box_rate above)
                  f"{v.get('r_s', '?')} | {v.get('caption_only', 'none' if 'box_rate' in v else '?')} | "
                  f"{v.get('whole_share', '?')} | "
                  f"{v['region mask alpha']:.1f} | {v['region box alpha']:.1f} | "
                  f"{v['rec mask alpha']:.1f} | {v['image->text R@1']:.1f} | {v['text->image R@1']:.1f} |"
                  for k, v in out["ablations"].items()]
        looks = {k: v["region mask alpha, lookalikes"] for k, v in out["ablations"].items()
                 if "region mask alpha, lookalikes" in v}
        if looks:
            lines += ["", "Mask alpha on the objects whose colour only the light tells: "
                      + "; ".join(f"{k} {v:.1f}" for k, v in looks.items()) + "."]
    demo = out["demo"]
    lines += ["", "## The demo scene (`alphaclip demo`)", "", "| region | truth | top-1 | |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {t} | {b} | {'ok' if c else 'WRONG'} |"
              for i, (t, b, c) in enumerate(zip(demo["truth"], demo["top1"], demo["correct"]))]
    tr = out.get("training") or {}
    if tr.get("clip") or tr.get("alpha"):
        lines += ["", "## Training record (`training.json` beside the weights)", "",
                  "Wall and CPU seconds count the call that wrote the record; training seconds are read from each "
                  "run's log (its samples over its throughput), whichever calls the run took.", "",
                  "| stage | steps | wall s | CPU s | training s (log) | last loss | logit scale |",
                  "|---|---|---|---|---|---|---|"]
        recipe = tr.get("recipe", {})
        clip = tr.get("clip") or {}
        rows = [("clip", recipe.get("clip_steps", "?"), clip, clip.get("logit_scale"))] if clip else []
        phases = recipe.get("clip_phases") or []
        rows += [(f"clip, phase {k + 1} (position pairs {pos:g}, relation pairs {rel:g})", steps, ph,
                  ph.get("logit_scale")) for k, ((steps, pos, rel), ph) in enumerate(zip(phases, clip.get("phases", [])))]
        if tr.get("alpha"):
            rows.append(("alpha", recipe.get("alpha_steps", "?"), tr["alpha"], recipe.get("logit_scale")))
        for name, steps, rec_, scale in rows:
            lines.append(f"| {name} | {steps} | {rec_['seconds']} | {rec_['cpu_seconds']} | "
                         f"{rec_.get('train_seconds', 'not recorded')} | {rec_['loss']:.4f} | "
                         f"{scale if scale is None else f'{scale:.2f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
