"""OpenAI's TorchScript ``.pt`` archives read as data: their tensors, and nothing of their code.

``torch.jit.load`` would run the archive's code (its classes' ``__setstate__``); here the pickled module
tree is rebuilt by a restricted unpickler that knows only storages, tensors, plain containers and
attribute holders, from the archive's raw storages. Anything else is refused (:class:`_Refused`,
which :func:`alphaclip_core.safe_load.read_state_dict` turns into a ``CheckpointError`` naming the
file). Written by hand because no library reads TorchScript weights without running the archive.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__: List[str] = []   # private to the core: read_state_dict is the way in


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
