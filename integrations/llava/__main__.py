"""``python -m alphaclip_integrations.llava <entry> [args...]``: LLaVA's own entry points, alpha-aware.

Installs :func:`alphaclip_integrations.llava.original.install` (``--vision_tower
alpha-clip:<checkpoint>[@<base>]`` / a saved ``mm_vision_tower`` of that form is understood) and
then runs the LLaVA module as ``__main__`` with the remaining arguments. ``<entry>`` is a short name
from :data:`ENTRIES` or any ``llava.*`` module name. ``convert`` runs the transformers-native
converter instead (:mod:`alphaclip_integrations.llava.convert`), which needs no llava-torch.

Which entries run where (llava-torch 1.2.2.post1 is installed with ``--no-deps``):

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

USAGE = ("usage: python -m alphaclip_integrations.llava ENTRY [ARGS...]\n"
         "  ENTRY: " + ", ".join(ENTRIES) + ", convert, or a llava.* module name\n"
         "  e.g.  python -m alphaclip_integrations.llava train --vision_tower alpha-clip:clip_l14@336_grit1m_fultune_8xe.pth ...\n"
         "        python -m alphaclip_integrations.llava convert --help")


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
