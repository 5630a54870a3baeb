"""bf16 weights trained through fp32 master weights: the training path of ``precision="bf16-weights"``.

``torch.autocast`` keeps fp32 weights and casts them to bf16 inside every matmul of every forward
(and again for backward). Here instead the model itself is cast to bf16 once, so forward and
backward run in bf16 with no per-call casts, and the optimizer updates float32 MASTER copies of
the trained parameters: small updates (the recipe's 2e-6 learning rate of the vision tower) would
vanish if added to bf16 weights directly (8-bit mantissa), but accumulate in the masters.

One optimizer step::

    loss.backward()                 # bf16 gradients on the bf16 model
    master.grads_to_master()        # -> float32 .grad on the masters
    optimizer.step()                # AdamW on the float32 masters
    master.master_to_model()        # masters rounded into the bf16 model

A tower without any trained parameter (the recipe's frozen text tower) stays float32: it runs
under ``no_grad`` once per step, and PyTorch's CPU ``linear`` in bf16 is pathologically slow for a
weight that needs no gradient applied to a transposed 3-D input, which is what
``nn.MultiheadAttention``'s non-fast path feeds it (0.8 s instead of 2 ms for one [77, 4, 512]
projection in a measurement; it made a B/16 training step 2x slower). For the same reason frozen
blocks inside a trained bf16 tower (``unfreeze_last``) are slow on CPU: :func:`frozen_in_trained_tower`
says when that is the case (the trainer warns). Frozen parameters that are cast keep their float32
values, so :meth:`MasterWeights.state_dict` and :meth:`MasterWeights.restore_fp32` give the exact
fp32 weights (a frozen text tower stays bit-identical to the base CLIP in checkpoints and final files).
Measured on CPU (``benchmarks/results/train_speed_precision.md``, a busy 2-core machine, 2 rounds): faster than
autocast for the toy (0.69x vs 0.51x fp32, both slower than fp32) but not for a B/16 (0.95x vs 1.85x
fp32), so ``bf16`` means autocast and this path is chosen by name.
This is written here rather than taken from a library because the trainer needs only these four
operations on plain PyTorch modules (no FSDP/DeepSpeed dependency for a CPU path).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping

import torch
from torch import nn

from alphaclip_core.precision import cast_model

__all__ = ["MasterWeights", "tower_dtypes", "frozen_in_trained_tower"]


def _towers(model: nn.Module) -> Dict[str, List[nn.Parameter]]:
    visual = {id(p) for p in model.visual.parameters()} if hasattr(model, "visual") else set()
    out: Dict[str, List[nn.Parameter]] = {"visual": [], "text": []}
    for p in model.parameters():
        out["visual" if id(p) in visual else "text"].append(p)
    return out


def tower_dtypes(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> tuple:
    """``(vision dtype, text dtype)``: ``dtype`` for a tower with a trained parameter, float32 for a frozen one."""
    return tuple(dtype if any(p.requires_grad for p in ps) else torch.float32 for ps in _towers(model).values())


def frozen_in_trained_tower(model: nn.Module) -> bool:
    """Whether a tower that trains also has frozen parameters (slow in bf16 on CPU, see the module docstring)."""
    return any(any(p.requires_grad for p in ps) and not all(p.requires_grad for p in ps)
               for ps in _towers(model).values())


class MasterWeights:
    """Casts ``model`` to ``dtype`` (in place) and keeps float32 masters of the parameters in ``groups``.

    Args:
        model: the model to train (any float dtype on entry; its fp32 values are kept), with
            ``requires_grad`` already set for what trains (:func:`tower_dtypes` decides per tower).
        groups: the optimizer's parameter groups over ``model``'s parameters (dicts with ``params``).
        dtype: the low precision (``torch.bfloat16``).
    Attributes:
        param_groups: the same groups with each low-precision parameter replaced by its float32
            master: give these to the optimizer.
    """

    def __init__(self, model: nn.Module, groups: Iterable[Dict[str, Any]], dtype: torch.dtype = torch.bfloat16
                 ) -> None:
        self.model = model
        self.dtype = dtype
        vision_dtype, text_dtype = tower_dtypes(model, dtype)
        before = {n: p.dtype for n, p in model.named_parameters()}
        self._fp32: Dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in model.named_parameters()
                                                if p.is_floating_point()}
        cast_model(model, vision_dtype, text_dtype)
        for n, p in model.named_parameters():  # unchanged float32 parameters need no kept copy
            if p.dtype == torch.float32 and before[n] == torch.float32:
                del self._fp32[n]
        names = {id(p): n for n, p in model.named_parameters()}
        self._pairs: List[tuple] = []  # (name, model parameter, float32 master)
        self.param_groups: List[Dict[str, Any]] = []
        for g in groups:
            params = []
            for p in g["params"]:
                name = names[id(p)]
                if p.dtype == torch.float32:  # e.g. the logit scale: its own master
                    params.append(p)
                    continue
                master = nn.Parameter(self._fp32[name], requires_grad=True)
                self._fp32[name] = master.data  # one tensor: state_dict reads the live master
                self._pairs.append((name, p, master))
                params.append(master)
            self.param_groups.append({**g, "params": params})

    def grads_to_master(self) -> None:
        """Move the model's low-precision gradients to the masters as float32 (model grads set to None)."""
        for _, p, m in self._pairs:
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Copy the (updated) masters into the model's low-precision parameters."""
        for _, p, m in self._pairs:
            p.copy_(m)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's state dict with float32 values: masters for trained parameters, the kept fp32
        values for frozen ones (same keys as ``model.state_dict()``)."""
        sd = self.model.state_dict()
        out = {}
        for k, v in sd.items():
            if k in self._fp32:
                out[k] = self._fp32[k].detach().clone()
            elif v.is_floating_point():
                out[k] = v.float()
            else:
                out[k] = v
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a float32 state dict (e.g. from :meth:`state_dict`) into the masters, the kept values and
        the model (rounded)."""
        self.model.load_state_dict(state)
        for k, v in state.items():
            if k in self._fp32:
                self._fp32[k].copy_(v.float())

    @torch.no_grad()
    def restore_fp32(self) -> nn.Module:
        """Put the model back in float32 with the master / kept values (e.g. before saving final weights)."""
        self.model.float()
        for n, p in self.model.named_parameters():
            if n in self._fp32:
                p.copy_(self._fp32[n])
        return self.model
