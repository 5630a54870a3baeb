"""Alpha-CLIP vs plain open_clip ``encode_image``, per precision: the cost of the alpha path and what
``auto`` precision buys, side by side in one run.

Both models are ViT-B-16 (random init, same weights), batch 8 by default. For every precision in
``--precisions`` (default ``fp32 auto``; ``auto`` is resolved by measurement, see
``alphaclip info --system``) both models are put in that precision with
``alphaclip_core.precision.apply_precision``; ``--autocast`` adds the fp32 models under
``torch.autocast(bfloat16)`` (the flag a user might try instead). Timings alternate between all
variants in rounds so that machine load hits them alike; the result is the median and the best
per variant, the ratio to plain open_clip at the same precision, and the speed-up over fp32.

    python benchmarks/speed.py [--model alpha-ViT-B-16] [--batch 8] [--rounds 9] [--device cpu] [--autocast]

Writes ``benchmarks/results/speed_<device>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
from pathlib import Path

import open_clip
import torch

import alphaclip_integrations.open_clip  # noqa: F401  (registers the alpha configs)
from _common import describe, machine, timed
from alphaclip_core import normalize_alpha
from alphaclip_core.precision import PRECISIONS, apply_precision

RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("benchmarks.speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="alpha-ViT-B-16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=PRECISIONS)
    ap.add_argument("--autocast", action="store_true", help="also time fp32 weights under torch.autocast(bf16)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image (alpha=None) variants")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    alpha32 = open_clip.create_model(args.model).eval()
    cfg = open_clip.get_model_config(args.model)
    cfg.pop("alpha_clip")
    plain32 = open_clip.CLIP(**cfg).eval()  # the same architecture without the alpha conv
    plain32.load_state_dict({k: v for k, v in alpha32.state_dict().items() if "conv1_alpha" not in k})
    alpha32.visual.conv1_alpha.weight.data.normal_(0, 0.02)
    alpha32.to(args.device)
    plain32.to(args.device)

    size = alpha32.visual.image_size[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(args.device)
    alpha = normalize_alpha(torch.rand(args.batch, 1, size, size, generator=g)).to(args.device)

    variants, resolved = {}, {}
    for prec in args.precisions:
        plain, alph = copy.deepcopy(plain32), copy.deepcopy(alpha32)
        choice = apply_precision(alph, prec, args.device)
        apply_precision(plain, choice)
        resolved[prec] = {"precision": choice.name, "reason": choice.reason}
        xp, ap = x.to(choice.dtype), alpha.to(choice.dtype)  # plain open_clip does not cast its input: both get it cast
        variants[f"plain open_clip, {prec}"] = (lambda m=plain, xp=xp: m.encode_image(xp), contextlib.nullcontext)
        variants[f"alpha, mask, {prec}"] = (lambda m=alph, xp=xp, ap=ap: m.encode_image(xp, ap), contextlib.nullcontext)
        if not args.no_whole:
            variants[f"alpha, whole image (None), {prec}"] = (lambda m=alph, xp=xp: m.encode_image(xp),
                                                              contextlib.nullcontext)
    if args.autocast:
        dev = torch.device(args.device).type
        amp = lambda: torch.autocast(dev, dtype=torch.bfloat16)  # noqa: E731
        variants["plain open_clip, fp32 + autocast(bf16)"] = (lambda: plain32.encode_image(x), amp)
        variants["alpha, mask, fp32 + autocast(bf16)"] = (lambda: alpha32.encode_image(x, alpha), amp)

    def call(item):
        fn, ctx = item
        with ctx():
            fn()

    times = {k: [] for k in variants}
    load0 = os.getloadavg()
    with torch.inference_mode():
        for _ in range(args.warmup):
            for item in variants.values():
                call(item)
        for r in range(args.rounds):
            order = list(variants.items())
            if r % 2:
                order.reverse()
            for name, item in order:
                times[name].append(timed(lambda: call(item), args.device))
            logger.info("round %d/%d (load %.1f): %s", r + 1, args.rounds, os.getloadavg()[0],
                        ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))

    def suffix(name: str) -> str:
        return name.rsplit(", ", 1)[1]

    rows = []
    for name, ts in times.items():
        prec = suffix(name)
        kind = name.rsplit(", ", 1)[0]
        plain_t = times[f"plain open_clip, {prec}"] if f"plain open_clip, {prec}" in times else None
        fp32_t = times.get(f"{kind}, fp32")
        med, best = statistics.median(ts), min(ts)
        rows.append({
            "variant": name, "median_ms": round(med * 1e3, 2), "min_ms": round(best * 1e3, 2),
            "images_per_s": round(args.batch / med, 2),
            "ratio_to_plain_same_precision": round(med / statistics.median(plain_t), 4) if plain_t else None,
            "min_ratio_to_plain_same_precision": round(best / min(plain_t), 4) if plain_t else None,
            "speedup_vs_fp32": round(statistics.median(fp32_t) / med, 3) if fp32_t else None,
            "min_speedup_vs_fp32": round(min(fp32_t) / best, 3) if fp32_t else None,
        })
    result = {"benchmark": "encode_image alpha vs plain, per precision", "model": args.model, "batch": args.batch,
              "precisions": resolved, "device": args.device, "rounds": args.rounds,
              "machine": {**machine(args.device), "open_clip": open_clip.__version__, "loadavg_start": load0,
                          "loadavg_end": os.getloadavg()},
              "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / (f"speed_{args.device.split(':')[0]}" + (f"_{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]

    def fmt(v, unit=""):
        return "-" if v is None else f"{v:.3f}{unit}"

    lines = [f"# encode_image: Alpha-CLIP vs plain open_clip, per precision ({args.model}, batch {args.batch}, "
             f"{args.device})", "",
             f"Machine: {describe(m)}, open_clip {m['open_clip']}; load average (1/5/15 min) "
             f"{'/'.join(f'{v:.1f}' for v in load0)} at start, {'/'.join(f'{v:.1f}' for v in m['loadavg_end'])} at "
             f"end (a shared machine: compare the ratios, measured side by side). Median and best of {args.rounds} "
             "alternating rounds.", ""]
    lines += [f"- `{p}` = {r['precision']}: {r['reason']}" for p, r in resolved.items()]
    lines += ["", "| variant | median ms | min ms | images/s | vs plain, same precision (median / min) | "
                  "speed-up vs fp32 (median / min) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_ms']} | {r['min_ms']} | {r['images_per_s']} | "
              f"{fmt(r['ratio_to_plain_same_precision'])} / {fmt(r['min_ratio_to_plain_same_precision'])} | "
              f"{fmt(r['speedup_vs_fp32'], 'x')} / {fmt(r['min_speedup_vs_fp32'], 'x')} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
