"""Grounding pipeline speed: SAM box prompts batched per image vs one prompt at a time.

A small random-init SAM built from segment-anything's modules: a shrunk image encoder (``--encoder-dim``,
``--encoder-depth``) at ``--img-size`` pixels (default 512; real SAM: 1024), and SAM's real prompt
encoder / mask decoder (256 channels), which is the part that box batching affects. Images are
``--width`` x ``--height`` JPEGs with ``--boxes`` phrase boxes each, in GRIT/img2dataset layout.

Three ways to get the masks, run alternately in rounds so machine load hits all alike:

- ``batched``: one image embedding, all the image's boxes in ONE decoder call (the pipeline's way);
- ``sequential``: one image embedding, one decoder call per box;
- ``naive``: one ``SamPredictor.set_image`` + ``predict`` per box (each region on its own).

Measured twice: SAM alone (``predict_boxes``), and the whole pipeline (``prepare_grounding``: tar
reading, JPEG decoding, SAM, RLE encoding, shard writing) for ``batched`` vs ``sequential``.

    python benchmarks/prepare_speed.py [--boxes 8] [--images 4] [--rounds 3] [--device cpu]

Writes ``benchmarks/results/prepare_speed_<device>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from alphaclip_train.prepare import prepare_grounding, write_webdataset
from _common import describe, machine  # noqa: E402
from alphaclip_train.sam import predict_boxes

RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("benchmarks.prepare_speed")


def small_sam(encoder_dim: int, encoder_depth: int, device: str, img_size: int = 1024) -> Sam:
    """SAM with a shrunk image encoder at ``img_size`` px and the real (vit_b/l/h) prompt encoder and mask decoder."""
    torch.manual_seed(0)
    grid = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth, embed_dim=encoder_dim, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=max(1, encoder_dim // 64), patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=(encoder_depth - 1,), window_size=14, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.to(device).eval()


def make_inputs(folder: Path, images: int, boxes: int, width: int, height: int) -> list:
    rng = np.random.default_rng(0)
    caption = " ".join(f"thing{i}" for i in range(boxes))
    samples, arrays, pixel_boxes = [], [], []
    for k in range(images):
        arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        spans, px = [], []
        pos = 0
        for i in range(boxes):
            word = f"thing{i}"
            x0, y0 = rng.uniform(0, 0.6, 2)
            x1, y1 = x0 + rng.uniform(0.15, 0.4), y0 + rng.uniform(0.15, 0.4)
            spans.append([pos, pos + len(word), x0, y0, x1, y1, 0.9])
            px.append([x0 * width, y0 * height, x1 * width, y1 * height])
            pos += len(word) + 1
        samples.append((f"{k:06d}", {"jpg": buf.getvalue(), "txt": caption,
                                     "json": {"caption": caption, "ref_exps": spans}}))
        arrays.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        pixel_boxes.append(np.array(px, np.float32))
    write_webdataset(folder / "00000.tar", samples)
    return list(zip(arrays, pixel_boxes))


def naive(predictor: SamPredictor, image: np.ndarray, boxes: np.ndarray) -> None:
    for b in boxes:
        predictor.set_image(image)
        predictor.predict(box=b, multimask_output=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxes", type=int, default=8, help="boxes (phrases) per image")
    ap.add_argument("--images", type=int, default=3, help="images per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--img-size", type=int, default=512, help="SAM input size (real SAM: 1024)")
    ap.add_argument("--encoder-dim", type=int, default=192)
    ap.add_argument("--encoder-depth", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the set_image-per-box variant")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alphaclip.prepare").setLevel(logging.WARNING)

    load_start = [round(x, 1) for x in os.getloadavg()]
    sam = small_sam(args.encoder_dim, args.encoder_depth, args.device, args.img_size)
    predictor = SamPredictor(sam)
    tmp = Path(tempfile.mkdtemp(prefix="prepare_speed_"))
    data = make_inputs(tmp / "in", args.images, args.boxes, args.width, args.height)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sam_variants = {
        "batched": lambda img, b: predict_boxes(predictor, img, b),
        "sequential": lambda img, b: predict_boxes(predictor, img, b, one_at_a_time=True),
    }
    if not args.skip_naive:
        sam_variants["naive"] = partial(naive, predictor)
    times = {f"sam/{k}": [] for k in sam_variants}
    times.update({"pipeline/batched": [], "pipeline/sequential": []})
    with torch.inference_mode():
        sam_variants["batched"](*data[0])   # warm-up
        sam_variants["sequential"](*data[0])
    for r in range(args.rounds):
        for name, fn in sam_variants.items():
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                for img, b in data:
                    fn(img, b)
            sync()
            times[f"sam/{name}"].append(time.perf_counter() - t)
        for name, batch in (("batched", 64), ("sequential", 1)):
            out = tmp / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            sync()
            t = time.perf_counter()
            summary = prepare_grounding([tmp / "in"], out, predictor, box_batch=batch, progress=False)
            sync()
            times[f"pipeline/{name}"].append(time.perf_counter() - t)
            assert summary["regions"] == args.images * args.boxes, summary
        logger.info("round %d: %s", r, {k: round(v[-1], 2) for k, v in times.items()})
    shutil.rmtree(tmp, ignore_errors=True)

    regions = args.images * args.boxes
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "median_s": round(med, 3), "min_s": round(min(ts), 3),
                     "images_per_s": round(args.images / med, 3), "regions_per_s": round(regions / med, 3),
                     "ms_per_region": round(1000 * med / regions, 1)})
    def ratio(slow: str, fast: str) -> dict:
        per_round = [a / b for a, b in zip(times[slow], times[fast])]
        return {"median_of_medians": round(statistics.median(times[slow]) / statistics.median(times[fast]), 2),
                "min_of_mins": round(min(times[slow]) / min(times[fast]), 2),
                "per_round": [round(x, 2) for x in per_round]}

    speedups = {"sam: batched vs sequential (per region)": ratio("sam/sequential", "sam/batched"),
                "pipeline: batched vs sequential (per region)": ratio("pipeline/sequential", "pipeline/batched")}
    if "sam/naive" in times:
        speedups["sam: batched vs naive (per region)"] = ratio("sam/naive", "sam/batched")
    result = {"benchmark": "prepare_speed", "device": args.device, "boxes_per_image": args.boxes,
              "images_per_round": args.images, "rounds": args.rounds, "image_size": [args.width, args.height],
              "sam": {"img_size": args.img_size, "encoder_dim": args.encoder_dim, "encoder_depth": args.encoder_depth,
                      "decoder": f"SAM's (256 ch, {args.img_size // 16}x{args.img_size // 16} embedding)", "weights": "random init"},
              "machine": {**machine(args.device), "cpus": os.cpu_count(), "loadavg_start": load_start,
                          "loadavg_end": [round(x, 1) for x in os.getloadavg()]}, "rows": rows, "speedups": speedups}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"prepare_speed_{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Grounding preparation speed: box prompts batched vs one at a time ({args.device})", "",
             f"Small random-init SAM: {args.img_size} px input, image encoder dim {args.encoder_dim} x depth "
             f"{args.encoder_depth}, SAM's real mask decoder. {args.images} images of {args.width}x{args.height}, "
             f"{args.boxes} boxes each; median of {args.rounds} alternating rounds.",
             f"Machine: {describe(result['machine'])}; "
             f"load average (1/5/15 min) {load_start} at the start, {result['machine']['loadavg_end']} at the end "
             "(other jobs shared the machine: compare within a round).", "",
             "| variant | median s | min s | images/s | regions/s | ms/region |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_s']} | {r['min_s']} | {r['images_per_s']} | {r['regions_per_s']} | "
              f"{r['ms_per_region']} |" for r in rows]
    lines += ["", "images/s, regions/s and ms/region are from the median.", "",
              "| speed-up (same regions) | median / median | min / min | each round |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['median_of_medians']} | {v['min_of_mins']} | {', '.join(map(str, v['per_round']))} |"
              for k, v in speedups.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
