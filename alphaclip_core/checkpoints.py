"""Reading and writing Alpha-CLIP weights, safely.

Formats understood:

- ``alpha-reference``: the reference release's ``.pth`` — a state dict of the VISUAL tower only, no
  ``visual.`` prefix (``module.`` allowed), fused qkv stored as ``attn.in_proj.{weight,bias}``.
- ``clip``: a whole plain CLIP in OpenAI/open_clip key names (an OpenAI TorchScript ``.pt`` archive,
  a plain state dict, or an open_clip ``.bin``/``.pt``/``.safetensors``; also open_clip's
  ``CustomTextCLIP`` with a timm ViT tower: ``visual.trunk.*`` + ``text.*``).
- ``open_clip-alpha``: a whole Alpha-CLIP in open_clip key names (``visual.conv1_alpha.weight``
  present; for a timm ViT tower ``visual.trunk.patch_embed.conv1_alpha.weight``, beside timm's
  ``visual.trunk.patch_embed.proj.weight``) — what ``alphaclip convert`` and training write.

Nothing runs code from a file: ``.safetensors`` via safetensors, pickled files with
``torch.load(weights_only=True)``, TorchScript archives (OpenAI's ``.pt``) with a restricted
unpickler that rebuilds their tensors and module attributes only (never ``torch.jit.load``, which
would run the archive's ``__setstate__`` code). See ``docs/errors.md``.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import InputError, disk_error

__all__ = [
    "CheckpointError", "VisionArch", "KNOWN_ARCHS", "TIMM_PATCH_KEY", "TIMM_ALPHA_KEY", "ALPHA_KEYS", "read_state_dict", "detect_format",
    "reference_to_open_clip", "rename_reference_keys", "open_clip_to_reference", "vision_arch", "load_state_dict_checked",
    "load_alpha_clip", "save_safetensors", "save_reference", "atomic_write", "atomic_folder", "describe",
    "load_pickled", "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

# Scalar entries in OpenAI's archives that are not weights.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
#: open_clip keys of a timm ViT tower's RGB patch conv and of the alpha conv beside it (AlphaTimmModel)
TIMM_PATCH_KEY = "visual.trunk.patch_embed.proj.weight"
TIMM_ALPHA_KEY = "visual.trunk.patch_embed.conv1_alpha.weight"
#: where a whole open_clip Alpha-CLIP keeps its alpha conv (one of them), e.g. for ``allow_missing``
ALPHA_KEYS = ("visual.conv1_alpha.weight", TIMM_ALPHA_KEY)
_REFERENCE_REQUIRED = ("conv1.weight", "conv1_alpha.weight", "class_embedding", "positional_embedding",
                       "ln_pre.weight", "ln_post.weight", "proj")


class CheckpointError(InputError):
    """A checkpoint file is unreadable, of an unexpected format, or does not fit the model
    (a ``ValueError``; the ``alphaclip`` command exits with code 2)."""


@dataclass(frozen=True)
class VisionArch:
    """The shape of a ViT vision tower, read off its weights."""

    width: int
    patch_size: int
    layers: int
    image_size: int
    has_alpha: bool = False

    @property
    def name(self) -> Optional[str]:
        """The open_clip alpha model name of this shape (e.g. ``alpha-ViT-L-14``), or None."""
        for name, arch in KNOWN_ARCHS.items():
            if (arch.width, arch.patch_size, arch.layers, arch.image_size) == (
                    self.width, self.patch_size, self.layers, self.image_size):
                return name
        return None

    def describe(self) -> str:
        known = self.name
        shape = f"ViT width {self.width}, patch {self.patch_size}, {self.layers} layers, {self.image_size}px"
        return f"{shape} ({known[len('alpha-'):]})" if known else shape


KNOWN_ARCHS: Dict[str, VisionArch] = {
    "alpha-ViT-B-16": VisionArch(768, 16, 12, 224, True),
    "alpha-ViT-L-14": VisionArch(1024, 14, 24, 224, True),
    "alpha-ViT-L-14-336": VisionArch(1024, 14, 24, 336, True),
}


# ------------------------------------------------------------------------------------------------
# reading
def _zip_names(path: Path) -> Optional[List[str]]:
    """The member names of a zip file, or None when ``path`` is not a zip."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def _is_torchscript(names: Sequence[str]) -> bool:
    # torch itself calls a zip TorchScript when it has constants.pkl; code/ is the other tell-tale
    return any(n == "constants.pkl" or n.endswith("/constants.pkl") or "/code/" in n for n in names)


#: storage classes a TorchScript pickle names, and the dtypes of their elements
_STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_MAX_PICKLE_BYTES = 1 << 30  # data.pkl holds structure, never weights: 1 GiB is far beyond any real one
_MAX_DEPTH = 200


class _Refused(Exception):
    """Raised inside the TorchScript reader; becomes a CheckpointError naming the file."""


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _ClassInfo:
    """What ``code/`` declares about one TorchScript class (read as text, never run)."""

    parameters: Optional[Tuple[str, ...]]
    buffers: Optional[Tuple[str, ...]]
    custom_setstate: bool


class _ScriptObject:
    """A TorchScript object rebuilt as a plain attribute holder: its class name and its state dict.

    Nothing of the archive's code runs: the state is stored as read, never passed to a __setstate__.
    One subclass per TorchScript class (pickle's NEWOBJ needs a class); ``qualname`` and ``info``
    are set on it.
    """

    qualname: str = ""
    info: _ClassInfo = _ClassInfo(None, None, False)
    state: Optional[dict] = None


def _build_list(items: object) -> list:
    if not isinstance(items, list):
        raise _Refused(f"a TorchScript list rebuilt from {type(items).__name__}")
    return list(items)


def _restore_type_tag(value: object, _type: object) -> object:
    return value


def _rebuild_tensor_v2(storage: object, offset: object, size: object, stride: object, requires_grad: object,
                       hooks: object, metadata: object = None) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor) or not isinstance(offset, int) or not isinstance(size, tuple) \
            or not isinstance(stride, tuple) or len(size) != len(stride) \
            or not all(isinstance(v, int) and v >= 0 for v in size + stride) or offset < 0:
        raise _Refused("a tensor record that is not (storage, offset, size, stride)")
    if hooks not in (None,) and not (isinstance(hooks, dict) and not hooks):
        raise _Refused("a tensor with backward hooks")
    if metadata:
        raise _Refused("a tensor with conj/neg metadata")
    try:  # set_ checks that size/stride/offset stay inside the storage
        return torch.empty(0, dtype=storage.dtype).set_(storage.untyped_storage(), offset, size, stride)
    except RuntimeError as e:
        raise _Refused(f"a tensor that does not fit its storage ({str(e).splitlines()[0]})") from None


class _TorchScriptUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Reads a TorchScript archive's ``data.pkl`` as ``torch.load(weights_only=True)`` reads a
    ``torch.save`` file: tensors, plain containers and ``__torch__`` objects as attribute holders.

    The pure-Python unpickler is used (not the C one) because its opcode table can be narrowed:
    BUILD is only accepted on the attribute holders (the C unpickler would call ``__setstate__`` of
    whatever object the pickle names), and SETITEM(S) only on dicts.
    """

    _SAFE = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "build_intlist"): _build_list,
        ("torch.jit._pickle", "build_doublelist"): _build_list,
        ("torch.jit._pickle", "build_boollist"): _build_list,
        ("torch.jit._pickle", "build_tensorlist"): _build_list,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    }

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix
        self.names = set(zf.namelist())
        self.storages: Dict[str, torch.Tensor] = {}
        self.classes: Dict[str, Dict[str, _ClassInfo]] = {}
        self.script_classes: Dict[str, type] = {}
        self.dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
        self.dispatch[pickle.BUILD[0]] = _TorchScriptUnpickler._load_build
        self.dispatch[pickle.SETITEM[0]] = _TorchScriptUnpickler._load_setitem
        self.dispatch[pickle.SETITEMS[0]] = _TorchScriptUnpickler._load_setitems
        for op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
            self.dispatch[op[0]] = _TorchScriptUnpickler._refuse_ext

    # --- globals ---------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            info = self._class_info(module, name)
            if info.custom_setstate:
                raise _Refused(f"a TorchScript class ({qualname}) with its own __setstate__, code that "
                               "torch.jit.load would run while loading")
            if qualname not in self.script_classes:
                self.script_classes[qualname] = type("ScriptObject", (_ScriptObject,),
                                                     {"qualname": qualname, "info": info})
            return self.script_classes[qualname]
        raise _Refused(f"the global {module}.{name}, which is not a tensor, a storage or a TorchScript module")

    def _class_info(self, module: str, name: str) -> _ClassInfo:
        if module not in self.classes:
            self.classes[module] = {}
            member = f"{self.prefix}code/{module.replace('.', '/')}.py"
            if member in self.names and self.zf.getinfo(member).file_size <= _MAX_PICKLE_BYTES:
                text = self.zf.read(member).decode("utf-8", "replace")
                # the TorchScript printer writes each class as "class Name(Base):" then an indented body
                for m in re.finditer(r"^class (\w+)\(.*\):[^\n]*\n((?:[ \t][^\n]*\n?|\n)*)", text, re.M):
                    body = m.group(2)

                    def names(attr: str) -> Optional[Tuple[str, ...]]:
                        found = re.search(rf"^\s+{attr} = \[(.*?)\]", body, re.M)
                        return tuple(re.findall(r'"([^"]*)"', found.group(1))) if found else None

                    self.classes[module][m.group(1)] = _ClassInfo(
                        names("__parameters__"), names("__buffers__"),
                        re.search(r"^\s+def __setstate__\(", body, re.M) is not None)
        return self.classes[module].get(name, _ClassInfo(None, None, False))

    # --- storages --------------------------------------------------------------------------------
    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise _Refused(f"a persistent id that is not a tensor storage: {str(pid)[:80]}")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            if member not in self.names:
                raise _Refused(f"the storage {member}, which the archive does not hold")
            size = self.zf.getinfo(member).file_size
            want = numel * torch.empty(0, dtype=dtype).element_size()
            if size != want:
                raise _Refused(f"the storage {member} of {size} bytes where {numel} x {dtype} need {want}")
            buf = bytearray(size)
            with self.zf.open(member) as f:
                if f.readinto(memoryview(buf)) != size:  # type: ignore[attr-defined]
                    raise _Refused(f"the storage {member}, which is shorter than its header says")
            flat = torch.frombuffer(buf, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
            self.storages[key] = flat.view(dtype) if size else torch.empty(0, dtype=dtype)
        t = self.storages[key]
        if t.dtype != dtype:
            raise _Refused(f"the storage {key} read as two dtypes")
        return t

    # --- narrowed opcodes ------------------------------------------------------------------------
    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _ScriptObject):
            raise _Refused(f"a pickle that sets the state of a {type(inst).__name__} (only TorchScript modules "
                           "have state here)")
        if inst.state is not None or not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused(f"the TorchScript object {inst.qualname} whose state is not a dict of attributes")
        inst.state = state

    def _load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise _Refused(f"a pickle that sets an item of a {type(target).__name__}")
        target[key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise _Refused(f"a pickle that sets items of a {type(target).__name__}")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _refuse_ext(self) -> None:
        raise _Refused("a pickle extension code (copyreg registry)")


def _flatten_script_object(obj: _ScriptObject, prefix: str, out: Dict[str, torch.Tensor], depth: int = 0) -> None:
    """A TorchScript module tree -> its state dict: the declared parameters and buffers, recursively."""
    if depth > _MAX_DEPTH:
        raise _Refused(f"modules nested deeper than {_MAX_DEPTH}")
    if obj.state is None:
        raise _Refused(f"the TorchScript object {obj.qualname} without a state")
    declared = None
    if obj.info.parameters is not None or obj.info.buffers is not None:
        declared = set(obj.info.parameters or ()) | set(obj.info.buffers or ())
    for name, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            if declared is None or name in declared:
                out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten_script_object(value, f"{prefix}{name}.", out, depth + 1)


def _read_torchscript(path: Path) -> Dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (OpenAI's CLIP ``.pt``), read without
    ``torch.jit.load``: the pickled module tree (``<archive>/data.pkl``) is rebuilt with
    :class:`_TorchScriptUnpickler` from the raw storages (``<archive>/data/<key>``); ``code/`` is read
    as text only to learn which attributes are parameters and buffers and to refuse any class with
    its own ``__setstate__``. Raises ``_Refused`` for anything else."""
    with zipfile.ZipFile(path) as zf:
        tops = sorted({n.split("/", 1)[0] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")})
        if len(tops) != 1:
            raise _Refused("a TorchScript archive without exactly one <archive>/data.pkl")
        prefix = tops[0] + "/"
        if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise _Refused("a big-endian TorchScript archive (re-save it on a little-endian machine)")
        info = zf.getinfo(prefix + "data.pkl")
        if info.file_size > _MAX_PICKLE_BYTES:
            raise _Refused(f"a {info.file_size}-byte data.pkl")
        unpickler = _TorchScriptUnpickler(zf.read(info), zf, prefix)
        try:
            root = unpickler.load()
        except RecursionError:
            raise _Refused("objects nested too deeply") from None
        if not isinstance(root, _ScriptObject):
            raise _Refused(f"a TorchScript archive whose root is a {type(root).__name__}, not a module")
        out: Dict[str, torch.Tensor] = {}
        _flatten_script_object(root, "", out)
        return out


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


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the format of a state dict: ``alpha-reference``, ``open_clip-alpha``, ``clip``,
    ``clip-visual`` (a plain visual tower), ``hf`` (transformers names) or ``unknown``."""
    if "conv1_alpha.weight" in sd and "conv1.weight" in sd:
        return "alpha-reference"
    if "visual.conv1_alpha.weight" in sd or TIMM_ALPHA_KEY in sd:
        return "open_clip-alpha"
    if ("visual.conv1.weight" in sd or TIMM_PATCH_KEY in sd) and (
            "token_embedding.weight" in sd or "text.token_embedding.weight" in sd):
        return "clip"
    if "conv1.weight" in sd and "class_embedding" in sd:
        return "clip-visual"
    if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        return "hf"
    return "unknown"


# ------------------------------------------------------------------------------------------------
# key maps
def reference_to_open_clip(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Reference visual-only keys -> open_clip keys (``visual.`` prefix, ``in_proj.weight`` -> ``in_proj_weight``)."""
    missing = [k for k in _REFERENCE_REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(f"not a reference Alpha-CLIP visual checkpoint: missing {missing}")
    return {"visual." + k: v for k, v in rename_reference_keys(sd).items()}


def rename_reference_keys(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The reference's fused-qkv names -> open_clip's (``attn.in_proj.weight`` -> ``attn.in_proj_weight``);
    every other key unchanged, no prefix added, nothing validated."""
    return {k.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(".attn.in_proj.bias", ".attn.in_proj_bias"): v
            for k, v in sd.items()}


def open_clip_to_reference(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip keys of an alpha model (whole model or ``visual.*``) -> the reference visual-only keys."""
    out = {}
    for k, v in sd.items():
        if not k.startswith("visual."):
            continue
        k = k[len("visual."):]
        k = k.replace(".attn.in_proj_weight", ".attn.in_proj.weight").replace(".attn.in_proj_bias", ".attn.in_proj.bias")
        out[k] = v
    if "conv1_alpha.weight" not in out:
        raise CheckpointError("state dict has no visual.conv1_alpha.weight: not an Alpha-CLIP model")
    return out


def vision_arch(sd: Mapping[str, torch.Tensor]) -> VisionArch:
    """Read the ViT shape off a state dict in reference (no prefix) or open_clip (``visual.``) names."""
    prefix = "visual." if "visual.conv1.weight" in sd else ""
    try:
        conv1 = sd[prefix + "conv1.weight"]
        pos = sd[prefix + "positional_embedding"]
    except KeyError as e:
        raise CheckpointError(f"state dict has no ViT vision tower (missing {e.args[0]})") from None
    width, _, patch, _ = conv1.shape
    grid = round((pos.shape[0] - 1) ** 0.5)
    block = prefix + "transformer.resblocks."
    layers = len({k[len(block):].split(".", 1)[0] for k in sd if k.startswith(block)})
    return VisionArch(int(width), int(patch), layers, grid * int(patch), (prefix + "conv1_alpha.weight") in sd)


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                            allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """``module.load_state_dict`` with errors that say what does not fit and what the file looks like.

    Every key of ``module`` must be in ``sd`` except ``allow_missing``; every key of ``sd`` must be
    in ``module`` except ``allow_unexpected``; all shapes must match.
    """
    own = module.state_dict()
    allow_missing, allow_unexpected = set(allow_missing), set(allow_unexpected)
    missing = [k for k in own if k not in sd and k not in allow_missing]
    unexpected = [k for k in sd if k not in own and k not in allow_unexpected]
    mismatched = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        hint = ""
        try:
            file_arch, model_arch = vision_arch(sd), vision_arch(own)
            if file_arch != model_arch:
                hint = f" The file's vision tower is {file_arch.describe()}; the model's is {model_arch.describe()}."
        except CheckpointError:
            pass
        parts = []
        for label, keys in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {keys[:5]}{more}")
        raise CheckpointError(f"{source} does not fit the model.{hint} " + "; ".join(parts) + ".")
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def load_alpha_clip(model: nn.Module, alpha_checkpoint: PathLike, base: Optional[PathLike] = None) -> nn.Module:
    """Load weights into an :class:`~alphaclip_core.model.AlphaCLIP`, in place.

    Args:
        model: an AlphaCLIP of the checkpoint's architecture.
        alpha_checkpoint: a reference visual-only ``.pth`` (then ``base`` is required and supplies the
            text tower), or a whole ``open_clip-alpha`` file (``base`` then must be None).
        base: the plain CLIP weights of the same architecture (OpenAI ``.pt`` or open_clip file).
    Returns:
        ``model``.
    """
    alpha_sd = read_state_dict(alpha_checkpoint, "alpha_checkpoint")
    fmt = detect_format(alpha_sd)
    if fmt == "open_clip-alpha":
        if base is not None:
            raise ValueError(f"base: {alpha_checkpoint} already holds a whole Alpha-CLIP (text tower included); "
                             "pass base=None")
        load_state_dict_checked(model, alpha_sd, f"alpha_checkpoint {alpha_checkpoint}",
                                allow_missing=("logit_bias",))
        return model
    if fmt != "alpha-reference":
        extra = " It is a plain CLIP; pass it as base= with an Alpha-CLIP file." if fmt in ("clip", "clip-visual") else ""
        raise CheckpointError(f"alpha_checkpoint: {alpha_checkpoint} is not an Alpha-CLIP checkpoint "
                              f"(format '{fmt}', no conv1_alpha.weight).{extra}")
    if base is None:
        raise ValueError("base: the reference Alpha-CLIP file holds only the vision tower; pass base= the plain "
                         "CLIP weights of the same architecture (e.g. OpenAI's ViT-L-14.pt) for the text tower")
    base_sd = read_state_dict(base, "base")
    if detect_format(base_sd) != "clip":
        raise CheckpointError(f"base: {base} is not a whole CLIP checkpoint (format '{detect_format(base_sd)}')")
    load_state_dict_checked(model, base_sd, f"base {base}",
                            allow_missing=("visual.conv1_alpha.weight", "logit_bias"))
    visual_sd = {k[len("visual."):]: v for k, v in reference_to_open_clip(alpha_sd).items()}
    load_state_dict_checked(model.visual, visual_sd, f"alpha_checkpoint {alpha_checkpoint}")
    return model


# ------------------------------------------------------------------------------------------------
# writing
def _umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    return f".{name}."


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the file into place atomically (no half-written ``path``).

    The temporary file sits next to ``path`` as ``.<name>.<random>.tmp`` and is removed on any error;
    the final file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask).
    A write that fails for lack of space or rights raises ``OSError`` (ENOSPC, EROFS, ...) naming
    ``path``, whatever library did the writing.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with _disk_errors_named(path):
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _temp_beside(path: Path, folder: bool = False) -> str:
    """A new temporary file (or folder) next to ``path``, ``.<name>.<random>.tmp``; errors name ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if folder:
            return tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
        os.close(fd)
        return tmp
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def _disk_errors_named(path: Path) -> Iterator[None]:
    """Re-raise a write that failed for lack of space or rights as an ``OSError`` naming ``path``."""
    try:
        yield
    except Exception as e:
        disk = disk_error(path, e)
        if disk is not None:
            raise disk from e
        raise


def remove_stale_temp_files(folder: PathLike, name: Optional[str] = None) -> List[Path]:
    """Delete the temporary files :func:`atomic_write` (and :func:`atomic_folder`) leave in ``folder``
    when a process is killed mid-write (``.<name>.<random>.tmp``; only those of ``name`` when given).

    Call it where only one writer works on ``folder`` (e.g. at the start of a run). Returns what it removed.
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f"{_temp_prefix(name) if name else '.'}*.tmp"):
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError as e:  # another process may own it; leave it
            logger.debug("could not remove %s: %s", p, e)
    if removed:
        logger.info("removed %d stale temporary file(s) in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary sibling folder to fill; on success it replaces
    ``path`` (an existing folder there is removed only after the new one is in place), on any error it
    is deleted and ``path`` is left as it was.

    ``with atomic_folder("out/model") as tmp: write files into tmp``
    """
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    tmp = Path(_temp_beside(path, folder=True))
    try:
        with _disk_errors_named(path):
            yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(_temp_beside(path, folder=True))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cpu_contiguous(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_safetensors(model_or_sd: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write a model's (or a state dict's) tensors to ``path`` as safetensors, atomically."""
    from safetensors.torch import save_file
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    tensors = _cpu_contiguous(sd)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def save_reference(model: nn.Module, path: PathLike) -> Path:
    """Write the vision tower in the reference release's visual-only ``.pth`` format, atomically."""
    ref = _cpu_contiguous(open_clip_to_reference(model.state_dict()))
    return atomic_write(path, lambda tmp: torch.save(ref, tmp))


def _describe_timm(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The shape of an open_clip timm ViT tower (``visual.trunk.*``), or None."""
    if TIMM_PATCH_KEY not in sd:
        return None
    width, _, patch, _ = sd[TIMM_PATCH_KEY].shape
    blocks = len({k.split(".")[3] for k in sd if k.startswith("visual.trunk.blocks.")})
    pooling = "attention pooling (SigLIP-style)" if "visual.trunk.attn_pool.latent" in sd else "token pooling"
    return f"timm ViT width {width}, patch {patch}, {blocks} blocks, {pooling}"


#: weights files looked for when :func:`describe` is given a model folder
MODEL_FOLDER_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                      "pytorch_model.bin")


def describe(path: PathLike) -> Dict[str, object]:
    """What a checkpoint is: format, vision architecture, alpha conv, parameter count, dtypes.

    ``path`` is a weights file, or a model folder (open_clip ``local-dir`` or transformers) holding one
    of :data:`MODEL_FOLDER_FILES`, whose weights are described.
    """
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in MODEL_FOLDER_FILES if (path / n).is_file()), None)
        if found is None:
            raise CheckpointError(f"checkpoint: {path} is a folder without a weights file; expected a weights file "
                                  f"or a model folder holding one of {list(MODEL_FOLDER_FILES)}")
        path = found
    sd = read_state_dict(path)
    fmt = detect_format(sd)
    names = _zip_names(path)
    container = ("safetensors" if path.suffix == ".safetensors" else
                 "TorchScript archive" if names is not None and _is_torchscript(names) else "torch.save")
    info: Dict[str, object] = {"path": str(path), "format": fmt, "container": container, "tensors": len(sd),
                               "parameters": int(sum(v.numel() for v in sd.values())),
                               "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})}
    try:
        arch = vision_arch(sd)
        info.update(vision=arch.describe(), arch=arch.name, has_conv1_alpha=arch.has_alpha)
        alpha_key = "conv1_alpha.weight" if fmt == "alpha-reference" else "visual.conv1_alpha.weight"
        if alpha_key in sd:
            info["conv1_alpha_abs_mean"] = float(sd[alpha_key].float().abs().mean())
    except CheckpointError:
        info.update(vision=_describe_timm(sd), arch=None, has_conv1_alpha=TIMM_ALPHA_KEY in sd)
        if TIMM_ALPHA_KEY in sd:
            info["conv1_alpha_abs_mean"] = float(sd[TIMM_ALPHA_KEY].float().abs().mean())
    info["has_text_tower"] = "token_embedding.weight" in sd or "text.token_embedding.weight" in sd
    return info
