"""Training data loader: samples/s per worker, workers a B/16 needs on one GPU, resume time vs position.

1. Decode throughput: one DataLoader worker's work per sample (JPEG decode + the paired transform
   of image and alpha (crop mode) + alpha normalisation + mask RLE decode; tokenising included) at 224
   and 336 pixels, on synthetic 512x512 JPEG scenes with 1-4 RLE masks each, one torch thread (what a
   worker gets). Also the main-process reader (tar parse + JSON + validation, no image decode), which
   feeds every worker of a rank, in records/s; and the end-to-end loader with 2 workers.
2. Workers needed: the samples/s one GPU trains a B/16 at (an ASSUMPTION: no GPU here) divided by
   one worker's samples/s. The GPU figure is derived, not measured: the training FLOPs of one sample
   are COUNTED here (torch.utils.flop_counter on CPU: vision tower forward + backward, frozen text
   tower forward, the recipe's step), and divided into an H200's bf16 matrix rate of 788 TFLOP/s (an
   8192^3 product measured on this workplace's H200, recorded in its device notes) at an assumed
   40% model-FLOP utilisation (35-50% is typical of well-tuned ViT training).
3. Resume time vs position: a 200-shard epoch; time from constructing the dataset at batch c to
   having batch c, for c at 0 %, 25 %, 50 %, 75 %, 99 % of the epoch, and the shards opened; beside
   it the old cost model (re-read every record before c) measured on the same files.

    python benchmarks/data_loader.py            # writes benchmarks/results/data_loader.{json,md}

The machine is shared: the load average is recorded before and after; compare ratios within a run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import describe, machine  # noqa: E402

RESULTS = Path(__file__).parent / "results"
H200_BF16_TFLOPS = 788.0  # measured 8192^3 bf16 matmul on this workplace's H200 (device notes, KINDS.md)
MFU = 0.40                # assumed model-FLOP utilisation of a B/16 training step


def _shards(folder: Path, n_shards: int, per_shard: int, size: int, quality: int = 90) -> None:
    from alphaclip_train.schema import ShardWriter
    from alphaclip_train.synthetic import render_scene, scene_record

    for s in range(n_shards):
        with ShardWriter(folder / f"shard-{s:05d}.tar") as w:
            for i in range(per_shard):
                scene = render_scene(s * 100_000 + i, size)
                buf = io.BytesIO()
                scene.image.save(buf, format="JPEG", quality=quality)
                w.write(buf.getvalue(), scene_record(scene, f"{s:05d}{i:05d}"))


def decode_rate(folder: Path, size: int, n: int) -> dict:
    """One worker's samples/s: make_batch on descriptors already read (1 torch thread)."""
    import open_clip
    import torch

    from alphaclip_train.data import RegionBatches

    torch.set_num_threads(1)
    tok = open_clip.get_tokenizer("ViT-B-16")
    ds = RegionBatches([str(folder)], tok, 32, size, shuffle_buffer=0, whole_image_ratio=0.1)
    jobs = []
    it = ds.batch_descriptors()
    while sum(len(j[1]) for j in jobs) < n:
        jobs.append(next(it))
    ds.make_batch(*jobs[0])  # warm-up

    class Timed:  # the core's paired transform, timed (CPU seconds) to show where a worker's time goes
        def __init__(self, t) -> None:
            self.t, self.cpu = t, 0.0

        def __getattr__(self, name):
            return getattr(self.t, name)

        def __call__(self, *a, **k):
            c = time.process_time()
            try:
                return self.t(*a, **k)
            finally:
                self.cpu += time.process_time() - c

    ds.transform = Timed(ds.transform)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for job in jobs[1:]:
        b = ds.make_batch(*job)
        done += b["image"].shape[0]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # a worker is one single-threaded process: its CPU seconds per sample are its cost on a core of its own
    # (the wall clock on this shared machine also counts the time other jobs held the core)
    return {"image_size": size, "samples": done, "wall_seconds": dt, "cpu_seconds": cpu,
            "samples_per_s": done / cpu, "samples_per_wall_s": done / dt,
            "paired_transform_share": ds.transform.cpu / cpu}


def reader_rate(folder: Path, n_batches: int) -> dict:
    """Records/s and samples/s of the reading side (tar + JSON + validation, no decode)."""
    from alphaclip_train.data import RegionBatches

    ds = RegionBatches([str(folder)], lambda t: None, 32, 224, shuffle_buffer=1000)
    t0, c0 = time.perf_counter(), time.process_time()
    samples = 0
    for _, (_, items, problems) in zip(range(n_batches), ds.batch_descriptors()):
        samples += len(items) + len(problems)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    records_per_sample = sum(c.samples for c in ds.counts) / sum(ds.items)
    return {"samples": samples, "wall_seconds": dt, "cpu_seconds": cpu, "samples_per_s": samples / cpu,
            "records_per_s": samples * records_per_sample / cpu, "records_per_wall_s": samples * records_per_sample / dt}


def loader_rate(folder: Path, size: int, workers: int, n_batches: int) -> dict:
    import open_clip

    from alphaclip_train.data import RegionBatches, make_loader

    tok = open_clip.get_tokenizer("ViT-B-16")
    ds = RegionBatches([str(folder)], tok, 32, size, shuffle_buffer=1000)
    it = iter(make_loader(ds, workers))
    next(it)
    t0 = time.perf_counter()
    samples = sum(next(it)["image"].shape[0] for _ in range(n_batches))
    dt = time.perf_counter() - t0
    return {"image_size": size, "workers": workers, "samples": samples, "seconds": dt, "samples_per_s": samples / dt}


def train_flops_per_sample() -> dict:
    """Counted FLOPs of one training sample of alpha-ViT-B-16 (vision fwd+bwd, text fwd without grad)."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import alphaclip_integrations.open_clip  # noqa: F401  (registers alpha-ViT-B-16)

    model = open_clip.create_model("alpha-ViT-B-16")
    model.visual.check_alpha = False
    image = torch.randn(2, 3, 224, 224)
    alpha = torch.ones(2, 1, 224, 224)
    text = torch.randint(1, 4000, (2, 77))
    counter = FlopCounterMode(display=False)
    with counter:
        feats = model.encode_image(image, alpha, normalize=True)
        with torch.no_grad():
            txt = model.encode_text(text, normalize=True)
        (feats @ txt.t()).sum().backward()
    total = counter.get_total_flops() / 2
    return {"train_gflops_per_sample": total / 1e9}


def resume_times(folder: Path, batch: int, fractions, http_url=None) -> list:
    import alphaclip_train.sources as sources_mod
    from alphaclip_train.data import RegionBatches
    from alphaclip_train.schema import iter_records

    tok = lambda texts: None  # noqa: E731 - the cost measured is reaching the batch, not tokenising it
    probe = RegionBatches([str(folder)], tok, batch, 64, shuffle_buffer=1000)
    per_epoch = probe.epoch_items // batch
    real = sources_mod.open_source
    rows = []
    for frac in fractions:
        c = min(per_epoch - 1, int(frac * per_epoch))
        for where, src in (("local", str(folder)),) + ((("http", http_url),) if http_url else ()):
            opened = []
            sources_mod.open_source = lambda s: opened.append(s) or real(s)
            try:
                t0 = time.perf_counter()
                ds = RegionBatches([src], tok, batch, 64, shuffle_buffer=1000, start_batch=c)
                next(ds.batch_descriptors(c))
                dt = time.perf_counter() - t0
            finally:
                sources_mod.open_source = real
            rows.append({"source": where, "fraction": frac, "batch": c, "seconds": dt,
                         "shards_opened": len([o for o in opened if o.endswith(".tar")])})
        # the old cost model: every record before the position is read again (no image decoded)
        epoch, w, off = probe.locate(c * batch)
        before = [s for seg in probe.epoch_windows(epoch)[:w] for s in seg]
        t0 = time.perf_counter()
        for src, a, b in before:
            for _ in iter_records(probe.sources[src]):
                pass
        rows.append({"source": "re-read (old)", "fraction": frac, "batch": c, "seconds": time.perf_counter() - t0,
                     "shards_opened": len(before)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=600, help="samples timed per decode measurement")
    ap.add_argument("--out", default=str(RESULTS / "data_loader"))
    args = ap.parse_args()
    import functools
    import http.server
    import threading

    import torch

    info = machine()
    load_before = os.getloadavg()
    out = {"machine": info, "load_before": load_before}
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        _shards(big, 4, 100, 512)
        out["decode"] = [decode_rate(big, s, args.samples) for s in (224, 336)]
        out["reader"] = reader_rate(big, 30)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        out["loader_2_workers"] = [loader_rate(big, s, 2, 12) for s in (224, 336)]
        small = Path(tmp) / "small"
        _shards(small, 200, 50, 64)
        from alphaclip_train.index import build_index

        build_index([str(small)], progress=False)  # one index.json: one read finds every count
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

        handler = functools.partial(Quiet, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/small/shard-{{00000..00199}}.tar"
        try:
            out["resume"] = resume_times(small, 64, (0.0, 0.25, 0.5, 0.75, 0.99), url)
        finally:
            server.shutdown()
    out["flops"] = train_flops_per_sample()
    gpu = H200_BF16_TFLOPS * 1e12 * MFU / (out["flops"]["train_gflops_per_sample"] * 1e9)
    out["gpu_assumption"] = {"gpu": "H200", "bf16_tflops": H200_BF16_TFLOPS, "mfu": MFU,
                             "b16_samples_per_s": gpu}
    # 336 px: (336/224)^2 = 2.25x the patches, so at least 2.25x the FLOPs (attention grows faster)
    out["workers_needed"] = {str(d["image_size"]): gpu / (1 if d["image_size"] == 224 else 2.25) / d["samples_per_s"]
                             for d in out["decode"]}
    out["load_after"] = os.getloadavg()
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(r: dict) -> str:
    g = r["gpu_assumption"]
    lines = [
        "# Training data loader: throughput per worker and resume time",
        "",
        f"Machine: {describe(r['machine'])}; shared with other jobs: 1-min load average "
        f"{r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after (numbers are noisy; compare within the run).",
        "Command: `python benchmarks/data_loader.py`.",
        "",
        "## Per worker (1 torch thread): JPEG decode + paired transform (crop) + alpha + mask RLE decode + tokenise",
        "",
        "Synthetic 512x512 JPEG scenes (quality 90), 1-4 RLE masks each; r_s = 0.1.",
        "",
        "Per worker = samples per CPU second of the (single-threaded) worker: its rate on a core of its own; "
        "the wall-clock rate on this shared machine is beside it.",
        "",
        "| model input | samples/s per worker (CPU time) | ms/sample | of which the core's paired transform | "
        "samples/s (wall, loaded machine) |",
        "|---|---|---|---|---|",
    ]
    for d in r["decode"]:
        lines.append(f"| {d['image_size']} px | {d['samples_per_s']:.0f} | {1000 / d['samples_per_s']:.2f} | "
                     f"{d['paired_transform_share']:.0%} | {d['samples_per_wall_s']:.0f} |")
    rd = r["reader"]
    lines += ["", f"Reader (a thread of each training process, feeding all its workers: tar parse + JSON + validation, "
                  f"no decode; per CPU second): {rd['records_per_s']:.0f} records/s = {rd['samples_per_s']:.0f} region "
                  f"samples/s ({rd['records_per_wall_s']:.0f} records/s by the wall clock on this loaded machine).", "",
              "End to end, `make_loader(..., num_workers=2)` on this 2-core machine (reader thread + 2 workers + "
              "the consuming loop share 2 cores):", "", "| model input | samples/s |", "|---|---|"]
    for d in r["loader_2_workers"]:
        lines.append(f"| {d['image_size']} px | {d['samples_per_s']:.0f} |")
    lines += [
        "",
        "## Workers a B/16 needs on one GPU",
        "",
        f"Assumption (no GPU here): one alpha-ViT-B-16 training sample costs {r['flops']['train_gflops_per_sample']:.1f} "
        f"GFLOP (counted with torch.utils.flop_counter: vision forward + backward, frozen text forward); one H200 "
        f"does {g['bf16_tflops']:.0f} TFLOP/s of bf16 matrix work (8192^3 product measured on this workplace's H200) "
        f"at an assumed {g['mfu']:.0%} model-FLOP utilisation, so it trains about {g['b16_samples_per_s']:.0f} "
        f"samples/s at 224 px (336 px: 2.25x the tokens, at least 2.25x the FLOPs, so at most "
        f"{g['b16_samples_per_s'] / 2.25:.0f} samples/s).",
        "",
        "| model input | GPU samples/s (assumed) | samples/s per worker | workers needed |",
        "|---|---|---|---|",
    ]
    for d in r["decode"]:
        gpu = g["b16_samples_per_s"] / (1 if d["image_size"] == 224 else 2.25)
        lines.append(f"| {d['image_size']} px | {gpu:.0f} | {d['samples_per_s']:.0f} | "
                     f"{gpu / d['samples_per_s']:.0f} |")
    lines += [
        "",
        "## Resume time vs position in the epoch (200 shards x 50 scenes of 64 px, batch 64, interleave 4)",
        "",
        "Seconds from constructing the dataset at batch c to holding batch c's descriptors, and the shards opened. "
        "`re-read (old)` is the cost model before the shard index: every record before c read again (no image "
        "decoded), measured on the same files.",
        "",
        "| position | batch | local s | local shards opened | http s | http shards opened | re-read (old) s | "
        "re-read shards |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {}
    for row in r["resume"]:
        by.setdefault(row["fraction"], {})[row["source"]] = row
    for frac, d in sorted(by.items()):
        lo, ht, old = d["local"], d.get("http"), d["re-read (old)"]
        lines.append(f"| {frac:.0%} | {lo['batch']} | {lo['seconds']:.2f} | {lo['shards_opened']} | "
                     f"{ht['seconds']:.2f} | {ht['shards_opened']} | {old['seconds']:.2f} | {old['shards_opened']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
