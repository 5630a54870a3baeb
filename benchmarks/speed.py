"""Alpha-CLIP vs plain open_clip ``encode_image``: the cost of the alpha path, side by side in one run.

Both models are ViT-B-16 (random init, same weights), fp32, batch 8 by default. Timings alternate
between the variants in rounds so that machine load hits all of them alike; the result is the
median per variant and its ratio to plain CLIP.

    python benchmarks/speed.py [--model alpha-ViT-B-16] [--batch 8] [--rounds 15] [--device cpu]

Writes ``benchmarks/results/speed_<device>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import open_clip
import torch

import alphaclip_integrations.open_clip  # noqa: F401  (registers the alpha configs)
from _common import describe, machine, timed
from alphaclip_core import normalize_alpha

RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("benchmarks.speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="alpha-ViT-B-16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    alpha_model = open_clip.create_model(args.model).eval()
    cfg = open_clip.get_model_config(args.model)
    cfg.pop("alpha_clip")
    plain = open_clip.CLIP(**cfg).eval()  # the same architecture without the alpha conv
    plain.load_state_dict({k: v for k, v in alpha_model.state_dict().items() if "conv1_alpha" not in k})
    alpha_model.visual.conv1_alpha.weight.data.normal_(0, 0.02)
    alpha_model.to(args.device, dtype)
    plain.to(args.device, dtype)

    size = alpha_model.visual.image_size[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(args.device, dtype)
    alpha = normalize_alpha(torch.rand(args.batch, 1, size, size, generator=g)).to(args.device, dtype)

    variants = {
        "plain open_clip": lambda: plain.encode_image(x),
        "alpha, mask": lambda: alpha_model.encode_image(x, alpha),
        "alpha, whole image (None)": lambda: alpha_model.encode_image(x),
    }

    times = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
        for r in range(args.rounds):
            order = list(variants.items())
            if r % 2:
                order.reverse()
            for name, fn in order:
                times[name].append(timed(fn, args.device))
            logger.info("round %d/%d: %s", r + 1, args.rounds,
                        ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in times.items()))

    base, base_min = statistics.median(times["plain open_clip"]), min(times["plain open_clip"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "median_ms": round(med * 1e3, 2), "min_ms": round(min(ts) * 1e3, 2),
                     "images_per_s": round(args.batch / med, 2), "ratio_to_plain": round(med / base, 4),
                     "min_ratio_to_plain": round(min(ts) / base_min, 4)})
    result = {"benchmark": "encode_image alpha vs plain", "model": args.model, "batch": args.batch,
              "dtype": args.dtype, "device": args.device, "rounds": args.rounds,
              "machine": {**machine(args.device), "open_clip": open_clip.__version__}, "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"speed_{args.device.split(':')[0]}_{args.dtype}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"# encode_image: Alpha-CLIP vs plain open_clip ({args.model}, batch {args.batch}, {args.dtype}, "
             f"{args.device})", "",
             f"Machine: {describe(m)}, open_clip {m['open_clip']}; load average {m['loadavg'][0]:.1f}. "
             f"Median of {args.rounds} alternating rounds.", "",
             "| variant | median ms | min ms | images/s | median ratio to plain | min ratio to plain |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_ms']} | {r['min_ms']} | {r['images_per_s']} | {r['ratio_to_plain']} "
              f"| {r['min_ratio_to_plain']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
