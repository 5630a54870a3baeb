"""Where shards and JSONL files live: local paths, brace ranges, globs, fsspec URLs, ``pipe:`` commands.

A *source* is a string naming one shard (``.tar``) or JSONL file:

* a local path (``/data/grit/shard-00042.tar``) or ``file://`` URL;
* any URL fsspec opens: ``https://host/grit/shard-00042.tar``, ``s3://bucket/grit/shard-00042.tar``,
  ``gs://...``, ``hf://...`` (the protocol's fsspec package must be installed: ``s3fs``, ``gcsfs``, ...);
* an open_clip / webdataset ``pipe:`` command whose standard output is the tar stream, e.g.
  ``pipe:aws s3 cp s3://bucket/grit/shard-00042.tar -`` (a non-zero exit status is a read error).

:func:`expand_sources` turns what a user types into sources: ``{000..099}`` / ``{a,b}`` brace
expressions (``braceexpand``, as webdataset and open_clip do), globs (local, or the URL's file system),
folders (local or ``s3://bucket/prefix/``: their ``*.tar`` and ``*.jsonl`` files; an ``https://``
folder: the shards its ``index.json`` lists). :func:`open_source` opens one source for sequential reading: ``pipe:`` through
webdataset's ``gopen`` (exit status checked), everything else through ``fsspec`` (HTTP streams in one
request, object stores read ahead in blocks).
"""
from __future__ import annotations

import glob
import os
import posixpath
import re
import shlex
from typing import IO, List, Optional, Sequence, Tuple, Union

__all__ = ["SHARD_SUFFIXES", "expand_sources", "open_source", "is_pipe", "is_remote", "source_name",
           "source_kind", "source_folder", "join_location", "read_bytes", "write_bytes_atomic", "check_protocol"]

PathLike = Union[str, os.PathLike]
SHARD_SUFFIXES = (".tar", ".jsonl")
_GLOB_CHARS = "*?["


def is_pipe(src: str) -> bool:
    """True for an open_clip-style ``pipe:COMMAND`` source."""
    return src.startswith("pipe:")


def is_remote(src: str) -> bool:
    """True for a URL with a protocol other than ``file://`` (and for ``pipe:`` commands)."""
    if is_pipe(src):
        return True
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", src)
    return bool(m) and m.group(1).lower() != "file"


def _local_path(src: str) -> str:
    return src[len("file://"):] if src.startswith("file://") else src


def _pipe_target(src: str) -> Optional[str]:
    """The shard path/URL a ``pipe:`` command reads (its last argument ending in .tar/.jsonl), if any."""
    try:
        words = shlex.split(src[len("pipe:"):])
    except ValueError:
        words = src[len("pipe:"):].split()
    found = [w for w in words if w.endswith(SHARD_SUFFIXES)]
    return found[-1] if found else None


def source_name(src: str) -> str:
    """The file name of a source (``shard-00042.tar``); for ``pipe:`` the name of the file it reads."""
    target = _pipe_target(src) if is_pipe(src) else src
    if target is None:
        return src
    return posixpath.basename(target.rstrip("/")) if "://" in target else os.path.basename(_local_path(target))


def source_kind(src: str) -> str:
    """``tar`` or ``jsonl`` (a ``pipe:`` source is a tar stream unless it reads a ``.jsonl`` file)."""
    return "jsonl" if source_name(src).endswith(".jsonl") else "tar"


def source_folder(src: str) -> Optional[str]:
    """The folder a source lives in (where its index is looked for); None for a ``pipe:`` without a path."""
    target = _pipe_target(src) if is_pipe(src) else src
    if target is None:
        return None
    if "://" in target and not target.startswith("file://"):
        return target.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(_local_path(target)))


def join_location(folder: str, name: str) -> str:
    """``folder/name`` for a local folder or a URL."""
    if "://" in folder and not folder.startswith("file://"):
        return folder.rstrip("/") + "/" + name
    return os.path.join(_local_path(folder), name)


def open_source(src: str) -> IO[bytes]:
    """Open a source for sequential binary reading (the caller closes it; use ``with``).

    ``pipe:`` commands run in a shell through webdataset's ``gopen`` (reading raises ``OSError`` when the
    command exits non-zero); everything else is opened with ``fsspec`` (``FileNotFoundError`` for a
    missing file or an HTTP 404). HTTP(S) is streamed in one request (``block_size=0``), so servers
    without range support work and nothing is read twice.
    """
    if is_pipe(src):
        from webdataset.gopen import gopen

        return gopen(src, "rb")
    import fsspec

    kw = {"block_size": 0} if re.match(r"^https?://", src, re.I) else {}
    return fsspec.open(src, "rb", **kw).open()


def read_bytes(location: str) -> Optional[bytes]:
    """The whole content of a small local or remote file, or None when it does not exist."""
    if not is_remote(location):
        path = _local_path(location)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()
    import fsspec

    try:
        with fsspec.open(location, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes_atomic(location: str, data: bytes) -> str:
    """Write a small file: locally via a temporary name + rename, remotely with one fsspec write
    (a single PUT, which object stores make visible whole or not at all)."""
    if not is_remote(location):
        from alphaclip_core.checkpoints import atomic_write

        path = _local_path(location)

        def _write(tmp) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(path, _write)
        return path
    import fsspec

    with fsspec.open(location, "wb") as f:
        f.write(data)
    return location


# ------------------------------------------------------------------------------------------------ expansion
def _braces(pattern: str) -> List[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _listing(folder: str, remote: bool) -> List[str]:
    """The shards of a folder: its *.tar / *.jsonl files; for an HTTP(S) folder, which has no reliable
    listing, the shards its ``index.json`` names."""
    if not remote:
        path = _local_path(folder)
        return [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(SHARD_SUFFIXES)
                and os.path.isfile(os.path.join(path, n))]
    if re.match(r"^https?://", folder, re.I):
        from .index import folder_index_names

        names = folder_index_names(folder)
        if names is None:
            raise FileNotFoundError(f"data: {folder}/ has no index.json, and an HTTP folder cannot be listed: name "
                                    f"the shards (e.g. {folder}/shard-{{00000..00099}}.tar) or put the folder's "
                                    f"index.json there (`alphaclip data index` on a local copy)")
        return [join_location(folder, n) for n in names]
    import fsspec

    fs, path = fsspec.core.url_to_fs(folder)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotImplementedError, OSError, ValueError):
        return []
    proto = folder.split("://", 1)[0]
    out = []
    for e in sorted(entries):
        name = posixpath.basename(str(e).rstrip("/"))
        if name.endswith(SHARD_SUFFIXES):
            out.append(e if "://" in str(e) else f"{proto}://{str(e).lstrip('/')}")
    return out


_EXTRAS = {"http": "pip install 'alpha-clip[stream]' (aiohttp)", "https": "pip install 'alpha-clip[stream]' (aiohttp)",
           "s3": "pip install s3fs", "gs": "pip install gcsfs", "gcs": "pip install gcsfs",
           "az": "pip install adlfs", "abfs": "pip install adlfs", "hf": "pip install huggingface_hub"}


def check_protocol(url: str) -> None:
    """Raise ``ValueError`` naming the package to install when fsspec cannot open ``url``'s protocol."""
    import fsspec

    proto = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(proto)
    except ImportError as e:
        hint = _EXTRAS.get(proto, f"install the fsspec implementation of {proto}://")
        raise ValueError(f"data: {url!r} needs a package that is not installed: {hint} ({e})") from None
    except ValueError:
        raise ValueError(f"data: {url!r}: fsspec knows no protocol {proto!r}") from None


def _expand_one(pattern: str) -> List[str]:
    remote = is_remote(pattern)
    if not remote:
        path = _local_path(pattern)
        if os.path.isdir(path):
            return _listing(path, False)
        if any(c in path for c in _GLOB_CHARS):
            return sorted(glob.glob(path))
        return [path] if os.path.isfile(path) else []
    import fsspec

    check_protocol(pattern)
    if any(c in pattern.split("://", 1)[1] for c in _GLOB_CHARS):
        fs, path = fsspec.core.url_to_fs(pattern)
        proto = pattern.split("://", 1)[0]
        return [m if "://" in m else f"{proto}://{m.lstrip('/')}" for m in sorted(fs.glob(path))]
    if pattern.endswith(SHARD_SUFFIXES):
        return [pattern]  # existence is checked when read (a missing shard is counted and skipped)
    return _listing(pattern.rstrip("/"), True)


def expand_sources(sources: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """Resolve data sources to a list of ``.tar`` / ``.jsonl`` sources (strings), in argument order.

    Each argument may hold brace expressions; a folder (local, ``s3://bucket/prefix/``...) stands for
    its ``*.tar`` / ``*.jsonl`` files (sorted), an ``https://`` folder for the shards its
    ``index.json`` lists (see :mod:`alphaclip_train.index`); ``pipe:`` commands are kept as they are
    (one source per brace expansion). A remote URL naming a shard is not checked here: a missing
    shard is reported (and skipped) when it is read.

    Raises:
        FileNotFoundError: naming the argument, when it matches nothing.
        ValueError: for a matched file that is neither ``.tar`` nor ``.jsonl``.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: List[str] = []
    for src in sources:
        src = os.fspath(src)
        if is_pipe(src):
            files += _braces(src)
            continue
        found: List[str] = []
        for pattern in _braces(src):
            found += _expand_one(pattern)
        if not found:
            raise FileNotFoundError(f"data: no .tar shard or .jsonl file found for {src!r}")
        for f in found:
            if not f.endswith(SHARD_SUFFIXES):
                raise ValueError(f"data: {f} is neither a .tar shard nor a .jsonl file")
        files += found
    return files


def split_location(src: str) -> Tuple[Optional[str], str]:
    """``(folder, name)`` of a source (folder None for a ``pipe:`` command without a path)."""
    return source_folder(src), source_name(src)
