"""The training loop: one function, :func:`train`, for one process or many (``torchrun``).

Defaults are the Alpha-CLIP recipe (SPEC.md): text tower frozen (no grads, not in the optimizer,
run under ``no_grad``); symmetric InfoNCE over the global batch with label smoothing 0.1 and the
logit scale fixed at 100; AdamW (weight decay 2e-2) with ``conv1_alpha`` at ``lr`` and the rest of
the vision tower at ``lr * lr_ratio`` (0.01); linear warm-up then cosine; r_s = 0.1 whole-image
samples. ``stage="clip"`` pretrains a plain CLIP with the same machinery (both towers trained, the
logit scale learned, ``conv1_alpha`` kept at zero, whole-image samples only): that is how the toy
model of :mod:`alphaclip_train.synthetic` gets its base.

Any open_clip ViT backbone trains the same way (``alpha-ViT-H-14``, ``alpha-EVA02-L-14``,
``alpha-ViT-SO400M-14-SigLIP``, ...): the same lr groups (``conv1_alpha`` at ``lr``, wherever the tower
keeps it, the rest of the vision tower at ``lr * lr_ratio``) and r_s. The loss follows the base
(``loss="auto"``): SigLIP's sigmoid loss for a base with a ``logit_bias`` (SigLIP / SigLIP2), with the
bias learned (at ``lr``, no weight decay) and the scale held at the base's own value in stage
``alpha``; CLIP's InfoNCE otherwise.

Checkpoints (``<output>/checkpoints/latest.pt``, written atomically) hold the model, optimizer,
scheduler, grad scaler, step, every rank's RNG states and the data position; a run started again
with the same output folder resumes exactly where the last checkpoint left off. With ``keep_every``
the weights are also kept every that many steps (``checkpoints/step-NNNNNNN.safetensors``, the whole
model's state dict, fp32), for looking at a run's course afterwards; ``latest.pt`` is overwritten.
The final weights go to ``<output>/final/``: ``visual.pth`` (the reference release's visual-only
format) and an open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from alphaclip_core.checkpoints import (ALPHA_KEYS, CheckpointError, atomic_write, detect_format, load_alpha_clip,
                                        load_pickled, load_state_dict_checked, read_state_dict,
                                        remove_stale_temp_files, save_reference, save_safetensors)
from alphaclip_core.errors import InputError
from alphaclip_core.model import AlphaCLIP, AlphaModel, AlphaVisionTransformer, add_alpha

from .data import RegionBatches, make_loader
from .loss import LOSSES, contrastive_loss, gather_rows, gather_sizes, loss_for, sigmoid_loss
from .master_weights import MasterWeights, frozen_in_trained_tower

__all__ = ["TrainConfig", "train", "build_model", "param_groups", "lr_lambda", "loss_name", "KILL_ENV", "PRECISIONS",
           "resolve_train_precision", "autocast_for", "optimizer_step"]

logger = logging.getLogger(__name__)

#: testing hook: a process SIGKILLs itself right after finishing this step (simulates a crash)
KILL_ENV = "ALPHACLIP_TRAIN_KILL_AT_STEP"
#: ``bf16`` is ``bf16-autocast`` (fp32 weights, ``torch.autocast``) on every device: on CPU it measured
#: faster than ``bf16-weights`` (bf16 model + fp32 master weights, :mod:`.master_weights`) for a B/16
#: (1.85x vs 0.95x fp32, benchmarks/results/train_speed_precision.md; the toy: 0.51x vs 0.69x, both slower than
#: fp32). ``bf16-weights`` can be asked for by name; the GPU suite measures both on a GPU.
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast", "bf16-weights")


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """The concrete training path of ``precision`` on ``device``: ``bf16`` -> ``bf16-autocast`` (measured
    the faster bf16 path for a B/16 on CPU; see :data:`PRECISIONS`); other values unchanged. ``device``
    is where a per-device choice would be made once the GPU suite has measured both paths on a GPU."""
    if precision == "bf16":
        return "bf16-autocast"
    return precision


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the Alpha-CLIP recipe.

    ``batch_size`` is per process and per micro-batch: the global batch is
    ``batch_size * accum * world_size``.
    """

    data: List[str]
    output: str
    model: str = "alpha-ViT-B-16"          #: open_clip model name (alpha config) or ``local-dir:FOLDER``
    init: Optional[str] = None              #: starting weights (plain CLIP, Alpha-CLIP, reference .pth)
    base: Optional[str] = None              #: base CLIP weights when ``init`` is a reference visual-only .pth
    stage: str = "alpha"                    #: ``alpha`` (the recipe) or ``clip`` (pretrain a plain CLIP)
    steps: int = 1000
    batch_size: int = 64
    accum: int = 1                          #: micro-batches per step (exact large-batch gradient)
    lr: float = 2e-4                        #: conv1_alpha's learning rate (whole model in stage clip)
    lr_ratio: float = 0.01                  #: the rest of the vision tower trains at lr * lr_ratio
    weight_decay: float = 2e-2
    warmup: int = 100
    min_lr_ratio: float = 0.0               #: cosine floor, as a fraction of the peak
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: Optional[float] = None
    label_smoothing: float = 0.1
    logit_scale: Optional[float] = 100.0    #: fixed multiplier (stage alpha); None: the model's own, fixed
    loss: str = "auto"                      #: auto (sigmoid for SigLIP bases, else contrastive), contrastive, sigmoid
    logit_scale_lr: Optional[float] = None  #: stage clip: the learned logit scale's peak lr (None: lr)
    whole_image_ratio: float = 0.1          #: r_s (stage clip always uses 1.0)
    unfreeze_last: Optional[int] = None     #: train only conv1_alpha + the last N blocks (+ ln_post, proj)
    freeze: Tuple[str, ...] = ()            #: parameter-name prefixes kept frozen (e.g. "token_embedding")
    precision: str = "fp32"                 #: one of PRECISIONS (fp16: autocast + grad scaler)
    grad_checkpointing: bool = False
    mode: str = "crop"                      #: paired transform geometry
    workers: int = 0
    shuffle_buffer: int = 1000
    interleave: int = 4                     #: shards read side by side (1: one shard at a time)
    seed: int = 0
    save_every: int = 500
    #: also keep the weights every N steps as checkpoints/step-NNNNNNN.safetensors (0: latest.pt only)
    keep_every: int = 0
    log_every: int = 10
    tensorboard: bool = False
    threads: Optional[int] = None           #: torch CPU threads per process (None: torch's default)
    device: Optional[str] = None            #: default: cuda:LOCAL_RANK when CUDA is available, else cpu
    resume: bool = True
    progress: bool = True
    max_empty_batches: int = 50             #: fail after this many steps in a row without a usable sample

    def validate(self) -> None:
        if not self.data:
            raise ValueError("data: expected at least one shard, JSONL file or folder")
        if self.stage not in ("alpha", "clip"):
            raise ValueError(f"stage: expected 'alpha' or 'clip', got {self.stage!r}")
        if self.loss not in ("auto",) + LOSSES:
            raise ValueError(f"loss: expected 'auto', 'contrastive' or 'sigmoid', got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "accum", "save_every", "log_every", "max_empty_batches",
                     "interleave"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup}")
        if self.keep_every < 0:
            raise ValueError(f"keep_every: expected >= 0 (0: keep no step files), got {self.keep_every}")
        if self.logit_scale_lr is not None and self.logit_scale_lr <= 0:
            raise ValueError(f"logit_scale_lr: expected > 0 or None, got {self.logit_scale_lr}")
        if self.lr <= 0 or self.lr_ratio < 0:
            raise ValueError(f"lr/lr_ratio: expected lr > 0 and lr_ratio >= 0, got {self.lr}, {self.lr_ratio}")
        if self.unfreeze_last is not None and self.unfreeze_last < 0:
            raise ValueError(f"unfreeze_last: expected >= 0 or None, got {self.unfreeze_last}")


# ------------------------------------------------------------------------------------------------ model
def build_model(name: str, init: Optional[str] = None, base: Optional[str] = None) -> AlphaCLIP:
    """An :class:`AlphaCLIP` from an open_clip model name (or ``local-dir:``), with optional weights.

    ``init`` may be a plain CLIP (OpenAI ``.pt``, open_clip file: ``conv1_alpha`` starts at zero), an
    Alpha-CLIP file, a reference visual-only ``.pth`` (then ``base`` gives the text tower), or a
    pretrained tag of the base (``webli`` for ``alpha-ViT-SO400M-14-SigLIP``: open_clip downloads the
    base weights; ``conv1_alpha`` starts at zero).
    """
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401  (registers the alpha configs)
    from alphaclip_core.cli import check_model_name

    check_model_name(name, "model")
    tag = init if init and not os.path.exists(init) else None
    if tag and open_clip.factory.get_pretrained_cfg(name, tag):  # a pretrained tag: the base weights, zero alpha
        model, init = open_clip.create_model(name, pretrained=tag), None
    else:
        model = open_clip.create_model(name)
    if not isinstance(model, AlphaModel):
        model = add_alpha(model)
    if init:
        sd = read_state_dict(init, "init")
        if detect_format(sd) == "clip" and base is None:
            load_state_dict_checked(model, sd, f"init {init}", allow_missing=ALPHA_KEYS + ("logit_bias",))
        else:
            load_alpha_clip(model, init, base)
    return model


def _is_text_param(name: str) -> bool:
    return not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")


def loss_name(model: AlphaCLIP, cfg: TrainConfig) -> str:
    """The loss of a run: ``cfg.loss``, or for ``auto`` the base's (:func:`~alphaclip_train.loss.loss_for`)."""
    name = loss_for(model) if cfg.loss == "auto" else cfg.loss
    if name == "sigmoid" and getattr(model, "logit_bias", None) is None:
        raise ValueError("loss: 'sigmoid' needs a model with a logit_bias (a SigLIP config, init_logit_bias)")
    return name


def _is_alpha_conv(name: str) -> bool:
    return name.endswith("conv1_alpha.weight")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _trainable(model: AlphaCLIP, cfg: TrainConfig) -> Dict[str, nn.Parameter]:
    """Set ``requires_grad`` for the stage and return the trained parameters by name."""
    out: Dict[str, nn.Parameter] = {}
    visual = model.visual
    block_prefix = f"visual.{visual.BLOCKS}."  # transformer.resblocks (open_clip ViT) / trunk.blocks (timm)
    blocks = len(visual.get_submodule(visual.BLOCKS))
    head = tuple(f"visual.{h}" for h in visual.HEAD)  # ln_post, proj (open_clip ViT) / norm, attn_pool, head (timm)
    n = cfg.unfreeze_last
    if n is not None and n > blocks:
        raise ValueError(f"unfreeze_last: the vision tower has {blocks} blocks, got {n}")
    sigmoid = loss_name(model, cfg) == "sigmoid"
    for name, p in model.named_parameters():
        if name == "logit_bias":
            train = sigmoid  # SigLIP's learnable bias (a CLIP config's bias is unused)
        elif cfg.stage == "clip":
            train = not _is_alpha_conv(name)
        elif not name.startswith("visual."):
            train = False
        elif n is None or _is_alpha_conv(name):
            train = True
        elif name.startswith(block_prefix):
            train = int(name[len(block_prefix):].split(".")[0]) >= blocks - n
        else:
            train = n > 0 and _under(name, head)
        if any(name.startswith(prefix) for prefix in cfg.freeze):
            train = False
        p.requires_grad_(train)
        if train:
            out[name] = p
    return out


def param_groups(model: AlphaCLIP, cfg: TrainConfig) -> List[Dict[str, Any]]:
    """AdamW groups: ``conv1_alpha`` at lr; the rest at lr * lr_ratio (stage clip: lr), no weight
    decay on 1-D tensors (gains, biases, class embedding, logit scale); SigLIP's ``logit_bias`` (sigmoid
    loss) at lr without weight decay."""
    params = _trainable(model, cfg)
    rest_lr = cfg.lr if cfg.stage == "clip" else cfg.lr * cfg.lr_ratio
    groups: Dict[str, Dict[str, Any]] = {
        "alpha": {"name": "alpha", "params": [], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "logit_bias": {"name": "logit_bias", "params": [], "lr": cfg.lr, "weight_decay": 0.0},
        "decay": {"name": "decay", "params": [], "lr": rest_lr, "weight_decay": cfg.weight_decay},
        "no_decay": {"name": "no_decay", "params": [], "lr": rest_lr, "weight_decay": 0.0},
    }
    if cfg.stage == "clip" and cfg.logit_scale_lr is not None:
        # a short run gives the temperature its own pace (CLIP's reaches its cap of 100 early in a long run);
        # inserted before no_decay so that the log's lr / lr_rest stay the first and last groups
        no_decay = groups.pop("no_decay")
        groups["logit_scale"] = {"name": "logit_scale", "params": [], "lr": cfg.logit_scale_lr, "weight_decay": 0.0}
        groups["no_decay"] = no_decay
    for name, p in params.items():
        key = "alpha" if _is_alpha_conv(name) else ("decay" if p.ndim >= 2 else "no_decay")
        if name == "logit_bias":
            key = "logit_bias"
        if name == "logit_scale" and "logit_scale" in groups:
            key = "logit_scale"
        groups[key]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def lr_lambda(warmup: int, steps: int, min_ratio: float = 0.0):
    """Multiplier of the peak lr at optimizer step ``s`` (0-based): linear warm-up, then cosine."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = (s - warmup) / max(1, steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


class _Towers(nn.Module):
    """What DDP wraps: ``(image, alpha, text) -> (image features, text features, logit scale)``."""

    def __init__(self, model: AlphaCLIP, train_text: bool) -> None:
        super().__init__()
        self.model, self.train_text = model, train_text

    def forward(self, image: torch.Tensor, alpha: Optional[torch.Tensor], text: torch.Tensor):
        img = self.model.encode_image(image, alpha, normalize=True)
        if self.train_text:
            txt = self.model.encode_text(text, normalize=True)
        else:
            with torch.no_grad():
                txt = self.model.encode_text(text, normalize=True)
        return img, txt, self.model.logit_scale


# ------------------------------------------------------------------------------------------------ state
def _rng_state() -> Dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]),
                         float(state["numpy_gauss"][0])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _dist_info() -> Tuple[int, int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _setup_distributed(device: Optional[str]) -> Tuple[torch.device, bool]:
    """Initialise the process group when launched by torchrun; returns (device, we_initialised)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    from alphaclip_core.cli import check_device

    dev = check_device(device, "device")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    return dev, created


class _Log:
    """Metrics to ``log.jsonl`` (and TensorBoard), rank 0 only; rows past a resumed step are dropped."""

    def __init__(self, folder: Path, start_step: int, enabled: bool, tensorboard: bool) -> None:
        self.path = folder / "log.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = []
            for n, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a writer killed mid-line leaves a torn last line
                    logger.warning("%s:%d: dropped an unreadable line (a killed run's last write?)", self.path, n)
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= start_step:
                    keep.append(line)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard: `pip install tensorboard` to log to TensorBoard") from e
            self.tb = SummaryWriter(str(folder / "tensorboard"), purge_step=start_step + 1)

    def write(self, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run (or resume) a training run; returns a summary (steps, last loss, output files).

    Launch with ``torchrun --nproc_per_node N -m alphaclip_core.cli train ...`` (or the
    ``alphaclip train`` entry point) for DDP: NCCL on GPUs, gloo on CPU.
    """
    import open_clip
    from tqdm import tqdm

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, created_pg = _setup_distributed(cfg.device)
    rank, world, _ = _dist_info()
    out = Path(cfg.output)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(cfg), indent=2) + "\n"
        atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(text))
        # temporary files of writes a kill interrupted (each up to a checkpoint's size)
        for folder in (ckpt_dir, out, out / "final"):
            remove_stale_temp_files(folder)
    try:
        torch.manual_seed(cfg.seed + rank)
        np.random.seed((cfg.seed + rank) % 2**32)
        random.seed(cfg.seed + rank)
        model = build_model(cfg.model, cfg.init, cfg.base).to(device)
        model.visual.check_alpha = False  # alpha comes from the paired transform: no per-step sync
        groups = param_groups(model, cfg)
        precision = resolve_train_precision(cfg.precision, device)
        master = MasterWeights(model, groups) if precision == "bf16-weights" else None
        if device.type == "cpu" and precision.startswith("bf16") and frozen_in_trained_tower(model):
            logger.warning("bf16 on CPU with frozen parameters inside the trained vision tower (unfreeze_last/freeze): "
                           "PyTorch's bf16 CPU linear is very slow for frozen weights there; fp32 may be faster")
        if master is not None:
            groups = master.param_groups  # the optimizer updates the fp32 masters
        logger.info("training precision %s on %s", precision, device)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.steps, cfg.min_lr_ratio))
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        train_text = cfg.stage == "clip"
        learn_scale = cfg.stage == "clip"
        loss = loss_name(model, cfg)
        text_tower = getattr(model, "text", None) or model.transformer  # CustomTextCLIP / CLIP
        if not train_text:
            text_tower.eval()  # frozen text tower (no dropout either way)

        start_step, next_batch, data_before, resumed_loss = 0, 0, None, float("nan")
        totals = torch.zeros(4, dtype=torch.float64)  # samples, whole-image, skipped, empty steps (all ranks)
        latest = ckpt_dir / "latest.pt"
        if cfg.resume and latest.exists():
            state = _read_resume_state(latest, cfg)
            _restore(latest, state, model, opt, sched, scaler)
            if master is not None:
                master.load_state_dict(state["model"])  # the fp32 masters (the model holds them rounded)
            start_step, next_batch = int(state["step"]), int(state["next_batch"])
            saved = state.get("totals")
            if isinstance(saved, torch.Tensor) and saved.numel() <= totals.numel():
                totals[:saved.numel()] = saved.to(torch.float64)
            data_before = state.get("data")
            # a finished run resumed does no step: report the loss it ended with, not "no loss yet" (NaN)
            resumed_loss = float(state.get("loss", float("nan")))
            if int(state["world_size"]) != world:
                logger.warning("resuming a %d-process run with %d processes: the data order changes",
                               int(state["world_size"]), world)
            elif rank < len(state["rng"]):
                _set_rng_state(state["rng"][rank])
            logger.info("resumed from %s at step %d", latest, start_step)

        tokenizer = open_clip.get_tokenizer(cfg.model)
        vcfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        dataset = RegionBatches(
            cfg.data, tokenizer, cfg.batch_size, int(size),
            whole_image_ratio=1.0 if cfg.stage == "clip" else cfg.whole_image_ratio, mode=cfg.mode,
            mean=vcfg.get("mean"), std=vcfg.get("std"), seed=cfg.seed, rank=rank, world_size=world,
            shuffle_buffer=cfg.shuffle_buffer, interleave=cfg.interleave, start_batch=next_batch,
            progress=cfg.progress and rank == 0)
        if data_before is not None and data_before != dataset.fingerprint():
            logger.warning("resuming with other data or data settings than the checkpoint's (sources, their sample "
                           "counts, seed, batch size, r_s, shuffle buffer or process count changed): the batches "
                           "from here on differ from an uninterrupted run's")
        loader = iter(make_loader(dataset, cfg.workers))

        towers = _Towers(model, train_text)
        ddp: nn.Module = towers
        if world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                towers, device_ids=[device.index] if device.type == "cuda" else None)
        autocast = autocast_for(precision, device)

        fixed_scale = cfg.logit_scale if cfg.logit_scale is not None else float(model.logit_scale.detach().exp())
        if loss == "sigmoid":  # SigLIP's scale goes with its bias: the base's own (learned in stage clip)
            fixed_scale = float(model.logit_scale.detach().exp())
        log = _Log(out, start_step, rank == 0, cfg.tensorboard)
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        bar = tqdm(total=cfg.steps, initial=start_step, disable=rank != 0 or not cfg.progress,
                   desc=f"train[{cfg.stage}]", dynamic_ncols=True)
        last_loss = resumed_loss
        empty_run: List[int] = []          # batch numbers of the current run of steps without a sample
        empty_reasons: List[str] = []      # the first problems of that run
        warned = 0
        t0, seen = time.perf_counter(), 0
        step = start_step
        ddp.train()
        if not train_text:
            text_tower.eval()
        while step < cfg.steps:
            micro = [next(loader) for _ in range(cfg.accum)]
            next_batch += cfg.accum
            for b in micro:
                if b["reasons"]:
                    logger.debug("skipped %d sample(s) in batch %d: %s", b["skipped"], b["index"], b["reasons"])
                    if warned < 3:  # the first few problems are worth a look; the rest are counted
                        warned += 1
                        logger.warning("skipped a corrupt sample (batch %d): %s%s", b["index"], b["reasons"][0],
                                       "" if warned < 3 else " (further ones are counted in log.jsonl 'skipped')")
            # a micro-batch with no usable sample (every image corrupt) is dropped on every rank alike
            sizes = torch.tensor([b["image"].shape[0] for b in micro], dtype=torch.int64)
            if world > 1:
                sizes = sizes.to(device)
                dist.all_reduce(sizes, op=dist.ReduceOp.MIN)
                sizes = sizes.cpu()
            keep = [b for b, n in zip(micro, sizes.tolist()) if n > 0]
            dropped = sum(b["image"].shape[0] for b, n in zip(micro, sizes.tolist()) if n == 0)
            if not keep:
                counts = torch.tensor([0, 0, sum(b["skipped"] for b in micro) + dropped, 0], dtype=torch.float64)
                if world > 1:
                    counts = counts.to(device)
                    dist.all_reduce(counts)
                    counts = counts.cpu()
                totals += counts
                totals[3] += 1
                empty_run += [b["index"] for b in micro]
                empty_reasons += [r for b in micro for r in b["reasons"]][:max(0, 3 - len(empty_reasons))]
                if len(empty_run) >= cfg.max_empty_batches * cfg.accum:
                    if world > 1:  # every rank stops here together; name the problems any rank saw
                        seen_by: List[Any] = [None] * world
                        dist.all_gather_object(seen_by, empty_reasons)
                        empty_reasons = [r for rs in seen_by for r in rs][:3]
                    raise InputError(
                        f"data: {len(empty_run)} batch{'es' if len(empty_run) > 1 else ''} in a row (batch "
                        f"{empty_run[0]}{f'..{empty_run[-1]}' if len(empty_run) > 1 else ''}) had no "
                        f"usable sample; is the data readable? First problems: {'; '.join(empty_reasons) or 'none'}"
                        f" (--max-empty-batches {cfg.max_empty_batches} steps without a sample are tolerated)")
                logger.warning("step %d: batch %s had no usable sample; skipped (%d in a row)", step + 1,
                               ",".join(str(b["index"]) for b in micro), len(empty_run))
                continue
            empty_run, empty_reasons = [], []
            micro_skipped = sum(b["skipped"] for b in micro) + dropped
            micro = keep
            loss_value = _step(ddp, towers, micro, device, autocast, scaler, learn_scale, cfg, rank, world,
                               fixed_scale, loss=loss)
            optimizer_step(opt, scaler, master, cfg.grad_clip)
            sched.step()
            if learn_scale:
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
            step += 1
            counts = torch.tensor([sum(b["image"].shape[0] for b in micro), sum(int(b["whole"].sum()) for b in micro),
                                   micro_skipped, 0], dtype=torch.float64)
            if world > 1:
                counts = counts.to(device)
                dist.all_reduce(counts)
                counts = counts.cpu()
            totals += counts
            seen += int(counts[0])
            last_loss = float(loss_value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t0
                row = {"step": step, "loss": last_loss, "lr": opt.param_groups[0]["lr"],
                       "lr_rest": opt.param_groups[-1]["lr"], "samples_per_s": seen / dt if dt > 0 else 0.0,
                       "samples": int(totals[0]), "whole_image": int(totals[1]), "skipped": int(totals[2]),
                       "empty_steps": int(totals[3])}
                if learn_scale:
                    row["logit_scale"] = float(model.logit_scale.detach().exp())
                if loss == "sigmoid":
                    row["logit_bias"] = float(model.logit_bias.detach().reshape(()))
                log.write(row)
                bar.set_postfix(loss=f"{last_loss:.4f}", skipped=int(totals[2]))
                t0, seen = time.perf_counter(), 0
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save_checkpoint(latest, master or model, opt, sched, scaler, step, next_batch, cfg, rank, world,
                                 totals, dataset.fingerprint(), last_loss)
            if cfg.keep_every and step % cfg.keep_every == 0 and rank == 0:
                weights = (master or model).state_dict()
                save_safetensors({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                                 ckpt_dir / f"step-{step:07d}.safetensors")
            if kill_at and step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        log.close()
        if rank == 0 and totals[2] > 0:
            logger.warning("skipped %d corrupt sample(s) in all (%d step(s) had none usable); see log.jsonl",
                           int(totals[2]), int(totals[3]))
        files: Dict[str, str] = {}
        if master is not None:
            master.restore_fp32()  # final weights in fp32 (the masters; the frozen text tower as loaded)
        if rank == 0:
            files = _save_final(model, out / "final")
        if world > 1:
            dist.barrier()
        return {"step": step, "loss": last_loss, "world_size": world, "files": files,
                "samples": int(totals[0]), "skipped": int(totals[2]), "empty_steps": int(totals[3])}
    finally:
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


def autocast_for(precision: str, device: torch.device):
    """A zero-argument factory of the forward's autocast context for a resolved training precision
    (``bf16-autocast``, ``fp16``; a null context otherwise)."""
    amp_dtype = {"bf16-autocast": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, master: Optional[MasterWeights],
                   grad_clip: Optional[float] = None) -> None:
    """Everything after backward: gradients to the fp32 masters (bf16-weights), unscale + clip, the
    optimizer step, the scaler update, zeroed gradients, masters back into the model."""
    if master is not None:
        master.grads_to_master()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if master is not None:
        master.master_to_model()


def _step(ddp: nn.Module, towers: _Towers, micro: Sequence[Dict[str, Any]], device: torch.device, autocast,
          scaler: torch.amp.GradScaler, learn_scale: bool, cfg: TrainConfig, rank: int, world: int,
          fixed_scale: Optional[float] = None, loss: str = "contrastive") -> torch.Tensor:
    """Forward/backward of one optimizer step (``len(micro)`` micro-batches); returns the global loss."""
    tensors = [(b["image"].to(device, non_blocking=True), b["alpha"].to(device, non_blocking=True),
                b["text"].to(device, non_blocking=True)) for b in micro]
    sizes_local = [t[0].shape[0] for t in tensors]
    n_local = sum(sizes_local)
    sizes = gather_sizes(n_local, device, world)
    offset = sum(sizes[:rank])
    cached_img: Optional[torch.Tensor] = None
    cached_txt: Optional[torch.Tensor] = None
    if len(micro) > 1:  # features of every micro-batch first, without grad (open_clip's accum_freq)
        with torch.no_grad(), autocast():
            feats = [towers(*t) for t in tensors]
        cached_img = torch.cat([f[0].float() for f in feats])
        cached_txt = torch.cat([f[1].float() for f in feats])
    value = torch.tensor(0.0)
    start = 0
    for j, (image, alpha, text) in enumerate(tensors):
        sync = j == len(tensors) - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
        ctx = contextlib.nullcontext() if sync else ddp.no_sync()
        with ctx:
            with autocast():
                img, txt, scale = ddp(image, alpha, text)
            img, txt = img.float(), txt.float()
            if cached_img is None:
                local_img, local_txt = img.detach(), txt.detach()
            else:
                local_img, local_txt = cached_img.clone(), cached_txt.clone()
                local_img[start:start + img.shape[0]] = img.detach()
                local_txt[start:start + img.shape[0]] = txt.detach()
            all_img, all_txt = gather_rows(local_img, sizes), gather_rows(local_txt, sizes)
            logit_scale = scale.exp() if learn_scale else (fixed_scale or cfg.logit_scale or 100.0)
            if loss == "sigmoid":
                total, value = sigmoid_loss(img, txt, logit_scale, towers.model.logit_bias, offset=offset + start,
                                            replicas=world, accum=len(tensors), all_image=all_img, all_text=all_txt)
            else:
                total, value = contrastive_loss(img, txt, logit_scale, label_smoothing=cfg.label_smoothing,
                                                offset=offset + start, replicas=world, accum=len(tensors),
                                                all_image=all_img, all_text=all_txt)
            scaler.scale(total).backward()
        start += img.shape[0]
    return value


def _save_checkpoint(path: Path, model: AlphaCLIP, opt, sched, scaler, step: int, next_batch: int,
                     cfg: TrainConfig, rank: int, world: int, totals: Optional[torch.Tensor] = None,
                     data: Optional[str] = None, loss: float = float("nan")) -> None:
    rng = _rng_state()
    if world > 1:
        all_rng: List[Any] = [None] * world
        dist.all_gather_object(all_rng, rng)
    else:
        all_rng = [rng]
    if rank == 0:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "step": step,
                 "next_batch": next_batch, "world_size": world, "rng": all_rng, "data": data,
                 "config": json.dumps(asdict(cfg)), "loss": loss,
                 "totals": (totals if totals is not None else torch.zeros(4, dtype=torch.float64)).clone()}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        logger.debug("checkpoint %s (step %d)", path, step)
    if world > 1:
        dist.barrier()


_RESUME_HINT = (". Start afresh with --no-resume (the run's checkpoint is then overwritten) or write to another "
                "--output")
_STATE_KEYS = ("model", "optimizer", "scheduler", "step", "next_batch", "world_size", "rng")


def _read_resume_state(latest: Path, cfg: TrainConfig) -> Dict[str, Any]:
    """``latest.pt`` read safely (weights_only) and checked to be a training state of this run."""
    try:
        state = load_pickled(latest, "resume")
    except CheckpointError as e:
        raise CheckpointError(f"{str(e).rstrip('.')}{_RESUME_HINT}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"resume: {latest} is not a training checkpoint of `alphaclip train` (missing "
                              f"{missing}){_RESUME_HINT}")
    try:
        saved = json.loads(state.get("config") or "{}")
    except (TypeError, ValueError):
        saved = {}
    if isinstance(saved, dict) and saved.get("model") not in (None, cfg.model):
        logger.warning("resume: %s was written by a run of %s; this run is %s", latest, saved["model"], cfg.model)
    return state


def _restore(latest: Path, state: Dict[str, Any], model: AlphaCLIP, opt, sched, scaler) -> None:
    """Load a resume state into the run's objects, with errors that say what does not fit."""
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"resume: {latest} holds no model state dict{_RESUME_HINT}")
    try:
        load_state_dict_checked(model, state["model"], f"resume: {latest}")
    except CheckpointError as e:
        raise CheckpointError(f"{str(e).rstrip('.')}. It was written by a run of another model or architecture"
                              f"{_RESUME_HINT}") from None
    # this run's hyper-parameters (from its command line): the optimizer's state dict brings the saved run's
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    base_lrs = list(sched.base_lrs)
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        int(state["step"]), int(state["next_batch"]), int(state["world_size"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"resume: {latest}: its optimizer/scheduler state does not fit this run (another "
                              f"--stage, --freeze or --unfreeze-last?): {str(e).splitlines()[0] if str(e) else e!r}"
                              f"{_RESUME_HINT}") from None
    _follow_this_schedule(opt, sched, fresh, base_lrs)


def _follow_this_schedule(opt, sched, fresh: List[Dict[str, Any]], base_lrs: List[float]) -> None:
    """After a resume, go on with THIS run's learning rates, weight decay and schedule (--lr, --lr-ratio,
    --warmup, --steps, --min-lr-ratio, --weight-decay) from the saved step, instead of the saved run's.

    The optimizer's state dict carries the saved run's hyper-parameters, including the lr its schedule
    had set for the next step, which the first resumed step would otherwise use. For an unchanged
    command line every value is recomputed by the same expression, so a resume stays bit-exact.
    """
    changed = sorted({k for g, f in zip(opt.param_groups, fresh) for k, v in f.items()
                      if k not in ("lr", "initial_lr") and g.get(k) != v}
                     | ({"lr"} if list(sched.base_lrs) != base_lrs else set()))
    for group, f, base in zip(opt.param_groups, fresh, base_lrs):
        group.update({k: v for k, v in f.items() if k != "lr"})
        group["initial_lr"] = base
    sched.base_lrs = base_lrs
    saved_next = [group["lr"] for group in opt.param_groups]
    for group, base, factor in zip(opt.param_groups, base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in opt.param_groups]
    if "lr" not in changed and sched._last_lr != saved_next:
        changed.append("the schedule (--steps, --warmup or --min-lr-ratio)")
    if changed:
        logger.warning("resume: %s differ from the saved run's; this run's values apply from step %d on",
                       ", ".join(changed), sched.last_epoch + 1)


def _save_final(model: AlphaCLIP, folder: Path) -> Dict[str, str]:
    """Final weights: reference visual-only ``visual.pth`` (OpenAI-style ViT towers only: the reference
    format has no names for a timm tower) + an open_clip folder (or a bare safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if isinstance(model.visual, AlphaVisionTransformer):
        files["reference"] = str(save_reference(model, folder / "visual.pth"))
    if getattr(model, "model_cfg", None) is not None:
        import alphaclip_integrations.open_clip as aoc
        aoc.save_pretrained(model, folder)
        files["open_clip"] = str(folder / "open_clip_model.safetensors")
        files["open_clip_config"] = str(folder / "open_clip_config.json")
    else:
        files["open_clip"] = str(save_safetensors(model, folder / "open_clip_model.safetensors"))
    return files
