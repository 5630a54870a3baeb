#!/usr/bin/env python
"""Referring expression comprehension (RefCOCO / RefCOCO+ / RefCOCOg), ReCLIP-style, with Alpha-CLIP.

Same options as ``alphaclip eval rec`` (``--help``). The paper's setting (B/16 + L/14 ensemble, SAM
masks from the candidate boxes, image + background-blurred views)::

    python benchmarks/rec.py /data/refer/data --images /data/coco/train2014 \\
        --model alpha-ViT-B-16 --checkpoint clip_b16_grit20m_fultune_2xe.pth --base ViT-B-16.pt \\
        --ensemble alpha-ViT-L-14=clip_l14_grit20m_fultune_2xe.pth,ViT-L-14.pt \\
        --sam-checkpoint sam_vit_h_4b8939.pth --device cuda

Writes ``rec.json`` and ``rec.md`` (SPEC.md's REC table with this run's row) and the resumable progress
files into ``--out`` (default: a folder in the current directory named after the run); a rerun with other
settings is refused unless ``--restart`` (see docs/evaluation.md).
"""
import sys

from alphaclip_train.eval.cli import rec_main

if __name__ == "__main__":
    sys.exit(rec_main())
