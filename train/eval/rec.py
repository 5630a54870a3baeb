"""Referring expression comprehension (RefCOCO / RefCOCO+ / RefCOCOg) with Alpha-CLIP, ReCLIP-style.

For every expression, each candidate region of the image (the ground-truth instance boxes, or boxes
from a proposal file; optionally turned into SAM masks) is scored against the expression with
Alpha-CLIP. The score of a region is the mean cosine over

- views: the image itself, and a copy whose background (outside the region) is blurred, and
- models: several Alpha-CLIPs (e.g. B/16 and L/14), each with its own input size.

The best region is correct when its box has IoU >= 0.5 with the target box; accuracy is reported
per split in the layout of SPEC.md's REC table.

Data layouts:

- refer (``lichengunc/refer``): ``<data_root>/<dataset>/instances.json`` (COCO: images, annotations
  with ``bbox`` xywh) + ``refs(<split_by>).p`` (a Python pickle: a list of dicts with ``ref_id``,
  ``ann_id``, ``image_id``, ``split``, ``sentences`` [{``raw``, ``sent``}, ...]). The pickle is
  read with :class:`RestrictedUnpickler` (plain containers only; any class or function reference is
  refused); a ``refs(<split_by>).json`` export with the same content is preferred when present.
- plain JSON: a list of ``{"image": file, "split": str, "sentences": [str], "box": [x0,y0,x1,y1],
  "candidates": [[x0,y0,x1,y1], ...] (optional), "image_id": any (optional)}``; boxes in xyxy pixels.
  Without ``candidates``, an image's candidates are the target boxes of all its entries.
- proposals: JSON ``{image_id: [[x0, y0, x1, y1(, score)], ...]}`` (xyxy pixels), replacing the candidates.
"""
from __future__ import annotations

import io
import json
import logging
import pickle
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter

from alphaclip_core.alpha import ALPHA_MEAN, ALPHA_STD, PairedTransform, boxes_to_masks, open_image
from alphaclip_core.region_classifier import box_iou
from alphaclip_core.regions import preprocess_params, score_regions, text_classifier

from .resume import ResumeLog, json_digest, module_digest

__all__ = ["RefusedPickle", "RestrictedUnpickler", "load_refs", "RecSample", "load_refer", "load_plain_json", "load_proposals",
           "box_iou", "RecScorer", "evaluate_rec", "rec_markdown", "REFER_SPLITS", "PAPER_REC"]

logger = logging.getLogger(__name__)

#: dataset -> (refs file split_by, evaluation splits), as in the paper's table
REFER_SPLITS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "refcoco": ("unc", ("val", "testA", "testB")),
    "refcoco+": ("unc", ("val", "testA", "testB")),
    "refcocog": ("umd", ("val", "test")),
}
#: SPEC.md's REC table (accuracy at IoU 0.5)
PAPER_REC: Dict[str, Dict[str, Dict[str, float]]] = {
    "CPT": {"refcoco": {"val": 32.2, "testA": 36.1, "testB": 30.3}, "refcoco+": {"val": 31.9, "testA": 35.2, "testB": 28.8},
            "refcocog": {"val": 36.7, "test": 36.5}},
    "ReCLIP": {"refcoco": {"val": 45.8, "testA": 46.1, "testB": 47.1}, "refcoco+": {"val": 47.9, "testA": 50.1, "testB": 45.1},
               "refcocog": {"val": 59.3, "test": 59.0}},
    "Red Circle": {"refcoco": {"val": 49.8, "testA": 58.6, "testB": 39.9},
                   "refcoco+": {"val": 55.3, "testA": 63.9, "testB": 45.4}, "refcocog": {"val": 59.4, "test": 58.9}},
    "Alpha-CLIP (paper)": {"refcoco": {"val": 55.7, "testA": 61.1, "testB": 50.3},
                           "refcoco+": {"val": 55.6, "testA": 62.7, "testB": 46.4}, "refcocog": {"val": 61.2, "test": 62.0}},
}
_TABLE_COLUMNS = (("RefCOCO", "refcoco"), ("RefCOCO+", "refcoco+"), ("RefCOCOg", "refcocog"))


# ------------------------------------------------------------------------------------------------ safe pickle
class RefusedPickle(pickle.UnpicklingError):
    """A pickle that references a class or function (or a persistent id): refused, never executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and scalars: dict, list, tuple, str, bytes, int, float,
    bool, None. Any reference to a class or function (``find_class``) or a persistent id is refused with
    :class:`RefusedPickle` (a :class:`pickle.UnpicklingError`), so loading cannot run code."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        raise RefusedPickle(
            f"refused to load the global '{module}.{name}': only plain dict/list/tuple/str/int/float/bool/None "
            "are allowed in a refs pickle (export it to JSON if it needs more)")

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise RefusedPickle("refused a persistent id: only plain containers are allowed in a refs pickle")


_PLAIN = (dict, list, tuple, str, bytes, int, float, bool, type(None))


def _to_text(obj: Any) -> Any:
    """Python-2 pickles hold byte strings: decode them (UTF-8, else Latin-1), recursively; check types."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_to_text(k): _to_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_text(v) for v in obj)
    if not isinstance(obj, _PLAIN):
        raise RefusedPickle(f"refs: unexpected object of type {type(obj).__name__}")
    return obj


def load_refs(path: Any) -> List[dict]:
    """Read a refer ``refs(...).p`` pickle (restricted: plain containers only) or its JSON export.

    Returns the list of ref dicts with every string as ``str``.
    Raises FileNotFoundError, or ``pickle.UnpicklingError`` when the pickle references any class or
    function, or ValueError when the content is not a list of dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs: no such file: {path}")
    if path.suffix == ".json":
        refs = json.loads(path.read_text())
    else:
        data = path.read_bytes()
        try:
            refs = _to_text(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
        except RefusedPickle as e:
            raise RefusedPickle(f"refs {path}: {e}") from None
        except Exception as e:  # truncated or not a pickle at all
            raise ValueError(f"refs {path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"refs {path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


# ------------------------------------------------------------------------------------------------ data
@dataclass
class RecSample:
    """One referred object: its image, expressions, target box and candidate boxes (xyxy pixels)."""

    image: Path
    image_id: Any
    split: str
    sentences: List[str]
    target: np.ndarray                      # [4]
    candidates: np.ndarray                  # [N, 4]
    ref_id: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _xywh_to_xyxy(b: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in b)
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def load_refer(data_root: Any, dataset: str = "refcoco", split_by: Optional[str] = None, image_dir: Any = None,
               splits: Optional[Sequence[str]] = None, sentence_key: str = "sent") -> List[RecSample]:
    """Read a dataset in the refer layout.

    Args:
        data_root: the folder holding ``<dataset>/`` (or the dataset folder itself).
        dataset: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split_by: the refs file's suffix (default ``unc``; ``umd`` for refcocog).
        image_dir: the COCO ``train2014`` image folder (default ``<data_root>/images/mscoco/images/train2014``).
        splits: keep only these splits (default: all).
        sentence_key: ``sent`` (refer's cleaned text) or ``raw``.
    Candidates are the ground-truth boxes of every annotation of the image.
    """
    root = Path(data_root)
    ddir = root / dataset if (root / dataset).is_dir() else root
    split_by = split_by or REFER_SPLITS.get(dataset, ("unc",))[0]
    inst = ddir / "instances.json"
    if not inst.is_file():
        raise FileNotFoundError(f"data_root: no {inst} (refer layout: <data_root>/{dataset}/instances.json)")
    refs_path = ddir / f"refs({split_by}).json"
    if not refs_path.is_file():
        refs_path = ddir / f"refs({split_by}).p"
    refs = load_refs(refs_path)
    coco = json.loads(inst.read_text())
    images = {im["id"]: im for im in coco.get("images", [])}
    anns = {a["id"]: a for a in coco.get("annotations", [])}
    by_image: Dict[Any, List[int]] = defaultdict(list)
    for a in coco.get("annotations", []):
        by_image[a["image_id"]].append(a["id"])
    image_dir = Path(image_dir) if image_dir is not None else root / "images" / "mscoco" / "images" / "train2014"
    out = []
    for r in refs:
        if splits is not None and r.get("split") not in splits:
            continue
        try:
            ann, im = anns[r["ann_id"]], images[r["image_id"]]
        except KeyError as e:
            raise ValueError(f"refs {refs_path}: ref {r.get('ref_id')} names {e} which {inst} does not have") from None
        ids = by_image[r["image_id"]]
        sents = [s.get(sentence_key) or s.get("sent") or s.get("raw", "") for s in r.get("sentences", [])]
        out.append(RecSample(image=image_dir / im["file_name"], image_id=r["image_id"], split=str(r.get("split")),
                             sentences=sents, target=_xywh_to_xyxy(ann["bbox"]),
                             candidates=np.stack([_xywh_to_xyxy(anns[i]["bbox"]) for i in ids]),
                             ref_id=r.get("ref_id"), extra={"ann_ids": ids, "ann_id": r["ann_id"]}))
    return out


def load_plain_json(path: Any, image_dir: Any = None) -> List[RecSample]:
    """Read the plain JSON layout (see the module docstring); image paths are relative to ``image_dir``
    (default: the JSON file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations: no such file: {path}")
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"annotations {path}: expected a JSON list of refs")
    base = Path(image_dir) if image_dir is not None else path.parent
    targets: Dict[Any, List[np.ndarray]] = defaultdict(list)
    for i, e in enumerate(entries):
        for key in ("image", "box", "sentences"):
            if key not in e:
                raise ValueError(f"annotations {path}: entry {i} has no '{key}'")
        targets[e.get("image_id", e["image"])].append(np.asarray(e["box"], dtype=np.float64))
    out = []
    for e in entries:
        iid = e.get("image_id", e["image"])
        cands = e.get("candidates")
        if cands is None:
            uniq: "OrderedDict[tuple, np.ndarray]" = OrderedDict((tuple(b.tolist()), b) for b in targets[iid])
            cands = list(uniq.values())
        out.append(RecSample(image=base / e["image"], image_id=iid, split=str(e.get("split", "val")),
                             sentences=list(e["sentences"]), target=np.asarray(e["box"], dtype=np.float64),
                             candidates=np.asarray(cands, dtype=np.float64).reshape(-1, 4), ref_id=e.get("ref_id")))
    return out


def load_proposals(path: Any) -> Dict[str, np.ndarray]:
    """Read a proposal file ``{image_id: [[x0, y0, x1, y1(, score)], ...]}`` -> ``{str(image_id): [N, 4]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"proposals: no such file: {path}")
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict):
        raise ValueError(f"proposals {path}: expected a JSON object {{image_id: [[x0,y0,x1,y1], ...]}}")
    out = {}
    for k, boxes in obj.items():
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] not in (4, 5):
            raise ValueError(f"proposals {path}: image {k} needs [N, 4] (or [N, 5] with a score) boxes, got {b.shape}")
        out[str(k)] = b[:, :4]
    return out


# ------------------------------------------------------------------------------------------------ scoring
MaskFn = Callable[[Image.Image, np.ndarray], torch.Tensor]


class RecScorer:
    """Scores expressions against candidate regions with one or more Alpha-CLIPs.

    Args:
        models: ``[(model, tokenizer), ...]``; their cosines are averaged.
        views: ``"image"`` (the image as is) and/or ``"blur"`` (the background outside each region
            Gaussian-blurred; composited per region on the prepared tensors); averaged.
        mask_fn: ``(image, boxes [N, 4]) -> masks [N, H, W]`` (e.g. :func:`sam_box_masks`); default: the
            boxes themselves as rectangles.
        blur_radius: Gaussian blur radius in pixels (default: 4% of the longer image side).
        template: format string for the expression (default ``"{}"``: the expression as is).
        mode: the paired transform's geometry (default ``pad``: no candidate is cut off).
    """

    def __init__(self, models: Sequence[Tuple[torch.nn.Module, Callable]], views: Sequence[str] = ("image", "blur"),
                 mask_fn: Optional[MaskFn] = None, blur_radius: Optional[float] = None, template: str = "{}",
                 mode: str = "pad", batch_size: int = 32) -> None:
        if not models:
            raise ValueError("models: expected at least one (model, tokenizer) pair")
        bad = [v for v in views if v not in ("image", "blur")]
        if not views or bad:
            raise ValueError(f"views: expected a non-empty subset of ('image', 'blur'), got {list(views)}")
        self.models, self.views, self.mask_fn = list(models), tuple(views), mask_fn
        self.blur_radius, self.template, self.mode, self.batch_size = blur_radius, template, mode, batch_size
        self._transforms = [PairedTransform(mode=mode, **preprocess_params(m)) for m, _ in self.models]

    def settings(self) -> Dict[str, Any]:
        """What changes this scorer's results, for progress files: the models' weights (digests) and
        dtypes, views, template, geometry and blur. (``mask_fn`` is described by the caller.)"""
        return {"models": [module_digest(m) for m, _ in self.models],
                "dtypes": [str(next(m.parameters()).dtype).replace("torch.", "") for m, _ in self.models],
                "views": list(self.views), "template": self.template, "mode": self.mode,
                "blur_radius": self.blur_radius, "masks": "boxes" if self.mask_fn is None else "mask_fn"}

    def masks(self, image: Image.Image, boxes: np.ndarray) -> torch.Tensor:
        """``[N, H, W]`` region masks of the candidate boxes: ``mask_fn``'s, else the boxes as rectangles."""
        return (self.mask_fn(image, boxes) if self.mask_fn is not None
                else boxes_to_masks(boxes, image.height, image.width))

    def prepare(self, image: Image.Image, boxes: Any, masks: Optional[torch.Tensor] = None) -> List[Tuple[torch.Tensor, ...]]:
        """The CPU part of :meth:`score` (runs in DataLoader workers when masks need no model): for each
        model, ``(pixels [1,3,S,S], alpha [N,1,S,S], blurred pixels [1,3,S,S] or None)``."""
        image = image.convert("RGB")
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            raise ValueError("boxes: no candidate regions")
        masks = self.masks(image, boxes) if masks is None else masks
        blurred = None
        if "blur" in self.views:
            r = self.blur_radius if self.blur_radius is not None else max(1.0, 0.04 * max(image.size))
            blurred = image.filter(ImageFilter.GaussianBlur(r))
        out = []
        for tf in self._transforms:
            pix, alpha = tf(image, masks)
            out.append((pix, alpha, tf(blurred, None)[0] if blurred is not None else None))
        return out

    @torch.no_grad()
    def score_prepared(self, prepared: Sequence[Tuple[torch.Tensor, ...]], sentences: Sequence[str]) -> torch.Tensor:
        """Ensemble cosine ``[S, N]`` of S sentences against the regions of :meth:`prepare`'s output."""
        if not sentences:
            raise ValueError("sentences: expected at least one expression")
        total: Optional[torch.Tensor] = None
        for (model, tokenizer), (pix, alpha, pix_blur) in zip(self.models, prepared):
            text = text_classifier(model, tokenizer, list(sentences), (self.template,))
            part = torch.zeros(len(sentences), alpha.shape[0])
            if "image" in self.views:
                part += score_regions(model, pix, alpha, text, self.batch_size).T.cpu()
            if pix_blur is not None:
                a01 = alpha * ALPHA_STD + ALPHA_MEAN            # back to [0, 1] at model resolution
                composite = a01 * pix + (1 - a01) * pix_blur     # region sharp, background blurred
                part += score_regions(model, composite, alpha, text, self.batch_size).T.cpu()
            total = part if total is None else total + part
        assert total is not None
        return total / (len(self.models) * len(self.views))

    @torch.no_grad()
    def score(self, image: Image.Image, boxes: Any, sentences: Sequence[str]) -> torch.Tensor:
        """Ensemble cosine ``[S, N]`` of S sentences against the N candidate boxes (xyxy pixels) of ``image``."""
        if not sentences:
            raise ValueError("sentences: expected at least one expression")
        return self.score_prepared(self.prepare(image, boxes), sentences)


def sam_box_masks(predictor: Any) -> MaskFn:
    """A ``mask_fn`` for :class:`RecScorer` from a ``segment_anything.SamPredictor``: one single-mask SAM
    prediction per box prompt (the image embedded once). An empty SAM mask falls back to the box."""

    from ..sam import predict_boxes

    def fn(image: Image.Image, boxes: np.ndarray) -> torch.Tensor:
        masks, _ = predict_boxes(predictor, np.asarray(image.convert("RGB")), np.asarray(boxes, dtype=np.float32))
        masks = torch.from_numpy(masks).float()
        rect = boxes_to_masks(boxes, image.height, image.width)
        empty = masks.flatten(1).amax(1) == 0
        masks[empty] = rect[empty]
        return masks

    return fn


class _Images(torch.utils.data.Dataset):
    """The CPU side of :func:`evaluate_rec`, run in DataLoader workers: decode an image, clip its candidates
    and, when the masks need no model (no ``mask_fn``), prepare the model inputs (:meth:`RecScorer.prepare`)."""

    def __init__(self, jobs: Sequence[Tuple[str, Path, Any, np.ndarray]], scorer: RecScorer) -> None:
        self.jobs, self.scorer = list(jobs), scorer

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, n: int) -> Dict[str, Any]:
        key, path, image_id, cands = self.jobs[n]
        item: Dict[str, Any] = {"key": key}
        try:
            image = open_image(path, f"image {image_id}")
            # candidates clipped to the image; degenerate ones (no pixel left) cannot be scored
            cands = np.asarray(cands, dtype=np.float64).reshape(-1, 4).copy()
            cands[:, 0::2] = cands[:, 0::2].clip(0, image.width)
            cands[:, 1::2] = cands[:, 1::2].clip(0, image.height)
            item["cands"] = cands = cands[(cands[:, 2] > cands[:, 0]) & (cands[:, 3] > cands[:, 1])]
            if len(cands) and self.scorer.mask_fn is None:
                item["prepared"] = self.scorer.prepare(image, cands)
            elif len(cands):
                item["image"] = image
        except (ValueError, OSError) as e:
            # open_image's errors already name the image and its file
            item["error"] = str(e) if str(path) in str(e) else f"image {image_id} ({path}): {e}"
        return item


def _first(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    return batch[0]


def evaluate_rec(samples: Sequence[RecSample], scorer: RecScorer, iou_threshold: float = 0.5,
                 proposals: Optional[Dict[str, np.ndarray]] = None, state_path: Any = None,
                 progress: bool = True, *, num_workers: int = 0, settings: Optional[Dict[str, Any]] = None,
                 restart: bool = False) -> Dict[str, Dict[str, float]]:
    """Accuracy at IoU >= ``iou_threshold`` per split, counting every expression.

    Samples of the same image share one scoring pass. With ``proposals``, an image's candidates are its
    proposal boxes (an image without proposals raises ValueError). Candidates are clipped to the image and
    degenerate ones dropped; an image left without candidates counts its expressions as wrong.

    Args:
        state_path: JSONL of finished images (one line per image, after a first line with the run's
            settings: the samples, proposals, threshold, :meth:`RecScorer.settings` and ``settings``) so an
            interrupted run resumes; a file written with other settings is refused
            (:class:`~alphaclip_train.eval.resume.SettingsMismatch`) unless ``restart`` (moved aside).
        num_workers: DataLoader workers that decode images and prepare the model inputs (with a
            ``mask_fn``, e.g. SAM, masks are made in this process and workers only decode).
        settings: extra settings to record (the CLI's model names, checkpoints, SAM weights).
    Returns ``{split: {"n": expressions, "correct": .., "accuracy": percent}}``.
    """
    groups: "OrderedDict[Any, List[RecSample]]" = OrderedDict()
    for s in samples:
        groups.setdefault(str(s.image_id) if proposals is not None else (str(s.image_id), s.candidates.tobytes()),
                          []).append(s)
    keys = {key: json.dumps(key if isinstance(key, str) else [key[0], key[1].hex()]) for key in groups}
    done: Dict[str, List[Tuple[str, bool]]] = {}
    log = None
    if state_path:
        run = {"task": "rec", "iou_threshold": iou_threshold, "scorer": scorer.settings(), "run": dict(settings or {}),
               "proposals": None if proposals is None else json_digest({k: np.asarray(v).tolist()
                                                                          for k, v in proposals.items()}),
               "samples": json_digest([[s.image.name, str(s.image_id), s.split, list(s.sentences), s.target.tolist(),
                                        s.candidates.tolist()] for s in samples])}
        log = ResumeLog(state_path, run, restart=restart)
        done = {r["key"]: [tuple(x) for x in r["hits"]] for r in log.records}
    jobs = []
    for key, group in groups.items():
        if keys[key] in done:
            continue
        if proposals is not None:
            if str(group[0].image_id) not in proposals:
                raise ValueError(f"proposals: no boxes for image {group[0].image_id}")
            cands = proposals[str(group[0].image_id)]
        else:
            cands = group[0].candidates
        jobs.append((keys[key], group[0].image, group[0].image_id, cands))
    by_key = {keys[k]: g for k, g in groups.items()}
    loader = torch.utils.data.DataLoader(_Images(jobs, scorer), batch_size=1, num_workers=num_workers,
                                         collate_fn=_first, prefetch_factor=4 if num_workers else None)
    from tqdm import tqdm

    bar = tqdm(total=len(groups), initial=len(groups) - len(jobs), desc="REC", unit="img", disable=not progress)
    try:
        for item in loader:
            if "error" in item:
                raise ValueError(item["error"])
            group = by_key[item["key"]]
            sents = [t for s in group for t in s.sentences]
            owner = [s for s in group for _ in s.sentences]
            cands = item["cands"]
            hits = []
            if len(cands) == 0 or not sents:
                logger.warning("image %s: no usable candidate box; its %d expressions count as wrong",
                               group[0].image_id, len(sents))
                hits = [(s.split, False) for s in owner]
            else:
                prepared = item["prepared"] if "prepared" in item else scorer.prepare(item["image"], cands)
                scores = scorer.score_prepared(prepared, sents)             # [S, N]
                best = cands[scores.argmax(1).numpy()]
                for b, s in zip(best, owner):
                    hits.append((s.split, bool(box_iou(b, s.target)[0, 0] >= iou_threshold)))
            done[item["key"]] = hits
            if log is not None:
                log.append({"key": item["key"], "hits": hits})
            bar.update(1)
    finally:
        bar.close()
        if log is not None:
            log.close()
    counts: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    for key in groups:
        for split, ok in done[keys[key]]:
            counts[split][0] += 1
            counts[split][1] += int(ok)
    return {split: {"n": n, "correct": c, "accuracy": 100.0 * c / n} for split, (n, c) in sorted(counts.items())}


def rec_markdown(results: Dict[str, Dict[str, Dict[str, float]]], method: str = "Alpha-CLIP (this run)",
                 with_paper: bool = True) -> str:
    """SPEC.md's REC table: ``| method | RefCOCO val/testA/testB | RefCOCO+ val/testA/testB | RefCOCOg val/test |``.

    results: ``{dataset: {split: {"accuracy": ..}}}`` for ``refcoco``, ``refcoco+``, ``refcocog``; splits not
    run are shown as ``-``.
    """
    head = ["method"] + [f"{label} {'/'.join(REFER_SPLITS[d][1])}" for label, d in _TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(table: Dict[str, Any], d: str) -> str:
        vals = []
        for split in REFER_SPLITS[d][1]:
            v = table.get(d, {}).get(split)
            v = v["accuracy"] if isinstance(v, dict) else v
            vals.append("-" if v is None else f"{v:.1f}")
        return "/".join(vals)

    rows = list(PAPER_REC.items()) if with_paper else []
    for name, table in rows + [(method, results)]:
        lines.append("| " + " | ".join([name] + [cell(table, d) for _, d in _TABLE_COLUMNS]) + " |")
    return "\n".join(lines) + "\n"
