"""LLaVA vision towers: speed of the alpha towers against LLaVA's plain CLIP tower, and their agreement.

Three towers with the SAME random weights (a reference-format Alpha-CLIP checkpoint written to a
temporary folder; the plain tower gets the same weights minus the alpha conv), each producing
LLaVA-1.5's image features (hidden state -2, CLS dropped) for a batch of images:

- ``clip``: transformers' ``CLIPVisionModel`` (what LLaVA-1.5 runs), ``output_hidden_states=True``;
- ``hf-alpha``: alpha-clip's ``AlphaCLIPVisionModel`` + ``alpha_values`` (the transformers-native alpha LLaVA);
- ``llava-alpha``: ``alphaclip_integrations.llava.original.AlphaCLIPVisionTower`` on a ``[B, 4, H, W]``
  RGBA tensor (open_clip blocks; stops after the selected layer).

Reports the median seconds per batch over ``--reps`` runs (after one warm-up) and the largest absolute
difference of the two alpha towers' features (and of ``clip`` vs the alpha towers with a whole-image
alpha and a zero alpha conv).

    python benchmarks/llava_tower_speed.py                        # CPU, ViT-B/16 @224, batch 4
    python benchmarks/llava_tower_speed.py --arch L14-336 --device cuda --precision fp16 --batch 16
    python benchmarks/llava_tower_speed.py --attn-implementation eager     # transformers' explicit attention

The transformers towers use ``--attn-implementation`` (default ``sdpa``; ``flash_attention_2`` where the
flash-attn package is installed); the open_clip tower uses ``nn.MultiheadAttention``.

Writes ``benchmarks/results/llava_tower_<tag>.json`` and ``.md`` (tag: ``--tag`` or the device).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import types
from pathlib import Path

import torch


from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from _common import describe, machine, timed  # noqa: E402
from alphaclip_core.checkpoints import open_clip_to_reference  # noqa: E402
from alphaclip_core.model import WHOLE_IMAGE_ALPHA, AlphaCLIP  # noqa: E402
from alphaclip_integrations.hf import AlphaCLIPVisionConfig, vision_model_from_state_dict  # noqa: E402
from alphaclip_integrations.llava.weights import read_visual  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = {
    "B16": dict(image_size=224, patch_size=16, width=768, layers=12, head_width=64),
    "L14-336": dict(image_size=336, patch_size=14, width=1024, layers=24, head_width=64),
    "tiny": dict(image_size=32, patch_size=8, width=64, layers=3, head_width=32),  # tests of this script
}
TEXT = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=1)


def timed_median(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn, device) for _ in range(reps))


def run(arch: str = "B16", batch: int = 4, reps: int = 5, device: str = "cpu", precision: str = "fp32",
        attn_implementation: str = "sdpa") -> dict:
    """Time the three towers and compare their features; returns the result dict (see the module docstring)."""
    args = types.SimpleNamespace(arch=arch, batch=batch, reps=reps, device=device, precision=precision)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    vcfg = ARCHS[args.arch]
    torch.manual_seed(0)
    model = AlphaCLIP(embed_dim=512, vision_cfg=vcfg, text_cfg=TEXT, quick_gelu=True).eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.02)
    from alphaclip_integrations.llava import original
    original.install()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "alpha.pth"
        torch.save(open_clip_to_reference(model.state_dict()), ckpt)
        llava_tower = original.AlphaCLIPVisionTower(
            f"alpha-clip:{ckpt}", types.SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
        sd = read_visual(ckpt)
    hf_cfg = AlphaCLIPVisionConfig(hidden_size=vcfg["width"], intermediate_size=4 * vcfg["width"],
                                   num_hidden_layers=vcfg["layers"], num_attention_heads=vcfg["width"] // 64,
                                   image_size=vcfg["image_size"], patch_size=vcfg["patch_size"],
                                   hidden_act="quick_gelu", attn_implementation=attn_implementation)
    hf_alpha = vision_model_from_state_dict(sd, hf_cfg)
    clip = CLIPVisionModel(CLIPVisionConfig(**{k: getattr(hf_cfg, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
        "hidden_act")}, attn_implementation=attn_implementation)).eval()
    plain = {k: v for k, v in hf_alpha.state_dict().items() if "patch_embedding_alpha" not in k}
    clip.load_state_dict(plain)
    for m in (llava_tower, hf_alpha, clip):
        m.to(device=args.device, dtype=dtype)
    del model

    s, b = vcfg["image_size"], args.batch
    g = torch.Generator().manual_seed(1)
    px = torch.randn(b, 3, s, s, generator=g).to(args.device, dtype)
    alpha = torch.full((b, 1, s, s), -WHOLE_IMAGE_ALPHA)
    alpha[:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = WHOLE_IMAGE_ALPHA
    alpha = alpha.to(args.device, dtype)
    rgba = torch.cat([px, alpha], dim=1)

    @torch.no_grad()
    def run_clip():
        return clip(px, output_hidden_states=True).hidden_states[-2][:, 1:]

    @torch.no_grad()
    def run_hf_alpha():
        return hf_alpha(px, alpha_values=alpha, output_hidden_states=True).hidden_states[-2][:, 1:]

    @torch.no_grad()
    def run_llava_alpha():
        return llava_tower(rgba)

    seconds = {name: timed_median(fn, args.reps, args.device)
               for name, fn in (("clip", run_clip), ("hf-alpha", run_hf_alpha), ("llava-alpha", run_llava_alpha))}
    diff_alpha = float((run_hf_alpha().float() - run_llava_alpha().float()).abs().max())
    with torch.no_grad():
        hf_alpha.embeddings.patch_embedding_alpha.weight.zero_()
        llava_tower.vision_tower.conv1_alpha.weight.zero_()
    diff_zero = float((run_hf_alpha().float() - run_clip().float()).abs().max())
    diff_zero_llava = float((run_llava_alpha().float() - run_clip().float()).abs().max())
    scale = float(run_clip().float().abs().max())

    return {
        "machine": describe(machine(args.device)), "arch": args.arch, "batch": b, "precision": args.precision,
        "attn_implementation": {"transformers": hf_alpha.config._attn_implementation, "open_clip": "nn.MultiheadAttention"},
        "reps": args.reps, "median_seconds_per_batch": seconds,
        "images_per_second": {k: b / v for k, v in seconds.items()},
        "max_abs_diff": {"hf-alpha vs llava-alpha (same alpha)": diff_alpha,
                         "hf-alpha (zero conv) vs clip": diff_zero,
                         "llava-alpha (zero conv) vs clip": diff_zero_llava},
        "feature_max_abs": scale,
        "torch": torch.__version__,
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="B16", choices=sorted(ARCHS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    result = run(args.arch, args.batch, args.reps, args.device, args.precision, args.attn_implementation)
    seconds, b, scale = result["median_seconds_per_batch"], args.batch, result["feature_max_abs"]
    tag = args.tag or args.device.split(":")[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"llava_tower_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# LLaVA vision towers ({args.arch}, batch {b}, {args.precision})", "",
             f"Machine: {result['machine']}; torch {torch.__version__}; median of {args.reps} runs after a warm-up; "
             f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the machine).",
             "", "| tower | s / batch | images / s |", "|---|---|---|"]
    for k, v in seconds.items():
        lines.append(f"| {k} | {v:.3f} | {b / v:.2f} |")
    lines += ["", "| agreement (layer -2 patch features) | max abs diff |", "|---|---|"]
    for k, v in result["max_abs_diff"].items():
        lines.append(f"| {k} | {v:.2e} |")
    lines += ["", f"Feature magnitude (max abs): {scale:.2f}.", ""]
    (RESULTS / f"llava_tower_{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
