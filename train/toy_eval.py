"""The toy's evaluation: the paper's tables in the synthetic world, on held-out scenes.

Every measure scores held-out scenes of :mod:`alphaclip_train.synthetic` (seed blocks no training
run uses) with the project's own pieces: region scoring from :mod:`alphaclip_core.regions`, the
paired transform :func:`alphaclip_core.prepare`, and the plain-CLIP region views of
:mod:`alphaclip_train.eval.baselines`.

* :func:`region_top1`: each object of a scene classified over the 24 labels (ImageNet-S in
  miniature): Alpha-CLIP given a mask, a box or the whole image as alpha; a plain CLIP given the
  paper's baselines (whole image, crop, crop + context margin, background masked out, background
  blurred, red circle).
* :func:`rec_top1`: the toy referring-expression suite (RefCOCO in miniature): pick, among all
  objects of a twin scene, the one a relational expression names; the twins look the same, so only
  the context tells.
* :func:`retrieval`: whole-scene caption <-> image retrieval (R@1), whole-image input.
* :func:`zero_shot`: single-object scenes classified from the whole image.
* :func:`pair_top1`: does the model read position and relation words? A scene against its mirror
  image, each captioned with its own side or relation (:func:`alphaclip_train.synthetic.pair_of`).
* :func:`alpha_embedding_share`: a diagnostic, not a table of the paper: how large the alpha patch
  embedding is against the picture's under whole-image alpha (0 for a fresh zero-initialised alpha conv).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from alphaclip_core.alpha import prepare
from alphaclip_core.regions import preprocess_params, score_regions, text_classifier

from .eval.baselines import baseline_view, crop_region, mask_bbox
from .synthetic import LABELS, Referral, Scene, label_of, render_scene

__all__ = ["BASELINES", "ALPHA_INPUTS", "TEMPLATES", "SEED_BLOCK", "held_out_scenes", "single_object_scenes", "partner_top1",
           "pair_top1",
           "region_top1", "rec_top1", "retrieval", "zero_shot", "demo_scores", "alpha_embedding_share", "is_lookalike"]

#: plain-CLIP ways of showing one region (the paper's baselines), by the names the results use
BASELINES: Dict[str, str] = {"whole image": "whole", "crop": "crop", "crop + margin": "crop_margin",
                             "background masked": "masked", "background blurred": "blurred",
                             "red circle": "red_circle"}
#: what Alpha-CLIP is given as alpha
ALPHA_INPUTS = ("mask", "box", "whole image")
#: the prompt: the world's phrases are "a red circle", "a small blue cross", ...
TEMPLATES = ("a {}",)
#: the held-out seed block (training uses blocks 0 and 1)
SEED_BLOCK = 777
#: context margin of the "crop + margin" baseline, as a fraction of the box size on each side
MARGIN = 0.5


def held_out_scenes(n: int, offset: int = 0, seed_block: int = SEED_BLOCK, size: int = 64,
                    light: float = 0.0, lights: Optional[Sequence[str]] = None) -> List[Scene]:
    """``n`` held-out scenes of the world's mix (seeds ``seed_block * 10**7 + offset + i``); ``light``: the
    chance of a coloured light, ``lights``: which ones (:func:`~alphaclip_train.synthetic.render_scene`)."""
    return [render_scene(seed_block * 10**7 + offset + i, size, light=light, lights=lights) for i in range(n)]


def single_object_scenes(n: int, seed_block: int = SEED_BLOCK, size: int = 64, light: float = 0.0,
                         lights: Optional[Sequence[str]] = None) -> List[Scene]:
    """``n`` held-out scenes with exactly one object (seeds ``seed_block * 10**7 + 7 * 10**6 + i``)."""
    return [render_scene(seed_block * 10**7 + 7 * 10**6 + i, size, max_objects=1, min_objects=1, light=light,
                         lights=lights) for i in range(n)]


def _view(name: str, image: Image.Image, mask: np.ndarray) -> Image.Image:
    if name == "crop_margin":
        return crop_region(image, mask_bbox(mask), margin=MARGIN)
    return baseline_view(name, image, mask)


def _inputs(model, scene: Scene, method: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``[K or 1, 3, S, S]`` and alpha ``[K or 1, 1, S, S]`` for every object of ``scene``.

    ``method`` is ``alpha: mask|box|whole image`` (one image, K alphas) or a baseline name (K views,
    whole-image alpha).
    """
    p = preprocess_params(model)
    masks = scene.masks
    if method == "alpha: mask":
        return prepare(scene.image, mask=masks, mode="pad", **p)
    if method == "alpha: box":
        return prepare(scene.image, box=[o["box"] for o in scene.objects], mode="pad", **p)
    if method == "alpha: whole image":
        pix, alpha = prepare(scene.image, mode="pad", **p)
        return pix, alpha.expand(len(masks), -1, -1, -1)
    if method not in BASELINES:
        raise ValueError(f"method: expected 'alpha: mask|box|whole image' or one of {list(BASELINES)}, got {method!r}")
    pairs = [prepare(_view(BASELINES[method], scene.image, m), mode="pad", **p) for m in masks]
    return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


def _scores(model, scene: Scene, method: str, text: torch.Tensor) -> torch.Tensor:
    """Cosine ``[K, T]`` of every object of ``scene`` (shown by ``method``) with ``text`` ``[T, D]``."""
    pix, alpha = _inputs(model, scene, method)
    if method == "alpha: whole image":  # one image, the same whole-image alpha for every object
        return score_regions(model, pix, alpha[:1], text).expand(alpha.shape[0], -1)
    return score_regions(model, pix, alpha, text)


@torch.no_grad()
def region_top1(model, tokenizer: Callable, scenes: Sequence[Scene], methods: Iterable[str],
                progress: bool = False,
                select: Optional[Callable[[Scene, Dict], bool]] = None) -> Dict[str, float]:
    """Top-1 accuracy (%) over the 24 labels of every object of ``scenes``, per method.

    methods: ``"alpha: mask"``, ``"alpha: box"``, ``"alpha: whole image"`` (an Alpha-CLIP) or names
    of :data:`BASELINES` (a plain CLIP, or an Alpha-CLIP with whole-image alpha). ``select(scene,
    object)``: count only the objects it accepts (e.g. :func:`is_lookalike`); 0.0 when none is.
    """
    from tqdm import tqdm

    methods = list(methods)
    clf = text_classifier(model, tokenizer, list(LABELS), TEMPLATES)
    hits = {m: 0 for m in methods}
    total = 0
    for scene in tqdm(scenes, desc="regions", disable=not progress):
        keep = torch.tensor([select is None or bool(select(scene, o)) for o in scene.objects], dtype=torch.bool)
        if not keep.any():
            continue
        truth = torch.tensor([LABELS.index(label_of(o)) for o in scene.objects])
        total += int(keep.sum())
        for m in methods:
            hits[m] += int(((_scores(model, scene, m, clf).argmax(-1) == truth) & keep).sum())
    return {m: 100.0 * h / max(1, total) for m, h in hits.items()}


def is_lookalike(scene: Scene, obj: Dict) -> bool:
    """Whether ``obj`` of ``scene`` has another colour's pixels under the scene's light (a lit white object:
    :data:`~alphaclip_train.synthetic.LOOKALIKES`), so that only the rest of the picture tells its colour."""
    from .synthetic import LOOKALIKES

    return scene.light is not None and (obj["colour"], scene.light) in LOOKALIKES


@torch.no_grad()
def rec_top1(model, tokenizer: Callable, suite: Sequence[Referral], methods: Iterable[str],
             progress: bool = False) -> Dict[str, float]:
    """Referring-expression accuracy (%): the share of expressions whose best-scoring object (among
    all objects of the scene, each shown by the method) is the one meant."""
    from tqdm import tqdm

    methods = list(methods)
    expressions = sorted({r.expression for r in suite})
    text = text_classifier(model, tokenizer, expressions, ("{}",))
    index = {e: i for i, e in enumerate(expressions)}
    hits = {m: 0 for m in methods}
    cache: Dict[Tuple[int, str], torch.Tensor] = {}
    for r in tqdm(suite, desc="referring expressions", disable=not progress):
        for m in methods:
            key = (id(r.scene), m)
            if key not in cache:
                cache = {k: v for k, v in cache.items() if k[0] == id(r.scene)}  # one scene at a time
                cache[key] = _scores(model, r.scene, m, text)
            cos = cache[key][:, index[r.expression]]
            hits[m] += int(int(cos.argmax()) == r.target)
    return {m: 100.0 * h / max(1, len(suite)) for m, h in hits.items()}


@torch.no_grad()
def retrieval(model, tokenizer: Callable, scenes: Sequence[Scene], batch_size: int = 128) -> Dict[str, float]:
    """Whole-scene retrieval R@1 (%) with whole-image input: ``image->text`` and ``text->image``.

    A retrieved caption counts as a hit when its text equals the query's own (single-object scenes
    share captions such as "a red circle").
    """
    p = preprocess_params(model)
    device = next(model.parameters()).device
    img, txt = [], []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        pix = torch.cat([prepare(s.image, mode="pad", **p)[0] for s in chunk]).to(device)
        img.append(model.encode_image(pix, None, normalize=True).float())
        txt.append(model.encode_text(tokenizer([s.caption for s in chunk]).to(device), normalize=True).float())
    sim = torch.cat(img) @ torch.cat(txt).T
    caps = [s.caption for s in scenes]
    i2t = np.mean([caps[int(j)] == caps[i] for i, j in enumerate(sim.argmax(1).tolist())]) * 100
    t2i = np.mean([caps[int(j)] == caps[i] for i, j in enumerate(sim.argmax(0).tolist())]) * 100
    return {"image->text R@1": float(i2t), "text->image R@1": float(t2i)}


@torch.no_grad()
def zero_shot(model, tokenizer: Callable, scenes: Sequence[Scene]) -> float:
    """Top-1 accuracy (%) over the 24 labels of single-object scenes, from the whole image."""
    return region_top1(model, tokenizer, scenes, ["whole image"])["whole image"]


@torch.no_grad()
def partner_top1(model, tokenizer: Callable, scenes: Sequence[Scene], kind: str) -> Tuple[float, int]:
    """Does the whole image match its own caption better than its partner's (:func:`partner_of`)?

    ``kind`` ``"mirror"``: the partner caption swaps a relation word; ``"shape"``: it changes one
    object's shape; ``"light"``: one object's colour word, for the scene seen under the other light.
    Returns ``(accuracy %, pairs scored)``; chance is 50%. Scenes without a partner of
    that kind are skipped.
    """
    from .synthetic import partner_of

    p = preprocess_params(model)
    device = next(model.parameters()).device
    hits = n = 0
    for s in scenes:
        other = partner_of(s, kind)
        if other is None:
            continue
        pix = prepare(s.image, mode="pad", **p)[0].to(device)
        img = model.encode_image(pix, None, normalize=True).float()
        txt = model.encode_text(tokenizer([s.caption, other.caption]).to(device), normalize=True).float()
        sim = (img @ txt.T)[0]
        hits += int(sim[0] > sim[1])
        n += 1
    return 100.0 * hits / max(1, n), n


@torch.no_grad()
def pair_top1(model, tokenizer: Callable, kind: str, n: int = 200, seed_block: int = SEED_BLOCK,
              size: int = 64) -> Dict[str, float]:
    """Pair accuracy (%) on ``n`` held-out pairs of :func:`~alphaclip_train.synthetic.pair_of` ``kind``.

    Each pair is a scene and its mirror image, captioned "a red circle on the left" / "... on the
    right" (``"position"``) or "a red circle left of a blue square" / "... right of ..."
    (``"relation"``). ``image->text``: how often an image is closer to its own caption than to its
    mirror's; ``text->image``: how often a caption is closer to its own image (a tie counts half).
    Chance is 50%; a model that reads the words as a bag scores about 50. Whole-image input; the
    pairs' seeds are those training draws, from ``seed_block`` (training uses block 0).
    """
    from .synthetic import PAIR_KINDS, _pairs

    if kind not in PAIR_KINDS:
        raise ValueError(f"kind: expected one of {PAIR_KINDS}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a number of pairs >= 1, got {n!r}")

    p = preprocess_params(model)
    device = next(model.parameters()).device
    stream = _pairs(kind, seed_block, size)  # the pairs training draws, from another seed block
    i2t = t2i = 0
    for _ in range(n):
        pair = [next(stream)[0], next(stream)[0]]
        pix = torch.cat([prepare(s.image, mode="pad", **p)[0] for s in pair]).to(device)
        img = model.encode_image(pix, None, normalize=True).float()
        txt = model.encode_text(tokenizer([s.caption for s in pair]).to(device), normalize=True).float()
        sim = img @ txt.T
        i2t += _wins(sim[0, 0], sim[0, 1]) + _wins(sim[1, 1], sim[1, 0])
        t2i += _wins(sim[0, 0], sim[1, 0]) + _wins(sim[1, 1], sim[0, 1])
    return {"image->text": 50.0 * i2t / n, "text->image": 50.0 * t2i / n}


def _wins(own: torch.Tensor, other: torch.Tensor) -> float:
    """1 when ``own`` beats ``other``, a half for a tie (a model blind to the words scores chance)."""
    return 1.0 if own > other else 0.5 if own == other else 0.0


@torch.no_grad()
def demo_scores(model, tokenizer: Callable):
    """The demo scene (:func:`alphaclip_train.synthetic.demo_scene`) scored as ``alphaclip demo`` does:
    mask alpha, the 24 labels, :data:`TEMPLATES`, padded geometry.

    Returns ``(scores, truth, best)``: the :class:`alphaclip_core.regions.RegionScores` (``[4, 24]``
    probabilities), the true label of each region and the top-1 label of each region.
    """
    from alphaclip_core.regions import classify_regions

    from .synthetic import demo_scene

    image, masks, truth, _ = demo_scene()
    scores = classify_regions(model, tokenizer, image, list(LABELS), mask=masks, templates=list(TEMPLATES), mode="pad")
    return scores, truth, [scores.top(i, 1)[0][0] for i in range(len(truth))]


@torch.no_grad()
def alpha_embedding_share(model, scenes: Sequence[Scene]) -> float:
    """Mean over patches and scenes of ``|conv1_alpha(alpha)| / |conv1(pixels)|`` under whole-image alpha.

    The per-patch L2 norms over the embedding channels of the two patch embeddings that the tower adds
    up (``model.visual.conv1`` and ``conv1_alpha``, an :class:`~alphaclip_core.AlphaVisionTransformer`).
    0.0 for a zero-initialised alpha conv (the tower then equals its base). Well above 1 means the alpha
    path drowns the picture for whole-image input: what stage 2 did to the toy (issue 19's diagnosis:
    flat-colour patches give small RGB responses, while the constant whole-image alpha reaches the
    alpha kernel's sum, which AdamW grows by about lr per step).
    """
    visual = model.visual
    if not hasattr(visual, "conv1_alpha"):
        raise TypeError(f"model: expected an Alpha-CLIP whose visual tower has conv1_alpha, got "
                        f"{type(visual).__name__}")
    if not scenes:
        raise ValueError("scenes: expected at least one scene")
    p = preprocess_params(model)
    ratios = []
    for scene in scenes:
        pix, alpha = prepare(scene.image, mode="pad", **p)
        dtype = visual.conv1.weight.dtype
        rgb = visual.conv1(pix.to(dtype)).float().norm(dim=1)
        alp = visual.conv1_alpha(alpha.to(dtype)).float().norm(dim=1)
        ratios.append((alp / rgb.clamp_min(1e-12)).mean())
    return float(torch.stack(ratios).mean())
