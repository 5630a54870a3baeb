"""Shard indexes: how many samples (and region samples) each shard holds, known without reading it.

Training needs each shard's size to resume at step N by opening only the shards still in play
(:mod:`alphaclip_train.data`). The counts live next to the shards, in two forms (same fields):

* ``<stem>.index.json`` beside ``<stem>.tar`` / ``<stem>.jsonl``: written by
  :class:`alphaclip_train.schema.ShardWriter` when it closes a shard (so every writer, ``data prepare-*``
  and the synthetic data included, leaves one; one file per shard, so parallel writers never race);
* ``index.json`` in the folder: every shard of the folder in one file (one read instead of one per
  shard, which matters for 2,000 shards on S3/HTTP), written by ``alphaclip data index FOLDER``
  (which counts the shards that have no sidecar by reading them once) and by ``data prepare-*``.

A folder index looks like::

    {"format": "alphaclip-shard-index", "version": 1,
     "shards": {"shard-00000.tar": {"samples": 1000, "invalid": 0, "regions": 2710, "captioned": 1000,
                                    "captioned_regions": 2710, "captioned_empty": 0, "bytes": 52428800,
                                    "error": null}, ...}}

``samples`` counts complete samples (image + record), ``invalid`` those whose record is not valid JSON
or fails :func:`alphaclip_train.schema.validate_record`; ``regions``, ``captioned``,
``captioned_regions`` and ``captioned_empty`` (captioned records without regions) describe the valid
ones; from them :meth:`ShardCounts.items` gives the number of region samples training draws from the
shard. ``bytes`` is the shard's size (a local shard whose size changed is counted again); ``error`` is
set when the shard could not be read to its end (the counts then cover what was readable).

:func:`load_counts` finds the counts of a list of sources: folder index, then sidecars, then (with a
logged warning naming the command that avoids it) by reading the shards once; under ``torchrun`` rank
0 does this and broadcasts the result, so the shards are read once, not once per process.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import sources as _sources
from .schema import describe_error, iter_records, validate_record

__all__ = ["ShardCounts", "INDEX_NAME", "INDEX_FORMAT", "sidecar_name", "count_source", "load_counts",
           "build_index", "write_folder_index", "read_folder_index", "folder_index_names", "record_items"]

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "alphaclip-shard-index"
INDEX_VERSION = 1


def sidecar_name(shard_name: str) -> str:
    """``shard-00042.tar`` -> ``shard-00042.index.json``."""
    stem = shard_name.rsplit(".", 1)[0] if shard_name.endswith(_sources.SHARD_SUFFIXES) else shard_name
    return stem + ".index.json"


def record_items(valid: bool, regions: int, captioned: bool, whole_only: bool) -> int:
    """How many region samples training draws from one record (see :mod:`alphaclip_train.data`).

    An invalid record gives one (counted as skipped); with ``whole_only`` (r_s = 1) a captioned record
    gives one whole-image sample and an uncaptioned one its regions; otherwise a record gives one sample
    per region (one of them may be the whole image), and a captioned record without regions one
    whole-image sample.
    """
    if not valid:
        return 1
    if whole_only:
        return 1 if captioned else regions
    return regions if regions else int(captioned)


@dataclass
class ShardCounts:
    """The counts of one shard (see the module docstring)."""

    samples: int = 0
    invalid: int = 0
    regions: int = 0
    captioned: int = 0
    captioned_regions: int = 0
    captioned_empty: int = 0
    bytes: Optional[int] = None
    error: Optional[str] = None

    def add(self, record: Any) -> None:
        """Count one sample's record (a dict, or a reason string for a record that could not be parsed)."""
        self.samples += 1
        if not isinstance(record, dict) or validate_record(record, decode_masks=False):
            self.invalid += 1
            return
        n = len(record["regions"])
        self.regions += n
        if record["caption"].strip():
            self.captioned += 1
            self.captioned_regions += n
            self.captioned_empty += int(n == 0)

    def items(self, whole_only: bool = False) -> int:
        """Region samples per epoch (incl. one per invalid record); ``whole_only`` for r_s = 1."""
        if whole_only:
            return self.invalid + self.captioned + (self.regions - self.captioned_regions)
        return self.invalid + self.regions + self.captioned_empty

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Dict[str, Any], where: str = "index") -> "ShardCounts":
        names = {f.name for f in fields(cls)}
        try:
            c = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise ValueError(f"{where}: not a shard count entry ({e})") from None
        for k in ("samples", "invalid", "regions", "captioned", "captioned_regions", "captioned_empty"):
            if not isinstance(getattr(c, k), int) or getattr(c, k) < 0:
                raise ValueError(f"{where}: '{k}' must be a count >= 0, got {getattr(c, k)!r}")
        return c


# ------------------------------------------------------------------------------------------------ counting
def _size(src: str) -> Optional[int]:
    if _sources.is_remote(src):
        return None
    try:
        return os.path.getsize(src[len("file://"):] if src.startswith("file://") else src)
    except OSError:
        return None


def count_source(src: str) -> ShardCounts:
    """Count one source by reading it (records parsed and validated, images not decoded).

    A source that cannot be read to its end gets ``error`` set (the counts cover what was readable).
    """
    counts = ShardCounts(bytes=_size(src))
    try:
        for image, record in iter_records(src):
            counts.add(record if image is not None else str(record))
    except Exception as e:  # noqa: BLE001 - any read error (404, truncated stream, pipe exit status) is recorded
        counts.error = describe_error(e)
        logger.warning("index: %s could not be read to its end (%s); counted %d readable samples",
                       src, counts.error, counts.samples)
    return counts


def _count_many(srcs: Sequence[str], threads: int, progress: bool, desc: str) -> List[ShardCounts]:
    from tqdm import tqdm

    if not srcs:
        return []
    remote = any(_sources.is_remote(s) for s in srcs)
    workers = max(1, min(threads if remote else 1, len(srcs)))
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(count_source, srcs), total=len(srcs), desc=desc, unit="shard",
                         disable=not progress, leave=False))


# ------------------------------------------------------------------------------------------------ files
def _parse_index(data: bytes, where: str) -> Dict[str, Any]:
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != INDEX_FORMAT:
        raise ValueError(f"{where}: not an alphaclip shard index (expected \"format\": \"{INDEX_FORMAT}\")")
    if int(obj.get("version", 0)) > INDEX_VERSION:
        raise ValueError(f"{where}: index version {obj.get('version')} is newer than this alpha-clip reads "
                         f"({INDEX_VERSION}); upgrade alpha-clip")
    return obj


def read_folder_index(folder: str) -> Optional[Dict[str, ShardCounts]]:
    """``{shard name: counts}`` from ``folder/index.json``, None when there is none (or it is not ours:
    a warning says so)."""
    where = _sources.join_location(folder, INDEX_NAME)
    try:
        data = _sources.read_bytes(where)
    except Exception as e:  # noqa: BLE001 - an unreachable index is a missing one (the shards are counted)
        logger.warning("index: cannot read %s (%s: %s)", where, type(e).__name__, e)
        return None
    if data is None:
        return None
    try:
        obj = _parse_index(data, where)
        shards = obj.get("shards")
        if not isinstance(shards, dict):
            raise ValueError(f"{where}: 'shards' must map shard names to counts")
        return {name: ShardCounts.from_json(d, f"{where}: {name}") for name, d in shards.items()}
    except ValueError as e:
        logger.warning("index: ignoring %s", e)
        return None


def folder_index_names(folder: str) -> Optional[List[str]]:
    """The shard names a folder's ``index.json`` lists (sorted), None without one."""
    idx = read_folder_index(folder)
    return sorted(idx) if idx else None


def write_folder_index(folder: str, counts: Dict[str, ShardCounts], merge: bool = True) -> str:
    """Write ``folder/index.json`` (merged with the entries already there unless ``merge=False``)."""
    entries: Dict[str, ShardCounts] = {}
    if merge:
        entries.update(read_folder_index(folder) or {})
    entries.update(counts)
    obj = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
           "shards": {k: entries[k].to_json() for k in sorted(entries)}}
    where = _sources.join_location(folder, INDEX_NAME)
    return _sources.write_bytes_atomic(where, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_sidecar(shard_path: str, counts: ShardCounts) -> str:
    """Write ``<stem>.index.json`` beside a shard."""
    folder = _sources.source_folder(shard_path) or "."
    name = _sources.source_name(shard_path)
    obj = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "shard": name, **counts.to_json()}
    return _sources.write_bytes_atomic(_sources.join_location(folder, sidecar_name(name)),
                                       (json.dumps(obj, sort_keys=True) + "\n").encode())


def _read_sidecars(srcs: Sequence[Tuple[int, str, str]], threads: int) -> Dict[int, ShardCounts]:
    """``{i: counts}`` for the sources whose sidecar exists (read in parallel for remote folders)."""
    def one(item: Tuple[int, str, str]) -> Tuple[int, Optional[ShardCounts]]:
        i, folder, name = item
        where = _sources.join_location(folder, sidecar_name(name))
        try:
            data = _sources.read_bytes(where)
            if data is None:
                return i, None
            return i, ShardCounts.from_json(_parse_index(data, where), where)
        except Exception as e:  # noqa: BLE001 - unreadable sidecar: count the shard instead
            logger.warning("index: ignoring %s (%s: %s)", where, type(e).__name__, e)
            return i, None

    remote = any(_sources.is_remote(f) for _, f, _ in srcs)
    with ThreadPoolExecutor(max(1, min(threads if remote else 1, len(srcs) or 1))) as pool:
        return {i: c for i, c in pool.map(one, srcs) if c is not None}


# ------------------------------------------------------------------------------------------------ loading
def _drop_stale(srcs: Sequence[str], found: Dict[int, ShardCounts], what: str) -> None:
    """Forget counts of local shards whose size changed since they were indexed."""
    for i, c in list(found.items()):
        size = _size(srcs[i])
        if c.bytes is not None and size is not None and size != c.bytes:
            logger.warning("index: %s changed since its %s was written (%d bytes, the %s says %d): not using it",
                           srcs[i], what, size, what, c.bytes)
            del found[i]


def _resolve(srcs: Sequence[str], index: Optional[str], threads: int, progress: bool) -> List[ShardCounts]:
    found: Dict[int, ShardCounts] = {}
    explicit: Optional[Dict[str, ShardCounts]] = None
    if index is not None:
        data = _sources.read_bytes(index)
        if data is None:
            raise FileNotFoundError(f"index: {index} does not exist")
        obj = _parse_index(data, index)
        explicit = {n: ShardCounts.from_json(d, f"{index}: {n}") for n, d in (obj.get("shards") or {}).items()}
    folders: Dict[str, Optional[Dict[str, ShardCounts]]] = {}
    for i, src in enumerate(srcs):
        folder, name = _sources.source_folder(src), _sources.source_name(src)
        if explicit is not None and name in explicit:
            found[i] = explicit[name]
            continue
        if folder is None:
            continue
        if folder not in folders:
            folders[folder] = read_folder_index(folder)
        if folders[folder] and name in folders[folder]:
            found[i] = folders[folder][name]
    _drop_stale(srcs, found, "index")
    missing = [(i, _sources.source_folder(s), _sources.source_name(s)) for i, s in enumerate(srcs)
               if i not in found and _sources.source_folder(s) is not None]
    if missing:
        sidecars = _read_sidecars(missing, threads)
        _drop_stale(srcs, sidecars, "sidecar")
        found.update(sidecars)
    todo = [i for i in range(len(srcs)) if i not in found]
    if todo:
        tars = [srcs[i] for i in todo if _sources.source_kind(srcs[i]) == "tar"]
        if tars:
            folders_todo = sorted({_sources.source_folder(s) or s for s in tars})
            logger.warning("data: no index for %d of %d shard(s) (e.g. %s): reading them once now to count their "
                           "samples; `alphaclip data index %s` writes one so that this is not needed again",
                           len(tars), len(srcs), tars[0], " ".join(folders_todo[:3]))
        for i, c in zip(todo, _count_many([srcs[i] for i in todo], threads, progress, "counting samples")):
            found[i] = c
    return [found[i] for i in range(len(srcs))]


def load_counts(srcs: Sequence[str], index: Optional[str] = None, *, threads: int = 16, progress: bool = True,
                broadcast: bool = True) -> List[ShardCounts]:
    """The :class:`ShardCounts` of every source, in order.

    Looks in ``index`` (an index file, for sources whose folder has none, e.g. ``pipe:`` commands),
    then each folder's ``index.json``, then each shard's sidecar; what is still missing is counted by
    reading it (``threads`` at a time for remote sources) with a warning. With ``broadcast`` and an
    initialised process group, rank 0 resolves and the other ranks receive its result.
    """
    import torch.distributed as dist

    srcs = list(srcs)
    if broadcast and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box: List[Any] = [None]
        if dist.get_rank() == 0:
            try:
                box = [[c.to_json() for c in _resolve(srcs, index, threads, progress)]]
            except Exception as e:  # noqa: BLE001 - tell the other ranks, then fail here too
                box = [f"{type(e).__name__}: {e}"]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], str):
            raise RuntimeError(f"data: rank 0 could not read the shard counts ({box[0]})")
        return [ShardCounts.from_json(d) for d in box[0]]
    return _resolve(srcs, index, threads, progress)


def build_index(inputs: Sequence[str], *, threads: int = 16, recount: bool = False, write: bool = True,
                progress: bool = True) -> Dict[str, Dict[str, ShardCounts]]:
    """Index shards: ``{folder: {shard name: counts}}``, written to each folder's ``index.json``.

    ``inputs`` are anything :func:`alphaclip_train.sources.expand_sources` takes. Counts already known
    (folder index, sidecars) are reused unless ``recount``; the rest are counted by reading the shards
    once. ``pipe:`` sources cannot be indexed in place (no folder to write to): index the files the
    commands read instead.
    """
    srcs = _sources.expand_sources(inputs)
    pipes = [s for s in srcs if _sources.is_pipe(s)]
    if pipes:
        raise ValueError(f"inputs: cannot write an index for pipe: sources ({pipes[0]!r}); index the files the "
                         "command reads (their folder or URL) and pass that index with the data")
    if recount:
        counts = _count_many(srcs, threads, progress, "indexing")
    else:
        counts = _resolve(srcs, None, threads, progress)
    out: Dict[str, Dict[str, ShardCounts]] = {}
    for src, c in zip(srcs, counts):
        out.setdefault(_sources.source_folder(src) or ".", {})[_sources.source_name(src)] = c
    if write:
        for folder, entries in out.items():
            write_folder_index(folder, entries)
    return out
