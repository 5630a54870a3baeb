#!/usr/bin/env python
"""How long a click in the region app (``alphaclip app``) takes on the server.

For each model, the app is served on 127.0.0.1 (as ``alphaclip app`` serves it) and each action is
timed two ways, side by side in one run:

- callback: the page's own callback (parsing, regions, the model, the pictures and tables), called with
  the values Gradio hands it: the server's work for a click without Gradio's file handling;
- server: for the queued endpoints, the time Gradio's queue records for the event (its
  pre-processing, the callback, its post-processing, i.e. writing the result pictures): the server
  time of a click;
- round trip: the same action through ``gradio_client`` over HTTP on this machine (upload of the
  picture, queue, pre/post-processing, download of the result pictures): an upper bound of what a
  person waits, network aside.

Actions: ``preview`` (a click on the preview: the region list is redrawn), ``classify`` (1 region
without and with the plain-CLIP baselines, 3 regions with them; 24 labels), ``where_is`` (grid of 29 boxes). The label list is
the same every click, so the text features come from the app's cache after the first click (the first
click's time is reported separately as ``first classify``).

Models: the shipped toy (64px, the bundled demo scene) and ``alpha-ViT-B-16`` with random weights
(224px, speed does not depend on the weights) on a 640x480 picture. fp32, CPU. Results:
``benchmarks/results/app_latency.json|md``. The machine is shared: the load average is recorded at
start and end; compare numbers measured in the same run.

    python benchmarks/app_latency.py [--repeats 7] [--models toy,alpha-ViT-B-16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from alphaclip_core.checkpoints import atomic_write
from _common import describe, machine as machine_info

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 300.0


def build(name: str):
    from alphaclip_integrations.gradio.engine import RegionEngine
    from alphaclip_train.synthetic import LABELS, demo_scene, load_tiny

    labels = "\n".join(LABELS)
    if name == "toy":
        model, tok = load_tiny()
        image = demo_scene()[0]
        regions = ["box 34,16,58,40", "box 34,16,58,40\nbox 9,14,20,25\nbox 31,1,43,13"]
        return RegionEngine(model, tok, templates=["a {}."], name="toy"), image, regions, labels
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401

    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    regions = ["box 200,100,420,380", "box 200,100,420,380\nbox 10,10,200,200\nbox 400,250,630,470"]
    return RegionEngine(model, open_clip.get_tokenizer(name), name=name), image, regions, labels


def ms(xs: List[float]) -> Dict[str, float]:
    return {"median_ms": round(1000 * statistics.median(xs), 1), "min_ms": round(1000 * min(xs), 1), "n": len(xs)}


def run_model(name: str, repeats: int) -> Dict[str, Any]:
    from gradio_client import Client, handle_file

    from alphaclip_integrations.gradio.app import launch

    engine, image, regions, labels = build(name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, folder = launch(engine, port=port, block=False, examples=False, labels=labels)
    try:
        fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
        path = folder / "picture.png"
        image.save(path)
        value = {"background": np.asarray(image.convert("RGBA")), "layers": [], "composite": None}
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        remote = {"background": handle_file(str(path)), "layers": [], "composite": None}
        t0 = time.perf_counter()
        fns["classify"](value, regions[0], labels, "\n".join(engine.templates), 3, "pad", True)
        first = time.perf_counter() - t0
        actions = {
            "preview (a click)": (lambda: fns["preview"](value, regions[0]),
                                  lambda: client.predict(remote, regions[0], api_name="/preview")),
            "classify 1 region": (
                lambda: fns["classify"](value, regions[0], labels, "\n".join(engine.templates), 3, "pad", False),
                lambda: client.predict(remote, regions[0], labels, "\n".join(engine.templates), 3, "pad", False,
                                       api_name="/classify")),
            "classify 1 region + baselines": (
                lambda: fns["classify"](value, regions[0], labels, "\n".join(engine.templates), 3, "pad", True),
                lambda: client.predict(remote, regions[0], labels, "\n".join(engine.templates), 3, "pad", True,
                                       api_name="/classify")),
            "classify 3 regions + baselines": (
                lambda: fns["classify"](value, regions[1], labels, "\n".join(engine.templates), 3, "pad", True),
                lambda: client.predict(remote, regions[1], labels, "\n".join(engine.templates), 3, "pad", True,
                                       api_name="/classify")),
            "where is (29 grid boxes)": (lambda: fns["where_is"](value, "a white square", False, 4, "pad"),
                                         lambda: client.predict(remote, "a white square", False, 4, "pad",
                                                                api_name="/where_is")),
        }
        recorded = demo._queue.process_time_per_fn  # Gradio's own per-event processing time (queued events)
        by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
        rows = {}
        for action, (local, over_http) in actions.items():
            local(), over_http()  # warm-up
            key = by_name[action.split()[0] if not action.startswith("where") else "where_is"]
            cb, rt, sv = [], [], []
            for _ in range(repeats):  # alternate the ways so load changes hit them alike
                t0 = time.perf_counter()
                local()
                cb.append(time.perf_counter() - t0)
                before = recorded[key].process_time if key in recorded else None
                t0 = time.perf_counter()
                over_http()
                rt.append(time.perf_counter() - t0)
                if before is not None:
                    sv.append(recorded[key].process_time - before)
            rows[action] = {"callback": ms(cb), "server": ms(sv) if sv else None, "round_trip": ms(rt)}
            print(json.dumps({"model": name, "action": action, **rows[action]}), flush=True)
        size = engine.params["size"]
        return {"model": name, "input_size": size, "picture": list(image.size), "first_classify_ms":
                round(1000 * first, 1), "actions": rows,
                "params_M": round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 1)}
    finally:
        demo.close()
        shutil.rmtree(folder, ignore_errors=True)


def markdown(payload: Dict[str, Any]) -> str:
    m = payload["machine"]
    lines = ["## Region app: server time per click (`alphaclip app`)", "",
             f"Machine: {describe(m)}; load average {m['loadavg'][0]:.1f} at start, {payload['loadavg_end'][0]:.1f} at "
             f"end (a shared machine: other jobs ran alongside). fp32, CPU; {payload['repeats']} timed repeats per "
             "action after one warm-up, median (min). Callback: the page's own function; server: the time Gradio's "
             "queue records for the event (pre-processing, callback, writing the result pictures); round trip: the "
             "same through gradio_client over HTTP on 127.0.0.1 (upload, queue, downloading the pictures).", ""]
    for r in payload["results"]:
        lines += [f"### {r['model']} ({r['input_size']}px input, {r['params_M']}M parameters; picture "
                  f"{r['picture'][0]}x{r['picture'][1]})", "",
                  f"First classify (text tower runs for the 24 labels): {r['first_classify_ms']} ms.", "",
                  "| action | callback (ms) | server, Gradio's record (ms) | round trip (ms) | server time under 300 ms? |",
                  "|---|---|---|---|---|"]
        for action, v in r["actions"].items():
            cb, sv, rt = v["callback"], v["server"], v["round_trip"]
            server = sv or cb  # unqueued events (the preview) have no record: their callback is their work
            ok = "yes" if server["median_ms"] < TARGET_MS else "no"
            sv_text = f"{sv['median_ms']} ({sv['min_ms']})" if sv else "not queued"
            lines.append(f"| {action} | {cb['median_ms']} ({cb['min_ms']}) | {sv_text} | {rt['median_ms']} "
                         f"({rt['min_ms']}) | {ok} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="toy,alpha-ViT-B-16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    saved = os.environ.get("GRADIO_TEMP_DIR")
    info = machine_info("cpu")
    results = [run_model(name, args.repeats) for name in args.models.split(",")]
    if saved is not None:
        os.environ["GRADIO_TEMP_DIR"] = saved
    payload = {"machine": info, "loadavg_end": os.getloadavg(), "repeats": args.repeats, "target_ms": TARGET_MS,
               "results": results}
    out = Path(args.out)
    md = markdown(payload)
    for suffix, text in ((".json", json.dumps(payload, indent=2) + "\n"), (".md", md + "\n")):
        atomic_write(out / f"app_latency{suffix}", lambda tmp, s=text: Path(tmp).write_text(s))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
