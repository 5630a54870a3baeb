"""Training throughput and peak GPU memory on any CUDA machine: ViT-B-16 and ViT-L-14, bf16 autocast.

Same step as benchmarks/train_speed.py (the loop's own `_step` + AdamW, random inputs), with and
without gradient checkpointing. Run on a machine with one CUDA GPU:

    python benchmarks/train_gpu.py                 # writes benchmarks/results/train_gpu.{json,md}

It refuses to run without CUDA.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import RESULTS, bench  # noqa: E402


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--out", default=str(RESULTS / "train_gpu"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_gpu.py needs a CUDA GPU (none found); for CPU use benchmarks/train_speed.py")
    torch.backends.cuda.matmul.allow_tf32 = True
    plan = [("alpha-ViT-B-16", 256), ("alpha-ViT-L-14", 64)]
    rows = []
    for model, batch in plan:
        for ckpt in (False, True):
            r = bench(model, batch, args.steps, device="cuda", precision=args.precision, grad_checkpointing=ckpt,
                      warmup=2)
            rows.append(r)
            print(r, flush=True)
            torch.cuda.empty_cache()
    machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {platform.machine()}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"benchmark": "train_gpu", "machine": machine, "rows": rows},
                                                   indent=2) + "\n")
    lines = ["# Training throughput on GPU", "", f"Machine: {machine}. {args.precision} autocast.", "",
             "| model | batch | grad ckpt | samples/s | s/step | peak GPU GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {'yes' if r['grad_checkpointing'] else 'no'} | "
              f"{r['samples_per_s']:.1f} | {r['step_s']:.3f} | {r['peak_gpu_mem_gib']:.2f} |" for r in rows]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
