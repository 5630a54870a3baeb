"""Training throughput (samples/s) and peak memory of the Alpha-CLIP training step on CPU, per precision.

One optimizer step = the loop's own step (`alphaclip_train.loop._step`: vision forward/backward,
frozen text tower under no_grad, the global contrastive loss) + `optimizer_step` (AdamW; for
``bf16-weights`` the fp32 master update), on random inputs of the model's size (data loading
excluded). Precisions: ``fp32``, ``bf16-autocast`` (fp32 weights, torch.autocast) and
``bf16-weights`` (bf16 model + fp32 master weights). Each configuration runs in its own process so
that the peak resident memory (ru_maxrss) belongs to it alone; configurations alternate over
``--rounds`` rounds (the machine is shared) and the best and median rounds are reported.

    python benchmarks/train_speed.py                         # toy (tiny) + ViT-B-16, three precisions
    python benchmarks/train_speed.py --ckpt                  # with gradient checkpointing

Writes benchmarks/results/train_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe, machine as machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def bench(model_name: str, batch: int, steps: int, device: str = "cpu", precision: str = "fp32",
          grad_checkpointing: bool = False, warmup: int = 1) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; returns samples/s and peak memory."""
    import open_clip
    import torch

    import alphaclip_integrations.open_clip  # noqa: F401
    from alphaclip_train.loop import (MasterWeights, TrainConfig, _Towers, _step, autocast_for, optimizer_step,
                                      param_groups, resolve_train_precision)
    from alphaclip_train.synthetic import MICRO_CFG, TINY_CFG, init_model_dir

    if model_name in ("tiny", "micro"):
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"alphaclip-bench-{model_name}"
        init_model_dir(folder, TINY_CFG if model_name == "tiny" else MICRO_CFG)
        name = f"local-dir:{folder}"
    else:
        name = model_name
    torch.manual_seed(0)
    model = open_clip.create_model(name).to(device)
    model.visual.check_alpha = False
    model.transformer.eval()  # the frozen text tower, as the training loop runs it
    cfg = TrainConfig(data=["-"], output="-", precision=precision, grad_checkpointing=grad_checkpointing)
    groups = param_groups(model, cfg)
    dev = torch.device(device)
    precision = resolve_train_precision(precision, dev)
    master = MasterWeights(model, groups) if precision == "bf16-weights" else None
    opt = torch.optim.AdamW(master.param_groups if master else groups, betas=(0.9, 0.98), eps=1e-6)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    size = model.visual.image_size[0]
    ctx = model.context_length
    g = torch.Generator().manual_seed(0)
    micro = [{"image": torch.randn(batch, 3, size, size, generator=g),
              "alpha": torch.where(torch.rand(batch, 1, size, size, generator=g) > 0.5, 1.9231, -1.9231),
              "text": torch.randint(1, 4000, (batch, ctx), generator=g)}]
    towers = _Towers(model, False)
    autocast = autocast_for(precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def one():
        losses.append(float(_step(towers, towers, micro, dev, autocast, scaler, False, cfg, 0, 1)))
        optimizer_step(opt, scaler, master)

    for _ in range(warmup):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"model": model_name, "batch": batch, "steps": steps, "precision": precision,
           "grad_checkpointing": grad_checkpointing, "samples_per_s": batch * steps / dt,
           "step_s": dt / steps, "trainable_params": sum(p.numel() for g in groups for p in g["params"]),
           "first_loss": losses[0], "last_loss": losses[-1]}
    if dev.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def _child(args: argparse.Namespace) -> int:
    import torch
    torch.set_num_threads(args.threads)
    r = bench(args.model, args.batch, args.steps, precision=args.precision, grad_checkpointing=args.ckpt)
    print("RESULT " + json.dumps(r))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16-autocast", "bf16-weights"])
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    ap.add_argument("--b16-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "train_speed"))
    args = ap.parse_args()
    if args.child:
        return _child(args)
    plan = [("tiny", 128, 20), ("alpha-ViT-B-16", args.b16_batch, 2)]
    load_before = os.getloadavg()
    runs = {}
    for r in range(args.rounds):
        configs = [(m, b, s, p) for m, b, s in plan for p in args.precisions]
        for model, batch, steps, precision in (configs if r % 2 == 0 else configs[::-1]):
            cmd = [sys.executable, __file__, "--child", "--model", model, "--batch", str(batch), "--steps",
                   str(steps), "--threads", str(args.threads), "--precision", precision] + (["--ckpt"] if args.ckpt else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{model} {precision} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(line[0][7:])
            runs.setdefault((model, precision), []).append(row)
            print(f"round {r + 1}: {model} {precision}: {row['samples_per_s']:.2f} samples/s, loss "
                  f"{row['first_loss']:.4f} -> {row['last_loss']:.4f} (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = []
    for (model, precision), rs in runs.items():
        sps = [x["samples_per_s"] for x in rs]
        best = max(rs, key=lambda x: x["samples_per_s"])
        fp32 = runs.get((model, "fp32"))
        rows.append({**best, "samples_per_s_best": max(sps), "samples_per_s_median": statistics.median(sps),
                     "rounds": len(rs), "speedup_vs_fp32_best": (max(sps) / max(x["samples_per_s"] for x in fp32))
                     if fp32 else None,
                     "peak_rss_gib": max(x["peak_rss_gib"] for x in rs)})
    load_after = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)
    machine = (f"{describe(machine_info())}, 24 GB VM; shared with other jobs: load average (1/5/15 min) "
               f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"benchmark": "train_speed", "machine": machine,
                                                    "grad_checkpointing": args.ckpt, "rows": rows}, indent=2) + "\n")
    lines = ["# Training throughput on CPU, per precision", "", f"Machine: {machine}.",
             "One step = vision forward/backward + frozen text forward + global contrastive loss + AdamW, random "
             f"inputs (no data loading); gradient checkpointing {'on' if args.ckpt else 'off'}. Best and median of "
             f"{args.rounds} alternating rounds (each configuration in its own process).", "",
             "| model | batch | precision | samples/s (best) | samples/s (median) | vs fp32 (best) | s/step (best) | "
             "peak RSS GiB | loss first -> last step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['speedup_vs_fp32_best']:.2f}x" if r["speedup_vs_fp32_best"] else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['samples_per_s_best']:.2f} | "
                     f"{r['samples_per_s_median']:.2f} | {ratio} | {r['step_s']:.3f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
