"""Classification pipeline: image-level labels (ImageNet-style) -> region-text pairs.

Per image: SAM's automatic masks -> crop each mask's box (plus a margin) -> score every crop with a
CLIP against all class names (softmax probability of the image's own class) -> keep the best
``top_k`` masks whose probability is at least ``min_score`` -> caption each kept crop with an
image-to-text model (BLIP-2 by default) -> phrase = caption + class name. Output: the training
shard schema, one record per image that kept a region.

Input images come from a folder with one sub-folder per class (``root/<class_id>/*.jpg``), or from a
label file listing ``relative/path<TAB>label`` lines. ``class_names`` maps class ids (folder names or
integer labels) to readable names. The image list is sorted and cut into input shards of
``images_per_shard`` images; shard ``i`` becomes ``{i:06d}.tar``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from alphaclip_core.alpha import prepare, rle_encode
from alphaclip_core.regions import preprocess_params, text_classifier

from .common import ShardStats, bool_mask_box, decode_image, encode_for_shard, run_shards

logger = logging.getLogger("alphaclip.prepare")

__all__ = ["ImageItem", "list_images", "read_class_names", "Captioner", "score_crops", "crop_box",
           "prepare_classification", "DEFAULT_CAPTIONER"]

DEFAULT_CAPTIONER = "Salesforce/blip2-opt-2.7b"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ImageItem = Tuple[str, str, str]  # (path relative to root, readable label, class id)


# ------------------------------------------------------------------------------------------------
# inputs
def read_class_names(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """Class id -> readable name, from a JSON object or a text file.

    Text: one class per line, ``<id> <name...>`` (ImageNet's ``LOC_synset_mapping.txt``: ``n01440764 tench,
    Tinca tinca``); only the first comma-separated synonym is kept. The line number (from 0) also maps
    to the name, so integer labels in a label file work. JSON: ``{"id": "name", ...}`` or a list of names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class_names: {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return {str(i): str(n) for i, n in enumerate(data)}
        if not isinstance(data, dict):
            raise ValueError(f"class_names: {path} must hold a JSON object id -> name or a list of names")
        return {str(k): str(v) for k, v in data.items()}
    names: Dict[str, str] = {}
    for n, line in enumerate(l for l in text.splitlines() if l.strip()):
        cid, _, rest = line.strip().partition(" ")
        name = rest.split(",")[0].strip() or cid
        names[cid] = name
        names.setdefault(str(n), name)
    return names


def list_images(root: Union[str, os.PathLike], label_file: Optional[Union[str, os.PathLike]] = None,
                class_names: Optional[Dict[str, str]] = None) -> List[ImageItem]:
    """The sorted ``(relative path, label, class id)`` list of a classification dataset.

    Without ``label_file``: every image under ``root/<class_id>/`` (any depth). With it: one
    ``relative/path<TAB>label`` line per image (or ``path label``, split at the first whitespace). A class
    id missing from ``class_names`` is its own label (underscores become spaces).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: image folder {root} does not exist")
    names = class_names or {}
    items: List[ImageItem] = []
    if label_file is None:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    cid = class_dir.name
                    items.append((f.relative_to(root).as_posix(), names.get(cid, cid.replace("_", " ")), cid))
    else:
        label_file = Path(label_file)
        if not label_file.is_file():
            raise FileNotFoundError(f"label_file: {label_file} does not exist")
        for n, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel, sep, cid = line.partition("\t") if "\t" in line else line.strip().partition(" ")
            if not sep or not cid.strip():
                raise ValueError(f"label_file: line {n} {line!r}: expected 'relative/path<TAB>label'")
            cid = cid.strip()
            items.append((rel.strip(), names.get(cid, cid.replace("_", " ")), cid))
        items.sort()
    if not items:
        raise ValueError(f"root: no images found under {root}" + (f" via {label_file}" if label_file else
                                                                   " (expected root/<class>/<image>)"))
    return items


# ------------------------------------------------------------------------------------------------
# models
class Captioner:
    """Caption images with a transformers image-to-text model, by hub name or local folder.

    ``Captioner(name_or_path)(images) -> [str]``: any model that ``AutoModelForImageTextToText`` loads
    (BLIP, BLIP-2, GIT, VisionEncoderDecoder, ...) with its ``AutoProcessor``. fp16 on CUDA, fp32 on CPU.
    ``prompt`` (optional) is passed as text and stripped from the output.
    """

    def __init__(self, name_or_path: str = DEFAULT_CAPTIONER, device: Union[str, torch.device] = "cpu",
                 max_new_tokens: int = 30, prompt: Optional[str] = None, batch_size: int = 16) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(name_or_path)
        self.model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype).to(self.device).eval()
        self.name = str(name_or_path)
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> List[str]:
        out: List[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            kw = {"text": [self.prompt] * len(batch)} if self.prompt else {}
            inputs = self.processor(images=batch, return_tensors="pt", **kw).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            for text in self.processor.batch_decode(ids, skip_special_tokens=True):
                text = text.strip()
                if self.prompt and text.startswith(self.prompt):
                    text = text[len(self.prompt):].strip()
                out.append(" ".join(text.split()))
        return out


def crop_box(bbox_xywh: Sequence[float], width: int, height: int, margin: float = 0.1) -> Tuple[int, int, int, int]:
    """Integer crop window ``(x0, y0, x1, y1)`` around an XYWH box, grown by ``margin`` x its size per side."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    dx, dy = w * margin, h * margin
    x0, y0 = max(0, int(np.floor(x - dx))), max(0, int(np.floor(y - dy)))
    x1, y1 = min(width, int(np.ceil(x + w + dx))), min(height, int(np.ceil(y + h + dy)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


@torch.no_grad()
def score_crops(model: torch.nn.Module, crops: Sequence[Image.Image], crop_masks: Sequence[np.ndarray],
                text_features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Softmax probabilities ``[N, L]`` of N crops over L class texts.

    Args:
        model: an open_clip CLIP or an Alpha-CLIP of any backbone (:class:`~alphaclip_core.model.AlphaModel`).
            An Alpha-CLIP reads the crop's mask as alpha (it looks at the object, not the crop's
            background); a plain CLIP sees the crop only.
        crops: N PIL crops. crop_masks: N ``[h, w]`` bool masks of each crop's size (non-empty).
        text_features: ``[L, D]`` unit vectors (:func:`alphaclip_core.regions.text_classifier`).
    Each crop is padded to a square (nothing cut off) and resized to the model's input size.
    """
    from alphaclip_core.model import AlphaModel

    if len(crops) != len(crop_masks):
        raise ValueError(f"crop_masks: expected {len(crops)} (one per crop), got {len(crop_masks)}")
    if not crops:
        return torch.zeros(0, text_features.shape[0])
    params = preprocess_params(model)
    use_alpha = isinstance(model, AlphaModel)
    device = next(model.parameters()).device
    scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
    out = []
    for start in range(0, len(crops), batch_size):
        pix, alpha = [], []
        for crop, m in zip(crops[start:start + batch_size], crop_masks[start:start + batch_size]):
            p, a = prepare(crop, mask=m if use_alpha else None, mode="pad", **params)
            pix.append(p)
            alpha.append(a)
        pix_t = torch.cat(pix).to(device)
        if use_alpha:
            feats = model.encode_image(pix_t, torch.cat(alpha).to(device), normalize=True)
        else:
            feats = model.encode_image(pix_t, normalize=True)
        out.append((scale * feats.float() @ text_features.to(device).float().T).softmax(dim=-1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# the pipeline
def prepare_classification(root: Union[str, os.PathLike], output_dir: Union[str, os.PathLike], sam,
                           clip_model: torch.nn.Module, tokenizer: Callable,
                           captioner: Callable[[Sequence[Image.Image]], List[str]], *,
                           label_file: Optional[Union[str, os.PathLike]] = None,
                           class_names: Optional[Dict[str, str]] = None, images_per_shard: int = 1000,
                           top_k: int = 2, min_score: float = 0.3, min_area: float = 0.01, crop_margin: float = 0.1,
                           phrase_template: str = "{caption}, {label}",
                           caption_template: str = "a photo of a {label}.",
                           templates: Sequence[str] = ("a photo of a {}.",),
                           amg_kwargs: Optional[Dict[str, Any]] = None, sam_name: str = "sam",
                           rank: Optional[int] = None, world: Optional[int] = None, progress: bool = True,
                           restart: bool = False) -> Dict[str, Any]:
    """Turn a labelled image folder into training shards of (mask, caption + class name) regions.

    Args:
        root: the image folder (``root/<class_id>/...``, or the base of ``label_file``'s paths).
        output_dir: output shards ``{i:06d}.tar`` + stats + ``summary.json``.
        sam: a ``segment_anything`` ``Sam`` (for ``SamAutomaticMaskGenerator``) on its device.
        clip_model, tokenizer: the scorer (open_clip CLIP or AlphaCLIP) and its tokenizer.
        captioner: ``captioner(list of PIL crops) -> list of str`` (e.g. :class:`Captioner`).
        label_file, class_names: see :func:`list_images` / :func:`read_class_names`.
        images_per_shard: images per input (and output) shard.
        top_k: at most this many masks kept per image, best score first.
        min_score: keep a mask only if its crop's probability for the image's class is >= this (in [0, 1]).
        min_area: drop masks smaller than this fraction of the image before scoring.
        crop_margin: the crop window is the mask's box grown by this fraction of its size per side.
        phrase_template: ``{caption}`` and ``{label}``; an empty caption gives the label alone.
        caption_template: the record's whole-image caption, with ``{label}``.
        templates: CLIP prompt templates for the class texts.
        amg_kwargs: passed to ``SamAutomaticMaskGenerator`` (``points_per_side``, ``pred_iou_thresh``, ...).
        sam_name: recorded in each region's ``source`` (``sam-<sam_name>+clip``).
        rank, world, progress, restart: as in :func:`alphaclip_train.prepare.grounding.prepare_grounding`.
    Returns:
        the run's summary (also written to ``output_dir/summary.json``). Drop reasons: ``small_mask``,
        ``low_score``, ``beyond_top_k``; failures: ``corrupt_image``, ``missing_image``.

    The scores are softmax probabilities over ALL the dataset's class names (with one class only, every
    crop scores 1.0 and ``min_score`` filters nothing).
    """
    from segment_anything import SamAutomaticMaskGenerator
    from tqdm import tqdm

    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score: expected a probability in [0, 1], got {min_score}")
    if top_k < 1 or images_per_shard < 1:
        raise ValueError(f"top_k and images_per_shard: expected >= 1, got {top_k} and {images_per_shard}")
    for field in ("{caption}", "{label}"):
        if field not in phrase_template:
            raise ValueError(f"phrase_template: expected both {{caption}} and {{label}}, got {phrase_template!r}")
    root = Path(root)
    items = list_images(root, label_file, class_names)
    labels = sorted({label for _, label, _ in items})
    label_index = {label: i for i, label in enumerate(labels)}
    if len(labels) == 1:
        logger.warning("only one class (%r): every crop scores 1.0, min_score filters nothing", labels[0])
    text_features = text_classifier(clip_model, tokenizer, labels, templates)
    amg = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **(amg_kwargs or {}))
    source = f"sam-{sam_name}+clip"
    n_shards = (len(items) + images_per_shard - 1) // images_per_shard
    names = [f"{i:06d}.tar" for i in range(n_shards)]
    config = {"root": str(root), "label_file": str(label_file) if label_file else None, "images": len(items),
              "classes": len(labels), "images_per_shard": images_per_shard, "top_k": top_k,
              "min_score": min_score, "min_area": min_area, "crop_margin": crop_margin,
              "phrase_template": phrase_template, "sam": sam_name,
              "captioner": getattr(captioner, "name", type(captioner).__name__), "amg": amg_kwargs or {}}

    def process(i: int, write, stats: ShardStats) -> None:
        start = i * images_per_shard
        chunk = items[start:start + images_per_shard]
        for j, item in enumerate(tqdm(chunk, desc=names[i], unit="img", disable=not progress, leave=False)):
            one_image(f"{start + j:09d}", item, write, stats)

    def one_image(key: str, item: ImageItem, write, stats: ShardStats) -> None:
        rel, label, cid = item
        try:
            data = (root / rel).read_bytes()
        except OSError as e:
            logger.warning("%s: unreadable (%s), skipped", rel, e)
            stats.failed["missing_image"] += 1
            return
        try:
            image = decode_image(data)
        except ValueError as e:
            logger.warning("%s: %s, skipped", rel, e)
            stats.failed["corrupt_image"] += 1
            return
        w, h = image.size
        arr = np.asarray(image)
        with torch.inference_mode():
            anns = amg.generate(arr)
        anns = [a for a in anns if a["segmentation"].any()]
        big = [a for a in anns if a["segmentation"].sum() >= min_area * w * h]
        stats.dropped["small_mask"] += len(anns) - len(big)
        if not big:
            stats.skipped_images += 1
            return
        windows = [crop_box(a["bbox"], w, h, crop_margin) for a in big]
        crops = [image.crop(win) for win in windows]
        crop_masks = [a["segmentation"][y0:y1, x0:x1] for a, (x0, y0, x1, y1) in zip(big, windows)]
        probs = score_crops(clip_model, crops, crop_masks, text_features)[:, label_index[label]]
        order = sorted(range(len(big)), key=lambda k: -float(probs[k]))
        keep = [k for k in order if float(probs[k]) >= min_score]
        stats.dropped["low_score"] += len(order) - len(keep)
        stats.dropped["beyond_top_k"] += max(0, len(keep) - top_k)
        keep = keep[:top_k]
        if not keep:
            stats.skipped_images += 1
            return
        captions = captioner([crops[k] for k in keep])
        if len(captions) != len(keep):
            raise ValueError(f"captioner: returned {len(captions)} captions for {len(keep)} crops")
        regions = []
        for k, cap in zip(keep, captions):
            mask = big[k]["segmentation"]
            cap = cap.strip()
            phrase = phrase_template.format(caption=cap, label=label) if cap else label
            regions.append({"phrase": phrase, "box": bool_mask_box(mask), "mask": rle_encode(mask),
                            "score": round(float(probs[k]), 4), "source": source})
        record = {"key": key, "width": w, "height": h, "caption": caption_template.format(label=label),
                  "regions": regions,
                  "meta": {"source": "classification", "label": label, "class_id": cid, "path": rel,
                           "captions": [c.strip() for c in captions]}}
        out_bytes, ext = encode_for_shard(data, image)
        write(out_bytes, record, ext)
        stats.images += 1
        stats.regions += len(regions)

    return run_shards(output_dir, names, process, pipeline="classification", config=config, rank=rank,
                      world=world, progress=progress, restart=restart)
