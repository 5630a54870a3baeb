#!/usr/bin/env python
"""One GPU suite: every GPU measurement the project owes, in one run (under 8 minutes on one GPU).

    python benchmarks/gpu_suite.py                        # a CUDA machine: writes benchmarks/results/gpu-*.json
    python benchmarks/gpu_suite.py --only encode regions  # some sections
    python benchmarks/gpu_suite.py --tiny --device cpu --out /tmp/gpu   # every code path, tiny models (tests)

Sections (each writes ``gpu-<section>.json``; ``gpu-suite.json`` / ``.md`` sum them up with the targets):

- ``system``: GPU, torch, the ``auto`` precision with its reason, the attention kernels the open_clip
  vision tower actually runs (profiler op names: flash / memory-efficient SDPA through
  ``nn.MultiheadAttention``'s inference fast path, or an explicit softmax).
- ``encode``: ViT-B/16 (batch 256) and ViT-L/14@336 (batch 64) ``encode_image`` images/s: the
  reference release's fp16 path (explicit ``q @ k.T`` softmax attention per block, reimplemented
  here by :func:`explicit_attention` on the same weights) against open_clip's tower in fp16 and
  bf16 (SDPA), fp32, fp16 with channels-last input, and fp16 under ``torch.compile`` (B/16); each
  variant's minimum feature cosine to fp32. Target: L/14@336 bf16 >= 1.5x the reference's fp16.
- ``regions``: regions/s of one image's K = 1, 8, 32, 128 regions, batched
  (``alphaclip_core.regions.region_batch_size``: sized to GPU memory) vs one at a time (B/16, auto
  precision). Target: K = 32 batched >= 3x one at a time.
- ``train``: training samples/s and peak GPU memory, B/16 (batch 128) and L/14 (batch 32), for
  fp32 / bf16-autocast / bf16-weights (fp32 masters) / fp16 (B/16) and bf16-autocast / bf16-weights (L/14).
- ``pseudolabel``: regions/s of the Detic pseudo-labeller (B/16, auto, 32 images x 64 candidates,
  1203 classes), boxes and masks.
- ``llava``: the LLaVA-1.5 towers (L/14@336, fp16, batch 16): transformers' CLIPVisionModel vs the
  alpha HF tower vs the original-LLaVA alpha tower, with transformers' ``sdpa``, ``eager`` and (when
  the flash-attn package is installed) ``flash_attention_2``.

A section that fails records its error and the others still run (exit code 1). ``--budget``
seconds (default 450) bound the run: a section that would start after the deadline is skipped and
says so. ``--tiny`` runs every section with tiny random models on any device, numbers meaningless.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe, machine, sync, timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("system", "encode", "regions", "train", "pseudolabel", "llava")
TARGETS = {"encode": ("L/14@336 encode, bf16 + SDPA vs the reference's fp16 explicit attention", 1.5),
           "regions": ("regions/s at K = 32, batched vs one at a time", 3.0)}
_TINY_VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
_TINY_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


# ------------------------------------------------------------------------------------------------ the baseline
def _explicit_attention_forward(block: torch.nn.Module, q_x: torch.Tensor, k_x: Optional[torch.Tensor] = None,
                                v_x: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None
                                ) -> torch.Tensor:
    """The reference release's attention: fused qkv projection, ``softmax(q k^T / sqrt(d)) v`` materialised
    in the model's dtype, output projection. Self-attention only (the vision tower's case)."""
    attn = block.attn
    x = q_x if attn.batch_first else q_x.transpose(0, 1)          # [B, N, C]
    b, n, c = x.shape
    h = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // h) ** -0.5, qkv[1], qkv[2]
    weights = q @ k.transpose(-2, -1)
    if attn_mask is not None:
        weights = weights + attn_mask
    out = (weights.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
    out = attn.out_proj(out)
    return out if attn.batch_first else out.transpose(0, 1)


@contextlib.contextmanager
def explicit_attention(model: torch.nn.Module):
    """Within the block, every attention block of ``model.visual`` computes attention the reference
    release's way (:func:`_explicit_attention_forward`) with its own weights; restored on exit."""
    blocks = list(model.visual.transformer.resblocks)
    for blk in blocks:
        blk.attention = types.MethodType(_explicit_attention_forward, blk)
    try:
        yield model
    finally:
        for blk in blocks:
            del blk.attention


# ------------------------------------------------------------------------------------------------ helpers
class Budget:
    """Seconds left of the run; sections check it before they start (and between costly steps)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def check(self, need: float, what: str) -> None:
        if self.left() < need:
            raise TimeoutError(f"{what}: skipped, {self.left():.0f} s of the budget left (< {need:.0f} s needed)")


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _alpha_model(name: str, device: str, tiny: bool):
    """A random-init AlphaCLIP on ``device`` (fp32), eval mode; ``tiny`` swaps in a tiny config."""
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401
    from alphaclip_core.model import AlphaCLIP

    torch.manual_seed(0)
    if tiny:
        model = AlphaCLIP(embed_dim=32, vision_cfg=dict(_TINY_VISION), text_cfg=dict(_TINY_TEXT), quick_gelu=True)
        model = model.to(device)
    else:
        model = open_clip.create_model(name, device=device)
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.02)
    return model.eval()


def _median_times(fns: Dict[str, Callable[[], Any]], reps: int, device: str) -> Dict[str, List[float]]:
    """Alternating rounds over ``fns`` after one warm-up call each; all timings per name."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for r in range(reps):
        order = list(fns.items())
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            times[name].append(timed(fn, device))
    return times


# ------------------------------------------------------------------------------------------------ sections
def section_system(args, budget: Budget) -> Dict[str, Any]:
    from torch.profiler import profile

    from alphaclip_core.precision import resolve_precision
    from alphaclip_core.system import system_info

    info = system_info()
    choice = resolve_precision("auto", args.device)
    model = _alpha_model("alpha-ViT-B-16", args.device, args.tiny)
    half = torch.float16 if args.device.startswith("cuda") else torch.float32
    model.to(half)
    size = model.visual.image_size[0]
    x = torch.randn(2, 3, size, size, device=args.device, dtype=half)
    with torch.inference_mode():
        model.encode_image(x)
        with profile() as prof:
            model.encode_image(x)
            sync(args.device)
    names = sorted({e.key for e in prof.key_averages()})
    attention_ops = [n for n in names if any(w in n.lower() for w in ("attention", "flash", "efficient", "softmax",
                                                                       "sdp", "fmha"))]
    return {"machine": machine(args.device), "system": info,
            "auto_precision": {"device": args.device, "precision": choice.name, "reason": choice.reason,
                               "timings_ms": choice.timings_ms},
            "open_clip_vision_attention_ops": {"dtype": str(half), "ops": attention_ops,
                                               "sdpa_kernel": any(("flash" in n.lower() or "efficient" in n.lower()
                                                                   or "scaled_dot_product" in n.lower())
                                                                  for n in attention_ops)}}


def section_encode(args, budget: Budget) -> Dict[str, Any]:
    cuda = args.device.startswith("cuda")
    plan = [("B/16", "alpha-ViT-B-16", 4 if args.tiny else 256, True),
            ("L/14@336", "alpha-ViT-L-14-336", 4 if args.tiny else 64, False)]
    out: Dict[str, Any] = {"reps": args.reps, "archs": {}}
    for label, name, batch, try_compile in plan:
        budget.check(20 if args.tiny else 60, f"encode {label}")
        base = _alpha_model(name, args.device, args.tiny)
        size = base.visual.image_size[0]
        g = torch.Generator().manual_seed(0)
        x32 = torch.randn(batch, 3, size, size, generator=g).to(args.device)
        a32 = torch.where(torch.rand(batch, 1, size, size, generator=g) > 0.5, 1.9231, -1.9231).to(args.device)
        models = {"fp32": base}
        for p, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            m = _alpha_model(name, args.device, args.tiny)
            m.load_state_dict(base.state_dict())
            models[p] = m.to(dt)
        inputs = {p: (x32.to(m.visual.conv1.weight.dtype), a32.to(m.visual.conv1.weight.dtype))
                  for p, m in models.items()}

        def encode(p: str, cl: bool = False):
            x, a = inputs[p]
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            return lambda: models[p].encode_image(x, a)

        def reference():
            with explicit_attention(models["fp16"]):
                return models["fp16"].encode_image(*inputs["fp16"])

        fns: Dict[str, Callable[[], Any]] = {
            "reference fp16 (explicit q.kT softmax)": reference,
            "open_clip fp16 (SDPA)": encode("fp16"),
            "open_clip bf16 (SDPA)": encode("bf16"),
            "open_clip fp32": encode("fp32"),
            "open_clip fp16 + channels-last input": encode("fp16", cl=True),
        }
        compile_info: Dict[str, Any] = {}
        if try_compile and not args.no_compile:
            backend = "inductor" if cuda else "eager"  # eager: traces (the code path) without a C++ toolchain
            try:
                t0 = time.perf_counter()
                compiled = torch.compile(models["fp16"].visual, backend=backend)
                with torch.inference_mode():
                    compiled(*inputs["fp16"])
                sync(args.device)
                compile_info = {"backend": backend, "compile_seconds": round(time.perf_counter() - t0, 1)}
                fns["open_clip fp16 + torch.compile"] = lambda: compiled(*inputs["fp16"])
            except Exception as e:  # compile is optional: record why it did not run
                compile_info = {"backend": backend, "error": f"{type(e).__name__}: {e}"[:500]}
        with torch.inference_mode():
            ref32 = F.normalize(models["fp32"].encode_image(*inputs["fp32"]).float(), dim=-1)
            cosines = {k: float((F.normalize(fn().float(), dim=-1) * ref32).sum(-1).min()) for k, fn in fns.items()}
            times = _median_times(fns, args.reps, args.device)
        base_t = statistics.median(times["reference fp16 (explicit q.kT softmax)"])
        rows = []
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append({"variant": k, "median_s": med, "min_s": min(ts), "images_per_s": batch / med,
                         "vs_reference_fp16": base_t / med, "min_cosine_to_fp32": cosines[k]})
        out["archs"][label] = {"model": name, "batch": batch, "image_size": size, "rows": rows,
                               "compile": compile_info}
        del models, base, fns
        _free(args.device)
    rows = {r["variant"]: r for r in out["archs"]["L/14@336"]["rows"]}
    out["target"] = {"measure": TARGETS["encode"][0], "target": TARGETS["encode"][1],
                     "value": rows["open_clip bf16 (SDPA)"]["vs_reference_fp16"]}
    return out


def section_regions(args, budget: Budget) -> Dict[str, Any]:
    from region_speed import measure_batching, random_masks

    from alphaclip_core.precision import apply_precision
    from alphaclip_core.regions import region_batch_size

    budget.check(15 if args.tiny else 45, "regions")
    model = _alpha_model("alpha-ViT-B-16", args.device, args.tiny)
    choice = apply_precision(model, "auto", args.device)
    batch_size = region_batch_size(model)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 480, 640), dtype=np.uint8))
    ks = [1, 8] if args.tiny else [1, 8, 32, 128]
    masks = random_masks(max(ks), 480, 640)
    rows = measure_batching(model, image, masks, ks, batch_size, 2 if args.tiny else 32, 1 if args.tiny else 3,
                            args.device)
    out = {"model": "alpha-ViT-B-16" + (" (tiny)" if args.tiny else ""), "precision": choice.name,
           "reason": choice.reason, "region_batch_size": batch_size, "rows": rows}
    k32 = [r for r in rows if r["K"] == 32]
    out["target"] = {"measure": TARGETS["regions"][0], "target": TARGETS["regions"][1],
                     "value": k32[0]["speedup"] if k32 else None}
    return out


def section_train(args, budget: Budget) -> Dict[str, Any]:
    from train_speed import bench

    if args.tiny:
        plan = [("micro", 8, ["fp32", "bf16-autocast", "bf16-weights"])]
        steps, warmup = 2, 1
    else:
        plan = [("alpha-ViT-B-16", 128, ["fp32", "bf16-autocast", "bf16-weights", "fp16"]),
                ("alpha-ViT-L-14", 32, ["bf16-autocast", "bf16-weights"])]
        steps, warmup = 5, 2
    rows = []
    for model, batch, precisions in plan:
        for precision in precisions:
            try:
                budget.check(5 if args.tiny else 30, f"train {model} {precision}")
                rows.append(bench(model, batch, steps, device=args.device, precision=precision, warmup=warmup))
            except TimeoutError as e:
                rows.append({"model": model, "batch": batch, "precision": precision, "skipped": str(e)})
            except Exception as e:  # e.g. out of memory: record, go on
                rows.append({"model": model, "batch": batch, "precision": precision,
                             "error": f"{type(e).__name__}: {e}"[:500]})
            print(json.dumps(rows[-1]), flush=True)
            _free(args.device)
    return {"steps": steps, "rows": rows}


def section_pseudolabel(args, budget: Budget) -> Dict[str, Any]:
    from pseudolabel_speed import run_case

    from alphaclip_core.precision import apply_precision
    from alphaclip_core.regions import region_batch_size

    budget.check(10 if args.tiny else 40, "pseudolabel")
    model = _alpha_model("alpha-ViT-B-16", args.device, args.tiny)
    choice = apply_precision(model, "auto", args.device)
    ns = argparse.Namespace(classes=20 if args.tiny else 1203, images=2 if args.tiny else 32,
                            regions=8 if args.tiny else 64, height=60 if args.tiny else 375,
                            width=80 if args.tiny else 500, device=args.device)
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(ns.classes, model.text_projection.shape[1], generator=g), dim=-1)
    batch_size = min(region_batch_size(model), ns.regions)
    rows = [run_case(model, text, ns, masks, batch_size) for masks in (False, True)]
    return {"precision": choice.name, "reason": choice.reason, "batch_size": batch_size,
            "config": vars(ns), "rows": rows}


def section_llava(args, budget: Budget) -> Dict[str, Any]:
    import importlib.util

    from llava_tower_speed import run

    impls = ["sdpa", "eager"]
    if importlib.util.find_spec("flash_attn") is not None and args.device.startswith("cuda"):
        impls.append("flash_attention_2")
    results = {}
    for impl in impls:
        try:
            budget.check(10 if args.tiny else 45, f"llava {impl}")
            results[impl] = run("tiny" if args.tiny else "L14-336", 2 if args.tiny else 16, 1 if args.tiny else 5,
                                args.device, "fp32" if args.tiny else "fp16", impl)
        except TimeoutError as e:
            results[impl] = {"skipped": str(e)}
        except Exception as e:
            results[impl] = {"error": f"{type(e).__name__}: {e}"[:500]}
        _free(args.device)
    return {"attn_implementations": results}


RUNNERS = {"system": section_system, "encode": section_encode, "regions": section_regions,
           "train": section_train, "pseudolabel": section_pseudolabel, "llava": section_llava}


# ------------------------------------------------------------------------------------------------ report
def _markdown(summary: Dict[str, Any]) -> str:
    m = summary["machine"]
    lines = ["# GPU suite" + (" (TINY MODE: code paths only, numbers meaningless)" if summary["tiny"] else ""), "",
             f"Machine: {describe(m)}. Total {summary['seconds']:.0f} s. Command: `{summary['command']}`.", "",
             "| target | measured | target | met |", "|---|---|---|---|"]
    for t in summary["targets"]:
        v = t.get("value")
        lines.append(f"| {t['measure']} | {'-' if v is None else f'{v:.2f}x'} | >= {t['target']}x | "
                     f"{'-' if v is None else ('yes' if v >= t['target'] else 'NO')} |")
    sec = summary["sections"]
    for name in SECTIONS:
        s = sec.get(name)
        if s is None:
            continue
        lines += ["", f"## {name}", ""]
        if "error" in s or "skipped" in s:
            lines.append(f"{'ERROR' if 'error' in s else 'SKIPPED'}: {s.get('error') or s.get('skipped')}")
            continue
        if name == "system":
            a = s["auto_precision"]
            ops = s["open_clip_vision_attention_ops"]
            lines += [f"- auto precision on {a['device']}: **{a['precision']}** ({a['reason']})",
                      f"- open_clip vision tower attention ops ({ops['dtype']}): {', '.join(ops['ops']) or '-'}; "
                      f"fused SDPA kernel: {'yes' if ops['sdpa_kernel'] else 'no'}"]
        elif name == "encode":
            for label, a in s["archs"].items():
                lines += [f"{label} ({a['model']}, batch {a['batch']}, {a['image_size']} px)"
                          + (f"; torch.compile: {a['compile']}" if a["compile"] else ""), "",
                          "| variant | images/s | vs reference fp16 | min cosine to fp32 |", "|---|---|---|---|"]
                lines += [f"| {r['variant']} | {r['images_per_s']:.1f} | {r['vs_reference_fp16']:.2f}x | "
                          f"{r['min_cosine_to_fp32']:.5f} |" for r in a["rows"]]
                lines.append("")
        elif name == "regions":
            lines += [f"{s['model']}, {s['precision']}, region batch size {s['region_batch_size']} (sized to memory)",
                      "", "| K | one at a time (regions/s) | batched (regions/s) | speed-up |", "|---|---|---|---|"]
            lines += [f"| {r['K']} | {r['sequential_regions_per_s']:.1f} | {r['batched_regions_per_s']:.1f} | "
                      f"{r['speedup']:.2f}x |" for r in s["rows"]]
        elif name == "train":
            lines += ["| model | batch | precision | samples/s | peak memory GiB |", "|---|---|---|---|---|"]
            for r in s["rows"]:
                if "samples_per_s" in r:
                    mem = r.get("peak_gpu_mem_gib", r.get("peak_rss_gib"))
                    lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['samples_per_s']:.1f} | "
                                 f"{mem:.2f} |")
                else:
                    lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | "
                                 f"{r.get('error') or r.get('skipped')} | - |")
        elif name == "pseudolabel":
            lines += [f"{s['precision']}, batch {s['batch_size']}, {s['config']['classes']} classes", "",
                      "| regions | images/s | regions/s |", "|---|---|---|"]
            lines += [f"| {r['regions']} | {r['images_per_s']} | {r['regions_per_s']} |" for r in s["rows"]]
        elif name == "llava":
            lines += ["| attention | tower | images/s |", "|---|---|---|"]
            for impl, r in s["attn_implementations"].items():
                if "images_per_second" not in r:
                    lines.append(f"| {impl} | {r.get('error') or r.get('skipped')} | - |")
                    continue
                lines += [f"| {impl} | {k} | {v:.1f} |" for k, v in r["images_per_second"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--tiny", action="store_true", help="tiny random models: exercises every code path anywhere")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per encode variant")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds; later sections are skipped past it")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device here (use --tiny --device cpu to test the code paths)")
    if not args.device.startswith("cuda") and not args.tiny:
        raise SystemExit("error: the GPU suite needs --device cuda (or --tiny to exercise it on another device)")
    if args.tiny:
        args.reps = min(args.reps, 2)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are true fp32 (TF32 would be a third precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from alphaclip_core.checkpoints import atomic_write

    budget = Budget(args.budget)
    t0 = time.perf_counter()
    sections: Dict[str, Any] = {}
    failed = False
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        print(f"== {name} ({budget.left():.0f} s of the budget left)", flush=True)
        try:
            budget.check(1, name)
            result = RUNNERS[name](args, budget)
        except TimeoutError as e:
            result = {"skipped": str(e)}
        except Exception as e:
            failed = True
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            print(result["traceback"], file=sys.stderr, flush=True)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["tiny"] = args.tiny
        sections[name] = result
        text = json.dumps(result, indent=2, default=str) + "\n"
        atomic_write(out / f"gpu-{name}.json", lambda tmp, s=text: Path(tmp).write_text(s))
        _free(args.device)
    summary = {"command": "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "tiny": args.tiny, "device": args.device, "machine": machine(args.device),
               "seconds": time.perf_counter() - t0, "load_average_end": os.getloadavg(),
               "targets": [dict(sections[n]["target"]) for n in ("encode", "regions")
                           if n in sections and "target" in sections[n]],
               "sections": sections}
    text = json.dumps({k: v for k, v in summary.items() if k != "sections"} |
                      {"sections": {k: {kk: vv for kk, vv in v.items() if kk != "traceback"}
                                    for k, v in sections.items()}}, indent=2, default=str) + "\n"
    atomic_write(out / "gpu-suite.json", lambda tmp: Path(tmp).write_text(text))
    md = _markdown(summary)
    atomic_write(out / "gpu-suite.md", lambda tmp: Path(tmp).write_text(md))
    print(md)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
