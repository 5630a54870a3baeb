"""The app's Variations tab (``alphaclip app --pipeline FOLDER``): through gradio_client against a server on
127.0.0.1 with the toy Alpha-CLIP and a tiny image-variation pipeline built, saved and converted here
(``diffusers_kit``); the command line's --pipeline checks; docs/app.md's example."""
from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the app needs gradio (pip install 'alpha-clip[app]')")
pytest.importorskip("diffusers")

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from alphaclip_core.cli import main  # noqa: E402
from alphaclip_integrations.diffusers import load_pipeline, region_variations  # noqa: E402
from alphaclip_integrations.gradio.app import build_app  # noqa: E402
from alphaclip_integrations.gradio.engine import RegionEngine  # noqa: E402
from alphaclip_integrations.gradio.variations import variations_panel  # noqa: E402

import diffusers_kit as kit  # noqa: E402
from diffusers_kit import S, one_thread  # noqa: E402,F401  (one_thread: autouse, one torch thread)
from test_app import TEMPLATES, editor, scene, serve, toy  # noqa: E402,F401  (scene, toy: fixtures)

BOX = [34, 16, 58, 40]   # the demo scene's object 0 region, inside the 64x64 picture


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``stock`` (a tiny random image-variation pipeline), ``alpha.pth`` and ``alpha-pipe`` (converted)."""
    return kit.write_folders(tmp_path_factory.mktemp("variations"), kit.stock_pipeline(kit.clip_encoder()),
                             kit.alpha_model())


@pytest.fixture(scope="module")
def pipe(folders):
    return load_pipeline(folders / "alpha-pipe", progress=False)


@pytest.fixture(scope="module")
def server(toy, pipe):
    engine = RegionEngine(*toy, templates=TEMPLATES, name="toy")
    with serve(engine, panels=[variations_panel(pipe)]) as (demo, folder, port):
        yield {"demo": demo, "client": Client(f"http://127.0.0.1:{port}/", verbose=False)}


def variations(client, ed, regions, n=2, steps=2, guidance=3.0, seed=5, mode="crop"):
    return client.predict(ed, regions, n, steps, guidance, seed, mode, api_name="/variations")


def pixels(item) -> np.ndarray:
    return np.asarray(Image.open(item["image"]))


def test_variations_are_region_variations_of_the_marked_regions(server, scene, pipe):
    """A brushed layer and a box: the gallery holds exactly region_variations' images for the same
    picture, regions, seed and settings (pixel for pixel), one row per region."""
    ed = editor(scene["dir"] / "scene.png", [scene["dir"] / "layer.png"])
    gallery, overlay, summary = variations(server["client"], ed, "box " + ",".join(map(str, BOX)))
    want = region_variations(pipe, scene["image"], mask=[scene["masks"][2]], box=[BOX], num_images=2, seed=5,
                             mode="crop", num_inference_steps=2, guidance_scale=3.0)
    assert len(gallery) == 4 and [g["caption"] for g in gallery] == ["1 brush · 1", "1 brush · 2", "2 box · 1",
                                                                      "2 box · 2"]
    for item, image in zip(gallery, want):
        got = pixels(item)
        assert got.shape == (S, S, 3) and np.array_equal(got, np.asarray(image))
    # the overlay is the page's preview of the same regions (the 64px scene shown 8x larger)
    assert Image.open(overlay).size == (512, 512)
    assert "4 variations of 2 regions: 32x32, 2 steps, guidance 3, seed 5, geometry crop" in summary
    # the comparison can fail: another seed, and the other region, give other images
    other = variations(server["client"], ed, "box " + ",".join(map(str, BOX)), n=1, seed=6)[0]
    assert not np.array_equal(pixels(other[0]), pixels(gallery[0]))
    assert not np.array_equal(pixels(gallery[0]), pixels(gallery[2]))


def test_no_region_gives_variations_of_the_whole_picture(server, scene, pipe):
    gallery, _, summary = variations(server["client"], editor(scene["dir"] / "scene.png"), "", n=1, guidance=1.0,
                                     seed=0, mode="pad")
    want = region_variations(pipe, scene["image"], num_images=1, seed=0, mode="pad", num_inference_steps=2,
                             guidance_scale=1.0)
    assert [g["caption"] for g in gallery] == ["whole picture · 1"] and "the whole picture (no region marked)" in summary
    assert np.array_equal(pixels(gallery[0]), np.asarray(want[0]))
    boxed = region_variations(pipe, scene["image"], box=BOX, num_images=1, seed=0, mode="pad", num_inference_steps=2,
                              guidance_scale=1.0)
    assert not np.array_equal(np.asarray(boxed[0]), np.asarray(want[0]))   # the region does change the images


@pytest.mark.parametrize("case, match", [
    ("box outside", "region 1: box 70,70,90,90 covers no pixel of the 64x64 picture"),
    ("bad line", "regions, line 1: expected 'box x0,y0,x1,y1' or 'sam x,y ...'"),
    ("no picture", "image: upload a picture first"),
    ("outside the crop", "mask 0 lies entirely outside the centre crop"),
    ("bad seed", "seed: expected a whole number from 0 to"),
])
def test_bad_input_gives_the_page_error(server, scene, tmp_path, case, match):
    Image.new("RGB", (96, 64), "gray").save(tmp_path / "wide.png")
    ed = editor(scene["dir"] / "scene.png")
    args = {"box outside": (ed, "box 70,70,90,90"), "bad line": (ed, "circle 3"),
            "no picture": ({"background": None, "layers": [], "composite": None}, "box 1,1,9,9"),
            "outside the crop": (editor(tmp_path / "wide.png"), "box 0,0,10,64"),
            "bad seed": (ed, "box 1,1,9,9")}[case]
    with pytest.raises(AppError, match=re.escape(match)):
        variations(server["client"], *args, seed=2 ** 64 if case == "bad seed" else 5)


def test_tab_is_queued_like_the_other_model_calls(server, pipe, toy):
    demo = server["demo"]
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert "Variations" in [t.label for t in tabs]
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert fns["variations"].concurrency_limit == fns["classify"].concurrency_limit == "default"
    assert fns["variations"].queue and demo._queue.default_concurrency_limit == 1
    assert pipe.device == next(toy[0].parameters()).device   # the app's model device
    with pytest.raises(TypeError, match="pipeline: expected an AlphaCLIPImageVariationPipeline, got str"):
        variations_panel("sd-variations")


# ------------------------------------------------------------------------------------------------ the command
def test_command_loads_the_pipeline_into_a_variations_tab(folders, monkeypatch, capsys):
    seen = {}

    def fake_launch(engine, **kw):
        seen.update(kw, demo=build_app(engine, panels=kw["panels"]))
        return None, None

    monkeypatch.setattr("alphaclip_integrations.gradio.app.launch", fake_launch)
    assert main(["app", "--pipeline", str(folders / "alpha-pipe"), "--no-examples"]) == 0
    assert len(seen["panels"]) == 1
    assert "Variations" in [b.label for b in seen["demo"].blocks.values() if isinstance(b, gr.Tab)]
    assert "variations" in {fn.api_name for fn in seen["demo"].fns.values()}
    capsys.readouterr()


@pytest.mark.parametrize("which, match", [
    ("stock", "--pipeline: {} holds a StableDiffusionImageVariationPipeline pipeline; expected one of "
              "AlphaCLIPImageVariationPipeline"),
    ("stock/unet", "--pipeline: {} has no model_index.json, so it is not a diffusers pipeline folder"),
    ("missing", "--pipeline: {} is not a folder (expected an Alpha-CLIP image-variation pipeline folder"),
])
def test_command_rejects_a_folder_that_is_not_such_a_pipeline(folders, which, match, monkeypatch, capsys):
    monkeypatch.setattr("alphaclip_integrations.gradio.app.launch", lambda *a, **k: pytest.fail("launched"))
    path = folders / which
    assert main(["app", "--pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert match.format(path) in err and "Traceback" not in err


def test_diffusers_is_needed_only_with_pipeline(folders, monkeypatch, capsys):
    for name in ("diffusers", "alphaclip_integrations.diffusers.generate", "alphaclip_integrations.gradio.variations"):
        monkeypatch.setitem(sys.modules, name, None)   # import -> ImportError
    monkeypatch.setattr("alphaclip_integrations.gradio.app.launch", lambda *a, **k: (None, None))
    assert main(["app", "--no-examples"]) == 0
    capsys.readouterr()
    assert main(["app", "--pipeline", str(folders / "alpha-pipe")]) == 2   # the command line's error boundary
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --pipeline needs diffusers, which is not installed: "
                                               "pip install 'alpha-clip[diffusers]'")


# ------------------------------------------------------------------------------------------------ docs/app.md
def test_docs_variations_example_runs(folders, tmp_path, monkeypatch):
    from conftest import doc_blocks

    os.symlink(folders / "alpha-pipe", tmp_path / "sd-variations-alpha-clip")
    monkeypatch.chdir(tmp_path)
    blocks = doc_blocks("docs/app.md", "Variations of a region")
    assert len(blocks) == 1
    ns = {"__name__": "__docs__"}
    exec(compile(blocks[0], "docs/app.md", "exec"), ns)
    demo = ns["demo"]
    assert "Variations" in [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    fn = next(f for f in demo.fns.values() if f.api_name == "variations")
    assert [getattr(b, "label", None) for b in fn.inputs][2:] == ["images per region", "denoising steps",
                                                                  "guidance scale (<= 1: no classifier-free guidance)",
                                                                  "seed", "geometry (crop: CLIP's, as the pipeline "
                                                                  "was trained)"]
    assert fn.inputs[3].value == 25 and fn.inputs[4].value == 3.0 and fn.inputs[6].value == "crop"
