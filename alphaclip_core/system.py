"""This machine as the precision and kernel choices see it: what ``alphaclip info --system`` prints.

Software versions, the CPU (model, bf16 features, torch's CPU capability), the GPUs, the attention
kernels at hand (SDPA, flash / memory-efficient, the flash-attn package), and the precision ``auto``
picks per device with its reason (:func:`alphaclip_core.precision.resolve_precision`).
"""
from __future__ import annotations

import os
import platform
from typing import Dict, List

import torch

from .precision import _cpuinfo_flags, cpu_bf16_support, resolve_precision

__all__ = ["system_info"]


def system_info(measure: bool = True) -> Dict[str, object]:
    """What ``alphaclip info --system`` prints: software, CPU, GPUs, attention kernels, and the
    ``auto`` precision per device with its reason (``measure=False`` skips the micro-measurement)."""
    flags, cpu_model = _cpuinfo_flags()
    native, features = cpu_bf16_support()
    info: Dict[str, object] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "cpu": cpu_model, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cpu_bf16": features if native else f"none ({features})",
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        import open_clip
        info["open_clip"] = open_clip.__version__
    except ImportError:  # pragma: no cover
        pass
    gpus: List[Dict[str, object]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1),
                         "bf16": torch.cuda.is_bf16_supported(including_emulation=False)})
    info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    info["gpus"] = gpus
    attn = {"sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention")}
    if gpus:
        attn["flash_sdp"] = bool(torch.backends.cuda.flash_sdp_enabled() and
                                 getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)())
        attn["mem_efficient_sdp"] = bool(torch.backends.cuda.mem_efficient_sdp_enabled())
    try:
        import importlib.util
        attn["flash_attn_package"] = importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):  # pragma: no cover
        attn["flash_attn_package"] = False
    info["attention"] = attn
    choices = {}
    for dev in ["cpu"] + [f"cuda:{g['index']}" for g in gpus]:
        if measure:
            c = resolve_precision("auto", dev)
            choices[dev] = {"precision": c.name, "reason": c.reason, "timings_ms": c.timings_ms}
        else:
            choices[dev] = {"precision": None, "reason": "not measured"}
    info["auto_precision"] = choices
    return info
