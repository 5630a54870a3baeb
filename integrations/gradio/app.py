"""The Gradio page of the region app: mark regions of a picture, see what Alpha-CLIP sees.

A thin layer over :class:`~alphaclip_integrations.gradio.engine.RegionEngine`: every callback turns the
page's values into engine calls and the engine's :class:`ValueError` into ``gr.Error`` (the message
shows in the page). Named endpoints (for ``gradio_client`` and the page's "Use via API"):

- ``/classify``: (picture editor, region list, labels, templates, top k, geometry, baselines) ->
  (ranked table, overlay, comparison table, gallery of views);
- ``/where_is``: (picture editor, phrase, use SAM, grid cells, geometry) -> (table, overlay, heat map);
- ``/ask``: (picture editor, region list, question) -> answers table (with an alpha LLaVA);
- ``/preview``: (picture editor, region list) -> the picture with the marked regions.

:func:`build_app` takes ``panels``: callables ``panel(ctx: PanelContext)`` run inside the page's tabs,
each adding its own tab (e.g. "Variations of this region" from a diffusers integration); they get the
shared components and the engine through :class:`PanelContext`.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import gradio as gr
import numpy as np
from PIL import Image

from alphaclip_core.viz import PALETTE

from .engine import CLICK_MODES, RegionEngine, Regions, add_click, display_scale, editor_image, parse_labels, \
    parse_templates

__all__ = ["PanelContext", "build_app", "launch", "scene_examples", "temp_folder", "CLICK_MODES"]

logger = logging.getLogger("alphaclip.app")

GEOMETRIES = ("pad", "crop", "squash")
CLASSIFY_HEADERS = ["region", "rank", "label", "probability"]
COMPARE_HEADERS = ["region", "method", "top label", "probability", "p(Alpha-CLIP's label)"]
WHERE_HEADERS = ["rank", "box x0,y0,x1,y1", "cosine", "probability"]


@dataclass
class PanelContext:
    """What an extra panel (see :func:`build_app`) can use.

    Attributes:
        engine: the :class:`RegionEngine` (model, SAM, LLaVA).
        editor: the picture editor (value: ``{"background", "layers", "composite"}``, numpy RGBA).
        regions: the region list textbox.
        regions_of: ``regions_of(editor_value, region_text) -> Regions`` (the picture and ``[K, H, W]`` masks),
            raising ``gr.Error`` with the page's message for a missing picture or region.
    """

    engine: RegionEngine
    editor: Any
    regions: Any
    regions_of: Callable[[Any, str], Regions]


def page_errors(fn: Callable) -> Callable:
    """Show a :class:`ValueError` of ``fn`` in the page (``gr.Error``) instead of a generic failure."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return wrapper


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def temp_folder() -> Path:
    """A fresh private folder for this app's uploads and pictures (``GRADIO_TEMP_DIR`` points there)."""
    path = Path(tempfile.mkdtemp(prefix="alphaclip-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    return path


def scene_examples(folder: Path, count: int = 4, scale: int = 4) -> List[list]:
    """The bundled demo scene and ``count - 1`` more synthetic scenes, written as PNGs (enlarged ``scale``
    times, nearest neighbour, so a brush and a click are easy) into ``folder``: example rows
    ``[editor value, labels, templates, region list]`` with the toy world's 24 labels."""
    from alphaclip_train.synthetic import DEMO_SEED, LABELS, demo_scene, render_scene

    folder.mkdir(parents=True, exist_ok=True)
    scenes = [demo_scene()[0]] + [render_scene(DEMO_SEED + 1000 + i, 64, max_objects=4, min_objects=2).image
                                  for i in range(count - 1)]
    rows = []
    for i, image in enumerate(scenes):
        path = folder / f"scene-{i}.png"
        image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)
        rows.append([{"background": str(path), "layers": [], "composite": str(path)}, "\n".join(LABELS), "a {}.", ""])
    return rows


def _bg(value: Any) -> Optional[np.ndarray]:
    return value.get("background") if isinstance(value, dict) else None


def build_app(engine: RegionEngine, *, examples: Optional[List[list]] = None, panels: Sequence[Callable] = (),
              labels: str = "", title: str = "Alpha-CLIP: point at a part of a picture") -> "gr.Blocks":
    """The page (a ``gr.Blocks``; call ``.queue(...).launch(...)`` on it, or use :func:`launch`).

    Args:
        engine: the models.
        examples: rows ``[editor value, labels, templates, region list]`` (see :func:`scene_examples`).
        panels: extra tabs, each ``panel(ctx: PanelContext)`` called inside ``gr.Tabs``.
        labels: the labels box's starting text.
    """
    has_sam, has_llava = engine.sam is not None, engine.llava is not None
    modes = list(CLICK_MODES if has_sam else CLICK_MODES[:1])

    def regions_of(editor_value: Any, region_text: str) -> Regions:
        try:
            return engine.regions(editor_value, region_text or "")
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    @page_errors
    def preview(editor_value, region_text, pending=None):
        if _bg(editor_value) is None:
            return None
        return engine.preview(editor_value, region_text or "", pending)

    @page_errors
    def click(editor_value, region_text, pending, mode, evt: gr.SelectData):
        image = editor_image(editor_value)
        s = display_scale(image)  # the preview shows the picture enlarged s times
        x = min(max(float(evt.index[0]) / s, 0.0), image.width - 1.0)
        y = min(max(float(evt.index[1]) / s, 0.0), image.height - 1.0)
        text, pending = add_click(region_text, pending, x, y, mode or CLICK_MODES[0])
        return text, pending, engine.preview(editor_value, text, pending)

    def undo(region_text):
        lines = [line for line in (region_text or "").splitlines() if line.strip()]
        return "\n".join(lines[:-1]), None

    def clear(editor_value):
        bg = _bg(editor_value)
        value = None if bg is None else {"background": bg, "layers": [], "composite": bg}
        return value, "", None

    @page_errors
    def classify(editor_value, region_text, label_text, template_text, top, mode, baselines):
        labels_ = parse_labels(label_text)
        templates = parse_templates(template_text, engine.templates)
        regions = engine.regions(editor_value, region_text or "")
        r = engine.classify(regions, labels_, templates, top=int(top), baselines=bool(baselines), mode=mode)
        return r.rows, r.overlay, r.baseline_rows, r.views

    @page_errors
    def where_is(editor_value, phrase, use_sam, cells, mode):
        r = engine.where(editor_image(editor_value), phrase, use_sam=bool(use_sam), cells=int(cells), mode=mode)
        return r.rows, r.overlay, r.heat, f"candidates: {r.source}"

    @page_errors
    def ask(editor_value, region_text, question):
        return engine.ask(engine.regions(editor_value, region_text or ""), question)

    # the pictures the server draws go out as JPEG: a 512px PNG costs ~20 ms to encode on this CPU, a JPEG ~1 ms
    with gr.Blocks(title="Alpha-CLIP regions", analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nModel: **{engine.name}**"
                    + (" · SAM loaded" if has_sam else "") + (" · alpha LLaVA loaded" if has_llava else "")
                    + "\n\n1. Upload a picture or pick an example. 2. Mark regions: brush on the picture (each layer "
                      "is one region), click two corners of a box on the preview"
                    + (", or click points for SAM" if has_sam else "")
                    + ". 3. Classify, search (\"where is ...\")" + (" or ask LLaVA" if has_llava else "") + ".")
        pending = gr.State(None)
        label_box = gr.Textbox(label="Labels (one per line, or comma-separated)", value=labels, lines=3, max_lines=8,
                               elem_id="labels", scale=2, render=False)
        template_box = gr.Textbox(label="Prompt templates (one per line; {} is the label)",
                                  value="\n".join(engine.templates), lines=2, elem_id="templates", render=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    label="Picture (brush a region; one layer per region)", type="numpy", image_mode="RGBA",
                    sources=("upload", "clipboard"), transforms=(), format="png",  # layers keep their alpha
                    elem_id="editor",
                    brush=gr.Brush(colors=[_hex(c) for c in PALETTE[:6]], color_mode="defaults"),
                    layers=gr.LayerOptions(allow_additional_layers=True, layers=["region"]))
            with gr.Column(scale=1):
                shown = gr.Image(label="Marked regions (click: " + " / ".join(modes) + ")", type="pil",
                                 interactive=False, format="jpeg", elem_id="preview")
                click_mode = gr.Radio(modes, value=modes[0], label="A click on the preview adds a",
                                      visible=has_sam, elem_id="click-mode")
                region_text = gr.Textbox(label="Region list (one per line: 'box x0,y0,x1,y1' in pixels"
                                         + (", 'sam x,y -x,y'" if has_sam else "") + ")",
                                         lines=3, elem_id="regions")
                with gr.Row():
                    undo_btn = gr.Button("Undo last region", size="sm")
                    clear_btn = gr.Button("Clear regions", size="sm")
        if examples:  # the editor fires no change event when an example fills it: show the preview from here
            gr.Examples(examples=examples, inputs=[editor, label_box, template_box, region_text], outputs=shown,
                        fn=lambda ed, _labels, _templates, regions: preview(ed, regions), run_on_click=True,
                        cache_examples=False, label="Bundled scenes (the toy model's synthetic world)",
                        example_labels=[f"scene {i + 1}" + (" (the demo scene)" if i == 0 else "")
                                        for i in range(len(examples))],
                        elem_id="examples")
        with gr.Tabs():
            with gr.Tab("Classify regions", id="classify"):
                with gr.Row():
                    label_box.render()
                    with gr.Column(scale=1):
                        template_box.render()
                        top_k = gr.Slider(1, 10, value=3, step=1, label="labels shown per region")
                        geometry = gr.Radio(list(GEOMETRIES), value="pad", label="geometry (image + alpha together)")
                        baselines = gr.Checkbox(value=True, label="compare with plain CLIP views")
                classify_btn = gr.Button("Classify", variant="primary", elem_id="classify-btn")
                with gr.Row():
                    table = gr.Dataframe(headers=CLASSIFY_HEADERS, label="Alpha-CLIP, ranked per region",
                                         interactive=False, elem_id="table")
                    overlay = gr.Image(label="Alpha-CLIP's answer", type="pil", format="jpeg", interactive=False)
                compare = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, elem_id="compare",
                                       label="The same model without an alpha region: whole image, crop, "
                                             "background masked, red circle")
                views = gr.Gallery(label="What each method saw", columns=5, height="auto", format="jpeg")
            with gr.Tab("Where is ...", id="where"):
                with gr.Row():
                    phrase = gr.Textbox(label="Where is", placeholder="the red circle", scale=3, elem_id="phrase")
                    use_sam = gr.Checkbox(value=has_sam, visible=has_sam, label="SAM automatic masks")
                    cells = gr.Slider(2, 8, value=4, step=1, label="grid cells per side (without SAM)")
                find_btn = gr.Button("Find", variant="primary", elem_id="find-btn")
                source = gr.Markdown()
                with gr.Row():
                    where_table = gr.Dataframe(headers=WHERE_HEADERS, interactive=False, label="Regions, best first")
                    where_overlay = gr.Image(label="Best regions", type="pil", format="jpeg", interactive=False)
                    heat = gr.Image(label="Heat map", type="pil", format="jpeg", interactive=False)
            with gr.Tab("Ask LLaVA", id="llava", visible=has_llava):
                question = gr.Textbox(label="Question about each region", value="Describe the region.")
                ask_btn = gr.Button("Ask", variant="primary")
                answers = gr.Dataframe(headers=["region", "answer"], interactive=False, wrap=True)
            ctx = PanelContext(engine, editor, region_text, regions_of)
            for panel in panels:
                panel(ctx)
        quiet = dict(show_progress="hidden", queue=False)
        editor.change(preview, [editor, region_text], shown, trigger_mode="always_last", api_name=False, **quiet)
        region_text.change(preview, [editor, region_text], shown, trigger_mode="always_last", api_name="preview",
                           **quiet)
        shown.select(click, [editor, region_text, pending, click_mode], [region_text, pending, shown], api_name=False,
                     **quiet)
        undo_btn.click(undo, region_text, [region_text, pending], api_name=False, **quiet)
        clear_btn.click(clear, editor, [editor, region_text, pending], api_name=False, **quiet)
        classify_btn.click(classify, [editor, region_text, label_box, template_box, top_k, geometry, baselines],
                           [table, overlay, compare, views], api_name="classify")
        find_btn.click(where_is, [editor, phrase, use_sam, cells, geometry], [where_table, where_overlay, heat, source],
                       api_name="where_is")
        ask_btn.click(ask, [editor, region_text, question], answers, api_name="ask")
    return demo


def launch(engine: RegionEngine, *, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           concurrency: int = 1, queue_size: int = 16, examples: bool = True, labels: str = "",
           panels: Sequence[Callable] = (), block: bool = True) -> Tuple["gr.Blocks", Path]:
    """Serve the page: a private temporary folder for uploads (removed when a blocking server stops), a
    queue that runs ``concurrency`` model calls at once and holds ``queue_size`` waiting ones.

    Returns ``(blocks, folder)``; with ``block=False`` the server runs in a thread (``blocks.close()`` stops
    it; the caller removes ``folder``).
    """
    folder = temp_folder()
    done = False
    try:
        rows = scene_examples(folder / "examples") if examples else None
        demo = build_app(engine, examples=rows, panels=panels, labels=labels)
        demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
        logger.info("uploads and pictures go to %s", folder)
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                    show_error=True, quiet=not block, allowed_paths=[str(folder)])
        done = True
    finally:
        if block or not done:  # a blocking server has stopped (Ctrl+C, SIGTERM), or it never started
            shutil.rmtree(folder, ignore_errors=True)
    return demo, folder
