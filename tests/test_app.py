"""``alphaclip app``: the region page's endpoints through gradio_client against a server on 127.0.0.1 (the
shipped toy model), its parsing and click logic, SAM and LLaVA behind it, and the command line."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the app needs gradio (pip install 'alpha-clip[app]')")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from alphaclip_core.cli import build_parser, main  # noqa: E402
from alphaclip_core.regions import classify_regions  # noqa: E402
from alphaclip_integrations.gradio.engine import (CLICK_MODES, RegionEngine, add_click, grid_boxes,  # noqa: E402
                                                 parse_labels, parse_regions, parse_templates)
from alphaclip_train.eval.baselines import baseline_view  # noqa: E402
from alphaclip_train.eval.locate import locate  # noqa: E402
from alphaclip_train.synthetic import LABELS, demo_scene, load_tiny  # noqa: E402

TEMPLATES = ["a {}."]
TOL = 1e-4  # the tables round probabilities to 4 decimals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def toy():
    return load_tiny()


@contextlib.contextmanager
def serve(engine: RegionEngine, panels=()):
    """The page served on 127.0.0.1 by :func:`launch` (bundled scenes as examples; extra ``panels``):
    ``(demo, folder, port)``; afterwards the server is closed, its temporary folder removed and
    ``GRADIO_TEMP_DIR`` restored."""
    from alphaclip_integrations.gradio.app import launch

    saved = os.environ.get("GRADIO_TEMP_DIR")
    port = free_port()
    demo, folder = launch(engine, port=port, block=False, labels="\n".join(LABELS), panels=panels)
    try:
        yield demo, folder, port
    finally:
        demo.close()
        shutil.rmtree(folder, ignore_errors=True)
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


@pytest.fixture(scope="module")
def server(toy):
    """The toy model's page and a gradio_client on it."""
    engine = RegionEngine(*toy, templates=TEMPLATES, name="toy")
    with serve(engine) as (demo, folder, port):
        yield {"demo": demo, "folder": folder, "engine": engine, "port": port,
               "client": Client(f"http://127.0.0.1:{port}/", verbose=False)}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The demo scene as a PNG, its masks, and one painted RGBA layer holding the mask of object 2."""
    d = tmp_path_factory.mktemp("scene")
    image, masks, truth, _ = demo_scene()
    image.save(d / "scene.png")
    layer = np.zeros((*masks.shape[1:], 4), np.uint8)
    layer[masks[2]] = (230, 25, 75, 255)
    Image.fromarray(layer, "RGBA").save(d / "layer.png")
    box = [int(v) for v in np.argwhere(masks[0])[:, ::-1].min(0)] + [int(v) + 1 for v in np.argwhere(masks[0])[:, ::-1].max(0)]
    return {"dir": d, "image": image, "masks": masks, "truth": truth, "box": box}


def editor(path, layers=()):
    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers], "composite": None}


def classify(client, ed, regions, labels="\n".join(LABELS), templates="a {}.", top=3, baselines=True):
    return client.predict(ed, regions, labels, templates, top, "pad", baselines, api_name="/classify")


# ------------------------------------------------------------------------------------------------ the page's API
def test_classify_a_brushed_mask_and_a_box(server, scene, toy):
    box = scene["box"]
    table, overlay, _, _ = classify(server["client"], editor(scene["dir"] / "scene.png", [scene["dir"] / "layer.png"]),
                                    f"box {box[0]},{box[1]},{box[2]},{box[3]}", top=10, baselines=False)
    rows = table["data"]
    assert [r[0] for r in rows] == ["1 brush"] * 10 + ["2 box"] * 10 and [r[1] for r in rows[:3]] == [1, 2, 3]
    # the same regions through the core's classify_regions: same ranking, probabilities to the table's rounding
    ref = classify_regions(*toy, scene["image"], list(LABELS), mask=[scene["masks"][2]], box=[box],
                           templates=TEMPLATES, mode="pad")
    for k in range(2):
        got = rows[10 * k:10 * (k + 1)]
        assert [r[2] for r in got][:1] == [ref.top(k, 1)[0][0]]
        want = dict(ref.top(k, 24))
        assert all(abs(r[3] - want[r[2]]) <= TOL for r in got) and got[-1][3] >= sorted(want.values())[-10] - TOL
    # the overlay: the 64px scene shown 8x larger, each region tinted in its colour
    pic = np.asarray(Image.open(overlay).convert("RGB"), int)
    assert pic.shape == (512, 512, 3)
    big = np.asarray(scene["image"].resize((512, 512), Image.NEAREST), int)
    inside = scene["masks"][2].repeat(8, 0).repeat(8, 1)
    assert (np.abs(pic - big).sum(-1)[inside] > 0).mean() > 0.9


def test_baselines_are_the_same_model_on_plain_views(server, scene, toy):
    box = scene["box"]
    _, _, compare, views = classify(server["client"], editor(scene["dir"] / "scene.png"),
                                    f"box {box[0]},{box[1]},{box[2]},{box[3]}")
    rows = compare["data"]
    assert [r[1] for r in rows] == ["Alpha-CLIP (region as alpha)", "CLIP, whole image", "CLIP, crop",
                                    "CLIP, background masked", "CLIP, red circle"]
    alpha_label = rows[0][2]
    region = np.zeros(scene["masks"].shape[1:], bool)
    region[box[1]:box[3], box[0]:box[2]] = True
    for row, view in zip(rows[1:], ("whole", "crop", "masked", "red_circle")):
        # each plain view is a whole picture (all-ones alpha) to the same model: classify_regions without a region
        ref = classify_regions(*toy, baseline_view(view, scene["image"], region), list(LABELS), templates=TEMPLATES,
                               mode="pad")
        assert row[2] == ref.top(0, 1)[0][0]
        assert abs(row[3] - ref.top(0, 1)[0][1]) <= TOL
        assert abs(row[4] - float(ref.probs[0, LABELS.index(alpha_label)])) <= TOL
    assert len(views) == 5 and all(Path(v["image"]).is_file() for v in views)
    assert views[2]["caption"].startswith("1 · crop: ")


def test_where_is_ranks_grid_boxes_with_a_heat_map(server, scene, toy):
    rows, overlay, heat, source = server["client"].predict(editor(scene["dir"] / "scene.png"), "a white square.",
                                                           False, 4, "pad", api_name="/where_is")
    boxes = grid_boxes(64, 64, 4)
    assert f"grid of boxes ({len(boxes)}" in source
    ref = locate(*toy, scene["image"], "a white square.", boxes=boxes, mode="pad")
    best = ref.top(10)
    assert [r[0] for r in rows["data"]] == list(range(1, 11))
    assert [r[1] for r in rows["data"]] == [",".join(str(v) for v in b["box"]) for b in best]
    assert all(abs(r[2] - b["cosine"]) <= TOL and abs(r[3] - b["prob"]) <= TOL for r, b in zip(rows["data"], best))
    h = np.asarray(Image.open(heat).convert("RGB"), int)
    assert h.shape == (512, 512, 3)
    # hottest where the best box is (red high), coldest outside every box it covers
    x0, y0, x1, y1 = best[0]["box"]
    inside = h[y0 * 8:y1 * 8, x0 * 8:x1 * 8]
    assert (inside[..., 0] - inside[..., 2]).mean() > (h[..., 0] - h[..., 2]).mean()
    assert Image.open(overlay).size == (512, 512)


@pytest.mark.parametrize("case, match", [
    ("no picture", "image: upload a picture first"),
    ("tiny picture", "image: 4x4 pixels"),
    ("no region", "regions: mark at least one region"),
    ("box outside", "region 1: box 70,70,90,90 covers no pixel of the 64x64 picture"),
    ("bad line", "regions, line 1: expected 'box x0,y0,x1,y1' or 'sam x,y ...'"),
    ("empty box", "regions, line 1: box 5,5,5,9 is empty"),
    ("no labels", "labels: enter at least one label"),
    ("bad template", "templates: each line needs exactly one {}"),
    ("sam without sam", "SAM points need a SAM checkpoint"),
])
def test_bad_input_gives_the_page_error(server, scene, tmp_path, case, match):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    ed = editor(scene["dir"] / "scene.png")
    args = {"no picture": ({"background": None, "layers": [], "composite": None}, "box 1,1,9,9"),
            "tiny picture": (editor(tmp_path / "tiny.png"), "box 0,0,2,2"),
            "no region": (ed, ""), "box outside": (ed, "box 70,70,90,90"), "bad line": (ed, "circle 3"),
            "empty box": (ed, "box 5,5,5,9"), "no labels": (ed, "box 1,1,9,9"), "bad template": (ed, "box 1,1,9,9"),
            "sam without sam": (ed, "sam 10,10")}[case]
    labels = " , \n " if case == "no labels" else "red circle, blue square"
    templates = "a photo" if case == "bad template" else "a {}."
    with pytest.raises(AppError, match=match.replace("(", r"\(").replace(")", r"\)")):
        classify(server["client"], *args, labels=labels, templates=templates)


def test_where_and_ask_errors(server, scene):
    c = server["client"]
    with pytest.raises(AppError, match="where is: type what to look for"):
        c.predict(editor(scene["dir"] / "scene.png"), "  ", False, 4, "pad", api_name="/where_is")
    with pytest.raises(AppError, match="region questions need an alpha LLaVA: start the app with"):
        c.predict(editor(scene["dir"] / "scene.png"), "box 1,1,9,9", "what is it?", api_name="/ask")


def test_server_is_local_queued_and_keeps_uploads_in_its_temp_folder(server, scene):
    demo, folder = server["demo"], server["folder"]
    assert demo.server_name == "127.0.0.1" and demo.share is False
    assert demo._queue.max_size == 16
    limits = {fn.api_name: fn.concurrency_limit for fn in demo.fns.values() if fn.api_name}
    assert limits["classify"] == limits["where_is"] == "default" and demo._queue.default_concurrency_limit == 1
    assert Path(folder).parent == Path(tempfile.gettempdir()) and folder.name.startswith("alphaclip-app-")
    assert os.environ["GRADIO_TEMP_DIR"] == str(folder)
    server["client"].predict(editor(scene["dir"] / "scene.png"), "box 1,1,9,9", api_name="/preview")
    uploaded = [p for p in folder.rglob("*") if p.is_file() and p.suffix == ".png"]
    assert any(p.stat().st_size == (scene["dir"] / "scene.png").stat().st_size for p in uploaded)
    assert len({p.parent.parent.name for p in uploaded if "examples" not in p.parts}) >= 1


# ------------------------------------------------------------------------------------------------ parsing and clicks
def test_parsing():
    assert parse_labels("cat, dog\nred car\n\ncat") == ["cat", "dog", "red car"]
    assert parse_templates("", ["a {}."]) == ["a {}."] and parse_templates("x {}\n {} y ", []) == ["x {}", "{} y"]
    specs = parse_regions("box 1,2,30,40\n# note\n5, 6, 7, 8\nsam 10,12 -3,4")
    assert [(s.kind, s.box) for s in specs[:2]] == [("box", [1, 2, 30, 40]), ("box", [5, 6, 7, 8])]
    assert specs[2].points == [(10, 12, 1), (3, 4, 0)] and specs[2].text() == "sam 10,12 -3,4"
    with pytest.raises(ValueError, match="regions, line 1: a SAM region needs at least one foreground point"):
        parse_regions("sam -3,4")
    with pytest.raises(ValueError, match=r"regions, line 2: a box is 'box x0,y0,x1,y1' \(4 numbers"):
        parse_regions("\nbox 1,2,3")
    g = grid_boxes(64, 48, 4)
    assert g.shape == (16 + 9 + 4, 4) and g[0].tolist() == [0, 0, 16, 12] and g[-1].tolist() == [16, 12, 64, 48]


def test_clicks_make_boxes_and_sam_points():
    text, pending = add_click("", None, 30, 8)
    assert (text, pending) == ("", [30, 8])
    text, pending = add_click(text, pending, 10.4, 20.6)
    assert (text, pending) == ("box 10,8,31,22", None)  # both corner pixels inside the box
    text, _ = add_click(text, None, 5, 6, CLICK_MODES[1])
    text, _ = add_click(text, None, 7, 9, CLICK_MODES[3])
    assert text.splitlines() == ["box 10,8,31,22", "sam 5,6 -7,9"]
    with pytest.raises(ValueError, match="SAM points: start a SAM region first"):
        add_click("box 1,1,4,4", None, 2, 2, CLICK_MODES[2])


# ------------------------------------------------------------------------------------------------ SAM and LLaVA
def test_sam_points_and_automatic_masks(toy, scene, tmp_path):
    from segment_anything import SamPredictor

    from alphaclip_train.sam import tiny_sam

    torch.save(tiny_sam().state_dict(), tmp_path / "tiny_sam.pth")
    args = build_parser().parse_args(["app", "--sam", str(tmp_path / "tiny_sam.pth"), "--sam-type", "tiny",
                                      "--sam-points-per-side", "4"])
    from alphaclip_integrations.gradio.cli import build_engine
    engine = build_engine(args)
    ed = {"background": np.asarray(scene["image"].convert("RGBA")), "layers": []}
    pts = [(40.0, 25.0, 1), (12.0, 18.0, 0)]
    predictor = SamPredictor(engine.sam)
    predictor.set_image(np.asarray(scene["image"]))
    masks, iou, _ = predictor.predict(point_coords=np.array([p[:2] for p in pts]), point_labels=np.array([1, 0]),
                                      multimask_output=True)
    want = masks[int(np.argmax(iou))]
    assert want.any()  # the tiny random SAM does find a mask for these points
    r = engine.regions(ed, "sam 40,25 -12,18")
    assert r.names == ["1 sam"] and np.array_equal(r.masks[0], want)
    # where is with SAM: with the default thresholds the random SAM keeps no automatic mask -> the page's error
    with pytest.raises(ValueError, match="the mask generator found no region"):
        engine.where(scene["image"], "a white square.")
    # with no thresholds it keeps some: the app ranks exactly what locate ranks over the same generator
    from alphaclip_train.sam import automatic_mask_generator
    options = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    loose = RegionEngine(engine.model, engine.tokenizer, sam=engine.sam, sam_points_per_side=4, sam_options=options)
    ref = locate(engine.model, engine.tokenizer, scene["image"], "a white square.",
                 mask_generator=automatic_mask_generator(engine.sam, points_per_side=4, **options), mode="pad")
    got = loose.where(scene["image"], "a white square.")
    assert got.source == f"SAM automatic masks ({ref.masks.shape[0]})" and torch.equal(got.result.masks, ref.masks)
    torch.testing.assert_close(got.result.cosine, ref.cosine, rtol=0, atol=1e-6)


def test_ask_llava_about_each_region(toy, scene, tmp_path):
    pytest.importorskip("transformers")
    from test_llava_hf import write_fixtures

    from alphaclip_integrations.llava import convert_llava

    write_fixtures(tmp_path)
    folder = convert_llava(tmp_path / "llava", tmp_path / "ref.pth", tmp_path / "alpha")
    args = build_parser().parse_args(["app", "--llava", str(folder)])
    from alphaclip_integrations.gradio.cli import build_engine
    engine = build_engine(args)
    model, processor = engine.llava
    ed = {"background": np.asarray(scene["image"].convert("RGBA")), "layers": []}
    rows = engine.ask(engine.regions(ed, "box 2,2,30,30\nbox 30,30,60,60"), "what is this ?", max_new_tokens=4)
    assert [r[0] for r in rows] == ["1 box", "2 box"]
    for (name, answer), box in zip(rows, ([2, 2, 30, 30], [30, 30, 60, 60])):
        inputs = processor(images=scene["image"], text="USER: <image>\nwhat is this ? ASSISTANT:", boxes=box)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert answer == processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


# ------------------------------------------------------------------------------------------------ the command
def test_command_defaults_and_startup(monkeypatch, capsys):
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.share, args.model, args.checkpoint, args.sam, args.llava) == \
        ("127.0.0.1", 7860, False, None, None, None, None)
    seen = {}

    def fake_launch(engine, **kw):
        seen.update(kw, engine=engine)
        return None, None

    monkeypatch.setattr("alphaclip_integrations.gradio.app.launch", fake_launch)
    assert main(["app", "--port", "7999"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7999 and seen["share"] is False and seen["examples"]
    assert seen["engine"].templates == ["a {}."] and "toy" in seen["engine"].name
    assert seen["labels"].splitlines() == list(LABELS)
    assert "http://127.0.0.1:7999" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--checkpoint", "nowhere/alpha.pth"], "--checkpoint: nowhere/alpha.pth does not exist"),
    (["--sam", "nowhere/sam_vit_b.pth"], "--sam: nowhere/sam_vit_b.pth does not exist"),
    (["--llava", "nowhere"], "--llava: nowhere is not a folder"),
])
def test_command_errors(argv, match, capsys):
    assert main(["app"] + argv) == 2
    assert match in capsys.readouterr().err


def test_command_sam_type_from_file_name(tmp_path, capsys):
    (tmp_path / "my_sam.pth").write_bytes(b"")
    assert main(["app", "--sam", str(tmp_path / "my_sam.pth")]) == 2
    assert "--sam-type: cannot tell the SAM architecture from the file name 'my_sam.pth'" in capsys.readouterr().err


def test_command_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app"]) == 2  # the command line's error boundary: one line, exit code 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and __import__("re").match(
        r"error: 'alphaclip app' needs Gradio, which is not installed: pip install 'alpha-clip\[app\]'", err[0])


# ------------------------------------------------------------------------------------------------ docs/app.md
def test_docs_python_blocks_run(capsys):
    from conftest import doc_blocks

    blocks = doc_blocks("docs/app.md", "Python")
    assert len(blocks) == 2
    ns = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, "docs/app.md", "exec"), ns)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1 box") and out[1].startswith("2 box")
    assert len(ns["result"].baseline_rows) == 10 and ns["result"].baseline_rows[1][1] == "CLIP, whole image"
    assert ns["where"].rows[0][0] == 1
    assert isinstance(ns["demo"], gr.Blocks)
    tabs = [b for b in ns["demo"].blocks.values() if isinstance(b, gr.Tab)]
    assert "Region cut-outs" in [t.label for t in tabs]
    # the panel's callback is wired to the editor and the region list and cuts out each region
    fn = next(f for f in ns["demo"].fns.values() if f.fn.__name__ == "run")
    image = ns["image"]
    pics = fn.fn({"background": np.asarray(image.convert("RGBA")), "layers": []}, "box 34,16,58,40")
    assert len(pics) == 1 and np.array_equal(np.asarray(pics[0])[20, 40], np.asarray(image)[20, 40])
    with pytest.raises(gr.Error, match="regions: mark at least one region"):
        fn.fn({"background": np.asarray(image.convert("RGBA")), "layers": []}, "")


def test_command_serves_on_localhost_and_cleans_up_on_sigterm(tmp_path):
    """The real command in its own process: the page on 127.0.0.1, uploads under the system temp folder,
    removed when the server is stopped with SIGTERM (as with Ctrl+C)."""
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "alphaclip_core.cli", "app", "--port", str(port), "--no-examples"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # until the server says it runs
            lines.append(line)
            if "Running on local URL" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text, text
        folder = Path(re.search(r"uploads and pictures go to (\S+)", text).group(1))
        assert folder.parent == tmp_path and folder.is_dir()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read(2000).lower()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not folder.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
