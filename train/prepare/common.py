"""What both preparation pipelines share: rank partition, resumable shard loop, summaries, input readers.

A run turns T *input shards* (tar files, or chunks of an image list) into T output shards of the same
names, written with :class:`alphaclip_train.schema.ShardWriter` (atomic). Under ``torchrun`` each rank
takes the input shards ``i`` with ``i % world == rank`` (:func:`partition`): disjoint, none missing.

Resume: an output shard is *finished* when its stats file ``<name>.stats.json`` exists; it is written
(atomically) right after the shard itself (and its ``<name>.index.json`` counts), so a killed run loses
at most the shard in flight, and a rerun skips finished shards. Each stats file records the run's
settings (``config``: inputs, models, thresholds...): a rerun with other settings is refused with a
message naming the settings that differ, unless ``restart`` asks to redo those shards. After all ranks
are done (a gloo barrier under torchrun), rank 0 sums the stats of every finished shard into
``summary.json`` beside the shards (atomic): counts of images, regions, dropped regions (by reason),
failed images, and which shards are done; and writes the folder's ``index.json`` (every shard's sample
counts, from the sidecars: see :mod:`alphaclip_train.index`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from alphaclip_core.checkpoints import atomic_write
from alphaclip_train.schema import IMAGE_EXTS, decode_image, iter_webdataset  # noqa: F401  (re-exported for prepare)

logger = logging.getLogger("alphaclip.prepare")

__all__ = ["ShardStats", "partition", "dist_env", "resolve_device", "run_shards", "read_summary",
           "iter_webdataset", "write_webdataset", "decode_image", "image_ext", "write_json_atomic",
           "expand_inputs", "SUMMARY_NAME"]

SUMMARY_NAME = "summary.json"
PathLike = Union[str, os.PathLike]


@dataclass
class ShardStats:
    """Counts for one output shard (summed over shards into the summary).

    Attributes:
        images: samples written.
        regions: regions written.
        dropped: regions dropped, by reason (e.g. ``degenerate_box``, ``outside_image``, ``low_score``).
        failed: input images that could not be read (corrupt bytes, bad JSON), by reason.
        skipped_images: readable images that kept no region (not written).
        box_only: regions written with ``mask: null`` (the mask came out empty).
    """

    images: int = 0
    regions: int = 0
    dropped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    skipped_images: int = 0
    box_only: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"images": self.images, "regions": self.regions, "dropped": sum(self.dropped.values()),
                "dropped_by_reason": {k: v for k, v in sorted(self.dropped.items()) if v}, "failed": sum(self.failed.values()),
                "failed_by_reason": {k: v for k, v in sorted(self.failed.items()) if v}, "skipped_images": self.skipped_images,
                "box_only": self.box_only}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ShardStats":
        return cls(images=d["images"], regions=d["regions"], dropped=Counter(d["dropped_by_reason"]),
                   failed=Counter(d["failed_by_reason"]), skipped_images=d["skipped_images"], box_only=d["box_only"])

    def __iadd__(self, other: "ShardStats") -> "ShardStats":
        self.images += other.images
        self.regions += other.regions
        self.dropped.update(other.dropped)
        self.failed.update(other.failed)
        self.skipped_images += other.skipped_images
        self.box_only += other.box_only
        return self


# ------------------------------------------------------------------------------------------------
# ranks and devices
def partition(num_shards: int, rank: int, world: int) -> List[int]:
    """Input shard indices of one rank: ``[i for i in range(num_shards) if i % world == rank]``.

    Over ranks ``0..world-1`` the lists are disjoint and cover every index once.
    """
    if world < 1:
        raise ValueError(f"world: expected >= 1 processes, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world={world}, got {rank}")
    if num_shards < 0:
        raise ValueError(f"num_shards: expected >= 0, got {num_shards}")
    return list(range(rank, num_shards, world))


def dist_env() -> Tuple[int, int, int]:
    """``(rank, world, local_rank)`` from torchrun's environment (``0, 1, 0`` when not under torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(device: Optional[str] = "auto") -> str:
    """``auto``/None -> ``cuda:<LOCAL_RANK>`` when CUDA is present, else ``cpu``; anything else unchanged."""
    if device not in (None, "auto"):
        from alphaclip_core.cli import check_device

        check_device(str(device))  # a clear error for a device this machine does not have
        return str(device)
    import torch

    return f"cuda:{dist_env()[2]}" if torch.cuda.is_available() else "cpu"


def _barrier(world: int) -> bool:
    """Wait for all ranks (gloo process group, created here under torchrun when none exists).

    Returns True when this call created the process group (the caller destroys it when done).
    """
    if world <= 1:
        return False
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    dist.barrier()
    return created


# ------------------------------------------------------------------------------------------------
# files
def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file + rename (readers never see half a file)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def expand_inputs(inputs: Sequence[PathLike], pattern: str = "*.tar", unique_names: bool = True) -> List[str]:
    """Input shards: files and URLs as given (brace ranges expanded), folders expanded to their sorted
    ``pattern`` matches. Any source of :mod:`alphaclip_train.sources` works (``https://``, ``s3://``,
    ``pipe:``...).

    With ``unique_names`` (input shards: output shards reuse their names) repeated file names are an error.
    """
    from fnmatch import fnmatch

    from alphaclip_train.sources import expand_sources, is_remote, source_name

    out: List[str] = []
    for item in inputs:
        src = os.fspath(item)
        local = not is_remote(src) and not any(c in src for c in "*?[{")
        if local and not os.path.exists(src[len("file://"):] if src.startswith("file://") else src):
            raise FileNotFoundError(f"inputs: {src} is neither a file nor a folder")
        try:
            found = expand_sources([src])
        except FileNotFoundError:
            if not (local and os.path.isdir(src)):
                raise
            found = []  # an empty folder
        out.extend(f for f in found if fnmatch(source_name(f), pattern))
    names = Counter(source_name(p) for p in out) if unique_names else Counter()
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise ValueError(f"inputs: input shards must have distinct file names (output shards reuse them), "
                         f"repeated: {dup[:5]}")
    return out


def write_webdataset(path: PathLike, samples: Iterable[Tuple[str, Dict[str, Union[bytes, str, dict]]]]) -> Path:
    """Write an img2dataset-style tar: for each ``(key, {ext: value})`` the members ``<key>.<ext>``.

    Values may be bytes, str (UTF-8) or dicts (JSON). Used for tests, examples and benchmarks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, value in parts.items():
                data = (json.dumps(value).encode() if isinstance(value, dict)
                        else value.encode() if isinstance(value, str) else bytes(value))
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def image_ext(data: bytes) -> Optional[str]:
    """The schema extension for encoded image bytes (``jpg``, ``png``, ``webp``), None for other formats."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def encode_for_shard(data: bytes, image: Image.Image) -> Tuple[bytes, str]:
    """Keep the original bytes when they are jpg/png/webp (no re-encoding loss), else re-encode as JPEG."""
    ext = image_ext(data)
    if ext is not None:
        return data, ext
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), "jpg"


# ------------------------------------------------------------------------------------------------
# the resumable shard loop
def stats_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(".tar")] + ".stats.json" if shard.name.endswith(".tar")
                           else shard.name + ".stats.json")


def read_summary(output_dir: PathLike, names: Sequence[str], config: Optional[Dict[str, Any]] = None,
                 pipeline: str = "") -> Dict[str, Any]:
    """Sum the stats of the finished shards among ``names`` in ``output_dir`` into a summary dict."""
    output_dir = Path(output_dir)
    total = ShardStats()
    done = []
    for name in names:
        sp = stats_path(output_dir / name)
        if sp.is_file() and (output_dir / name).is_file():
            total += ShardStats.from_json(json.loads(sp.read_text())["stats"])
            done.append(name)
    summary = {"pipeline": pipeline, **total.to_json(), "shards_total": len(names), "shards_done": len(done),
               "complete": len(done) == len(names),
               "missing_shards": [n for n in names if n not in set(done)][:100]}
    if config is not None:
        summary["config"] = config
    return summary


ProcessFn = Callable[[int, Callable[[bytes, Dict[str, Any], str], None], ShardStats], None]


def run_shards(output_dir: PathLike, names: Sequence[str], process: ProcessFn, *, pipeline: str,
               config: Optional[Dict[str, Any]] = None, rank: Optional[int] = None, world: Optional[int] = None,
               progress: bool = True, restart: bool = False) -> Dict[str, Any]:
    """Run ``process`` over this rank's unfinished shards; returns the summary (see module docstring).

    Args:
        output_dir: folder for the output shards, their stats files and ``summary.json``.
        names: the output shard file name of every input shard (index ``i`` -> ``names[i]``), same on
            every rank.
        process: ``process(i, write, stats)`` reads input shard ``i``, calls ``write(image_bytes, record, ext)``
            per sample and counts into ``stats`` (a :class:`ShardStats`). An exception aborts the run; the
            shard in flight is not kept.
        pipeline: name stored in the summary.
        config: JSON-able settings, stored in each stats file and the summary.
        rank, world: default from torchrun's environment (:func:`dist_env`).
        progress: show a tqdm bar over this rank's shards.
        restart: redo finished shards whose stats record other ``config`` settings (without it such
            shards raise ``ValueError`` naming the settings that differ, before any work).
    Returns:
        the summary of every finished shard of the run (all ranks, after a barrier), also written to
        ``output_dir/summary.json`` by rank 0.
    """
    from tqdm import tqdm

    from alphaclip_train.index import build_index, sidecar_name
    from alphaclip_train.schema import ShardWriter

    env_rank, env_world, _ = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mine = partition(len(names), rank, world)
    stale = _check_settings(output_dir, names, config, restart)
    for i in mine:
        if names[i] in stale:  # --restart: this rank redoes its shards made with other settings
            for p in (output_dir / names[i], stats_path(output_dir / names[i]), output_dir / sidecar_name(names[i])):
                p.unlink(missing_ok=True)
    todo = [i for i in mine if not (stats_path(output_dir / names[i]).is_file() and (output_dir / names[i]).is_file())]
    if len(todo) < len(mine):
        logger.info("rank %d: %d of %d shards already finished, skipped", rank, len(mine) - len(todo), len(mine))
    for i in tqdm(todo, desc=f"{pipeline} rank {rank}", unit="shard", disable=not progress):
        shard = output_dir / names[i]
        stats = ShardStats()
        with ShardWriter(shard) as writer:
            process(i, lambda data, record, ext="jpg": writer.write(data, record, ext), stats)
        write_json_atomic(stats_path(shard), {"shard": names[i], "rank": rank, "world": world,
                                                 "stats": stats.to_json(), "config": config})
        logger.info("rank %d: wrote %s (%d images, %d regions)", rank, shard, stats.images, stats.regions)
    created = _barrier(world)
    summary = read_summary(output_dir, names, config, pipeline)
    if rank == 0:
        write_json_atomic(output_dir / SUMMARY_NAME, summary)
        done = [str(output_dir / n) for n in names if stats_path(output_dir / n).is_file() and (output_dir / n).is_file()]
        if done:  # the folder's index.json: training reads every shard's count in one file
            build_index(done, progress=False)
    if created:
        import torch.distributed as dist

        dist.destroy_process_group()
    return summary


def _check_settings(output_dir: Path, names: Sequence[str], config: Optional[Dict[str, Any]],
                    restart: bool) -> List[str]:
    """Names of the finished shards made with other settings than ``config``.

    Every rank reads every finished shard's stats (so all ranks take the same decision). Without
    ``restart`` such shards are an error: mixing settings in one output would be silent damage.
    """
    if config is None:
        return []
    stale: List[str] = []
    diff: set = set()
    for name in names:
        sp = stats_path(output_dir / name)
        if not (sp.is_file() and (output_dir / name).is_file()):
            continue
        old = json.loads(sp.read_text()).get("config") or {}
        keys = {k for k in set(config) | set(old) if config.get(k) != old.get(k)}
        if keys:
            stale.append(name)
            diff |= keys
    if stale and not restart:
        raise ValueError(f"output: {output_dir} holds {len(stale)} finished shard(s) made with other settings "
                         f"({', '.join(sorted(diff))} differ): resuming would mix them. Use a new output folder, "
                         f"or restart (--restart) to redo those shards with these settings")
    if stale:
        logger.warning("restart: redoing %d shard(s) made with other settings (%s)", len(stale), ", ".join(sorted(diff)))
    return stale


def bool_mask_box(mask: np.ndarray) -> Optional[List[float]]:
    """The tight xyxy pixel box ``[x0, y0, x1 + 1, y1 + 1]`` of a ``[H, W]`` boolean mask, None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return None
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]
