"""Vocabularies and text-classifier files for region classification: class names from a list, a
``.txt``, a COCO/LVIS ``.json`` or a comma-separated string (:func:`read_vocabulary`), and ``[C, D]``
class embeddings saved as a Detic-style ``.npy`` with a JSON sidecar that records what the rows are
(:func:`save_text_classifier`, :func:`load_text_classifier`)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .atomic import atomic_write

__all__ = ["category_name", "read_vocabulary", "embedding_dim", "save_text_classifier", "load_text_classifier"]

logger = logging.getLogger("alphaclip_core.region_classifier")  # the logger these functions always used


def category_name(category: Dict[str, Any]) -> str:
    """The class name of a COCO/LVIS category dict: its ``name`` with underscores as spaces.

    This follows Detic, whose LVIS classifier files and LVIS metadata are built from ``name``
    (``bull``, ``aerosol_can``), not from ``synonyms[0]`` (which would turn "bull" into "horned cow");
    underscores become spaces so that CLIP's tokenizer reads words (Detic's ``--fix_space``).
    """
    if not isinstance(category, dict) or "name" not in category:
        raise ValueError(f"category: expected a COCO/LVIS category dict with a 'name', got {category!r}")
    return str(category["name"]).replace("_", " ").strip()


def read_vocabulary(vocabulary: Union[str, os.PathLike, Sequence[str]], arg: str = "vocabulary") -> List[str]:
    """Class names, in class order, from one of:

    - a sequence of names;
    - a ``.txt`` file, one name a line (blank lines skipped);
    - a ``.json`` file: a list of names, or a COCO/LVIS annotation file whose ``categories`` sorted by
      ``id`` give the names (:func:`category_name`);
    - a comma-separated string ``"cat,dog,bird"``.

    ``arg`` names the argument (or config key) in error messages.
    """
    if isinstance(vocabulary, os.PathLike) or (isinstance(vocabulary, str)
                                               and vocabulary.endswith((".txt", ".json"))):
        path = Path(vocabulary)
        if not path.is_file():
            raise FileNotFoundError(f"{arg}: no such file: {path}")
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{arg}: {path} is not valid JSON: {e}") from None
            if isinstance(data, dict):
                if not isinstance(data.get("categories"), list):
                    raise ValueError(f"{arg}: {path} is neither a list of names nor a COCO/LVIS file with "
                                     "'categories'")
                names = [category_name(c) for c in sorted(data["categories"], key=lambda c: c["id"])]
            elif isinstance(data, list):
                names = [str(v).strip() for v in data]
            else:
                raise ValueError(f"{arg}: {path} must hold a list of names or a COCO/LVIS object")
        else:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif isinstance(vocabulary, str):
        names = [v.strip() for v in vocabulary.split(",") if v.strip()]
    else:
        names = [str(v).strip() for v in vocabulary]
    if not names or not all(names):
        raise ValueError(f"{arg}: expected a non-empty list of non-empty class names")
    return names


def embedding_dim(model: torch.nn.Module) -> Optional[int]:
    """The joint image-text embedding size ``D`` of a CLIP-like model (``model.visual.output_dim``), or
    ``None`` when the model does not say."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    return int(dim) if isinstance(dim, int) else None


def _sidecar(path: Union[str, os.PathLike]) -> Path:
    return Path(str(path) + ".json")


def save_text_classifier(path: Union[str, os.PathLike], weights: torch.Tensor,
                         vocabulary: Optional[Sequence[str]] = None, **info: Any) -> str:
    """Write ``[C, D]`` class embeddings as a float32 ``.npy`` (row c = class c), atomically.

    The ``.npy`` has the layout Detic's ``MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH`` reads (``np.load`` ->
    ``[C, D]``). With ``vocabulary`` (and any JSON-able ``info``, e.g. ``model=``, ``templates=``) a
    sidecar ``<path>.json`` records what the rows are, so that :func:`load_text_classifier` can check
    the file against the vocabulary it is used with.
    """
    if weights.dim() != 2:
        raise ValueError(f"weights: expected [C, D] (one row per class), got {list(weights.shape)}")
    if vocabulary is not None and len(vocabulary) != weights.shape[0]:
        raise ValueError(f"vocabulary: {len(vocabulary)} names for {weights.shape[0]} rows of weights")
    array = weights.detach().float().cpu().numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    out = str(atomic_write(path, write))
    if vocabulary is not None:
        meta = {"format": "alphaclip-text-classifier", "shape": list(array.shape),
                "vocabulary": [str(v) for v in vocabulary], **info}
        atomic_write(_sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    elif _sidecar(path).is_file():
        _sidecar(path).unlink()  # it described the file just replaced
    return out


def load_text_classifier(path: Union[str, os.PathLike], vocabulary: Optional[Sequence[str]] = None,
                         dim: Optional[int] = None, model_name: Optional[str] = None,
                         arg: str = "path") -> torch.Tensor:
    """Read ``[C, D]`` class embeddings written by :func:`save_text_classifier` (or any float ``.npy``),
    checking them before they meet an image feature.

    Args:
        vocabulary: the class names the rows must be, in order: ``C`` must match, and so must the names
            recorded in the sidecar ``<path>.json`` when there is one.
        dim: the model's embedding size ``D`` (:func:`embedding_dim`).
        model_name: the model in use; an error if the sidecar records another one.
        arg: the argument / config key named in errors.
    Returns:
        ``[C, D]`` float32 rows as stored (the classifier normalises them).

    Without a sidecar the rows cannot be traced to a model: a warning says so (Detic's own
    ``*_clip_a+cname.npy`` files, for one, are CLIP ViT-B/32 "a {}" embeddings, not Alpha-CLIP's).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{arg}: {path} is not a plain numeric .npy array ({e})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{arg}: expected a float [C, D] array (one row per class), got {array.dtype} "
                         f"of shape {list(array.shape)} in {path}")
    if vocabulary is not None and array.shape[0] != len(vocabulary):
        raise ValueError(f"{arg}: {path} has {array.shape[0]} rows but the vocabulary has {len(vocabulary)} "
                         "classes (one row per class, in order)")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{arg}: {path} has {array.shape[1]}-d rows but the model's embedding size is {dim} "
                         "(dump the embeddings with the same Alpha-CLIP model)")
    side = _sidecar(path)
    if side.is_file():
        meta = json.loads(side.read_text())
        names = meta.get("vocabulary")
        if vocabulary is not None and names is not None and list(names) != list(vocabulary):
            names, wanted = list(names), list(vocabulary)
            i = next((i for i, (a, b) in enumerate(zip(names, wanted)) if a != b), min(len(names), len(wanted)))
            raise ValueError(f"{arg}: {path} was written for another vocabulary (class {i}: "
                             f"{names[i] if i < len(names) else None!r} in the file, "
                             f"{wanted[i] if i < len(wanted) else None!r} in use)")
        if model_name and meta.get("model") and meta["model"] != model_name:
            raise ValueError(f"{arg}: {path} holds {meta['model']} text embeddings, but the model in use is "
                             f"{model_name}")
    else:
        logger.warning("%s: %s has no sidecar %s, so its rows cannot be checked against the vocabulary or the "
                       "model (Detic's *_clip_a+cname.npy files are CLIP ViT-B/32 embeddings: they do not fit "
                       "Alpha-CLIP)", arg, path, side.name)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
