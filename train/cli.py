"""``alphaclip train`` (the training recipe, one process or ``torchrun``) and ``alphaclip demo``."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``demo`` subcommands to the ``alphaclip`` command."""
    from .loop import PRECISIONS, TrainConfig

    d = TrainConfig(data=["-"], output="-")
    p = subparsers.add_parser(
        "train", help="train Alpha-CLIP on RGBA region-text data (shards or JSONL); torchrun for many processes",
        description="Train Alpha-CLIP with the paper's recipe. For DDP: "
                    "torchrun --nproc_per_node N -m alphaclip_core.cli train ... (NCCL on GPU, gloo on CPU). "
                    "Running again with the same --output resumes from its last checkpoint.")
    p.add_argument("data", nargs="+", help=".tar shards, .jsonl files, folders of them, globs or {000..009} ranges; "
                                           "local, https://, s3://, gs://... or pipe: commands (docs/training-data.md)")
    p.add_argument("--output", "-o", required=True, help="run folder: checkpoints/, log.jsonl, final/")
    p.add_argument("--model", default=d.model, help="open_clip alpha model name or local-dir:FOLDER")
    p.add_argument("--init", help="starting weights: plain CLIP (alpha conv starts at zero), Alpha-CLIP, "
                                  "reference visual-only .pth (with --base), or a pretrained tag of the base "
                                  "(e.g. webli for alpha-ViT-SO400M-14-SigLIP)")
    p.add_argument("--base", help="base CLIP weights for a reference visual-only --init")
    p.add_argument("--stage", choices=("alpha", "clip"), default=d.stage,
                   help="alpha: the Alpha-CLIP recipe (default); clip: pretrain a plain CLIP on whole images")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process and micro-batch")
    p.add_argument("--accum", type=int, default=d.accum, help="micro-batches per step (exact large-batch loss)")
    p.add_argument("--lr", type=float, default=d.lr, help="conv1_alpha's learning rate")
    p.add_argument("--lr-ratio", type=float, default=d.lr_ratio, help="the rest of the vision tower: lr * ratio")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps, then cosine")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--logit-scale", type=_scale, default=d.logit_scale,
                   help="fixed logit scale (stage alpha; default 100), or 'model' for the starting model's own value")
    p.add_argument("--loss", choices=("auto", "contrastive", "sigmoid"), default=d.loss,
                   help="auto (default): SigLIP's sigmoid loss for a base with a logit bias, else CLIP's InfoNCE")
    p.add_argument("--logit-scale-lr", type=float, default=None,
                   help="stage clip: the learned logit scale's own peak lr (default: --lr)")
    p.add_argument("--whole-image-ratio", type=float, default=d.whole_image_ratio, help="r_s")
    p.add_argument("--unfreeze-last", type=int, default=None,
                   help="train only conv1_alpha + the last N blocks (+ ln_post, proj); default: the whole tower")
    p.add_argument("--freeze", nargs="*", default=[], help="parameter-name prefixes to keep frozen")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32 (default); bf16: autocast (= bf16-autocast; bf16-weights: bf16 weights + fp32 "
                        "master weights); fp16: autocast + grad scaler")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--mode", choices=("crop", "pad", "squash"), default=d.mode, help="paired transform geometry")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer)
    p.add_argument("--interleave", type=int, default=d.interleave,
                   help="shards read side by side, their samples mixed (1: one shard at a time)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--keep-every", type=int, default=d.keep_every,
                   help="also keep the weights every N steps as checkpoints/step-NNNNNNN.safetensors (default 0: none)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/tensorboard (needs tensorboard)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUTPUT has a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-empty-batches", type=int, default=d.max_empty_batches,
                   help="steps in a row without a usable sample (all corrupt) before the run stops with an error; "
                        "such steps are skipped and counted (log.jsonl 'empty_steps')")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("demo", help="classify the regions of a bundled synthetic scene with the shipped "
                                           "toy model (no download); prints a table, writes an overlay PNG")
    p.add_argument("--overlay", default="alphaclip-demo.png", help="overlay PNG path (default: alphaclip-demo.png)")
    p.add_argument("--top", type=int, default=3, help="labels shown per region")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)


def _scale(text: str):
    if text == "model":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--logit-scale: expected a number or 'model', got {text!r}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from .loop import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, output=args.output, model=args.model, init=args.init, base=args.base, stage=args.stage,
        steps=args.steps, batch_size=args.batch_size, accum=args.accum, lr=args.lr, lr_ratio=args.lr_ratio,
        weight_decay=args.weight_decay, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip, label_smoothing=args.label_smoothing, logit_scale=args.logit_scale, loss=args.loss,
        logit_scale_lr=args.logit_scale_lr,
        whole_image_ratio=args.whole_image_ratio, unfreeze_last=args.unfreeze_last, freeze=tuple(args.freeze), precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, mode=args.mode, workers=args.workers,
        shuffle_buffer=args.shuffle_buffer, interleave=args.interleave, seed=args.seed, save_every=args.save_every,
        keep_every=args.keep_every, log_every=args.log_every,
        tensorboard=args.tensorboard, threads=args.threads, device=args.device, resume=not args.no_resume,
        progress=not args.no_progress, max_empty_batches=args.max_empty_batches)
    result = train(cfg)
    if result["files"]:
        print(json.dumps(result, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from PIL import Image

    from alphaclip_core.cli import check_device
    from alphaclip_core.viz import overlay_regions

    from .synthetic import demo_scene, load_tiny
    from .toy_eval import demo_scores

    check_device(args.device)
    model, tokenizer = load_tiny(args.device)
    image, masks, _, _ = demo_scene()
    scores, truth, best = demo_scores(model, tokenizer)
    if args.json:
        print(json.dumps([{"region": i + 1, "truth": t, "correct": best[i] == t, "top": scores.top(i, args.top)}
                          for i, t in enumerate(truth)], indent=2))
    else:
        print("toy Alpha-CLIP (synthetic world: 4 shapes x 6 colours; mask alpha); rows: region: ground truth")
        for i, t in enumerate(truth):
            ranked = ", ".join(f"{label} {p:.3f}" for label, p in scores.top(i, args.top))
            print(f"{f'{i + 1}: {t}':<18} {ranked}   {'ok' if best[i] == t else 'WRONG'}")
        wrong = [i for i, t in enumerate(truth) if best[i] != t]
        print(f"top-1 correct: {len(truth) - len(wrong)}/{len(truth)}")
        for i in wrong:
            print(f"region {i + 1} is a {truth[i]}, but the toy calls it a {best[i]}")
    captions = [f"{i + 1}: {scores.top(i, 1)[0][0]} {scores.top(i, 1)[0][1]:.2f}" + ("" if best[i] == t else " WRONG")
                for i, t in enumerate(truth)]
    out = Path(args.overlay)
    scale = max(1, 512 // max(image.size))  # a small scene: draw the overlay larger so the captions fit
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    big_masks = masks.repeat(scale, axis=1).repeat(scale, axis=2).astype("float32")
    overlay_regions(big, big_masks, captions, opacity=0.3).save(out)
    logger.info("wrote %s", out)
    return 0
