"""Training throughput (samples/s) and peak memory of the Alpha-CLIP training step on CPU.

One optimizer step = the loop's own step (`alphaclip_train.loop._step`: vision forward/backward,
frozen text tower under no_grad, the global contrastive loss) + AdamW, on random inputs of the
model's size (data loading excluded). Each configuration runs in its own process so that the
peak resident memory (ru_maxrss) belongs to it alone.

    python benchmarks/train_speed.py            # tiny config + ViT-B-16, with/without grad checkpointing

Writes benchmarks/results/train_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def bench(model_name: str, batch: int, steps: int, device: str = "cpu", precision: str = "fp32",
          grad_checkpointing: bool = False, warmup: int = 1) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; returns samples/s and peak memory."""
    import open_clip
    import torch

    import alphaclip_integrations.open_clip  # noqa: F401
    from alphaclip_train.loop import TrainConfig, _Towers, _step, param_groups
    from alphaclip_train.synthetic import MICRO_CFG, TINY_CFG, init_model_dir

    if model_name in ("tiny", "micro"):
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"alphaclip-bench-{model_name}"
        init_model_dir(folder, TINY_CFG if model_name == "tiny" else MICRO_CFG)
        name = f"local-dir:{folder}"
    else:
        name = model_name
    model = open_clip.create_model(name).to(device)
    model.visual.check_alpha = False
    cfg = TrainConfig(data=["-"], output="-", precision=precision, grad_checkpointing=grad_checkpointing)
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    size = model.visual.image_size[0]
    ctx = model.context_length
    g = torch.Generator().manual_seed(0)
    micro = [{"image": torch.randn(batch, 3, size, size, generator=g),
              "alpha": torch.where(torch.rand(batch, 1, size, size, generator=g) > 0.5, 1.9231, -1.9231),
              "text": torch.randint(1, 4000, (batch, ctx), generator=g)}]
    towers = _Towers(model, False)
    dev = torch.device(device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(dev.type, dtype=amp)) if amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one():
        _step(towers, towers, micro, dev, autocast, scaler, False, cfg, 0, 1)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

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
           "step_s": dt / steps, "trainable_params": sum(p.numel() for g in groups for p in g["params"])}
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
    ap.add_argument("--ckpt", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "train_speed"))
    args = ap.parse_args()
    if args.child:
        return _child(args)
    plan = [("tiny", 128, 30), ("alpha-ViT-B-16", 16, 2)]
    load_before = os.getloadavg()[0]
    rows = []
    for model, batch, steps in plan:
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--child", "--model", model, "--batch", str(batch), "--steps",
                   str(steps), "--threads", str(args.threads)] + (["--ckpt"] if ckpt else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{model} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[0][7:]))
            print(rows[-1], flush=True)
    machine = (f"{platform.machine()} CPU VM, {os.cpu_count()} cores ({args.threads} torch threads), "
               f"torch {__import__('torch').__version__}, 24 GB; shared with other jobs: 1-min load average "
               f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"benchmark": "train_speed", "machine": machine, "rows": rows},
                                                   indent=2) + "\n")
    lines = ["# Training throughput on CPU", "", f"Machine: {machine}.",
             "One step = vision forward/backward + frozen text forward + global contrastive loss + AdamW, "
             "fp32, random inputs (no data loading).", "",
             "| model | batch | grad ckpt | samples/s | s/step | peak RSS GiB | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {'yes' if r['grad_checkpointing'] else 'no'} | "
                     f"{r['samples_per_s']:.1f} | {r['step_s']:.3f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['trainable_params'] / 1e6:.2f}M |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
