"""``python -m alphaclip_integrations.llava <entry> [args...]``: LLaVA's own entry points, alpha-aware.

Installs :func:`alphaclip_integrations.llava.original.install` (``--vision_tower
alpha-clip:<checkpoint>[@<base>]`` / a saved ``mm_vision_tower`` of that form is understood) and
then runs the LLaVA module as ``__main__`` with the remaining arguments. ``<entry>`` is a short name
from :data:`ENTRIES` or any ``llava.*`` module name. ``convert`` runs the transformers-native
converter instead (:mod:`alphaclip_integrations.llava.convert`), which needs no llava-torch.

Which entries run where (llava-torch 1.2.2.post1 is installed with ``--no-deps``):

- ``run`` (``llava.eval.run_llava``) needs a CUDA GPU (LLaVA's script calls ``.cuda()``) and
  ``requests`` + ``accelerate``; without them it stops with a message saying so (on CPU, the
  transformers-native path runs: ``convert``, then ``AlphaLlavaForConditionalGeneration.generate``).
- with this project's environment (transformers 5.x), given LLaVA's light extra dependencies:
  ``builder`` (``llava.model.builder``, import check); the eval/serve entries load models with
  LLaVA's ``load_pretrained_model``, which needs ``accelerate`` (it passes a ``device_map``);
  ``run`` / ``cli`` also need ``requests``, ``vqa`` / ``vqa-loader`` / ``vqa-science`` ``shortuuid``.
  Generation works through the transformers-5 shim in :mod:`alphaclip_integrations.llava.compat`.
- only in LLaVA's pinned environment (transformers 4.37.2, deepspeed, flash-attn for train-mem):
  ``train``, ``train-mem``: ``llava.train.train`` imports ``ALL_LAYERNORM_LAYERS`` from
  ``transformers.trainer``, which transformers 5 removed.
"""
from __future__ import annotations

import logging
import runpy
import sys
from typing import Dict, List, Optional

__all__ = ["ENTRIES", "main"]

#: short name -> LLaVA module run as __main__
ENTRIES: Dict[str, str] = {
    "builder": "llava.model.builder",
    "run": "llava.eval.run_llava",
    "cli": "llava.serve.cli",
    "vqa": "llava.eval.model_vqa",
    "vqa-loader": "llava.eval.model_vqa_loader",
    "vqa-science": "llava.eval.model_vqa_science",
    "vqa-mmbench": "llava.eval.model_vqa_mmbench",
    "train": "llava.train.train",
    "train-mem": "llava.train.train_mem",
}
PINNED_ONLY = ("train", "train-mem")
#: entries that LLaVA wrote for a CUDA GPU only (``run_llava`` moves its inputs with ``.cuda()``) and what they import
GPU_ONLY = {"run": ("requests", "accelerate")}

USAGE = ("usage: python -m alphaclip_integrations.llava ENTRY [ARGS...]\n"
         "  ENTRY: " + ", ".join(ENTRIES) + ", convert, or a llava.* module name\n"
         "  e.g.  python -m alphaclip_integrations.llava train --vision_tower alpha-clip:clip_l14@336_grit1m_fultune_8xe.pth ...\n"
         "        python -m alphaclip_integrations.llava convert --help")


def _cannot_run(entry: str) -> str:
    """Why ``entry`` cannot run here ('' if it can): a GPU-only LLaVA entry without CUDA, or its imports missing."""
    if entry not in GPU_ONLY:
        return ""
    import importlib.util

    import torch

    missing = [m for m in GPU_ONLY[entry] if importlib.util.find_spec(m) is None]
    if missing:
        return (f"'{entry}' ({ENTRIES[entry]}) needs {', '.join(missing)}: pip install "
                + " ".join(missing))
    if not torch.cuda.is_available():
        return (f"'{entry}' ({ENTRIES[entry]}) needs a CUDA GPU: LLaVA's script moves its inputs with .cuda(). "
                "On CPU use the transformers-native alpha LLaVA instead (python -m alphaclip_integrations.llava "
                "convert, then AlphaLlavaForConditionalGeneration.generate with AlphaLlavaProcessor; see "
                "docs/llava.md)")
    return ""


def main(argv: Optional[List[str]] = None) -> int:
    """Run one entry; returns the exit status (``SystemExit`` raised by the entry propagates)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    entry, rest = argv[0], argv[1:]
    if entry == "convert":
        from .convert import main as convert_main
        return convert_main(rest)
    module = ENTRIES.get(entry, entry)
    if not module.startswith("llava."):
        print(f"unknown entry {entry!r}\n{USAGE}", file=sys.stderr)
        return 2
    problem = _cannot_run(entry if entry in GPU_ONLY else next((k for k in GPU_ONLY if ENTRIES[k] == module), ""))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from .original import install
    install()
    logging.getLogger(__name__).info("alpha-clip hook installed; running %s", module)
    saved = sys.argv
    sys.argv = [module] + rest
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ImportError as e:
        if entry in PINNED_ONLY or module in (ENTRIES[k] for k in PINNED_ONLY):
            raise ImportError(f"{module} needs LLaVA's pinned environment (transformers 4.37.2, deepspeed; see "
                              f"LLaVA's pyproject): {e}") from e
        raise
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
