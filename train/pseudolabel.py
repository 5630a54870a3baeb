"""Alpha-CLIP box (+ mask) pseudo-labels for image-labelled data (ImageNet-LVIS style), for Detic.

The paper's OV-LVIS recipe: an image that is labelled only with its class(es) (ImageNet-21k /
ImageNet-LVIS) gets candidate regions (given boxes, detector proposals or SAM masks); Alpha-CLIP
scores every candidate against each of the image's class labels, and the best candidate per label
becomes a box annotation that a Detic detector then trains on as a 'box' dataset.

Input
    ``dataset``: an LVIS/COCO-format JSON with ``images`` (``id``, ``file_name``, ``width``,
    ``height`` and the image labels in ``pos_category_ids``, Detic's ImageNet-LVIS field; images
    without it take the category ids of their ``annotations``) and ``categories`` (``id``,
    ``name``, underscores as spaces, as Detic names LVIS classes: ``category_name``).
    ``candidates``: COCO *results* format, a list (or ``{"annotations": [...]}``) of
    ``{"image_id", "bbox": [x, y, w, h], "score"?: float, "segmentation"?: RLE or polygons}``, e.g.
    a detector's proposals or SAM's automatic masks (see :func:`candidates_from_sam`).
Output (``out_dir/pseudo_labels.json``)
    LVIS/COCO-format JSON: ``images`` (input images, with ``neg_category_ids`` /
    ``not_exhaustive_category_ids`` defaulted to ``[]`` as LVIS expects), ``annotations`` (``id``,
    ``image_id``, ``category_id``, ``bbox`` xywh, ``area``, ``score``, ``iscrowd: 0``, and
    ``segmentation`` as COCO RLE when the candidate had a mask and ``with_masks``), ``categories``.
    ``pycocotools.coco.COCO`` reads it; detectron2's ``register_coco_instances`` registers it.

Scale-out: the images (sorted by id) are cut into shards of ``shard_size``; rank ``r`` of ``W``
takes shards ``r, r + W, ...`` (:func:`partition`, a pure function); each finished shard is written
atomically to ``out_dir/shards/``; a rerun skips finished shards (resume) of the SAME run:
``out_dir/run.json`` records the run's settings (:func:`run_settings`: configuration, images and labels,
category names, model weights digest, class embeddings, candidates file digest) and every shard carries
their digest, so a rerun with other settings is refused with a message naming what differs (or, with
``restart`` / ``--restart``, recomputes the shards); whichever rank finishes
the last shard merges them (annotation ids are assigned in shard order, so the result does not
depend on the number of ranks). Run with ``torchrun --nproc_per_node=N -m alphaclip_train.pseudolabel``;
ranks need no process group.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from alphaclip_core.alpha import boxes_to_masks, open_image, polygons_to_masks, rle_decode, rle_encode
from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.region_classifier import (DETECTION_TEMPLATES, AlphaCLIPRegionClassifier, box_iou, category_name,
                                              embedding_dim, geometric_ensemble, load_text_classifier)

from .eval.resume import (SettingsMismatch, file_digest, json_digest, module_digest, settings_diff,
                          tensor_digest)

__all__ = ["PseudoLabelConfig", "Candidate", "partition", "shard_ranges", "load_dataset", "load_candidates",
           "candidates_from_sam", "select_regions", "PseudoLabeler", "run", "merge_shards", "main"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
OUTPUT_NAME = "pseudo_labels.json"


@dataclass
class PseudoLabelConfig:
    """How candidates are scored and kept.

    Attributes:
        score: ``prob`` = softmax over the whole vocabulary at the model's logit scale, read at the
            image's label (a region must look like its label MORE than like the other classes);
            ``cosine`` = the raw cosine with the label's text embedding.
        score_threshold: candidates scoring below are dropped.
        max_per_label: regions kept per image label (after NMS among them).
        max_per_image: regions kept per image, best first (``0`` = no limit).
        nms_iou: IoU above which a lower-scored region of the same label is suppressed.
        proposal_weight: ``w`` of a geometric ensemble ``alpha_clip ** (1 - w) * proposal ** w`` with the
            candidates' own scores (``0`` = ignore them; candidates without a score count as 1).
        templates: prompt ensemble for the class names.
        mode: the paired transform's geometry (``pad`` keeps every region in view).
        batch_size: regions per forward pass.
        with_masks: write a candidate's mask as ``segmentation`` (COCO RLE).
        shard_size: images per output shard (the unit of resume and of work sharing).
    """

    score: str = "prob"
    score_threshold: float = 0.0
    max_per_label: int = 1
    max_per_image: int = 5
    nms_iou: float = 0.5
    proposal_weight: float = 0.0
    templates: Tuple[str, ...] = DETECTION_TEMPLATES
    mode: str = "pad"
    batch_size: int = 32
    with_masks: bool = True
    shard_size: int = 256

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        if self.score not in ("prob", "cosine"):
            raise ValueError(f"score: expected 'prob' or 'cosine', got {self.score!r}")
        if self.max_per_label < 1:
            raise ValueError(f"max_per_label: expected >= 1, got {self.max_per_label}")
        if self.max_per_image < 0:
            raise ValueError(f"max_per_image: expected >= 0 (0 = no limit), got {self.max_per_image}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou: expected a value in [0, 1], got {self.nms_iou}")
        if not 0.0 <= self.proposal_weight <= 1.0:
            raise ValueError(f"proposal_weight: expected a value in [0, 1], got {self.proposal_weight}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size: expected >= 1, got {self.shard_size}")


@dataclass
class Candidate:
    """One candidate region: ``box`` xyxy pixels, optional ``mask`` (COCO RLE) and proposal ``score``."""

    box: List[float]
    mask: Optional[Dict[str, Any]] = None
    score: Optional[float] = None


# ------------------------------------------------------------------------------------------------
# pure helpers: work partition, candidate selection
def shard_ranges(num_images: int, shard_size: int) -> List[Tuple[int, int]]:
    """``[(start, end), ...]`` contiguous image index ranges of at most ``shard_size`` images."""
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def partition(num_shards: int, rank: int, world_size: int) -> List[int]:
    """The shard indices rank ``rank`` of ``world_size`` processes: ``rank, rank + W, ...``.

    Every shard goes to exactly one rank and the ranks' loads differ by at most one shard.
    """
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    return list(range(rank, num_shards, world_size))


def select_regions(scores: torch.Tensor, boxes: torch.Tensor, config: PseudoLabelConfig
                   ) -> List[Tuple[int, int, float]]:
    """Pick the regions to keep for one image.

    Args:
        scores: ``[K, L]`` each candidate's score for each of the image's L labels.
        boxes: ``[K, 4]`` xyxy candidate boxes (for NMS among one label's regions).
    Returns:
        ``[(candidate index, label index, score), ...]``, best first: per label the candidates at or
        above ``score_threshold``, greedily NMS-ed at ``nms_iou``, at most ``max_per_label``; then at
        most ``max_per_image`` over all labels.
    """
    if scores.dim() != 2 or boxes.shape != (scores.shape[0], 4):
        raise ValueError(f"scores / boxes: expected [K, L] and [K, 4], got {list(scores.shape)} and "
                         f"{list(boxes.shape)}")
    kept: List[Tuple[int, int, float]] = []
    boxes = boxes.float()
    for label in range(scores.shape[1]):
        column = scores[:, label]
        order = torch.argsort(column, descending=True, stable=True)
        chosen: List[int] = []
        for k in order.tolist():
            if float(column[k]) < config.score_threshold or len(chosen) == config.max_per_label:
                break
            if chosen and float(box_iou(boxes[k], boxes[chosen]).max()) > config.nms_iou:
                continue
            chosen.append(k)
        kept.extend((k, label, float(column[k])) for k in chosen)
    kept.sort(key=lambda t: -t[2])
    return kept[:config.max_per_image] if config.max_per_image else kept


# ------------------------------------------------------------------------------------------------
# reading inputs
def _read_json(path: PathLike, arg: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{arg}: {path} is not valid JSON: {e}") from None


def load_dataset(path: PathLike) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], Dict[int, List[int]]]:
    """Read an image-labelled LVIS/COCO JSON: ``(images sorted by id, categories, image id -> label ids)``."""
    data = _read_json(path, "dataset")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("categories"), list):
        raise ValueError(f"dataset: {path} must be a COCO/LVIS JSON object with 'images' and 'categories' lists")
    cats = data["categories"]
    cat_ids = {c["id"] for c in cats}
    from_anns: Dict[int, List[int]] = {}
    for a in data.get("annotations", []) or []:
        from_anns.setdefault(a["image_id"], [])
        if a["category_id"] not in from_anns[a["image_id"]]:
            from_anns[a["image_id"]].append(a["category_id"])
    labels: Dict[int, List[int]] = {}
    for i, img in enumerate(data["images"]):
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise ValueError(f"dataset: image {i} has no '{key}'")
        ids = list(img.get("pos_category_ids", from_anns.get(img["id"], [])))
        unknown = [c for c in ids if c not in cat_ids]
        if unknown:
            raise ValueError(f"dataset: image {img['id']} names unknown category ids {unknown}")
        labels[img["id"]] = ids
    images = sorted(data["images"], key=lambda im: im["id"])
    return images, cats, labels


def _segmentation_to_rle(seg: Any, height: int, width: int, where: str) -> Dict[str, Any]:
    if isinstance(seg, dict):
        rle = {"size": list(seg["size"]), "counts": seg["counts"]}
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"candidates: {where} mask size {rle['size']} != image [{height}, {width}]")
        if not isinstance(rle["counts"], str):  # uncompressed -> compressed
            rle = rle_encode(rle_decode(rle))
        return rle
    if isinstance(seg, list):
        return rle_encode(polygons_to_masks([seg], height, width)[0].numpy())
    raise ValueError(f"candidates: {where} 'segmentation' must be a COCO RLE dict or polygon list")


def load_candidates(path: PathLike, images: Sequence[Dict[str, Any]]) -> Dict[int, List[Candidate]]:
    """Read COCO-results candidates: ``image id -> [Candidate, ...]`` (boxes converted to xyxy)."""
    data = _read_json(path, "candidates")
    if isinstance(data, dict):
        data = data.get("annotations")
    if not isinstance(data, list):
        raise ValueError(f"candidates: {path} must be a COCO results list or an object with 'annotations'")
    sizes = {im["id"]: (im["height"], im["width"]) for im in images}
    out: Dict[int, List[Candidate]] = {}
    unknown = 0
    for i, c in enumerate(data):
        where = f"entry {i}"
        if not isinstance(c, dict):
            raise ValueError(f"candidates: {where} must be an object with 'image_id' and 'bbox'")
        if c.get("image_id") not in sizes:
            unknown += 1
            continue
        h, w = sizes[c["image_id"]]
        bbox = c.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise ValueError(f"candidates: {where} needs 'bbox': [x, y, w, h]")
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            raise ValueError(f"candidates: {where} has an empty bbox {bbox} (xywh)")
        mask = _segmentation_to_rle(c["segmentation"], h, w, where) if c.get("segmentation") else None
        score = c.get("score")
        out.setdefault(c["image_id"], []).append(Candidate([x, y, x + bw, y + bh], mask,
                                                           None if score is None else float(score)))
    if unknown:
        logger.warning("candidates: %d entries name images that are not in the dataset; ignored", unknown)
    return out


def candidates_from_sam(records: Sequence[Dict[str, Any]]) -> List[Candidate]:
    """SAM ``SamAutomaticMaskGenerator.generate`` output (``segmentation`` HxW bool, ``bbox`` xywh,
    ``predicted_iou``) -> candidates with RLE masks and the predicted IoU as score."""
    out = []
    for r in records:
        x, y, w, h = (float(v) for v in r["bbox"])
        seg = r["segmentation"]
        mask = seg if isinstance(seg, dict) else rle_encode(np.asarray(seg))
        out.append(Candidate([x, y, x + w, y + h], mask, float(r.get("predicted_iou", 1.0))))
    return out


# ------------------------------------------------------------------------------------------------
class PseudoLabeler:
    """Scores candidates of one image against its labels and returns the annotations to keep.

    Args:
        model, tokenizer: an Alpha-CLIP and its tokenizer (``tokenizer`` may be None with ``text_features``).
        categories: COCO/LVIS category dicts (``id``, ``name``), the vocabulary.
        config: :class:`PseudoLabelConfig`.
        text_features: ``[C, D]`` precomputed class embeddings in category order (e.g. a Detic-style
            ``.npy`` dump), instead of running the text tower.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Optional[Callable], categories: Sequence[Dict[str, Any]],
                 config: Optional[PseudoLabelConfig] = None, text_features: Optional[torch.Tensor] = None) -> None:
        self.config = config or PseudoLabelConfig()
        self.categories = list(categories)
        self.column = {c["id"]: i for i, c in enumerate(self.categories)}
        self.classifier = AlphaCLIPRegionClassifier(
            model, tokenizer, [category_name(c) for c in self.categories], templates=self.config.templates,
            mode=self.config.mode, batch_size=self.config.batch_size, text_features=text_features)

    def label_image(self, image: Any, label_ids: Sequence[int], candidates: Sequence[Candidate]
                    ) -> List[Dict[str, Any]]:
        """Annotations (without ``id``/``image_id``) for one image: ``category_id``, ``bbox`` xywh,
        ``area``, ``score``, ``iscrowd`` and optionally ``segmentation``.

        Args:
            image: PIL image / ``HxWx3`` uint8 / ``[3, H, W]`` tensor.
            label_ids: the image's category ids.
            candidates: its candidate regions.
        """
        if not label_ids or not candidates:
            return []
        unknown = [c for c in label_ids if c not in self.column]
        if unknown:
            raise ValueError(f"label_ids: unknown category ids {unknown}")
        boxes = torch.tensor([c.box for c in candidates], dtype=torch.float32)
        has_masks = [c.mask is not None for c in candidates]
        if any(has_masks) and not all(has_masks):
            raise ValueError("candidates: either every candidate of an image has a mask or none has")
        masks = None
        if all(has_masks):
            masks = np.stack([rle_decode(c.mask) for c in candidates])
        out = self.classifier(image, boxes=boxes, masks=masks)
        cols = [self.column[c] for c in label_ids]
        scores = (out.probs if self.config.score == "prob" else out.cosine)[:, cols]
        if self.config.proposal_weight > 0:
            prop = torch.tensor([1.0 if c.score is None else c.score for c in candidates]).view(-1, 1)
            scores = geometric_ensemble(scores.clamp(0, 1), prop.expand_as(scores), self.config.proposal_weight)
        anns = []
        for k, label, score in select_regions(scores, boxes, self.config):
            x0, y0, x1, y1 = candidates[k].box
            ann = {"category_id": label_ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                   "area": (x1 - x0) * (y1 - y0), "score": round(score, 6), "iscrowd": 0}
            if masks is not None and self.config.with_masks:
                ann["segmentation"] = candidates[k].mask
                ann["area"] = float(masks[k].sum())
            anns.append(ann)
        return anns


def run_settings(config: PseudoLabelConfig, images: Sequence[Dict[str, Any]], categories: Sequence[Dict[str, Any]],
                 labels: Dict[int, List[int]], tag: str = "", model: Optional[torch.nn.Module] = None,
                 text_features: Optional[torch.Tensor] = None, candidates: Optional[PathLike] = None
                 ) -> Dict[str, Any]:
    """Everything that changes the pseudo-labels, recorded in ``out_dir/run.json`` and (as a digest) in
    every shard: the configuration (batch size excepted: it does not change results), the images and
    their labels, the categories and their names, the model's weights and dtype (digest), the class
    embeddings when given, the candidates file (digest; ``proposer`` when a callable proposes them)
    and the caller's ``tag``."""
    return {
        "task": "pseudolabel",
        "config": {k: v for k, v in asdict(config).items() if k != "batch_size"},
        "images": json_digest([[im["id"], im["file_name"], im["width"], im["height"]] for im in images]),
        "labels": json_digest(sorted([int(k), list(v)] for k, v in labels.items())),
        "categories": json_digest([[c["id"], category_name(c)] for c in categories]),
        "model": module_digest(model),
        "dtype": None if model is None else str(next(model.parameters()).dtype).replace("torch.", ""),
        "text_features": tensor_digest(text_features),
        "candidates": file_digest(candidates) if candidates is not None else "proposer",
        "tag": tag,
    }


def _shard_path(out_dir: Path, index: int, total: int) -> Path:
    return out_dir / "shards" / f"shard-{index:05d}-of-{total:05d}.json"


def _write_json(path: Path, obj: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, separators=(",", ":"))

    return atomic_write(path, write)


def _load_shard(path: Path, fingerprint: str, stale_ok: bool = False) -> Optional[Dict[str, Any]]:
    """A finished shard's content, None if absent; a shard of another run is an error (or, with
    ``stale_ok``, counts as absent: it is recomputed and overwritten)."""
    if not path.is_file():
        return None
    try:
        shard = json.loads(path.read_text())
    except json.JSONDecodeError as e:  # cannot happen with atomic writes, unless the disk lies
        raise ValueError(f"out_dir: shard {path} is not valid JSON ({e}); delete it to recompute") from None
    if shard.get("fingerprint") != fingerprint:
        if stale_ok:
            return None
        raise SettingsMismatch(f"out_dir: shard {path} was written by a run with another configuration, dataset or "
                               "model; rerun with --restart (restart=True) to recompute it, or use a new out_dir")
    return shard


def merge_shards(out_dir: PathLike, images: Sequence[Dict[str, Any]], categories: Sequence[Dict[str, Any]],
                 num_shards: int, fingerprint: str, restart: bool = False) -> Optional[Path]:
    """Merge all finished shards into ``out_dir/pseudo_labels.json``; None while some shard is missing
    (with ``restart``, a shard of another run counts as missing: its rank has not redone it yet)."""
    out_dir = Path(out_dir)
    shards = []
    for i in range(num_shards):
        shard = _load_shard(_shard_path(out_dir, i, num_shards), fingerprint, stale_ok=restart)
        if shard is None:
            return None
        shards.append(shard)
    annotations, stats = [], {"images": 0, "images_without_candidates": 0, "regions_scored": 0, "annotations": 0}
    for shard in shards:
        for ann in shard["annotations"]:
            annotations.append({"id": len(annotations) + 1, **ann})
        for k in stats:
            stats[k] += shard["stats"].get(k, 0)
    out_images = []
    for im in images:
        im = dict(im)
        im.setdefault("neg_category_ids", [])
        im.setdefault("not_exhaustive_category_ids", [])
        out_images.append(im)
    result = {"info": {"description": "Alpha-CLIP pseudo-labels", "fingerprint": fingerprint, "stats": stats},
              "images": out_images, "annotations": annotations, "categories": list(categories)}
    path = _write_json(out_dir / OUTPUT_NAME, result)
    logger.info("merged %d shards: %d annotations on %d images -> %s", num_shards, len(annotations),
                stats["images"], path)
    return path


def _save_overlay(path: Path, image: Image.Image, anns: Sequence[Dict[str, Any]],
                  categories: Sequence[Dict[str, Any]]) -> None:
    """The kept regions drawn over the image (mask if written, else box), captioned 'class score'."""
    from alphaclip_core.viz import overlay_regions

    names = {c["id"]: category_name(c) for c in categories}
    masks = []
    for a in anns:
        if a.get("segmentation") is not None:
            masks.append(rle_decode(a["segmentation"]).astype(np.float32))
        else:
            x, y, w, h = a["bbox"]
            masks.append(boxes_to_masks([x, y, x + w, y + h], image.height, image.width)[0].numpy())
    captions = [f"{names[a['category_id']]} {a['score']:.2f}" for a in anns]
    picture = overlay_regions(image, np.stack(masks), captions)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _default_loader(image_root: Path) -> Callable[[Dict[str, Any]], Image.Image]:
    def load(im: Dict[str, Any]) -> Image.Image:
        path = image_root / im["file_name"]
        img = open_image(path, f"image {im['id']}")
        if img.size != (im["width"], im["height"]):
            raise ValueError(f"image {im['id']}: {path} is {img.size[0]}x{img.size[1]} but the dataset says "
                             f"{im['width']}x{im['height']} (WxH)")
        return img
    return load


def run(model: torch.nn.Module, tokenizer: Optional[Callable], dataset: PathLike, image_root: PathLike,
        out_dir: PathLike, *, candidates: Optional[PathLike] = None,
        proposer: Optional[Callable[[Image.Image], List[Candidate]]] = None,
        config: Optional[PseudoLabelConfig] = None, text_features: Optional[torch.Tensor] = None,
        rank: Optional[int] = None, world_size: Optional[int] = None, tag: str = "",
        progress: bool = True, overlays: int = 0, restart: bool = False, num_workers: int = 0) -> Optional[Path]:
    """Pseudo-label this rank's shards of ``dataset``; merge when every shard is done.

    Args:
        dataset: image-labelled LVIS/COCO JSON (see the module docstring).
        image_root: folder the images' ``file_name`` are relative to.
        out_dir: where ``shards/`` and the merged ``pseudo_labels.json`` go.
        candidates: COCO-results JSON of candidate regions; or ``proposer(image) -> [Candidate]``
            (e.g. SAM's generator through :func:`candidates_from_sam`). Exactly one is needed.
        rank, world_size: default to ``$RANK`` / ``$WORLD_SIZE`` (torchrun), else 0 / 1.
        tag: names the model in the resume settings (a rerun with another tag refuses old shards).
        restart: recompute shards written with other settings (see :func:`run_settings`) instead of
            refusing them; the merged JSON of the old run is removed.
        num_workers: DataLoader worker processes that read and decode the images ahead of the model
            (0 = in this process). Results do not depend on it.
        overlays: draw the kept regions of the first ``overlays`` images this call labels into
            ``out_dir/overlays/<image id>.png`` (for a look at what the labeller picks).
    Returns:
        the merged JSON's path if this call completed the last shard (or found all done), else None.
    """
    if (candidates is None) == (proposer is None):
        raise ValueError("candidates / proposer: give exactly one source of candidate regions")
    config = config or PseudoLabelConfig()
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    out_dir = Path(out_dir)
    images, categories, labels = load_dataset(dataset)
    cand = load_candidates(candidates, images) if candidates is not None else None
    settings = run_settings(config, images, categories, labels, tag, model, text_features, candidates)
    fingerprint = json_digest(settings)
    _check_run(out_dir, settings, fingerprint, restart)
    ranges = shard_ranges(len(images), config.shard_size)
    mine = partition(len(ranges), rank, world_size)
    todo = [i for i in mine
            if _load_shard(_shard_path(out_dir, i, len(ranges)), fingerprint, stale_ok=restart) is None]
    logger.info("rank %d/%d: %d of its %d shards to do (%d images in %d shards in all)", rank, world_size,
                len(todo), len(mine), len(images), len(ranges))
    if todo:
        labeler = PseudoLabeler(model, tokenizer, categories, config, text_features)
        load = _default_loader(Path(image_root))
        bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo), desc=f"pseudo-label rank {rank}",
                   unit="img", disable=not progress, position=rank if world_size > 1 else None)
        for i in todo:
            anns: List[Dict[str, Any]] = []
            stats = {"images": 0, "images_without_candidates": 0, "regions_scored": 0, "annotations": 0}
            for im, img in _prefetch(images[ranges[i][0]:ranges[i][1]], load, num_workers):
                regions = cand.get(im["id"], []) if cand is not None else proposer(img)
                stats["images"] += 1
                stats["images_without_candidates"] += not regions
                stats["regions_scored"] += len(regions) if labels[im["id"]] else 0
                kept = labeler.label_image(img, labels[im["id"]], regions)
                anns.extend({"image_id": im["id"], **ann} for ann in kept)
                if overlays > 0 and kept:
                    overlays -= 1
                    _save_overlay(out_dir / "overlays" / f"{im['id']}.png", img, kept, labeler.categories)
                bar.update(1)
            stats["annotations"] = len(anns)
            _write_json(_shard_path(out_dir, i, len(ranges)), {
                "fingerprint": fingerprint, "shard": i, "image_ids": [im["id"] for im in images[slice(*ranges[i])]],
                "stats": stats, "annotations": anns})
        bar.close()
    return merge_shards(out_dir, images, categories, len(ranges), fingerprint, restart)


class _Loaded(torch.utils.data.Dataset):
    """Images read and decoded in DataLoader workers: item ``n`` is ``(image dict, PIL image)`` or, for a bad
    file, ``(image dict, exception)`` re-raised by the main process."""

    def __init__(self, images: Sequence[Dict[str, Any]], load: Callable[[Dict[str, Any]], Image.Image]) -> None:
        self.images, self.load = list(images), load

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, n: int) -> Tuple[Dict[str, Any], Any]:
        try:
            return self.images[n], self.load(self.images[n])
        except (ValueError, OSError) as e:
            return self.images[n], e


def _first(batch: List[Any]) -> Any:
    return batch[0]


def _prefetch(images: Sequence[Dict[str, Any]], load: Callable[[Dict[str, Any]], Image.Image], num_workers: int):
    """``(image dict, PIL image)`` in order, decoded by ``num_workers`` workers (0: here, one at a time)."""
    if num_workers <= 0:
        for im in images:
            yield im, load(im)
        return
    loader = torch.utils.data.DataLoader(_Loaded(images, load), batch_size=1, num_workers=num_workers,
                                         collate_fn=_first, prefetch_factor=4)
    for im, img in loader:
        if isinstance(img, BaseException):
            raise img
        yield im, img


def _check_run(out_dir: Path, settings: Dict[str, Any], fingerprint: str, restart: bool) -> None:
    """Refuse (or, with ``restart``, take over) an ``out_dir`` that holds another run; record this run's settings."""
    record = out_dir / "run.json"
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("fingerprint") != fingerprint:
            diff = "; ".join(settings_diff(previous.get("settings", {}), settings)) or "unreadable run.json"
            if not restart:
                raise SettingsMismatch(
                    f"out_dir: {out_dir} holds the shards of a run with other settings ({diff}); rerun with --restart "
                    "(restart=True) to recompute them, or use a new out_dir")
            logger.warning("restart: %s held a run with other settings (%s); its shards are recomputed", out_dir, diff)
            (out_dir / OUTPUT_NAME).unlink(missing_ok=True)
    _write_json(record, {"fingerprint": fingerprint, "settings": settings})


# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The pseudo-labeller's options (shared by ``alphaclip pseudolabel`` and ``python -m``)."""
    from alphaclip_core.cli import add_model_arguments

    p.add_argument("--dataset", required=True, help="LVIS/COCO JSON with images (+ pos_category_ids) and categories")
    p.add_argument("--image-root", required=True, help="folder the images' file_name are relative to")
    p.add_argument("--candidates", required=True, help="COCO-results JSON of candidate boxes/masks per image")
    p.add_argument("--out-dir", required=True, help="output folder (shards/ and pseudo_labels.json)")
    p.add_argument("--text-features", help="[C, D] .npy class embeddings in category order (skips the text tower)")
    defaults = PseudoLabelConfig()
    p.add_argument("--score", choices=("prob", "cosine"), default=defaults.score)
    p.add_argument("--score-threshold", type=float, default=defaults.score_threshold)
    p.add_argument("--max-per-label", type=int, default=defaults.max_per_label)
    p.add_argument("--max-per-image", type=int, default=defaults.max_per_image)
    p.add_argument("--nms-iou", type=float, default=defaults.nms_iou)
    p.add_argument("--proposal-weight", type=float, default=defaults.proposal_weight)
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable)")
    p.add_argument("--mode", choices=("pad", "crop", "squash"), default=defaults.mode)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--no-masks", action="store_true", help="do not write segmentation RLE")
    p.add_argument("--shard-size", type=int, default=defaults.shard_size)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overlays", type=int, default=0, help="draw the picks of the first N images (per rank) "
                                                             "into OUT_DIR/overlays/")
    p.add_argument("--restart", action="store_true",
                   help="recompute shards written with other settings instead of refusing them")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers reading and decoding images ahead of the model (default 2; 0 = none)")
    add_model_arguments(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alphaclip pseudolabel`` (run it under ``torchrun -m alphaclip_core.cli`` to shard by rank)."""
    p = subparsers.add_parser("pseudolabel", help="Alpha-CLIP box pseudo-labels for image-labelled data (Detic)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the pseudo-labeller from parsed options; prints the merged JSON's path (on the rank that wrote it)."""
    from alphaclip_core.cli import load_model

    if args.device.startswith("cuda") and "LOCAL_RANK" in os.environ and ":" not in args.device:
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model, tokenizer = load_model(args)
    text_features = None
    if args.text_features:
        text_features = load_text_classifier(args.text_features, dim=embedding_dim(model), model_name=args.model,
                                             arg="--text-features")
    config = PseudoLabelConfig(
        score=args.score, score_threshold=args.score_threshold, max_per_label=args.max_per_label,
        max_per_image=args.max_per_image, nms_iou=args.nms_iou, proposal_weight=args.proposal_weight,
        templates=tuple(args.template or DETECTION_TEMPLATES), mode=args.mode, batch_size=args.batch_size,
        with_masks=not args.no_masks, shard_size=args.shard_size)
    from alphaclip_core.precision import precision_of

    # the precision changes the scores: a resumed run must not mix shards of two precisions
    tag = f"{args.model}|{args.checkpoint}|{args.text_features}|{precision_of(model)}"
    path = run(model, tokenizer, args.dataset, args.image_root, args.out_dir, candidates=args.candidates,
               config=config, text_features=text_features, tag=tag, progress=not args.no_progress,
               overlays=args.overlays, restart=args.restart, num_workers=args.workers)
    if path is not None:
        print(path)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: ``[torchrun --nproc_per_node=N] -m alphaclip_train.pseudolabel --dataset ... ``."""
    p = argparse.ArgumentParser(
        prog="python -m alphaclip_train.pseudolabel",
        description="Alpha-CLIP box pseudo-labels for image-labelled data (run under torchrun to shard by rank).")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from alphaclip_core.cli import guarded

    return guarded(lambda: run_from_args(args))  # one-line errors, as `alphaclip pseudolabel`


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
