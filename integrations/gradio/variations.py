"""The region app's "Variations" tab: Stable Diffusion image variations of the marked regions.

:func:`variations_panel` turns an :class:`~alphaclip_integrations.diffusers.AlphaCLIPImageVariationPipeline`
into a panel for :func:`~alphaclip_integrations.gradio.app.build_app` (``alphaclip app --pipeline FOLDER``
does this). The tab reads the page's picture and region list through the
:class:`~alphaclip_integrations.gradio.app.PanelContext` (the same regions every tab uses: brushed layers,
boxes, SAM points) and calls :func:`alphaclip_integrations.diffusers.generate.region_variations`, the
function the ``alphaclip generate variation`` command calls, so the page gives exactly the command's
images for the same picture, region, seed and settings.

Named endpoint ``/variations``: (picture editor, region list, images per region, steps, guidance scale,
seed, geometry) -> (gallery of variations, the regions drawn over the picture, a summary line).

This module imports diffusers (through the diffusers integration); the app's core (:mod:`.app`,
:mod:`.engine`) does not, so ``alphaclip app`` without ``--pipeline`` never imports it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, List, Optional, Tuple, Union

import gradio as gr
import torch
from PIL import Image

from alphaclip_integrations.diffusers.generate import region_variations
from alphaclip_integrations.diffusers.pipelines import AlphaCLIPImageVariationPipeline

from .app import PanelContext, page_errors
from .engine import editor_image, layer_masks, parse_regions

__all__ = ["variations_panel", "GEOMETRIES", "MAX_STEPS"]

logger = logging.getLogger("alphaclip.app")

GEOMETRIES = ("crop", "pad", "squash")
MAX_STEPS = 200        #: most denoising steps the page accepts
MAX_SEED = 2 ** 63 - 1  #: torch.Generator.manual_seed takes a 64-bit integer


def _whole_number(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (a number box or slider value) as an int in ``[low, high]``, or ValueError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    return int(number)


def _model_device(engine: Any) -> torch.device:
    param = next(engine.model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def variations_panel(pipeline: AlphaCLIPImageVariationPipeline, *, steps: int = 25, guidance_scale: float = 3.0, num_images: int = 2,
                     max_images: int = 8, device: Union[str, torch.device, None] = None
                     ) -> Callable[[PanelContext], None]:
    """A "Variations" tab for :func:`~alphaclip_integrations.gradio.app.build_app` (``panels=[...]``).

    For the marked regions of the page's picture (K regions: ``[K, H, W]`` masks from the page's region
    list and brush layers) it generates ``num_images`` variations per region in one pipeline call,
    region-major, with a CPU ``torch.Generator`` seeded by the page's seed (the same images on any
    device, and the same as ``region_variations(pipeline, image, mask=masks, seed=seed, ...)``).
    With no region marked it makes variations of the whole picture (alpha 1 everywhere), and says so.

    Args:
        pipeline: an :class:`~alphaclip_integrations.diffusers.AlphaCLIPImageVariationPipeline` (see
            :func:`~alphaclip_integrations.diffusers.load_pipeline`).
        steps, guidance_scale, num_images: the page's starting values (25 steps, guidance 3.0, 2 images).
        max_images: the most images per region the page offers.
        device: where the pipeline runs; default (None) the app's model device: the pipeline is moved
            there when the page is built.
    Returns:
        ``panel(ctx)``, which adds the tab (call it inside ``gr.Tabs``, as ``build_app`` does).

    One pipeline call runs at a time (a lock: the scheduler keeps its timesteps on the pipeline); the
    event goes through the page's queue with the app's default concurrency limit, as Classify does.
    """
    if not isinstance(pipeline, AlphaCLIPImageVariationPipeline):
        raise TypeError(f"pipeline: expected an AlphaCLIPImageVariationPipeline, got {type(pipeline).__name__}")
    if not 1 <= num_images <= max_images:
        raise ValueError(f"num_images: expected 1 to max_images={max_images}, got {num_images}")
    lock = threading.Lock()
    default_mode = pipeline.feature_extractor.mode

    def panel(ctx: PanelContext) -> None:
        target = _model_device(ctx.engine) if device is None else torch.device(device)
        if pipeline.device != target:
            logger.info("variations: moving the pipeline to %s (the app's model device)", target)
            pipeline.to(target)

        @page_errors
        def run(editor_value, region_text, count, n_steps, guidance, seed, mode, progress=gr.Progress()):
            n = _whole_number(count, "images per region", 1, max_images)
            n_steps = _whole_number(n_steps, "steps", 1, MAX_STEPS)
            seed = _whole_number(seed, "seed", 0, MAX_SEED)
            try:
                guidance = float(guidance)
            except (TypeError, ValueError):
                raise ValueError(f"guidance scale: expected a number, got {guidance!r}") from None
            if mode not in GEOMETRIES:
                raise ValueError(f"geometry: expected one of {', '.join(GEOMETRIES)}, got {mode!r}")
            image, masks, names = _marked(ctx, editor_value, region_text or "")

            def step(i: int, t: Any, latents: Any) -> None:
                progress((i + 1, len(pipeline.scheduler.timesteps)), desc="denoising", unit="steps")

            start = time.perf_counter()
            with lock:
                images = region_variations(pipeline, image, mask=masks, num_images=n, seed=seed, mode=mode,
                                           num_inference_steps=n_steps, guidance_scale=guidance, callback=step)
            seconds = time.perf_counter() - start
            gallery = [(im, f"{names[i // n]} · {i % n + 1}") for i, im in enumerate(images)]
            overlay = ctx.engine.preview(editor_value, region_text or "")
            what = "the whole picture (no region marked)" if masks is None else \
                f"{len(names)} region{'s' * (len(names) > 1)}"
            summary = (f"{len(images)} variations of {what}: {images[0].width}x{images[0].height}, {n_steps} steps, "
                       f"guidance {guidance:g}, seed {seed}, geometry {mode}; {seconds:.1f} s on {pipeline.device}")
            return gallery, overlay, summary

        with gr.Tab("Variations", id="variations"):
            gr.Markdown("Stable Diffusion image variations that follow the marked regions: Alpha-CLIP encodes "
                        "each region (the picture plus the region as its alpha map) and the pipeline generates "
                        "from that embedding. One row of images per region, in the order of the region list "
                        "(brush layers first). **No region marked: variations of the whole picture.** "
                        "The same seed and settings give the same images, as `alphaclip generate variation` does.")
            with gr.Row():
                count = gr.Slider(1, max_images, value=num_images, step=1, label="images per region")
                n_steps = gr.Slider(1, MAX_STEPS, value=steps, step=1, label="denoising steps")
                guidance = gr.Slider(0.0, 20.0, value=guidance_scale, step=0.5,
                                     label="guidance scale (<= 1: no classifier-free guidance)")
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="variation-seed")
                mode = gr.Radio(list(GEOMETRIES), value=default_mode,
                                label="geometry (crop: CLIP's, as the pipeline was trained)")
            button = gr.Button("Generate variations", variant="primary", elem_id="variations-btn")
            summary = gr.Markdown(elem_id="variations-summary")
            with gr.Row(equal_height=False):
                overlay = gr.Image(label="Regions the variations follow", type="pil", format="jpeg",
                                   interactive=False, scale=1)
                # PNG: what the page shows (and gradio_client downloads) is the pipeline's pixels, unchanged
                gallery = gr.Gallery(label="Variations (one row per region)", columns=num_images, height="auto",
                                     format="png", elem_id="variations-gallery", scale=2)
        button.click(run, [ctx.editor, ctx.regions, count, n_steps, guidance, seed, mode], [gallery, overlay, summary],
                     api_name="variations")
        # one row per region: the gallery's columns follow the images-per-region slider (no model, no queue)
        count.change(lambda c: gr.Gallery(columns=int(c)), count, gallery, api_name=False, queue=False,
                     show_progress="hidden")

    return panel


def _marked(ctx: PanelContext, editor_value: Any, region_text: str
            ) -> Tuple[Image.Image, Optional[Any], List[str]]:
    """``(picture, [K, H, W] masks or None, names)``: the page's regions, or the whole picture (masks None)
    when neither a brush layer nor the region list marks one. Regions come from ``ctx.regions_of`` (the
    page's parser and its messages); the engine's ``layer_masks`` / ``parse_regions`` only tell whether
    anything is marked at all."""
    image = editor_image(editor_value)
    if not layer_masks(editor_value, image.height, image.width) and not parse_regions(region_text):
        return image, None, ["whole picture"]
    regions = ctx.regions_of(editor_value, region_text)
    return regions.image, regions.masks, regions.names
