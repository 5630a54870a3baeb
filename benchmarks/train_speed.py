"""Training throughput (samples/s) and peak memory of the Alpha-CLIP training step on CPU, per precision.

One optimizer step = the loop's own step (`alphaclip_train.loop._step`: vision forward/backward,
frozen text tower under no_grad, the global contrastive loss) + `optimizer_step` (AdamW; for
``bf16-weights`` the fp32 master update), on the same random inputs every step (data loading
excluded). Precisions: ``fp32``, ``bf16-autocast`` (fp32 weights, torch.autocast) and
``bf16-weights`` (bf16 model + fp32 master weights). Throughput: all precisions in ONE process, one
step each per round in rotating order, so that a shared machine's load hits them alike; median and
best step per precision. ``--rss`` adds the peak resident memory of each configuration, each run
in its own process (ru_maxrss is per process).

    python benchmarks/train_speed.py --threads 1                # toy (tiny) + ViT-B-16, three precisions
    python benchmarks/train_speed.py --ckpt --rss              # with gradient checkpointing, and memory

``bench()`` (one configuration, used by train_gpu.py and gpu_suite.py) and ``setup()`` are importable.
Writes benchmarks/results/train_speed_precision.{json,md} (``--out``; the fp32-only run with and without
gradient checkpointing of 0.1.0 is ``train_speed.{json,md}``).
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


def setup(model_name: str, batch: int, device: str = "cpu", precision: str = "fp32",
          grad_checkpointing: bool = False):
    """One training configuration ready to step: ``(step, info)``; ``step()`` runs one optimizer step (the
    loop's ``_step`` + ``optimizer_step``) on fixed random inputs and returns its loss."""
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

    def step() -> float:
        loss = float(_step(towers, towers, micro, dev, autocast, scaler, False, cfg, 0, 1))
        optimizer_step(opt, scaler, master)
        return loss

    info = {"model": model_name, "batch": batch, "precision": precision, "grad_checkpointing": grad_checkpointing,
            "trainable_params": sum(p.numel() for g in groups for p in g["params"])}
    return step, info


def bench(model_name: str, batch: int, steps: int, device: str = "cpu", precision: str = "fp32",
          grad_checkpointing: bool = False, warmup: int = 1) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; returns samples/s and peak memory."""
    import torch

    step, info = setup(model_name, batch, device, precision, grad_checkpointing)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = [step() for _ in range(warmup)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses += [step() for _ in range(steps)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {**info, "steps": steps, "samples_per_s": batch * steps / dt, "step_s": dt / steps,
           "first_loss": losses[0], "last_loss": losses[-1]}
    if dev.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def bench_alternating(model_name: str, batch: int, precisions, rounds: int, device: str = "cpu") -> list:
    """All ``precisions`` in ONE process, one step each per round in rotating order (a shared machine's
    load then hits them alike): per precision the median and best step time and the ratio to fp32."""
    runs = {p: setup(model_name, batch, device, p) for p in precisions}
    for step, _ in runs.values():   # warm-up
        step()
    times = {p: [] for p in precisions}
    losses = {p: [] for p in precisions}
    for r in range(rounds):
        order = list(precisions[r % len(precisions):]) + list(precisions[:r % len(precisions)])
        for p in order:
            t0 = time.perf_counter()
            losses[p].append(runs[p][0]())
            times[p].append(time.perf_counter() - t0)
        print(f"alternating round {r + 1}/{rounds} ({model_name}, load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in precisions), flush=True)
    rows = []
    ref = "fp32" if "fp32" in precisions else precisions[0]
    for p in precisions:
        med, best = statistics.median(times[p]), min(times[p])
        rows.append({**runs[p][1], "rounds": rounds, "median_step_s": med, "best_step_s": best,
                     "samples_per_s_median": batch / med, "samples_per_s_best": batch / best,
                     "speedup_median": statistics.median(times[ref]) / med, "speedup_best": min(times[ref]) / best,
                     "losses": losses[p]})
    return rows


def _child(args: argparse.Namespace) -> int:
    import torch
    torch.set_num_threads(args.threads)
    r = bench(args.model, args.batch, args.steps, precision=args.precision, grad_checkpointing=args.ckpt)
    print("RESULT " + json.dumps(r))
    return 0


def _rss_run(model: str, batch: int, steps: int, precision: str, threads: int, ckpt: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--batch", str(batch), "--steps", str(steps),
           "--threads", str(threads), "--precision", precision] + (["--ckpt"] if ckpt else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{model} {precision} failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[0][7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16-autocast", "bf16-weights"])
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (one step per precision each)")
    ap.add_argument("--tiny-rounds", type=int, default=15)
    ap.add_argument("--b16-batch", type=int, default=8)
    ap.add_argument("--rss", action="store_true", help="also peak memory: each configuration in its own process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "train_speed_precision"))
    args = ap.parse_args()
    if args.child:
        return _child(args)
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = bench_alternating("tiny", 128, args.precisions, args.tiny_rounds)
    rows += bench_alternating("alpha-ViT-B-16", args.b16_batch, args.precisions, args.rounds)
    memory = {}
    if args.rss:
        for model, batch in (("tiny", 128), ("alpha-ViT-B-16", args.b16_batch)):
            for prec in args.precisions:
                r = _rss_run(model, batch, 1, prec, args.threads, args.ckpt)
                memory[(model, r["precision"])] = r["peak_rss_gib"]
    for r in rows:
        r["peak_rss_gib"] = memory.get((r["model"], r["precision"]))
    load_after = os.getloadavg()
    machine = (f"{describe(machine_info())}, 24 GB VM; shared with other jobs: load average (1/5/15 min) "
               f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"benchmark": "train_speed", "machine": machine,
                                                    "grad_checkpointing": args.ckpt, "rows": rows}, indent=2) + "\n")
    lines = ["# Training throughput on CPU, per precision", "", f"Machine: {machine}.",
             "One step = vision forward/backward + frozen text forward + global contrastive loss + AdamW, the same "
             "random inputs every step (no data loading). All precisions in one process, one step each per round "
             "in rotating order; median and best step of the rounds (toy: "
             f"{args.tiny_rounds} rounds, B/16: {args.rounds}).", "",
             "| model | batch | precision | samples/s (median) | samples/s (best) | vs fp32 (median) | vs fp32 (best) | "
             "peak RSS GiB | loss, first -> last step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "-" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['samples_per_s_median']:.2f} | "
                     f"{r['samples_per_s_best']:.2f} | {r['speedup_median']:.2f}x | {r['speedup_best']:.2f}x | {mem} | "
                     f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
