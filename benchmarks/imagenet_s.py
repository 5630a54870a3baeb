#!/usr/bin/env python
"""ImageNet-S zero-shot region classification: the rows of SPEC.md's ImageNet-S table.

Same options as ``alphaclip eval imagenet-s`` (``--help``). Example (B/16, all rows, paper setting)::

    python benchmarks/imagenet_s.py /data/imagenet-s/ImageNetS919 \\
        --categories ImageNetS_categories_im919.txt \\
        --model alpha-ViT-B-16 --checkpoint clip_b16_grit20m_fultune_2xe.pth --base ViT-B-16.pt \\
        --plain-base ViT-B-16.pt --mode reference --names paper --device cuda

Writes ``imagenet_s_<model>.json`` and ``.md`` (mean per-class top-1 beside the paper's number, plus
top-1/top-5) and a resumable ``.state.jsonl`` that records the run's settings into ``--out`` (default: a
folder in the current directory named after the run). See docs/evaluation.md.
"""
import sys

from alphaclip_train.eval.cli import imagenet_s_main

if __name__ == "__main__":
    sys.exit(imagenet_s_main())
