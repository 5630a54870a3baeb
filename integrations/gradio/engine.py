"""What the region app computes, free of any web framework: parse what a person typed or drew, run
Alpha-CLIP (and SAM, and the alpha LLaVA) on it, and make the pictures and tables the page shows.

Every model call goes through the shared code: regions become masks with
:func:`alphaclip_core.alpha.region_masks`, image + alpha maps go through ONE
:class:`~alphaclip_core.alpha.PairedTransform`, text features come from
:func:`~alphaclip_core.regions.text_classifier`, regions are scored by
:func:`~alphaclip_core.regions.score_regions`; the plain-CLIP views are
:func:`alphaclip_train.eval.baselines.baseline_view`, "where is" is
:func:`alphaclip_train.eval.locate.locate`, SAM is :mod:`alphaclip_train.sam`, region answers use the
alpha LLaVA's own processor. Errors are :class:`ValueError` with a message for the person at the page
(the Gradio layer shows them with ``gr.Error``).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from alphaclip_core.alpha import PairedTransform, region_masks
from alphaclip_core.regions import RegionScores, preprocess_params, score_regions, text_classifier
from alphaclip_core.viz import PALETTE, overlay_regions
from alphaclip_train.eval.baselines import baseline_view
from alphaclip_train.eval.locate import LocateResult, locate, render

__all__ = ["CLICK_MODES", "add_click", "BASELINES", "MAX_SIDE", "MIN_SIDE", "RegionSpec", "Regions", "ClassifyResult", "WhereResult",
           "RegionEngine", "parse_labels", "parse_templates", "parse_regions", "format_box", "layer_masks",
           "editor_image", "grid_boxes", "display_scale"]

logger = logging.getLogger("alphaclip.app")

#: the plain-CLIP views shown beside Alpha-CLIP, as (name in baselines.baseline_view, column title)
BASELINES: Tuple[Tuple[str, str], ...] = (("whole", "whole image"), ("crop", "crop"),
                                          ("masked", "background masked"), ("red_circle", "red circle"))
MAX_SIDE = 4096  #: longest image side the app accepts (pixels)
MIN_SIDE = 8     #: shortest image side the app accepts (pixels)
_NUM = r"[-+]?\d+(?:\.\d+)?"


# ------------------------------------------------------------------------------------------------ parsing
def parse_labels(text: str) -> List[str]:
    """Labels from free text: one per line, or comma-separated; blanks dropped, duplicates kept once (in order)."""
    parts = re.split(r"[\n,]", text or "")
    labels = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not labels:
        raise ValueError("labels: enter at least one label (one per line, or separated by commas)")
    return labels


def parse_templates(text: str, default: Sequence[str]) -> List[str]:
    """Prompt templates, one per line, each with one ``{}`` for the label; empty text -> ``default``."""
    templates = [t.strip() for t in (text or "").splitlines() if t.strip()]
    if not templates:
        return list(default)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates: each line needs exactly one {{}} where the label goes, e.g. 'a photo of a {{}}.'; "
                         f"got {bad[0]!r}")
    return templates


@dataclass
class RegionSpec:
    """One typed/clicked region: ``box`` (xyxy pixels) or ``sam`` (point prompts ``[(x, y, 1 | 0), ...]``)."""

    kind: str
    box: Optional[List[float]] = None
    points: List[Tuple[float, float, int]] = field(default_factory=list)

    def text(self) -> str:
        """The line this region is written as in the page's region list."""
        if self.kind == "box":
            return "box " + format_box(self.box)
        return "sam " + " ".join(("" if lab else "-") + f"{_fmt(x)},{_fmt(y)}" for x, y, lab in self.points)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def format_box(box: Sequence[float]) -> str:
    """``x0,y0,x1,y1`` as the region list writes a box."""
    return ",".join(_fmt(v) for v in box)


def parse_regions(text: str) -> List[RegionSpec]:
    """The region list: one region per line, ``box x0,y0,x1,y1`` (or just the four numbers) in pixels, or
    ``sam x,y [x,y ...]`` point prompts for SAM (a leading ``-`` marks a background point, ``-x,y``).
    Blank lines and ``#`` comments are skipped."""
    specs = []
    for n, raw in enumerate((text or "").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        kind = head.lower()
        if re.fullmatch(rf"{_NUM}(,{_NUM}){{3}}", line.replace(" ", "")):
            kind, rest = "box", line
        if kind == "box":
            vals = re.findall(_NUM, rest)
            if len(vals) != 4:
                raise ValueError(f"regions, line {n}: a box is 'box x0,y0,x1,y1' (4 numbers, pixels), got {raw.strip()!r}")
            b = [float(v) for v in vals]
            if not (b[0] < b[2] and b[1] < b[3]):
                raise ValueError(f"regions, line {n}: box {format_box(b)} is empty: need x0 < x1 and y0 < y1")
            specs.append(RegionSpec("box", box=b))
        elif kind in ("sam", "point", "points"):
            pts = []
            for tok in rest.split():
                m = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)", tok)
                if not m:
                    raise ValueError(f"regions, line {n}: a SAM point is 'x,y' (or '-x,y' for background), got {tok!r}")
                pts.append((float(m.group(2)), float(m.group(3)), 0 if m.group(1) == "-" else 1))
            if not any(p[2] for p in pts):
                raise ValueError(f"regions, line {n}: a SAM region needs at least one foreground point 'x,y'")
            specs.append(RegionSpec("sam", points=pts))
        else:
            raise ValueError(f"regions, line {n}: expected 'box x0,y0,x1,y1' or 'sam x,y ...', got {raw.strip()!r}")
    return specs


#: what a click on the preview adds: a box corner (two clicks make a box), a new SAM region, a point to the last one
CLICK_MODES = ("box corner", "SAM: new region", "SAM: + point", "SAM: - point")


def add_click(region_text: str, pending: Optional[Sequence[float]], x: float, y: float, mode: str = CLICK_MODES[0]
              ) -> Tuple[str, Optional[List[int]]]:
    """A click at picture pixel ``(x, y)`` -> ``(new region list, pending corner)``.

    ``box corner``: the first click is kept as ``pending``, the second adds the box spanning both (pixels
    of both corners included); ``SAM: new region`` starts a ``sam x,y`` line; ``SAM: + point`` /
    ``SAM: - point`` add a foreground / background point to the last SAM line.
    """
    if mode not in CLICK_MODES:
        raise ValueError(f"click mode: expected one of {CLICK_MODES}, got {mode!r}")
    x, y = int(round(x)), int(round(y))
    lines = [line for line in (region_text or "").splitlines() if line.strip()]
    if mode == CLICK_MODES[0]:
        if pending is None:
            return "\n".join(lines), [x, y]
        (x0, x1), (y0, y1) = sorted((int(pending[0]), x)), sorted((int(pending[1]), y))
        lines.append(RegionSpec("box", box=[x0, y0, x1 + 1, y1 + 1]).text())
    elif mode == CLICK_MODES[1]:
        lines.append(RegionSpec("sam", points=[(x, y, 1)]).text())
    else:
        specs = parse_regions("\n".join(lines))
        if not specs or specs[-1].kind != "sam":
            raise ValueError("SAM points: start a SAM region first ('SAM: new region'), then add + / - points to it")
        specs[-1].points.append((x, y, 1 if mode == CLICK_MODES[2] else 0))
        lines[-1] = specs[-1].text()
    return "\n".join(lines), None


def editor_image(value: Any) -> Image.Image:
    """The picture of an image-editor value (``{"background": HxWx3|4 uint8, ...}``, or a bare array/PIL image)
    as RGB; transparent pixels are shown over white. Raises ValueError for no or an unusable picture."""
    bg = value.get("background") if isinstance(value, dict) else value
    if bg is None:
        raise ValueError("image: upload a picture first (or pick one of the examples)")
    if isinstance(bg, Image.Image):
        bg = np.asarray(bg.convert("RGBA"))
    bg = np.asarray(bg)
    if bg.ndim == 2:
        bg = np.repeat(bg[..., None], 3, axis=-1)
    if bg.ndim != 3 or bg.shape[2] not in (3, 4) or bg.dtype != np.uint8:
        raise ValueError(f"image: expected an RGB(A) picture, got an array of shape {list(bg.shape)} {bg.dtype}")
    h, w = bg.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise ValueError(f"image: {w}x{h} pixels; the app takes pictures with sides from {MIN_SIDE} to {MAX_SIDE} pixels")
    if bg.shape[2] == 4:
        a = bg[..., 3:4].astype(np.float32) / 255.0
        bg = (bg[..., :3] * a + 255.0 * (1 - a)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(bg))


def layer_masks(value: Any, height: int, width: int) -> List[np.ndarray]:
    """One bool mask ``[H, W]`` per image-editor layer that has paint on it (alpha > 0); empty layers are skipped."""
    layers = value.get("layers") if isinstance(value, dict) else None
    out = []
    for i, layer in enumerate(layers or []):
        if layer is None:
            continue
        arr = np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)
        if arr.ndim != 3 or arr.shape[2] != 4:
            raise ValueError(f"layer {i + 1}: expected an RGBA layer, got shape {list(arr.shape)}")
        if arr.shape[:2] != (height, width):
            raise ValueError(f"layer {i + 1}: {arr.shape[1]}x{arr.shape[0]} pixels, but the picture is {width}x{height}")
        m = arr[..., 3] > 0
        if m.any():
            out.append(m)
    return out


def grid_boxes(width: int, height: int, cells: int = 4) -> np.ndarray:
    """Candidate boxes for "where is" without SAM: a ``cells x cells`` grid, plus every 2x2 and 3x3 block
    of cells (so an object across cell borders has a box): ``[N, 4]`` xyxy pixels."""
    if cells < 1:
        raise ValueError(f"cells: expected >= 1, got {cells}")
    xs, ys = np.linspace(0, width, cells + 1), np.linspace(0, height, cells + 1)
    boxes = [[xs[i], ys[j], xs[i + s], ys[j + s]]
             for s in (1, 2, 3) if s <= cells for j in range(cells - s + 1) for i in range(cells - s + 1)]
    return np.round(np.asarray(boxes, dtype=np.float64))


def display_scale(image: Image.Image, target: int = 512) -> int:
    """Integer factor that brings a small picture up to about ``target`` pixels for display (>= 1)."""
    return max(1, target // max(image.size))


def _upscale(image: Image.Image, masks: np.ndarray, s: int) -> Tuple[Image.Image, np.ndarray]:
    if s == 1:
        return image, masks
    big = image.resize((image.width * s, image.height * s), Image.NEAREST)
    return big, masks.repeat(s, axis=-2).repeat(s, axis=-1)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Regions:
    """The marked regions of one picture: ``masks [K, H, W]`` bool and a name per region (``"1 brush"``)."""

    image: Image.Image
    masks: np.ndarray
    names: List[str]


@dataclass
class ClassifyResult:
    """Alpha-CLIP's answer for K regions, and the plain-CLIP views of each region for comparison.

    Attributes:
        scores: :class:`~alphaclip_core.regions.RegionScores`, ``[K, L]`` probabilities.
        rows: the ranked table, ``[region, rank, label, probability]`` rows (top ``k`` per region).
        overlay: the picture with each region tinted in its colour and captioned with its top label.
        baselines: ``{view name: RegionScores [K, L]}`` for the plain-CLIP views (empty when not asked).
        baseline_rows: ``[region, method, top label, probability, probability of Alpha-CLIP's label]`` rows.
        views: ``[(picture, caption)]``, what the model saw per region and method (a gallery).
    """

    scores: RegionScores
    rows: List[list]
    overlay: Image.Image
    baselines: Dict[str, RegionScores]
    baseline_rows: List[list]
    views: List[Tuple[Image.Image, str]]


@dataclass
class WhereResult:
    """ "Where is ..." over candidate regions: the core's :class:`LocateResult`, the table, the two pictures."""

    result: LocateResult
    rows: List[list]
    overlay: Image.Image
    heat: Image.Image
    source: str


# ------------------------------------------------------------------------------------------------ engine
class RegionEngine:
    """Alpha-CLIP (+ optional SAM, alpha LLaVA) behind the region app; safe to call from several threads.

    Args:
        model: an Alpha-CLIP (``encode_image(image, alpha)``, ``encode_text``, ``logit_scale``), eval mode.
        tokenizer: open_clip-style tokenizer (``list[str] -> LongTensor``).
        sam: optional segment-anything ``Sam`` (point prompts, automatic masks for "where is").
        llava: optional ``(model, processor)`` of an alpha LLaVA (region captions / questions).
        templates: the default prompt templates.
        name: how the model is described on the page.
        sam_points_per_side: SAM's automatic mask grid for "where is".
        sam_options: more ``SamAutomaticMaskGenerator`` options (e.g. ``pred_iou_thresh``).
        text_cache: how many label lists keep their text features (the text tower runs once per list).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, *, sam: Any = None, llava: Any = None,
                 templates: Sequence[str] = ("a photo of a {}.",), name: str = "Alpha-CLIP",
                 sam_points_per_side: int = 16, sam_options: Optional[Dict[str, Any]] = None,
                 text_cache: int = 16) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.templates = list(templates)
        self.params = preprocess_params(model)
        self.sam, self.llava = sam, llava
        self.sam_options = {"points_per_side": sam_points_per_side, **(sam_options or {})}
        self._text: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self._text_size = text_cache
        self._lock = threading.Lock()       # the text cache
        self._sam_lock = threading.Lock()   # SamPredictor holds one image at a time
        self._predictor, self._sam_key = None, None

    # -------------------------------------------------------------------------------- building blocks
    @property
    def logit_scale(self) -> float:
        """The scale the model's softmax uses (``exp(logit_scale)``; 100 for a model without one)."""
        return float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0

    def transform(self, mode: str) -> PairedTransform:
        """The model's paired image + alpha transform with geometry ``mode`` (crop / pad / squash)."""
        return PairedTransform(mode=mode, **self.params)

    def text_features(self, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``[L, D]`` unit text features of ``labels`` x ``templates`` (cached per label list)."""
        key = (tuple(labels), tuple(templates))
        with self._lock:
            if key in self._text:
                self._text.move_to_end(key)
                return self._text[key]
        feats = text_classifier(self.model, self.tokenizer, list(labels), list(templates))
        with self._lock:
            self._text[key] = feats
            while len(self._text) > self._text_size:
                self._text.popitem(last=False)
        return feats

    def _scores(self, pixels: torch.Tensor, alpha: torch.Tensor, labels: Sequence[str], text: torch.Tensor
                ) -> RegionScores:
        logits = self.logit_scale * score_regions(self.model, pixels, alpha, text).cpu()
        return RegionScores(probs=logits.softmax(-1), logits=logits, labels=list(labels))

    # -------------------------------------------------------------------------------- regions
    def regions(self, editor_value: Any, region_text: str = "") -> Regions:
        """The picture and its marked regions: painted editor layers first, then the region list's lines.

        Raises ValueError for no picture, no region, a region that covers no pixel of the picture, or a
        SAM region without SAM.
        """
        image = editor_image(editor_value)
        w, h = image.size
        masks, names = [], []
        for m in layer_masks(editor_value, h, w):
            masks.append(m)
            names.append(f"{len(names) + 1} brush")
        for spec in parse_regions(region_text):
            n = len(names) + 1
            if spec.kind == "box":
                try:
                    m = region_masks(h, w, box=spec.box)[0].numpy() > 0.5
                except ValueError:
                    raise ValueError(f"region {n}: box {format_box(spec.box)} covers no pixel of the {w}x{h} picture") from None
            else:
                m = self.sam_mask(image, spec.points)
                if not m.any():
                    raise ValueError(f"region {n}: SAM found no mask for the points {spec.text()[4:]}; "
                                     "click inside the object, or add points")
            masks.append(m)
            names.append(f"{n} {spec.kind}")
        if not masks:
            raise ValueError("regions: mark at least one region: brush on a layer of the picture, click two corners "
                             "of a box on the preview, or type 'box x0,y0,x1,y1' in the region list")
        return Regions(image, np.stack(masks), names)

    def preview(self, editor_value: Any, region_text: str = "", pending: Optional[Sequence[float]] = None
                ) -> Image.Image:
        """The picture with the marked regions in their colours and numbers (shown at :func:`display_scale`);
        ``pending``: a first box corner ``(x, y)`` waiting for its second click, drawn as a cross."""
        image = editor_image(editor_value)
        try:
            r = self.regions(editor_value, region_text)
            big, masks = _upscale(image, r.masks.astype(np.float32), display_scale(image))
            out = overlay_regions(big, masks, [n.split()[0] for n in r.names], opacity=0.35)
        except ValueError:
            s = display_scale(image)
            out = _upscale(image, np.zeros((0, image.height, image.width)), s)[0]
        if pending is not None:
            s = display_scale(image)
            x, y, r_ = (pending[0] + 0.5) * s, (pending[1] + 0.5) * s, max(4, out.width // 60)
            draw = ImageDraw.Draw(out)
            color = PALETTE[0]
            draw.line([x - r_, y, x + r_, y], fill=color, width=2)
            draw.line([x, y - r_, x, y + r_], fill=color, width=2)
        return out

    # -------------------------------------------------------------------------------- SAM
    def sam_mask(self, image: Image.Image, points: Sequence[Tuple[float, float, int]]) -> np.ndarray:
        """SAM's mask ``[H, W]`` bool for point prompts ``[(x, y, 1 = object | 0 = background)]`` (the best of
        SAM's three masks by its predicted IoU). The image embedding is computed once per picture."""
        if self.sam is None:
            raise ValueError("SAM points need a SAM checkpoint: start the app with "
                             "'alphaclip app --sam sam_vit_b_01ec64.pth' (or type a box instead)")
        from alphaclip_train.sam import box_predictor

        rgb = np.asarray(image.convert("RGB"))
        key = (rgb.shape, hash(rgb.tobytes()))
        coords = np.asarray([[p[0], p[1]] for p in points], dtype=np.float32)
        labels = np.asarray([p[2] for p in points], dtype=np.int64)
        with self._sam_lock:
            if self._predictor is None:
                self._predictor = box_predictor(self.sam)
            if self._sam_key != key:
                self._predictor.set_image(rgb)
                self._sam_key = key
            masks, iou, _ = self._predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True)
        return np.asarray(masks[int(np.argmax(iou))], dtype=bool)

    # -------------------------------------------------------------------------------- tasks
    @torch.no_grad()
    def classify(self, regions: Regions, labels: Sequence[str], templates: Optional[Sequence[str]] = None, *,
                 top: int = 5, baselines: bool = True, mode: str = "pad") -> ClassifyResult:
        """Classify every region over ``labels``; with ``baselines`` also score the plain-CLIP views.

        The regions go through the model's paired transform (``mode``) together, once; each plain view
        (whole image, crop, background masked, red circle) is a whole-image input (all-ones alpha) to the
        SAME model, as in the paper's comparison.
        """
        templates = list(templates or self.templates)
        text = self.text_features(labels, templates)
        pixels, alpha = self.transform(mode)(regions.image, torch.from_numpy(regions.masks).float())
        scores = self._scores(pixels, alpha, labels, text)
        k = regions.masks.shape[0]
        rows = [[regions.names[r], rank + 1, label, round(p, 4)]
                for r in range(k) for rank, (label, p) in enumerate(scores.top(r, top))]
        captions = [f"{n.split()[0]}: {scores.top(r, 1)[0][0]} {scores.top(r, 1)[0][1]:.2f}"
                    for r, n in enumerate(regions.names)]
        big, masks = _upscale(regions.image, regions.masks.astype(np.float32), display_scale(regions.image))
        overlay = overlay_regions(big, masks, captions, opacity=0.3)
        base: Dict[str, RegionScores] = {}
        base_rows: List[list] = []
        views: List[Tuple[Image.Image, str]] = []
        if baselines:
            t = self.transform(mode)
            pics = {name: [baseline_view(name, regions.image, m) for m in regions.masks] for name, _ in BASELINES}
            pics["whole"] = pics["whole"][:1]  # the same picture for every region: score it once
            order = [(name, i) for name, _ in BASELINES for i in range(len(pics[name]))]
            prepared = [t(pics[name][i]) for name, i in order]
            flat = self._scores(torch.cat([p for p, _ in prepared]), torch.cat([a for _, a in prepared]), labels, text)
            for name, _ in BASELINES:
                idx = [j for j, (nm, _) in enumerate(order) if nm == name]
                idx = idx * k if len(idx) == 1 else idx
                base[name] = RegionScores(flat.probs[idx], flat.logits[idx], list(labels))
            for r in range(k):
                best, best_p = scores.top(r, 1)[0]
                j = scores.labels.index(best)
                base_rows.append([regions.names[r], "Alpha-CLIP (region as alpha)", best, round(best_p, 4), round(best_p, 4)])
                tinted = overlay_regions(regions.image, regions.masks[r:r + 1].astype(np.float32), opacity=0.35)
                views.append((_view(tinted), f"{regions.names[r].split()[0]} · Alpha-CLIP: {best} {best_p:.2f}"))
                for name, title in BASELINES:
                    lab, p = base[name].top(r, 1)[0]
                    base_rows.append([regions.names[r], f"CLIP, {title}", lab, round(p, 4),
                                      round(float(base[name].probs[r, j]), 4)])
                    pic = pics[name][0 if name == "whole" else r]
                    views.append((_view(pic), f"{regions.names[r].split()[0]} · {title}: {lab} {p:.2f}"))
        return ClassifyResult(scores, rows, overlay, base, base_rows, views)

    @torch.no_grad()
    def where(self, image: Image.Image, phrase: str, *, use_sam: bool = True, cells: int = 4, top: int = 3,
              template: str = "{}", mode: str = "pad") -> WhereResult:
        """Rank candidate regions of ``image`` for ``phrase``: SAM's automatic masks (when SAM is loaded and
        ``use_sam``), else a grid of boxes (:func:`grid_boxes`). Returns the table, the best ``top`` regions
        drawn over the picture, and a heat map (per pixel, the best cosine of the regions covering it)."""
        phrase = (phrase or "").strip()
        if not phrase:
            raise ValueError("where is: type what to look for, e.g. 'the red circle'")
        if use_sam and self.sam is not None:
            from alphaclip_train.sam import automatic_mask_generator

            generator = automatic_mask_generator(self.sam, **self.sam_options)
            with self._sam_lock:
                result = locate(self.model, self.tokenizer, image, phrase, mask_generator=generator,
                                template=template, mode=mode)
            source = f"SAM automatic masks ({result.masks.shape[0]})"
        else:
            boxes = grid_boxes(image.width, image.height, cells)
            result = locate(self.model, self.tokenizer, image, phrase, boxes=boxes, template=template, mode=mode)
            source = f"grid of boxes ({len(boxes)}: {cells}x{cells} cells, 2x2 and 3x3 blocks)"
        rows = [[rank + 1, format_box(b["box"]), round(b["cosine"], 4), round(b["prob"], 4)]
                for rank, b in enumerate(result.top(min(10, result.masks.shape[0])))]
        s = display_scale(image)
        big = _upscale(image, np.zeros((0, 1, 1)), s)[0]
        scaled = dataclasses.replace(result, masks=torch.from_numpy(
            result.masks.numpy().repeat(s, axis=1).repeat(s, axis=2)))
        overlay, heat = render(big, scaled, top=top)
        return WhereResult(result, rows, overlay, heat, source)

    @torch.no_grad()
    def ask(self, regions: Regions, question: str, max_new_tokens: int = 48) -> List[list]:
        """The alpha LLaVA's answer to ``question`` about each region: ``[[region, answer], ...]``."""
        if self.llava is None:
            raise ValueError("region questions need an alpha LLaVA: start the app with "
                             "'alphaclip app --llava ALPHA_LLAVA_FOLDER' (see the LLaVA section of the docs)")
        question = (question or "").strip() or "Describe the region."
        model, processor = self.llava
        prompt = f"USER: {processor.image_token}\n{question} ASSISTANT:"
        rows = []
        for name, m in zip(regions.names, regions.masks):
            inputs = processor(images=regions.image, text=prompt, masks=m)
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
            rows.append([name, answer.strip()])
        return rows


def _view(picture: Image.Image) -> Image.Image:
    """A view picture as the gallery shows it: small pictures enlarged (nearest neighbour) to about 256 pixels."""
    s = display_scale(picture, 256)
    return picture if s == 1 else picture.resize((picture.width * s, picture.height * s), Image.NEAREST)
