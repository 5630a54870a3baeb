"""Numeric precision of a model: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``, decided by measurement.

``auto`` (the default of every inference entry point) picks, per device:

- **CPU**: bf16 weights when the CPU has native bf16 arithmetic (AMX or AVX512-BF16 on x86, the
  ``bf16`` feature on Arm) AND a quick micro-measurement (a transformer MLP, fp32 vs bf16 weights,
  alternated, best of 5, on one thread) says bf16 is at least :data:`MIN_SPEEDUP` times faster;
  fp32 otherwise. One thread because it measures the per-core arithmetic rate (both precisions
  scale alike with threads) and because on a busy machine a multi-threaded timing mostly measures
  threads waiting for each other.
  Never ``torch.autocast`` on CPU: it re-casts the weights on every call and is several times
  SLOWER than fp32 (measured in ``benchmarks/speed.py``).
- **CUDA**: fp16 (the reference release's GPU dtype; three more mantissa bits than bf16) when the
  measurement says it beats fp32, else bf16 when supported and faster, else fp32.
- any other device: fp32 (not measured).

The measurement runs at the image tower's width (:func:`model_width`; a tiny model's small matrices
may not gain from bf16 at all, so it can stay fp32 where a ViT-B goes bf16). It takes well under a
second and is cached on disk per device model, torch version and width
(``$ALPHACLIP_CACHE/precision.json``, default ``~/.cache/alphaclip``), and in memory.

:func:`apply_precision` casts the image tower's weights to the precision and, for an
:class:`~alphaclip_core.model.AlphaCLIP`, makes ``encode_image`` / ``encode_text`` return float32
features, so low-precision features compare with fp32 ones (e.g. a stored classifier). The model
casts image and alpha to its own dtype (SPEC), so callers keep passing float32 tensors.

The text tower follows the precision, except under bf16, where it stays fp32
(:data:`TEXT_PRECISION`): bf16's 8-bit mantissa in the text tower's residual stream flips
near-tie rankings measurably (on the toy's held-out regions 1.9% of top-1 labels changed with a
bf16 text tower, 0.3% with a bf16 image tower), and the text tower runs once per vocabulary, not
once per region. The logit scale and bias always stay fp32.

Example::

    choice = apply_precision(model, "auto")          # model now bf16 on an AMX CPU
    print(choice)                                     # "bf16 on cpu (auto: native bf16 ...)"

What ``alphaclip info --system`` prints (including the ``auto`` choice per device) is
:func:`alphaclip_core.system.system_info`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

__all__ = ["PRECISIONS", "DTYPES", "MIN_SPEEDUP", "TEXT_PRECISION", "Precision", "resolve_precision", "apply_precision",
           "cast_model", "model_width", "DEFAULT_WIDTH",
           "cpu_bf16_support", "measure_dtypes", "precision_of"]

logger = logging.getLogger(__name__)

#: the values every ``--precision`` option takes
PRECISIONS: Tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: precision name -> torch dtype
DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: a half precision is chosen by ``auto`` only when measured at least this much faster than fp32
MIN_SPEEDUP: float = 1.25
#: the text tower's precision for each image-tower precision (see the module docstring)
TEXT_PRECISION: Dict[str, str] = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp16"}
#: parameters that stay float32 whatever the precision (scalars used outside the towers)
FP32_PARAMS: Tuple[str, ...] = ("logit_scale", "logit_bias")
#: the transformer width measured when the model's is not known (ViT-B-like on CPU, ViT-L-like on CUDA)
DEFAULT_WIDTH: Dict[str, int] = {"cpu": 512, "cuda": 1024}
_CACHE_FILE = "precision.json"
_memo: Dict[str, Dict[str, float]] = {}


@dataclass(frozen=True)
class Precision:
    """A resolved precision.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``: the image tower's precision.
        requested: what was asked for (``auto`` or one of the names).
        device: the device type it was resolved for (``cpu``, ``cuda``, ...).
        reason: one human sentence: why this precision.
        timings_ms: the micro-measurement behind an ``auto`` choice (precision -> best ms), if any.
    """

    name: str
    requested: str
    device: str
    reason: str
    timings_ms: Optional[Dict[str, float]] = field(default=None, compare=False)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of :attr:`name`."""
        return DTYPES[self.name]

    @property
    def text(self) -> str:
        """The text tower's precision (:data:`TEXT_PRECISION`)."""
        return TEXT_PRECISION[self.name]

    def __str__(self) -> str:
        text = "" if self.text == self.name else f", text tower {self.text}"
        return f"{self.name} on {self.device}{text} ({self.reason})"


# ------------------------------------------------------------------------------------------------ detection
def _cpuinfo_flags() -> Tuple[set, str]:
    """CPU feature flags and model name from /proc/cpuinfo (empty on other systems)."""
    flags: set = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
    except OSError:
        pass
    return flags, model


def cpu_bf16_support() -> Tuple[bool, str]:
    """Whether this CPU does bf16 arithmetic natively: ``(supported, which features)``.

    x86: ``amx_bf16`` or ``avx512_bf16``; Arm: ``bf16`` (or ``sve_bf16``). Read from /proc/cpuinfo,
    else from torch's own CPU checks.
    """
    flags, _ = _cpuinfo_flags()
    found = [f for f in ("amx_bf16", "avx512_bf16", "bf16", "svebf16") if f in flags]
    if not flags:  # no /proc/cpuinfo (macOS, Windows): ask torch
        for name, fn in (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
            check = getattr(torch.cpu, fn, None)
            try:
                if check is not None and check():
                    found.append(name)
            except Exception:  # pragma: no cover - private torch helpers may change
                pass
    if found:
        return True, ", ".join(found)
    return False, "no AMX-BF16 / AVX512-BF16 / Arm BF16"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo_flags()[1]


def _cache_path() -> Path:
    root = os.environ.get("ALPHACLIP_CACHE") or Path.home() / ".cache" / "alphaclip"
    return Path(root).expanduser() / _CACHE_FILE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_dtypes(device: Union[str, torch.device] = "cpu", names: Sequence[str] = ("fp32", "bf16"),
                   reps: int = 5, cache: bool = True, width: Optional[int] = None) -> Dict[str, float]:
    """Best-of-``reps`` milliseconds of one transformer MLP (linear, GELU, linear) per precision.

    The MLP is the bulk of a ViT's arithmetic: ``[256, width] -> 4 width -> width`` on CPU (one
    thread; ``width`` default 512), ``[4096, width] -> ...`` on CUDA (default 1024); a small MLP is
    run several times per timing. Pass the model's width: a tiny model's small matrices may not gain
    from bf16 at all. The precisions are alternated within each repetition so that a busy machine
    slows them alike. Results are cached (memory + ``$ALPHACLIP_CACHE``) per device name, torch
    version and width; ``cache=False`` measures afresh.
    """
    device = torch.device(device)
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width: expected a positive int (the transformer's width), got {width!r}")
    rows = 4096 if device.type == "cuda" else 256
    hidden = width or DEFAULT_WIDTH.get(device.type, DEFAULT_WIDTH["cpu"])
    key = f"{device.type}|{_device_name(device)}|torch {torch.__version__}|width {hidden}"
    wanted = list(names)
    if cache:
        hit = _memo.get(key)
        if hit is None:
            try:
                hit = json.loads(_cache_path().read_text()).get(key)
            except (OSError, ValueError):
                hit = None
        if hit and all(n in hit for n in wanted):
            _memo[key] = hit
            return {n: hit[n] for n in wanted}
    inner = max(1, min(64, int(2e8 // (16 * rows * hidden * hidden))))  # >= ~0.2 GFLOP per timing
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g)
    w1 = torch.randn(4 * hidden, hidden, generator=g) * hidden ** -0.5
    w2 = torch.randn(hidden, 4 * hidden, generator=g) * (4 * hidden) ** -0.5
    tensors = {n: [t.to(device=device, dtype=DTYPES[n]) for t in (x, w1, w2)] for n in wanted}

    def run(n: str) -> float:
        a, b, c = tensors[n]
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(a, b)), c)
        _sync(device)
        return (time.perf_counter() - t0) / inner

    best = {n: float("inf") for n in wanted}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for n in wanted:  # warm-up (kernel selection, allocator)
                run(n)
            for r in range(reps):
                for n in (wanted if r % 2 == 0 else wanted[::-1]):
                    best[n] = min(best[n], run(n))
    finally:
        torch.set_num_threads(threads)
    out = {n: round(best[n] * 1e3, 4) for n in wanted}
    logger.debug("precision micro-measurement on %s: %s", key, out)
    if cache:
        _memo[key] = {**_memo.get(key, {}), **out}
        try:
            from .checkpoints import atomic_write

            path = _cache_path()
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            data[key] = {**data.get(key, {}), **out}
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))
        except OSError as e:  # a read-only home is no reason to fail
            logger.debug("precision cache not written: %s", e)
    return out


# ------------------------------------------------------------------------------------------------ resolution
def _check_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str = "auto", device: Union[str, torch.device] = "cpu", *,
                      cache: bool = True, width: Optional[int] = None) -> Precision:
    """Turn ``auto|fp32|bf16|fp16`` into a concrete :class:`Precision` for ``device``, with its reason.

    ``auto`` decides by measurement (see the module docstring) at the model's ``width`` (the image
    tower's, see :func:`model_width`; default :data:`DEFAULT_WIDTH`): a narrow tower's small matrices
    may not gain from bf16 at all, so a tiny model can stay fp32 where a ViT-B goes bf16. An explicit name is honoured, with a warning when it is
    known to be slow there (bf16 on a CPU without native bf16, fp16 on CPU).
    """
    _check_name(precision)
    dev = torch.device(device)
    kind = dev.type
    if precision != "auto":
        reason = "requested"
        if kind == "cpu" and precision == "bf16" and not cpu_bf16_support()[0]:
            reason = "requested; this CPU has no native bf16, so bf16 is emulated and likely slower than fp32"
            logger.warning("precision bf16: %s", reason)
        elif kind == "cpu" and precision == "fp16":
            reason = "requested; fp16 on CPU is slow for most ops (auto picks bf16 where the CPU supports it)"
            logger.warning("precision fp16: %s", reason)
        elif kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            reason = "requested; this GPU has no native bf16 (pre-Ampere): fp16 is the fast half precision here"
            logger.warning("precision bf16: %s", reason)
        return Precision(precision, precision, kind, reason)

    at = width or DEFAULT_WIDTH.get(kind, DEFAULT_WIDTH["cpu"])
    if kind == "cpu":
        native, features = cpu_bf16_support()
        if not native:
            return Precision("fp32", "auto", kind, f"auto: this CPU has no native bf16 ({features}): fp32")
        ms = measure_dtypes(dev, ("fp32", "bf16"), cache=cache, width=width)
        speedup = ms["fp32"] / ms["bf16"]
        if speedup >= MIN_SPEEDUP:
            return Precision("bf16", "auto", kind,
                             f"auto: native bf16 ({features}); bf16 weights measured {speedup:.1f}x faster than "
                             f"fp32 on a transformer MLP of width {at} (one thread)", ms)
        return Precision("fp32", "auto", kind,
                         f"auto: native bf16 ({features}) but bf16 measured only {speedup:.2f}x fp32 at width "
                         f"{at} (< {MIN_SPEEDUP}x): fp32", ms)
    if kind == "cuda":
        names = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported(including_emulation=False) else [])
        ms = measure_dtypes(dev, names, cache=cache, width=width)
        name = _device_name(dev)
        for half in ("fp16", "bf16"):  # fp16 first: the reference's dtype, more mantissa than bf16
            if half in ms and ms["fp32"] / ms[half] >= MIN_SPEEDUP:
                return Precision(half, "auto", kind, f"auto: {half} measured {ms['fp32'] / ms[half]:.1f}x faster "
                                                     f"than fp32 on {name} at width {at}", ms)
        return Precision("fp32", "auto", kind, f"auto: no half precision measured >= {MIN_SPEEDUP}x faster than "
                                               f"fp32 on {name} at width {at}", ms)
    return Precision("fp32", "auto", kind, f"auto: device type {kind!r} is not measured: fp32")


# ------------------------------------------------------------------------------------------------ application
def cast_model(model: torch.nn.Module, dtype: torch.dtype, text_dtype: Optional[torch.dtype] = None,
               vision: Optional[Sequence[torch.nn.Module]] = None) -> torch.nn.Module:
    """Cast ``model`` in place: the image tower to ``dtype``, everything else (the text tower) to
    ``text_dtype`` (default ``dtype``), except :data:`FP32_PARAMS` (logit scale/bias): float32.

    ``vision``: the image tower's modules (default ``[model.visual]``; a transformers model passes
    ``[model.vision_model, model.visual_projection]``). A module without any is cast to ``dtype`` whole."""
    if vision is None:
        vision = [model.visual] if isinstance(getattr(model, "visual", None), torch.nn.Module) else []
    vision = [m for m in vision if m is not None]
    model.to(dtype=text_dtype if text_dtype is not None and vision else dtype)
    for m in vision:
        m.to(dtype=dtype)
    for name in FP32_PARAMS:
        p = getattr(model, name, None)
        if isinstance(p, torch.nn.Parameter):
            p.data = p.data.float()
    return model


def model_width(modules: Sequence[torch.nn.Module]) -> Optional[int]:
    """A transformer's width: the most common ``in_features`` of the linear layers in ``modules`` (q/k/v/out
    projections and the MLP's first layer take the width; only the MLP's second takes 4x; a tie goes to
    the narrower). ``nn.MultiheadAttention``'s fused in-projection counts as one layer of ``embed_dim``.
    None without linear layers."""
    counts: Dict[int, int] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                counts[m.in_features] = counts.get(m.in_features, 0) + 1
            elif isinstance(m, torch.nn.MultiheadAttention):  # its fused in-projection is no nn.Linear
                counts[m.embed_dim] = counts.get(m.embed_dim, 0) + 1
    return max(counts, key=lambda k: (counts[k], -k)) if counts else None


def precision_of(model: torch.nn.Module) -> str:
    """``fp32`` / ``bf16`` / ``fp16``: the dtype of most of the image tower's (``model.visual``, else the
    model's) floating-point parameters."""
    counts: Dict[torch.dtype, int] = {}
    for p in getattr(model, "visual", model).parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    dtype = max(counts, key=counts.get) if counts else torch.float32
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def apply_precision(model: torch.nn.Module, precision: Union[str, Precision] = "auto",
                    device: Union[str, torch.device, None] = None, *, text_precision: Optional[str] = None,
                    vision: Optional[Sequence[torch.nn.Module]] = None, cache: bool = True) -> Precision:
    """Put ``model`` (in place) in ``precision``; returns the resolved :class:`Precision`.

    Args:
        model: an open_clip CLIP / :class:`~alphaclip_core.model.AlphaCLIP` (or any module) already on
            its device.
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or an already resolved :class:`Precision`.
        device: the device to resolve for (default: the model's).
        text_precision: the text tower's (``fp32``/``bf16``/``fp16``); default :data:`TEXT_PRECISION`.
        vision: the image tower's modules when they are not ``model.visual`` (see :func:`cast_model`).
    The image tower takes the precision's dtype, the text tower ``text_precision``'s, the logit
    scale/bias stay fp32. An AlphaCLIP returns float32 features from ``encode_image`` /
    ``encode_text`` whatever its weights' dtype. ``auto`` is measured at the image tower's width
    (:func:`model_width` of ``vision``, else ``model.visual``, else the whole model).
    """
    if text_precision is not None and text_precision not in DTYPES:
        raise ValueError(f"text_precision: expected one of {', '.join(DTYPES)}, got {text_precision!r}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if isinstance(precision, Precision):
        choice = precision
    else:
        towers = vision if vision is not None else [getattr(model, "visual", None)]
        towers = [m for m in towers if isinstance(m, torch.nn.Module)] or [model]
        choice = resolve_precision(precision, device, cache=cache, width=model_width(towers))
    cast_model(model, choice.dtype, DTYPES[text_precision or choice.text], vision)
    if hasattr(type(model), "feature_dtype"):
        model.feature_dtype = torch.float32
    return choice
