"""Region tasks on any Alpha-CLIP model (``encode_image(image, alpha)`` + ``encode_text(tokens)``).

The expensive, shared parts live here once: text classifiers from labels x templates, and scoring
many regions of one image in batches with the image tensor prepared once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .alpha import prepare

__all__ = ["RegionScores", "text_classifier", "score_regions", "classify_regions", "preprocess_params",
           "region_batch_size", "batch_from_memory", "DEFAULT_REGION_BATCH"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
#: regions per forward pass off-GPU: on CPU every region costs its own forward arithmetic, so batching
#: saves little there (benchmarks/results/region_speed.md) and 32 keeps memory small
DEFAULT_REGION_BATCH = 32


def preprocess_params(model: torch.nn.Module) -> dict:
    """``size``, ``mean`` and ``std`` the model expects, read from open_clip's preprocess config."""
    visual = getattr(model, "visual", model)
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"model: non-square input size {size} is not supported")
        size = size[0]
    out = {"size": int(size)}
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            out[key] = tuple(cfg[key])
    return out


@torch.no_grad()
def text_classifier(model: torch.nn.Module, tokenizer: Callable, labels: Sequence[str],
                    templates: Sequence[str] = DEFAULT_TEMPLATES, texts_per_batch: int = 256) -> torch.Tensor:
    """Zero-shot classifier weights: ``[L, D]`` unit vectors, the mean over templates of each label.

    Args:
        tokenizer: open_clip-style, ``tokenizer(list_of_str) -> LongTensor [N, context]``.
        templates: format strings with one ``{}`` for the label.
        texts_per_batch: prompts per text-tower pass (memory stays bounded for large vocabularies,
            e.g. LVIS's 1203 classes x 8 prompts).
    """
    if isinstance(labels, str) or not labels:
        raise ValueError("labels: expected a non-empty sequence of label strings")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates: each template needs one '{{}}' for the label, got {list(templates)}")
    if texts_per_batch < 1:
        raise ValueError(f"texts_per_batch: expected >= 1, got {texts_per_batch}")
    device = next(model.parameters()).device
    step = max(1, texts_per_batch // len(templates))
    rows = []
    for start in range(0, len(labels), step):
        chunk = labels[start:start + step]
        texts = [t.format(label) for label in chunk for t in templates]
        feats = model.encode_text(tokenizer(texts).to(device), normalize=True).float()
        rows.append(F.normalize(feats.view(len(chunk), len(templates), -1).mean(dim=1), dim=-1))
    return torch.cat(rows)


def batch_from_memory(free_bytes: float, bytes_per_region: float, memory_fraction: float = 0.5,
                      max_batch: int = 512) -> int:
    """How many regions fit in ``memory_fraction`` of ``free_bytes`` at ``bytes_per_region`` each: at least 1,
    at most ``max_batch``, a multiple of 8 above 8 (tensor-core friendly)."""
    if bytes_per_region <= 0 or free_bytes < 0:
        raise ValueError(f"bytes_per_region / free_bytes: expected > 0 and >= 0, got {bytes_per_region}, {free_bytes}")
    n = int(free_bytes * memory_fraction // bytes_per_region)
    n = max(1, min(max_batch, n))
    return n - n % 8 if n > 8 else n


def _bytes_per_region(model: torch.nn.Module, device: torch.device) -> float:
    """Peak CUDA memory one more region costs in ``encode_image`` (measured: 1 vs 5 regions)."""
    size = preprocess_params(model)["size"]
    from .model import WHOLE_IMAGE_ALPHA

    def peak(n: int) -> int:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.zeros(n, 3, size, size, device=device)
        model.encode_image(x, torch.full((n, 1, size, size), WHOLE_IMAGE_ALPHA, device=device))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    with torch.inference_mode():
        peak(1)  # warm-up: kernels and workspaces are not per-region cost
        one, five = peak(1), peak(5)
    return max(1.0, (five - one) / 4)


def region_batch_size(model: torch.nn.Module, memory_fraction: float = 0.5, max_batch: int = 512) -> int:
    """Regions per forward pass for :func:`score_regions` on ``model``'s device.

    CPU (and other devices): :data:`DEFAULT_REGION_BATCH`. CUDA: as many regions as fit in
    ``memory_fraction`` of the free GPU memory, from a measured per-region peak (two small probe
    forwards, cached on the model per device and dtype; resets CUDA's peak-memory statistics).
    """
    param = next(model.parameters())
    if param.device.type != "cuda":
        return DEFAULT_REGION_BATCH
    cache = model.__dict__.setdefault("_region_bytes", {})
    key = (str(param.device), str(param.dtype))
    if key not in cache:
        cache[key] = _bytes_per_region(model, param.device)
    free, _ = torch.cuda.mem_get_info(param.device)
    return batch_from_memory(free, cache[key], memory_fraction, max_batch)


@torch.no_grad()
def score_regions(model: torch.nn.Module, image: torch.Tensor, alpha: torch.Tensor, text_features: torch.Tensor,
                  batch_size: Optional[int] = None) -> torch.Tensor:
    """Cosine similarity of every region of one image with every text: ``[K, L]`` in ``[-1, 1]``.

    Args:
        image: ``[1, 3, S, S]`` the prepared image (shared by all regions; expanded, not copied), or
            ``[K, 3, S, S]``, one image per region (e.g. per-region background-blurred copies).
        alpha: ``[K, 1, S, S]`` normalised alpha maps, one per region.
        text_features: ``[L, D]`` unit vectors (see :func:`text_classifier`).
        batch_size: regions per forward pass (None: :func:`region_batch_size`, sized to GPU memory).
    """
    if alpha.dim() != 4 or alpha.shape[1] != 1 or (image.dim() == 4 and alpha.shape[2:] != image.shape[2:]):
        shape = f"{image.shape[2]},{image.shape[3]}" if image.dim() == 4 else "S,S"
        raise ValueError(f"alpha: expected [K,1,{shape}], got {list(alpha.shape)}")
    if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] not in (1, alpha.shape[0]):
        raise ValueError(f"image: expected one prepared image [1,3,S,S] or one per region [K={alpha.shape[0]},3,S,S], "
                         f"got {list(image.shape)}")
    if batch_size is None:
        batch_size = region_batch_size(model)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    device = next(model.parameters()).device
    image = image.to(device)
    text_features = text_features.to(device=device, dtype=torch.float32)
    out = []
    for start in range(0, alpha.shape[0], batch_size):
        a = alpha[start:start + batch_size].to(device)
        img = image.expand(a.shape[0], -1, -1, -1) if image.shape[0] == 1 else image[start:start + batch_size]
        feats = model.encode_image(img, a, normalize=True).float()
        out.append(feats @ text_features.T)
    return torch.cat(out)


@dataclass
class RegionScores:
    """Probabilities of each region over the labels.

    Attributes:
        probs: ``[K, L]`` softmax over labels (rows sum to 1).
        logits: ``[K, L]`` ``logit_scale * cosine``.
        labels: the L label strings.
    """

    probs: torch.Tensor
    logits: torch.Tensor
    labels: List[str]

    def top(self, region: int, k: int = 5) -> List[tuple]:
        """``[(label, prob), ...]`` for one region, best first."""
        p, i = self.probs[region].topk(min(k, len(self.labels)))
        return [(self.labels[j], float(q)) for q, j in zip(p.tolist(), i.tolist())]

    def table(self, k: int = 3, names: Optional[Sequence[str]] = None) -> str:
        """A plain-text ranked table, one row per region."""
        rows = []
        for r in range(self.probs.shape[0]):
            name = names[r] if names else f"region {r}"
            ranked = ", ".join(f"{label} {p:.3f}" for label, p in self.top(r, k))
            rows.append(f"{name:<16} {ranked}")
        return "\n".join(rows)


@torch.no_grad()
def classify_regions(model: torch.nn.Module, tokenizer: Callable, image, labels: Sequence[str], *,
                     mask=None, box=None, polygon=None, rle=None,
                     templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: Optional[int] = None,
                     mode: str = "crop",
                     ) -> RegionScores:
    """Classify many regions of one image over a label list.

    Args:
        image: one image (PIL, ``HxWx3`` uint8 array or ``[3,H,W]`` tensor).
        labels: the L candidate labels.
        mask, box, polygon, rle: the regions, as :func:`alphaclip_core.prepare` takes them
            (none = the whole image).
        templates: prompt templates, averaged per label.
        batch_size: regions per forward pass (None: :func:`region_batch_size`).
        mode: the paired transform's geometry (``crop``, ``pad`` or ``squash``).
    Returns:
        :class:`RegionScores` with ``[K, L]`` probabilities, K regions in the order masks, boxes,
        polygons, RLEs.
    """
    params = preprocess_params(model)
    pixels, alpha = prepare(image, mask=mask, box=box, polygon=polygon, rle=rle, mode=mode, **params)
    classifier = text_classifier(model, tokenizer, labels, templates)
    cos = score_regions(model, pixels, alpha, classifier, batch_size=batch_size)
    logit_scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
    logits = logit_scale * cos
    return RegionScores(probs=logits.softmax(dim=-1).cpu(), logits=logits.cpu(), labels=list(labels))
