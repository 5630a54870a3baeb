"""ImageNet-S zero-shot region classification (the Alpha-CLIP paper's ImageNet-S table).

Released layout (LUSSeg/ImageNet-S)::

    ImageNetS919/validation/<wnid>/<name>.JPEG
    ImageNetS919/validation-segmentation/<wnid>/<name>.png

A segmentation PNG is RGB; the class id of a pixel is ``R + 256 * G``: ``0`` = other category,
``1000`` = ignored, ``1..919`` = the ImageNet-S class, which is the 1-based position of the wnid in
the SORTED list of the 919 category wnids (``ImageNetS_categories_im919.txt`` sorted, or the sorted
``validation/`` folder names). The region of an image is the set of pixels carrying the class id of
its folder's wnid.

Class names: a names file (``wnid name`` lines, one name per line in class-id order, or a JSON
``{wnid: name}``), or, by default, derived from open_clip's ImageNet-1k class names
(``IMAGENET_CLASSNAMES``, in ImageNet-1k's sorted-wnid order) matched by wnid through timm's
ImageNet-1k synset list; nothing is downloaded or shipped.

Metrics (:func:`accuracy_report`): top-1 / top-5 over images and the mean over classes of the
per-class top-1 / top-5 accuracy (the paper reports the mean per-class top-1).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from alphaclip_core.alpha import PairedTransform, boxes_to_masks
from alphaclip_core.regions import preprocess_params, score_regions

from .baselines import BASELINE_VIEWS, baseline_view, mask_bbox

__all__ = ["IGNORE_ID", "OTHER_ID", "ALPHA_METHODS", "PLAIN_METHODS", "METHOD_ROWS", "decode_segmentation",
           "read_categories", "read_names", "default_names", "ImageNetS", "ranked_predictions", "accuracy_report",
           "evaluate", "results_markdown", "PAPER"]

logger = logging.getLogger(__name__)

OTHER_ID = 0
IGNORE_ID = 1000
ALPHA_METHODS = ("alpha_whole", "alpha_box", "alpha_mask")
PLAIN_METHODS = tuple(f"clip_{v}" for v in BASELINE_VIEWS)
#: method -> the row label of SPEC.md's ImageNet-S table (rows the paper does not have are marked "(extra)")
METHOD_ROWS: Dict[str, str] = {
    "clip_whole": "original CLIP",
    "alpha_whole": "Alpha-CLIP, whole image (all ones)",
    "alpha_box": "Alpha-CLIP, box (rectangle)",
    "alpha_mask": "Alpha-CLIP, mask",
    "clip_red_circle": "Red Circle",
    "clip_crop": "CLIP, crop (extra)",
    "clip_masked": "CLIP, background masked (extra)",
    "clip_blurred": "CLIP, background blurred (extra)",
}
#: SPEC.md's ImageNet-S top-1 numbers (mean per-class accuracy), by row label and architecture
PAPER: Dict[str, Dict[str, float]] = {
    "original CLIP": {"B/16": 66.48, "L/14": 73.48},
    "Alpha-CLIP, whole image (all ones)": {"L/14": 73.37},
    "Alpha-CLIP, box (rectangle)": {"L/14": 75.62},
    "Alpha-CLIP, mask": {"B/16": 68.89, "L/14": 77.41},
    "Red Circle": {"B/16": 65.37, "L/14": 73.37},
}
_IMAGE_EXTS = (".jpeg", ".jpg", ".png")


# ------------------------------------------------------------------------------------------------ files
def decode_segmentation(path_or_image: Any) -> np.ndarray:
    """Read an ImageNet-S segmentation PNG: ``int32 [H, W]`` class ids ``R + 256 * G``.

    Accepts a path or a PIL image (RGB or RGBA; the B channel is ignored). A single-channel image is
    refused: its ids would be ambiguous.
    """
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    if img.mode not in ("RGB", "RGBA"):
        raise ValueError(f"segmentation: expected an RGB PNG with class id = R + 256*G, got mode {img.mode!r}")
    a = np.asarray(img.convert("RGB"), dtype=np.int32)
    return a[..., 0] + 256 * a[..., 1]


def read_categories(path: Any) -> List[str]:
    """Read a categories file (one wnid per line, e.g. ``ImageNetS_categories_im919.txt``) -> SORTED wnids.

    Class id ``i`` (1-based, as in the segmentation PNGs) is ``sorted_wnids[i - 1]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"categories: no such file: {path}")
    wnids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not wnids:
        raise ValueError(f"categories: {path} lists no wnids")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"categories: {path} lists some wnids more than once")
    return sorted(wnids)


def read_names(path: Any, wnids: Sequence[str]) -> List[str]:
    """Class names for ``wnids`` (sorted, class-id order) from a names file.

    Formats: JSON ``{wnid: name}`` or ``[name, ...]`` (class-id order); text with ``wnid name`` lines
    (``wnid`` then whitespace or a tab, the rest of the line is the name); or text with one name per
    line in class-id order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names: no such file: {path}")
    text = path.read_text()
    table: Optional[Dict[str, str]] = None
    names: Optional[List[str]] = None
    if path.suffix == ".json":
        obj = json.loads(text)
        if isinstance(obj, dict):
            table = {str(k): str(v) for k, v in obj.items()}
        elif isinstance(obj, list):
            names = [str(v) for v in obj]
        else:
            raise ValueError(f"names: {path} must hold a JSON object {{wnid: name}} or a list of names")
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        split = [ln.split(None, 1) for ln in lines]
        if lines and all(len(p) == 2 and p[0].startswith("n") and p[0][1:].isdigit() for p in split):
            table = {p[0]: p[1].strip() for p in split}
        else:
            names = lines
    if table is not None:
        missing = [w for w in wnids if w not in table]
        if missing:
            raise ValueError(f"names: {path} has no name for {len(missing)} wnids, e.g. {missing[:5]}")
        return [table[w] for w in wnids]
    assert names is not None
    if len(names) != len(wnids):
        raise ValueError(f"names: {path} lists {len(names)} names but there are {len(wnids)} categories")
    return names


def default_names(wnids: Sequence[str]) -> List[str]:
    """Names for ImageNet wnids from open_clip's ImageNet-1k class names (matched by wnid via timm's synset list)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    order = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    if len(order) != len(IMAGENET_CLASSNAMES):
        raise RuntimeError("timm's ImageNet-1k synsets and open_clip's class names differ in length")
    missing = [w for w in wnids if w not in order]
    if missing:
        raise ValueError(f"names: {len(missing)} wnids are not ImageNet-1k classes, e.g. {missing[:5]}; "
                         "pass a names file")
    return [IMAGENET_CLASSNAMES[order[w]] for w in wnids]


@dataclass
class Sample:
    """One validation image: ``image`` and ``segmentation`` paths, its ``wnid`` and 0-based ``label``."""

    image: Path
    segmentation: Path
    wnid: str
    label: int


class ImageNetS:
    """The ImageNet-S validation split in its released layout.

    Args:
        root: ``.../ImageNetS919`` (the folder holding ``validation/`` and ``validation-segmentation/``),
            or its parent holding ``ImageNetS919/``.
        categories: a categories file (wnids); default: the sorted ``validation/`` folder names
            (then every class must have a folder, or class ids shift: a warning says so when the
            count is not 919).
        split: ``validation`` (``train-semi`` also has segmentations).
    Images without a segmentation PNG raise FileNotFoundError (pass ``skip_missing=True`` to skip them).
    """

    def __init__(self, root: Any, categories: Any = None, split: str = "validation",
                 skip_missing: bool = False) -> None:
        root = Path(root)
        if not (root / split).is_dir() and (root / "ImageNetS919" / split).is_dir():
            root = root / "ImageNetS919"
        self.root = root
        self.image_dir, self.seg_dir = root / split, root / f"{split}-segmentation"
        for d, what in ((self.image_dir, "images"), (self.seg_dir, "segmentation PNGs")):
            if not d.is_dir():
                raise FileNotFoundError(f"root: no folder {d} ({what}); expected the ImageNet-S layout "
                                        f"<root>/{split}/<wnid>/*.JPEG and <root>/{split}-segmentation/<wnid>/*.png")
        if categories is not None:
            self.wnids = read_categories(categories)
        else:
            self.wnids = sorted(p.name for p in self.image_dir.iterdir() if p.is_dir())
            if len(self.wnids) != 919:
                logger.warning("categories: no categories file given; using the %d folder names of %s as the "
                               "class list (ImageNet-S has 919; class ids in the PNGs assume all of them)",
                               len(self.wnids), self.image_dir)
        index = {w: i for i, w in enumerate(self.wnids)}
        self.samples: List[Sample] = []
        missing = []
        for wdir in sorted(p for p in self.image_dir.iterdir() if p.is_dir()):
            if wdir.name not in index:
                raise ValueError(f"categories: folder {wdir} is not one of the {len(self.wnids)} categories")
            for f in sorted(wdir.iterdir()):
                if f.suffix.lower() not in _IMAGE_EXTS:
                    continue
                seg = self.seg_dir / wdir.name / (f.stem + ".png")
                if not seg.is_file():
                    missing.append(seg)
                    continue
                self.samples.append(Sample(f, seg, wdir.name, index[wdir.name]))
        if missing and not skip_missing:
            raise FileNotFoundError(f"{len(missing)} images have no segmentation PNG, e.g. {missing[0]}; "
                                    "pass skip_missing=True to skip them")
        if not self.samples:
            raise ValueError(f"root: no images found under {self.image_dir}")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> Tuple[Image.Image, np.ndarray]:
        """Image ``i`` as RGB PIL and its region: bool ``[H, W]``, the pixels of its class (ignored pixels excluded).

        An image whose PNG has no pixel of its class gets an all-False mask (the caller decides).
        """
        s = self.samples[i]
        image = Image.open(s.image).convert("RGB")
        ids = decode_segmentation(s.segmentation)
        if ids.shape != (image.height, image.width):
            raise ValueError(f"segmentation {s.segmentation} is {ids.shape[1]}x{ids.shape[0]} but its image is "
                             f"{image.width}x{image.height} (WxH)")
        return image, ids == s.label + 1


# ------------------------------------------------------------------------------------------------ metrics
def ranked_predictions(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """``[N, C]`` scores -> ``[N, min(k, C)]`` class indices, best first."""
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [N, C], got {list(logits.shape)}")
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def accuracy_report(ranked: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy over images and mean per-class top-k accuracy, in percent.

    Args:
        ranked: ``[N, R]`` predicted class indices, best first (R >= max(ks) unless C < max(ks)).
        targets: ``[N]`` true class indices.
    Returns:
        ``{"n": N, "n_classes": classes present, "top1": .., "top5": .., "mean_class_top1": .., "mean_class_top5": ..}``;
        the per-class mean is over the classes that occur in ``targets``.
    """
    ranked = torch.as_tensor(ranked).long()
    targets = torch.as_tensor(targets).long()
    if ranked.dim() != 2 or targets.dim() != 1 or ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked [N, R] and targets [N] must agree, got {list(ranked.shape)} and {list(targets.shape)}")
    if targets.numel() == 0:
        raise ValueError("targets: no samples")
    classes = targets.unique()
    out: Dict[str, float] = {"n": int(targets.numel()), "n_classes": int(classes.numel())}
    for k in ks:
        hit = (ranked[:, :k] == targets[:, None]).any(1).float()
        out[f"top{k}"] = 100.0 * float(hit.mean())
        out[f"mean_class_top{k}"] = 100.0 * float(torch.stack([hit[targets == c].mean() for c in classes]).mean())
    return out


# ------------------------------------------------------------------------------------------------ evaluation
def _prepared(transform: PairedTransform, image: Image.Image, masks: torch.Tensor):
    """Prepare with ``transform``; when the centre crop cuts a region off, fall back to padding (returns a flag)."""
    try:
        return transform(image, masks), False
    except ValueError as e:
        if "outside the centre crop" not in str(e):
            raise
        pad = PairedTransform(transform.size, "pad", transform.mean, transform.std, transform.interpolation)
        return pad(image, masks), True


@torch.no_grad()
def evaluate(dataset: ImageNetS, classifier: torch.Tensor, alpha_model: Optional[torch.nn.Module] = None,
             plain_model: Optional[torch.nn.Module] = None, plain_classifier: Optional[torch.Tensor] = None,
             methods: Optional[Sequence[str]] = None, mode: str = "crop", limit: Optional[int] = None,
             state_path: Any = None, progress: bool = True) -> Dict[str, Any]:
    """Zero-shot classify the region of every image with each method.

    Args:
        classifier: ``[C, D]`` unit text features of the C class names (``text_classifier`` of ``alpha_model``).
        alpha_model: an Alpha-CLIP; runs the ``alpha_*`` methods (alpha from the whole image, the region's
            box, the region's mask).
        plain_model: a plain CLIP (``encode_image(pixels)``); runs the ``clip_*`` baselines (whole image,
            crop of the box, red circle, background masked, background blurred).
        plain_classifier: ``[C, D]`` text features of ``plain_model`` (default: ``classifier``).
        methods: subset of ``ALPHA_METHODS + PLAIN_METHODS`` (default: all the given models can run).
        mode: the paired transform's geometry; with ``crop`` an image whose region the centre crop cuts off
            is prepared with ``pad`` instead (counted in ``n_pad_fallback``).
        limit: evaluate ``limit`` images spread evenly over the dataset (every ``len/limit``-th image).
        state_path: a JSONL file with one line per evaluated image; an interrupted run resumes from it.
    Returns:
        ``{"metrics": {method: accuracy_report}, "n_empty_mask": .., "n_pad_fallback": .., "n": ..}``.
        An image whose PNG has no pixel of its class is skipped for every method (counted in ``n_empty_mask``).
    """
    avail = (ALPHA_METHODS if alpha_model is not None else ()) + (PLAIN_METHODS if plain_model is not None else ())
    methods = list(methods) if methods else list(avail)
    bad = [m for m in methods if m not in avail]
    if bad:
        raise ValueError(f"methods: {bad} need a model that was not given (available: {list(avail)})")
    if not methods:
        raise ValueError("evaluate: give alpha_model and/or plain_model")
    plain_classifier = classifier if plain_classifier is None else plain_classifier
    for name, cls in (("classifier", classifier), ("plain_classifier", plain_classifier)):
        if cls.dim() != 2 or cls.shape[0] != len(dataset.wnids):
            raise ValueError(f"{name}: expected [{len(dataset.wnids)}, D] (one row per category), got {list(cls.shape)}")
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(indices):
        step = len(indices) / limit
        indices = [indices[int(i * step)] for i in range(limit)]
    transforms = {}
    for key, model in (("alpha", alpha_model), ("plain", plain_model)):
        if model is not None:
            transforms[key] = PairedTransform(mode=mode, **preprocess_params(model))

    done: Dict[int, dict] = {}
    state = Path(state_path) if state_path else None
    if state is not None and state.is_file():
        for line in state.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[int(rec["i"])] = rec
        logger.info("resuming: %d images already evaluated in %s", len(done), state)
    fh = state.open("a") if state is not None else None
    from tqdm import tqdm

    try:
        for i in tqdm(indices, desc="ImageNet-S", disable=not progress):
            if i in done:
                continue
            image, region = dataset.load(i)
            rec: Dict[str, Any] = {"i": i, "target": dataset.samples[i].label, "pred": {}, "empty": False,
                                   "pad": False}
            if not region.any():
                rec["empty"] = True
            else:
                region_t = torch.from_numpy(region).float()
                if "alpha" in transforms and any(m in methods for m in ALPHA_METHODS):
                    box = boxes_to_masks(list(mask_bbox(region_t)), image.height, image.width)
                    masks = torch.cat([torch.ones_like(region_t)[None], box, region_t[None]])
                    (pix, alpha), pad = _prepared(transforms["alpha"], image, masks)
                    rec["pad"] |= pad
                    cos = score_regions(alpha_model, pix, alpha, classifier)
                    for j, m in enumerate(ALPHA_METHODS):
                        if m in methods:
                            rec["pred"][m] = ranked_predictions(cos[j:j + 1])[0].tolist()
                wanted = [m for m in PLAIN_METHODS if m in methods]
                if wanted:
                    views = [baseline_view(m[len("clip_"):], image, region_t) for m in wanted]
                    pix = torch.cat([transforms["plain"](v)[0] for v in views])
                    device = next(plain_model.parameters()).device
                    feats = plain_model.encode_image(pix.to(device), normalize=True).float()
                    cos = feats @ plain_classifier.to(device=device, dtype=torch.float32).T
                    for j, m in enumerate(wanted):
                        rec["pred"][m] = ranked_predictions(cos[j:j + 1])[0].tolist()
            done[i] = rec
            if fh is not None:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
    finally:
        if fh is not None:
            fh.close()

    recs = [done[i] for i in indices]
    kept = [r for r in recs if not r["empty"]]
    metrics = {}
    for m in methods:
        rows = [r for r in kept if m in r["pred"]]
        if rows:
            width = min(len(r["pred"][m]) for r in rows)
            metrics[m] = accuracy_report([r["pred"][m][:width] for r in rows], [r["target"] for r in rows])
    return {"metrics": metrics, "n": len(recs), "n_empty_mask": len(recs) - len(kept),
            "n_pad_fallback": sum(r["pad"] for r in kept)}


def arch_column(model_name: str) -> str:
    """The SPEC table column for an open_clip model name: ``B/16``, ``L/14``, ``L/14@336`` or the name itself."""
    n = model_name.replace("alpha-", "")
    return {"ViT-B-16": "B/16", "ViT-L-14": "L/14", "ViT-L-14-336": "L/14@336"}.get(n, n)


def results_markdown(metrics: Dict[str, Dict[str, float]], column: str, title: str = "ImageNet-S zero-shot") -> str:
    """Markdown in the layout of SPEC.md's ImageNet-S table: one row per method, the mean per-class top-1 of
    this run in a ``column`` column beside the paper's number, then top-1/top-5 details."""
    lines = [f"### {title}", "", f"`{column} (this run)` and `{column} (paper)`: mean per-class top-1 (%), as in "
             "SPEC.md; top-1/top-5: over images; `(extra)` rows are not in the paper.", "", f"| alpha given | {column} (this run) | {column} (paper) | top-1 | top-5 | "
             "mean-class top-5 | images |", "|---|---|---|---|---|---|---|"]
    for m, row in METHOD_ROWS.items():
        if m not in metrics:
            continue
        r = metrics[m]
        paper = PAPER.get(row, {}).get(column)
        lines.append(f"| {row} | {r['mean_class_top1']:.2f} | {paper if paper is not None else '-'} | "
                     f"{r['top1']:.2f} | {r['top5']:.2f} | {r['mean_class_top5']:.2f} | {int(r['n'])} |")
    return "\n".join(lines) + "\n"
