"""Reading weight files without running code: safetensors, ``torch.save`` files and TorchScript archives.

``.safetensors`` through safetensors; ``torch.save`` files through ``torch.load(weights_only=True)``
(tensors, plain containers, numbers, strings); TorchScript archives (OpenAI's CLIP ``.pt``) through
the restricted reader of :mod:`alphaclip_core.torchscript`. Errors name the argument and the file,
and say why a file was refused. See ``docs/errors.md``.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch

from .errors import CheckpointError
from .torchscript import _is_torchscript, _read_torchscript, _Refused, _zip_names

__all__ = ["read_state_dict", "load_pickled"]

PathLike = Union[str, os.PathLike]
# Scalar entries in OpenAI's archives that are not weights.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _unwrap(obj: object, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor) and k not in _OPENAI_EXTRAS}
    if not sd:
        raise CheckpointError(f"{path}: the file holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for lines), or its type."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    cut = line.find(". ", 40)
    return line[:cut + 1] if cut > 0 else line


def _check_file(path: Path, arg: str) -> None:
    if path.is_dir():
        raise CheckpointError(f"{arg}: {path} is a folder; expected a weights file (.safetensors, .pt, .pth, .bin)")
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")


def _foreign_global(path: Path) -> Optional[str]:
    """The first class or function a (non-zip) pickle file names outside torch's tensor machinery, found
    by listing its opcodes (``pickletools.genops`` runs nothing); None if there is none or it does not parse.
    Only for error messages: torch's weights-only reader stops at some opcodes before it sees the name."""
    import pickletools

    try:
        with open(path, "rb") as f:
            data = f.read(64 << 20)
        strings: List[str] = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            name = None
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                name = arg.replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            if name and not name.startswith(("torch.", "collections.OrderedDict")):
                return name
    except Exception:  # noqa: BLE001 - not a pickle we can list: no name to report
        return None
    return None


def load_pickled(path: PathLike, arg: str = "checkpoint") -> object:
    """Read a ``torch.save`` file with ``torch.load(weights_only=True)`` (tensors, plain containers,
    numbers and strings only), on the CPU, with errors that name ``arg`` and the file.

    A TorchScript archive is refused (it is not a ``torch.save`` file; :func:`read_state_dict` reads
    its weights). Raises FileNotFoundError or :class:`CheckpointError`.
    """
    path = Path(path)
    _check_file(path, arg)
    names = _zip_names(path)
    if names is not None and _is_torchscript(names):
        raise CheckpointError(f"{arg}: {path} is a TorchScript archive, not a torch.save file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{arg}: {path} is empty (0 bytes); expected a weights file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        name = found.group(1) if found else _foreign_global(path)
        if name or "unsupported global" in str(e).lower():
            what = f"the object {name}" if name else "objects"
            raise CheckpointError(
                f"{arg}: {path} holds {what}, not only tensors and plain containers; refusing to unpickle it "
                f"(weights_only=True). Re-save it as a plain state dict or safetensors."
            ) from e
        raise CheckpointError(f"{arg}: {path} is not a readable PyTorch checkpoint (not a torch.save file, or "
                              "corrupt)") from e
    except Exception as e:  # torch/zipfile/struct errors on corrupt input
        raise CheckpointError(f"{arg}: {path} is not a readable PyTorch/safetensors checkpoint "
                              f"(corrupt or truncated?): {_first_line(e)}") from e


def read_state_dict(path: PathLike, arg: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{name: tensor}`` dict on the CPU, without running any code.

    Args:
        path: a ``.safetensors`` file, a ``torch.save``d state dict (optionally under ``state_dict``
            and/or with a DDP ``module.`` prefix), or a TorchScript archive (OpenAI's CLIP ``.pt``).
        arg: the argument name used in error messages.
    Reading: safetensors with safetensors; ``torch.save`` files with ``torch.load(weights_only=True)``;
    TorchScript archives with a restricted unpickler of the archive's pickled tensors (never
    ``torch.jit.load``, which runs the archive's code).
    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is corrupt, not a checkpoint, a folder, or would need code to run.
    """
    path = Path(path)
    _check_file(path, arg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError on corrupt input
            raise CheckpointError(f"{arg}: {path} is not a valid safetensors file: {_first_line(e)}") from e
        return _unwrap(obj, path)
    names = _zip_names(path)
    if names is not None and _is_torchscript(names):
        try:
            return _unwrap(_read_torchscript(path), path)
        except _Refused as e:
            raise CheckpointError(f"{arg}: {path}: refused to read {e} (from TorchScript archives only tensors "
                                  "and plain module attributes are read; no code runs)") from None
        except CheckpointError:
            raise
        except Exception as e:  # zip/pickle errors of a corrupt or truncated archive
            raise CheckpointError(f"{arg}: {path} is not a readable TorchScript archive (corrupt or truncated?): "
                                  f"{type(e).__name__}: {_first_line(e)}") from e
    return _unwrap(load_pickled(path, arg), path)
