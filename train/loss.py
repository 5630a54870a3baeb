"""The Alpha-CLIP contrastive loss: symmetric InfoNCE over the global (all-gathered) batch.

Every rank gathers the features of all ranks WITHOUT gradient, puts its own features (WITH
gradient) back in its rows, and computes the loss over the whole global batch. The loss is
multiplied by ``replicas`` (the world size) so that DDP's gradient AVERAGE over ranks equals the
gradient of the global loss exactly: each rank's backward covers exactly its own rows. A shared
scalar (a learned logit scale) sees the whole loss on every rank, so its gradient is divided by
``replicas`` (see :func:`shared_scalar`). The same construction serves gradient accumulation (the
features of the other micro-batches are cached, detached), as in open_clip's ``accum_freq``.

Two losses, chosen from the base model (:func:`loss_for`): CLIP's symmetric InfoNCE
(:func:`contrastive_loss`) and, for SigLIP bases (a model with a ``logit_bias``), SigLIP's sigmoid
loss (:func:`sigmoid_loss`) with its learnable bias.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["gather_sizes", "gather_rows", "contrastive_loss", "sigmoid_loss", "loss_for", "shared_scalar", "LOSSES"]

#: the losses a run can use
LOSSES = ("contrastive", "sigmoid")


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_sizes(n: int, device: torch.device, world: Optional[int] = None) -> List[int]:
    """Row counts of every rank (``[n]`` without a process group or when ``world == 1``)."""
    if world == 1 or not _dist():
        return [n]
    t = torch.tensor([n], device=device, dtype=torch.long)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(v) for v in out]


def gather_rows(x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    """All ranks' ``x`` (``[n_r, D]``, uneven n_r allowed) concatenated in rank order, detached."""
    if len(sizes) == 1 or not _dist():
        return x.detach()
    m = max(sizes)
    pad = x.detach().new_zeros((m,) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x.detach()
    out = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(out, pad.contiguous())
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


def shared_scalar(value: torch.Tensor, replicas: int) -> torch.Tensor:
    """``value`` with its gradient divided by ``replicas`` (same forward value)."""
    if replicas == 1:
        return value
    return value / replicas + (value * (1.0 - 1.0 / replicas)).detach()


def _global_rows(image_features: torch.Tensor, text_features: torch.Tensor, offset: int,
                  all_image: Optional[torch.Tensor], all_text: Optional[torch.Tensor]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global batch with this process's rows (with gradient) in place of their detached copies."""
    n = image_features.shape[0]
    if text_features.shape[0] != n:
        raise ValueError(f"text_features: expected {n} rows like image_features, got {text_features.shape[0]}")
    all_image = image_features.detach() if all_image is None else all_image
    all_text = text_features.detach() if all_text is None else all_text
    if all_image.shape != all_text.shape:
        raise ValueError(f"all_image {list(all_image.shape)} and all_text {list(all_text.shape)} differ")
    big_n = all_image.shape[0]
    if not 0 <= offset <= big_n - n:
        raise ValueError(f"offset: {offset} does not fit {n} rows in a global batch of {big_n}")
    img = torch.cat([all_image[:offset], image_features, all_image[offset + n:]])
    txt = torch.cat([all_text[:offset], text_features, all_text[offset + n:]])
    return img, txt


def _scalar(value: torch.Tensor | float, replicas: int, accum: int) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        return shared_scalar(value.float(), replicas * max(1, accum))
    return float(value)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                     *, label_smoothing: float = 0.1, offset: int = 0, replicas: int = 1, accum: int = 1,
                     all_image: Optional[torch.Tensor] = None, all_text: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the global batch.

    Args:
        image_features, text_features: ``[n, D]`` this process's unit-norm features (with grad).
        logit_scale: the multiplier (100 in the Alpha-CLIP recipe; a tensor when learned).
        label_smoothing: cross-entropy label smoothing (0.1 in the recipe).
        offset: index of this process's first row in the global batch.
        replicas: the world size; the returned loss is the global loss times ``replicas`` (see the
            module docstring); the logged value is the second output.
        accum: micro-batches per step; a learned ``logit_scale`` (a tensor) gets its gradient divided
            by ``replicas * accum``, since every rank and every micro-batch sees the whole loss.
        all_image, all_text: ``[N, D]`` the global batch's features, detached (default: the local ones).
    Returns:
        ``(loss to backpropagate, global loss value detached)``.
    """
    img, txt = _global_rows(image_features, text_features, offset, all_image, all_text)
    scale = _scalar(logit_scale, replicas, accum)
    logits = scale * img.float() @ txt.float().t()
    labels = torch.arange(img.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                  + F.cross_entropy(logits.t(), labels, label_smoothing=label_smoothing))
    return loss * replicas, loss.detach()


def sigmoid_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                 logit_bias: torch.Tensor | float, *, offset: int = 0, replicas: int = 1, accum: int = 1,
                 all_image: Optional[torch.Tensor] = None, all_text: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's pairwise sigmoid loss over the global batch (Zhai et al. 2023).

    With ``z_ij = t * <x_i, y_j> + b`` for every image ``i`` and text ``j`` of the global batch of
    ``N`` pairs, and labels ``+1`` on the diagonal (matching pairs) and ``-1`` elsewhere::

        loss = -1/N * sum_ij log sigmoid(label_ij * z_ij)

    (the mean over images of the summed per-pair losses, as in big_vision, open_clip's ``SigLipLoss``
    and transformers' ``SiglipModel``).

    Args:
        image_features, text_features: ``[n, D]`` this process's unit-norm features (with grad).
        logit_scale: the multiplier ``t`` (not its log); a tensor when learned.
        logit_bias: the bias ``b`` (SigLIP's is learned; ``-10`` at initialisation); a tensor when learned.
        offset, replicas, accum, all_image, all_text: as in :func:`contrastive_loss` (learned scalars get
            their gradient divided by ``replicas * accum``).
    Returns:
        ``(loss to backpropagate, global loss value detached)``.
    """
    img, txt = _global_rows(image_features, text_features, offset, all_image, all_text)
    scale, bias = _scalar(logit_scale, replicas, accum), _scalar(logit_bias, replicas, accum)
    if isinstance(bias, torch.Tensor):
        bias = bias.reshape(())
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(())
    logits = scale * img.float() @ txt.float().t() + bias
    labels = 2 * torch.eye(img.shape[0], device=logits.device, dtype=logits.dtype) - 1
    loss = -F.logsigmoid(labels * logits).sum() / img.shape[0]
    return loss * replicas, loss.detach()


def loss_for(model: torch.nn.Module) -> str:
    """The loss a base model was trained with: ``sigmoid`` when it has a ``logit_bias`` (SigLIP), else
    ``contrastive`` (CLIP's InfoNCE)."""
    return "sigmoid" if getattr(model, "logit_bias", None) is not None else "contrastive"
