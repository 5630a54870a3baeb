"""ImageNet-S zero-shot region classification (the Alpha-CLIP paper's ImageNet-S table).

Released layout (LUSSeg/ImageNet-S)::

    ImageNetS919/validation/<wnid>/<name>.JPEG
    ImageNetS919/validation-segmentation/<wnid>/<name>.png

A segmentation PNG is RGB; the class id of a pixel is ``R + 256 * G``: ``0`` = other category,
``1000`` = ignored, ``1..919`` = the ImageNet-S class, which is the 1-based position of the wnid in
the SORTED list of the 919 category wnids (``ImageNetS_categories_im919.txt`` sorted, or the sorted
``validation/`` folder names). The region of an image is the set of pixels carrying the class id of
its folder's wnid.

Class names (:func:`class_names`): ``paper`` (default on the command line), the reference script's
names: WordNet's first lemma of each synset, underscores kept (``cab``, ``great_white_shark``),
read from timm's installed ImageNet synset-to-lemma table (its first lemma with spaces turned back
into underscores equals WordNet 3.0's ``synset.lemmas()[0].name()`` for all 1000 ImageNet-1k
classes); ``openai``, open_clip's curated ImageNet-1k names (``taxicab``; 609 of the 1000 differ from
the paper's); or a names file. Nothing is downloaded.

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

from alphaclip_core.alpha import PairedTransform, boxes_to_masks, open_image
from alphaclip_core.regions import preprocess_params, score_regions

from .baselines import BASELINE_VIEWS, baseline_view, mask_bbox
from .resume import ResumeLog, classifier_summary, json_digest, module_digest

__all__ = ["IGNORE_ID", "OTHER_ID", "ALPHA_METHODS", "PLAIN_METHODS", "METHOD_ROWS", "decode_segmentation",
           "read_categories", "read_names", "paper_names", "openai_names", "class_names", "NAME_SOURCES", "ImageNetS", "ranked_predictions", "accuracy_report",
           "run_settings", "evaluate", "results_markdown", "PAPER"]

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


def _imagenet_index(wnids: Sequence[str]) -> Dict[str, int]:
    from timm.data import ImageNetInfo

    order = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    missing = [w for w in wnids if w not in order]
    if missing:
        raise ValueError(f"names: {len(missing)} wnids are not ImageNet-1k classes, e.g. {missing[:5]}; "
                         "pass a names file")
    return order


def openai_names(wnids: Sequence[str]) -> List[str]:
    """open_clip's curated ImageNet-1k class names (``taxicab``), matched by wnid via timm's synset list."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    order = _imagenet_index(wnids)
    if len(order) != len(IMAGENET_CLASSNAMES):
        raise RuntimeError("timm's ImageNet-1k synsets and open_clip's class names differ in length")
    return [IMAGENET_CLASSNAMES[order[w]] for w in wnids]


def paper_names(wnids: Sequence[str]) -> List[str]:
    """The reference ImageNet-S script's class names: WordNet's first lemma, underscores kept (``cab``,
    ``great_white_shark``, ``Sealyham_terrier``).

    Read from timm's ``imagenet_synset_to_lemma.txt`` (``wnid<TAB>lemma, lemma, ...`` with spaces for
    WordNet's underscores): the first lemma with its spaces turned back into underscores. For the 1000
    ImageNet-1k synsets this equals WordNet 3.0's ``lemmas()[0].name()`` (checked against WordNet's
    ``data.noun`` when this was written).
    """
    from timm.data import ImageNetInfo

    _imagenet_index(wnids)
    info = ImageNetInfo()
    return [info.label_name_to_description(w).split(",")[0].strip().replace(" ", "_") for w in wnids]


#: the built-in class-name sets of ``--names``
NAME_SOURCES = ("paper", "openai")


def class_names(wnids: Sequence[str], names: Any = "paper") -> List[str]:
    """Names for ``wnids`` (class-id order): ``"paper"`` (:func:`paper_names`), ``"openai"``
    (:func:`openai_names`) or a names file (:func:`read_names`)."""
    if names == "paper":
        return paper_names(wnids)
    if names == "openai":
        return openai_names(wnids)
    if isinstance(names, str) and not Path(names).exists():
        raise FileNotFoundError(f"names: expected 'paper', 'openai' or a names file, got {names!r} (no such file)")
    return read_names(names, wnids)


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
        image = open_image(s.image, "image")
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
    """Prepare with ``transform``; when the centre crop cuts a region off, fall back to padding (returns a flag).

    (``mode="reference"`` never raises: like the reference script it keeps the crop, and a region
    outside it gets an all-background alpha.)
    """
    try:
        return transform(image, masks), False
    except ValueError as e:
        if "outside the centre crop" not in str(e):
            raise
        pad = PairedTransform(transform.size, "pad", transform.mean, transform.std, transform.interpolation)
        return pad(image, masks), True


def _unique_rows(x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """``[N, ...]`` -> (the distinct rows ``[U, ...]`` in first-seen order, ``inverse``: row -> its unique row)."""
    keep: List[int] = []
    inverse: List[int] = []
    for r in range(x.shape[0]):
        for u, k in enumerate(keep):
            if torch.equal(x[r], x[k]):
                inverse.append(u)
                break
        else:
            inverse.append(len(keep))
            keep.append(r)
    return x[keep], inverse


class _Items(torch.utils.data.Dataset):
    """The CPU side of :func:`evaluate`, run in DataLoader workers: decode an image and its segmentation,
    build the alpha rows (paired transform) and the plain-CLIP views, each deduplicated.

    An item is a dict: ``i``, ``target``, ``empty``, ``pad``, and ``alpha = (pixels [1,3,S,S],
    alpha [U,1,S,S], inverse)`` / ``plain = (pixels [V',3,S,S], inverse)``; ``inverse[j]`` is the
    unique row that method ``j`` uses. A bad file gives ``error`` instead (re-raised in the main
    process with a clean message).
    """

    def __init__(self, dataset: "ImageNetS", indices: Sequence[int], alpha_tf: Optional[PairedTransform],
                 alpha_methods: Sequence[str], plain_tf: Optional[PairedTransform], plain_views: Sequence[str],
                 dedupe: bool) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.alpha_tf, self.alpha_methods = alpha_tf, list(alpha_methods)
        self.plain_tf, self.plain_views = plain_tf, list(plain_views)
        self.dedupe = dedupe
        # the plain "whole" view is the alpha path's image when both models take the same input
        self.share_whole = alpha_tf is not None and plain_tf is not None and repr(alpha_tf) == repr(plain_tf)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, n: int) -> Dict[str, Any]:
        i = self.indices[n]
        item: Dict[str, Any] = {"i": i, "target": int(self.dataset.samples[i].label), "empty": False, "pad": False}
        try:
            image, region = self.dataset.load(i)
            if not region.any():
                item["empty"] = True
                return item
            # bool masks throughout: the same 0/1 values as floats, without full-resolution range checks
            region_t = torch.from_numpy(region)
            whole_pix = None
            if self.alpha_methods:
                def mask_of(m: str) -> torch.Tensor:
                    if m == "alpha_whole":
                        return torch.ones_like(region_t)
                    if m == "alpha_box":
                        return boxes_to_masks(list(mask_bbox(region)), image.height, image.width)[0].bool()
                    return region_t

                (pix, alpha), item["pad"] = _prepared(self.alpha_tf, image,
                                                      torch.stack([mask_of(m) for m in self.alpha_methods]))
                alpha, inverse = _unique_rows(alpha) if self.dedupe else (alpha, list(range(alpha.shape[0])))
                item["alpha"] = (pix, alpha, inverse)
                whole_pix = pix if self.share_whole and not item["pad"] else None
            if self.plain_views:
                arrays: List[np.ndarray] = []
                pixels: List[torch.Tensor] = []
                inverse = []
                for v in self.plain_views:
                    view = baseline_view(v, image, region)
                    a = np.asarray(view)
                    if self.dedupe:
                        same = [u for u, b in enumerate(arrays) if b.shape == a.shape and np.array_equal(a, b)]
                        if same:
                            inverse.append(same[0])
                            continue
                    inverse.append(len(arrays))
                    arrays.append(a)
                    pixels.append(whole_pix if v == "whole" and whole_pix is not None else self.plain_tf(view)[0])
                item["plain"] = (torch.cat(pixels), inverse)
        except (ValueError, OSError) as e:  # a bad file: reported by the main process, without a worker traceback
            path = self.dataset.samples[i].image
            msg = str(e) if str(path) in str(e) else f"image {path}: {e}"  # open_image's errors already name it
            item["error"] = (type(e).__name__, msg)
        return item


def _as_list(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return batch


def _plain_cosine(model: torch.nn.Module, pixels: torch.Tensor, classifier: torch.Tensor, rows: int) -> torch.Tensor:
    """``[N, C]`` cosine of plain-CLIP image features (``encode_image(pixels)``, no alpha) with the classifier."""
    device = next(model.parameters()).device
    text = classifier.to(device=device, dtype=torch.float32)
    out = []
    for start in range(0, pixels.shape[0], rows):
        feats = model.encode_image(pixels[start:start + rows].to(device), normalize=True).float()
        out.append((feats @ text.T).cpu())
    return torch.cat(out)


def _assign_predictions(recs: Dict[int, Dict[str, Any]], items: Sequence[Dict[str, Any]], cos: torch.Tensor,
                        counts: Sequence[int], methods: Sequence[str], inverses: Sequence[Sequence[int]],
                        rows: List[int]) -> None:
    """Rank each item's rows of ``cos`` (``[sum(counts), C]``, ``counts[i]`` rows for item i) and record
    method ``m``'s ranking (its row ``inverses[i][m]`` after deduplication); count requested/encoded rows."""
    for it, c, inverse in zip(items, torch.split(cos, list(counts)), inverses):
        ranked = ranked_predictions(c).tolist()
        for m, u in zip(methods, inverse):
            recs[it["i"]]["pred"][m] = ranked[u]
    rows[0] += len(methods) * len(items)
    rows[1] += sum(counts)


def run_settings(dataset: "ImageNetS", classifier: torch.Tensor, alpha_model: Optional[torch.nn.Module],
                 plain_model: Optional[torch.nn.Module], plain_classifier: Optional[torch.Tensor],
                 methods: Sequence[str], mode: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What a progress file of :func:`evaluate` records and a resumed run must match: the images and
    categories, mode, methods, the weights (digests) and dtypes of both models, the class-name
    embeddings (compared with a tolerance, see :func:`~alphaclip_train.eval.resume.classifier_summary`)
    and the caller's ``extra`` (model names, checkpoint paths, names, templates ...)."""
    uses_plain = any(m in PLAIN_METHODS for m in methods)
    uses_alpha = any(m in ALPHA_METHODS for m in methods)

    def dtype(m: Optional[torch.nn.Module]) -> Optional[str]:
        return None if m is None else str(next(m.parameters()).dtype).replace("torch.", "")

    return {
        "task": "imagenet-s",
        "images": json_digest([str(s.image.relative_to(dataset.root)) for s in dataset.samples]),
        "categories": json_digest(list(dataset.wnids)),
        "mode": mode,
        "methods": sorted(methods),
        "alpha_model": module_digest(alpha_model) if uses_alpha else None,
        "alpha_dtype": dtype(alpha_model) if uses_alpha else None,
        "plain_model": module_digest(plain_model) if uses_plain else None,
        "plain_dtype": dtype(plain_model) if uses_plain else None,
        "classifier": classifier_summary(classifier) if uses_alpha else None,
        "plain_classifier": classifier_summary(plain_classifier) if uses_plain else None,
        "run": dict(extra or {}),
    }


@torch.no_grad()
def evaluate(dataset: ImageNetS, classifier: torch.Tensor, alpha_model: Optional[torch.nn.Module] = None,
             plain_model: Optional[torch.nn.Module] = None, plain_classifier: Optional[torch.Tensor] = None,
             methods: Optional[Sequence[str]] = None, mode: str = "crop", limit: Optional[int] = None,
             state_path: Any = None, progress: bool = True, *, batch_size: int = 32, num_workers: int = 0,
             rows_per_forward: int = 64, dedupe: bool = True, settings: Optional[Dict[str, Any]] = None,
             restart: bool = False) -> Dict[str, Any]:
    """Zero-shot classify the region of every image with each method.

    Args:
        classifier: ``[C, D]`` unit text features of the C class names (``text_classifier`` of ``alpha_model``).
        alpha_model: an Alpha-CLIP; runs the ``alpha_*`` methods (alpha from the whole image, the region's
            box, the region's mask).
        plain_model: a plain CLIP (``encode_image(pixels)``); runs the ``clip_*`` baselines (whole image,
            crop of the box, red circle, background masked, background blurred).
        plain_classifier: ``[C, D]`` text features of ``plain_model`` (default: ``classifier``).
        methods: subset of ``ALPHA_METHODS + PLAIN_METHODS`` (default: all the given models can run).
        mode: the paired transform's geometry: ``crop`` (an image whose region the centre crop cuts off
            is prepared with ``pad`` instead, counted in ``n_pad_fallback``), ``pad``, ``squash``, or
            ``reference`` (the reference script's exact geometry; see :class:`~alphaclip_core.alpha.PairedTransform`).
        limit: evaluate ``limit`` images spread evenly over the dataset (every ``len/limit``-th image).
        state_path: a JSONL progress file (one line per evaluated image, after a first line with the run's
            settings, see :func:`run_settings`); an interrupted run resumes from it. A file written with
            other settings is refused (:class:`~alphaclip_train.eval.resume.SettingsMismatch`) unless
            ``restart``, which moves it aside and starts over. ``limit`` is not a setting: records are
            per image, so a larger ``limit`` reuses the images already done.
        batch_size: images per batch; their alpha rows (and plain views) go through the model together,
            ``rows_per_forward`` rows per forward pass.
        num_workers: DataLoader worker processes that decode the images and run the paired transform and
            the baseline views while the model works (0 = in this process).
        dedupe: encode identical rows once (e.g. the box alpha equals the whole-image alpha when the box
            covers the centre crop; the crop view equals the whole image when the box is the whole
            image); the predictions are the same either way.
        settings: extra settings to record and match on resume (the CLI's model names, checkpoint
            paths, class-name source, templates).
    Returns:
        ``{"metrics": {method: accuracy_report}, "n_empty_mask": .., "n_pad_fallback": .., "n": ..,
        "rows": {"alpha": [requested, encoded], "plain": [requested, encoded]}}`` (rows of this call).
        An image whose PNG has no pixel of its class is skipped for every method (counted in ``n_empty_mask``).
    """
    avail = (ALPHA_METHODS if alpha_model is not None else ()) + (PLAIN_METHODS if plain_model is not None else ())
    methods = list(methods) if methods else list(avail)
    bad = [m for m in methods if m not in avail]
    if bad:
        raise ValueError(f"methods: {bad} need a model that was not given (available: {list(avail)})")
    if not methods:
        raise ValueError("evaluate: give alpha_model and/or plain_model")
    if batch_size < 1 or rows_per_forward < 1 or num_workers < 0:
        raise ValueError(f"batch_size / rows_per_forward: expected >= 1 and num_workers >= 0, got {batch_size}, "
                         f"{rows_per_forward}, {num_workers}")
    plain_classifier = classifier if plain_classifier is None else plain_classifier
    for name, cls in (("classifier", classifier), ("plain_classifier", plain_classifier)):
        if cls.dim() != 2 or cls.shape[0] != len(dataset.wnids):
            raise ValueError(f"{name}: expected [{len(dataset.wnids)}, D] (one row per category), got {list(cls.shape)}")
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(indices):
        step = len(indices) / limit
        indices = [indices[int(i * step)] for i in range(limit)]
    alpha_methods = [m for m in ALPHA_METHODS if m in methods]
    plain_methods = [m for m in PLAIN_METHODS if m in methods]
    alpha_tf = PairedTransform(mode=mode, **preprocess_params(alpha_model)) if alpha_methods else None
    plain_tf = PairedTransform(mode=mode, **preprocess_params(plain_model)) if plain_methods else None

    log = None
    done: Dict[int, dict] = {}
    if state_path:
        log = ResumeLog(state_path, run_settings(dataset, classifier, alpha_model, plain_model, plain_classifier,
                                                 methods, mode, settings), restart=restart)
        done = {int(r["i"]): r for r in log.records}
    todo = [i for i in indices if i not in done]
    items = _Items(dataset, todo, alpha_tf, alpha_methods, plain_tf, [m[len("clip_"):] for m in plain_methods], dedupe)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_as_list, prefetch_factor=4 if num_workers else None)
    rows = {"alpha": [0, 0], "plain": [0, 0]}
    from tqdm import tqdm

    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), desc="ImageNet-S", unit="img",
               disable=not progress)
    try:
        for batch in loader:
            for it in batch:
                if "error" in it:
                    kind, message = it["error"]
                    raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(message)
            recs = {it["i"]: {"i": it["i"], "target": it["target"], "pred": {}, "empty": it["empty"], "pad": it["pad"]}
                    for it in batch}
            with_alpha = [it for it in batch if "alpha" in it]
            if with_alpha:
                pix = torch.cat([it["alpha"][0].expand(it["alpha"][1].shape[0], -1, -1, -1) for it in with_alpha])
                cos = score_regions(alpha_model, pix, torch.cat([it["alpha"][1] for it in with_alpha]), classifier,
                                    rows_per_forward).cpu()
                _assign_predictions(recs, with_alpha, cos, [it["alpha"][1].shape[0] for it in with_alpha],
                                    alpha_methods, [it["alpha"][2] for it in with_alpha], rows["alpha"])
            with_plain = [it for it in batch if "plain" in it]
            if with_plain:
                pix = torch.cat([it["plain"][0] for it in with_plain])
                cos = _plain_cosine(plain_model, pix, plain_classifier, rows_per_forward)
                _assign_predictions(recs, with_plain, cos, [it["plain"][0].shape[0] for it in with_plain],
                                    plain_methods, [it["plain"][1] for it in with_plain], rows["plain"])
            done.update(recs)
            if log is not None:
                log.extend(recs.values())
            bar.update(len(batch))
    finally:
        bar.close()
        if log is not None:
            log.close()

    recs = [done[i] for i in indices]
    kept = [r for r in recs if not r["empty"]]
    metrics = {}
    for m in methods:
        with_m = [r for r in kept if m in r["pred"]]
        if with_m:
            width = min(len(r["pred"][m]) for r in with_m)
            metrics[m] = accuracy_report([r["pred"][m][:width] for r in with_m], [r["target"] for r in with_m])
    return {"metrics": metrics, "n": len(recs), "n_empty_mask": len(recs) - len(kept),
            "n_pad_fallback": sum(r["pad"] for r in kept), "rows": rows}


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
