"""alphaclip_integrations: Alpha-CLIP in other frameworks' own terms.

Each submodule imports its framework at module top and is imported only by whoever wants it:
``alphaclip_integrations.open_clip`` (more follow: hf, llava, detectron2, mmengine).
"""
