"""Training data streamed from anywhere: HTTP (a local server on 127.0.0.1), pipe:, indexes, resume cost,
broken remote shards, torchrun ranks."""
from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import open_clip
import pytest
import torch

import alphaclip_train.data as data_mod
import alphaclip_train.sources as sources_mod
from alphaclip_train.data import RegionBatches, make_loader
from alphaclip_train.index import INDEX_NAME, ShardCounts, build_index, load_counts, read_folder_index
from alphaclip_train.schema import ShardWriter, iter_records
from alphaclip_train.sources import expand_sources
from alphaclip_train.synthetic import write_shards

TOK = open_clip.tokenizer.SimpleTokenizer(context_length=16)
ROOT = Path(__file__).resolve().parents[1]
N_SHARDS, PER_SHARD = 6, 5


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records every GET; 404s and cut-off streams on request."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        with srv.lock:
            srv.gets.append(self.path)
        if self.path in srv.missing:
            self.send_error(404, "gone")
            return
        if self.path in srv.flaky:                     # cut off once, whole the next time
            srv.flaky.discard(self.path)
            srv.cut.add(self.path)
            srv.heal.add(self.path)
        elif self.path in srv.heal:
            srv.cut.discard(self.path)
            srv.heal.discard(self.path)
        if self.path in srv.cut:
            data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # the connection closes mid-body
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """6 shards x 5 scenes (32 px) in root/idx (with their index sidecars) and root/raw (tars only), served
    over HTTP by a server on 127.0.0.1 in a thread."""
    root = tmp_path_factory.mktemp("served")
    write_shards(root / "idx", N_SHARDS * PER_SHARD, per_shard=PER_SHARD, seed=4, size=32)
    (root / "raw").mkdir()
    for p in sorted((root / "idx").glob("*.tar")):
        shutil.copy(p, root / "raw" / p.name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.lock, server.gets, server.missing, server.cut = threading.Lock(), [], set(), set()
    server.flaky, server.heal = set(), set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.root = root
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def _ds(src, **kw):
    args = dict(whole_image_ratio=0.2, shuffle_buffer=8, interleave=2, seed=7)
    args.update(kw)
    return RegionBatches(src if isinstance(src, list) else [src], TOK, 6, 32, **args)


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert [x["index"] for x in a] == [x["index"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["alpha"], y["alpha"])
        assert torch.equal(x["text"], y["text"]) and torch.equal(x["whole"], y["whole"])
        assert x["skipped"] == y["skipped"]


def _http_shards(served, folder="idx"):
    return f"{served.url}/{folder}/shard-{{00000..{N_SHARDS - 1:05d}}}.tar"


def test_http_equals_local_batch_for_batch_and_resumes_exactly(served):
    local = _ds(str(served.root / "idx"))
    per_epoch = local.epoch_items
    n = per_epoch // 6 + 3  # past the end of the first epoch
    ref = _take(local, n)
    served.gets.clear()
    remote = _ds(_http_shards(served))
    assert [s.rsplit("/", 1)[1] for s in remote.sources] == [os.path.basename(s) for s in local.sources]
    # the counts come from the sidecars: no shard was read to build the stream
    assert not [g for g in served.gets if g.endswith(".tar")]
    _same(ref, _take(remote, n))
    for start in (1, n - 4):  # resume early and late (the late one is in the second epoch)
        _same(ref[start:], _take(_ds(_http_shards(served), start_batch=start), n - start))


def test_pipe_cat_source_and_workers(served):
    ref = _take(_ds(str(served.root / "idx")), 5)
    pipe = f"pipe:cat {served.root / 'idx'}/shard-{{00000..{N_SHARDS - 1:05d}}}.tar"
    ds = _ds(pipe)
    assert len(ds.sources) == N_SHARDS and all(s.startswith("pipe:cat ") for s in ds.sources)
    _same(ref, _take(ds, 5))
    # DataLoader workers decode, the main process reads once: same batches, same order
    loader = make_loader(_ds(_http_shards(served), start_batch=2), num_workers=2)
    _same(ref[2:], [b for _, b in zip(range(3), loader)])


def test_remote_without_index_is_counted_once_with_a_warning(served, caplog):
    served.gets.clear()
    with caplog.at_level(logging.WARNING):
        ds = _ds(_http_shards(served, "raw"))
    assert "no index for 6 of 6 shard(s)" in caplog.text and "alphaclip data index" in caplog.text
    # (only /raw/: a reader thread of an earlier test's loader may still be reading ahead in /idx/)
    assert sorted(g for g in served.gets if g.startswith("/raw/") and g.endswith(".tar")) == [
        f"/raw/shard-{i:05d}.tar" for i in range(6)]
    _same(_take(_ds(str(served.root / "idx")), 4), _take(ds, 4))


def test_data_index_command_and_folder_index(served, tmp_path):
    from alphaclip_core.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(served.root / "raw", folder)
    assert main(["data", "index", str(folder)]) == 0
    idx = read_folder_index(str(folder))
    assert sorted(idx) == [f"shard-{i:05d}.tar" for i in range(N_SHARDS)]
    direct = load_counts(expand_sources(str(served.root / "idx")))
    assert [idx[n] for n in sorted(idx)] == direct
    assert all(c.samples == PER_SHARD and c.invalid == 0 and c.error is None for c in direct)
    # a folder URL stands for the shards of its index; one GET (index.json) finds every count
    shutil.copy(folder / INDEX_NAME, served.root / "raw" / INDEX_NAME)
    try:
        served.gets.clear()
        ds = _ds(f"{served.url}/raw/")
        assert [g for g in served.gets if g.startswith("/raw/")] == [f"/raw/{INDEX_NAME}"] * 2  # listing + counts
        assert len(ds.sources) == N_SHARDS
    finally:
        (served.root / "raw" / INDEX_NAME).unlink()
    # a stale local index (the shard changed) is noticed and the shard counted again
    p = folder / "shard-00000.tar"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    counts = load_counts([str(p)])
    assert counts[0].samples < PER_SHARD and counts[0].error is not None
    assert main(["data", "index", str(tmp_path / "nothing-here")]) == 2


def test_broken_remote_shards_are_counted_and_skipped(served, caplog, monkeypatch):
    monkeypatch.setattr(data_mod, "RETRY_WAIT", 0.0)
    local = _ds(str(served.root / "idx"), shuffle_buffer=0)
    n = -(-local.epoch_items // 6)
    ref = [x for _, x in zip(range(n), local.batch_descriptors())]
    served.missing.add("/idx/shard-00001.tar")
    served.cut.add("/idx/shard-00003.tar")  # the server closes the connection after half the bytes
    try:
        with caplog.at_level(logging.WARNING):
            remote = _ds(_http_shards(served), shuffle_buffer=0)
            got = [x for _, x in zip(range(n), remote.batch_descriptors())]
            decoded = [remote.make_batch(*x) for x in got]
    finally:
        served.missing.clear()
        served.cut.clear()
    lost = {1: 0, 3: 0}
    for (b, r_items, _), (c, g_items, g_probs), batch in zip(ref, got, decoded):
        assert b == c
        kept = [(d.record["key"], d.region) for d in g_items]
        # the batch holds the uninterrupted run's samples at their places, less those of the broken shards
        dropped = [d for d in r_items if (d.record["key"], d.region) not in set(kept)]
        assert [(d.record["key"], d.region) for d in r_items if d not in dropped] == kept
        assert {int(d.record["key"]) // PER_SHARD for d in dropped} <= {1, 3}
        assert len(g_probs) == len(dropped) and batch["skipped"] == len(dropped)
        for d in dropped:
            lost[int(d.record["key"]) // PER_SHARD] += 1
        for p in g_probs:
            assert f"{served.url}/idx/shard-00001.tar" in p or f"{served.url}/idx/shard-00003.tar" in p
    assert lost[1] == local.items[1]  # 404: every sample of the shard skipped
    assert 0 < lost[3] <= local.items[3]  # cut mid-stream: skipped from the cut on (never a stopped run)
    assert f"{served.url}/idx/shard-00001.tar unreadable after 0 of {local.items[1]}" in caplog.text
    assert "shard-00001.tar failed after" not in caplog.text  # a 404 is not retried, a cut stream is
    assert f"{served.url}/idx/shard-00003.tar failed after" in caplog.text and "(2 of 2)" in caplog.text
    assert f"{served.url}/idx/shard-00003.tar unreadable after" in caplog.text and "content length" in caplog.text


def test_a_stream_cut_once_is_read_again_and_nothing_is_lost(served, caplog, monkeypatch):
    monkeypatch.setattr(data_mod, "RETRY_WAIT", 0.0)
    ref = _take(_ds(str(served.root / "idx")), 6)
    served.flaky.add("/idx/shard-00002.tar")
    try:
        with caplog.at_level(logging.WARNING):
            got = _take(_ds(_http_shards(served)), 6)
    finally:
        served.flaky.clear(), served.cut.clear(), served.heal.clear()
    assert "shard-00002.tar failed after" in caplog.text and "opening it again (1 of 2)" in caplog.text
    _same(ref, got)  # the retry re-reads up to the failure: the same samples, none skipped
    assert all(b["skipped"] == 0 for b in got)


def _take_samples(ds, n):
    it = ds.samples(0)
    return [next(it) for _ in range(n)]


def test_resume_late_in_a_100_shard_epoch_opens_only_the_remaining_shards(tmp_path, monkeypatch):
    write_shards(tmp_path, 200, per_shard=2, seed=5, size=16)
    kw = dict(whole_image_ratio=0.0, shuffle_buffer=4, interleave=4, seed=1)
    ds = RegionBatches([tmp_path], TOK, 4, 16, **kw)
    windows = ds.epoch_windows(0)
    assert len(ds.sources) == 100 and len(windows) == 25
    before = sum(b - a for w in windows[:23] for _, a, b in w)
    start = (before + 3) // 4 + 1  # a batch inside window 23 of 25
    assert ds.locate(start * 4)[:2] == (0, 23)
    opened = []
    real = sources_mod.open_source
    monkeypatch.setattr(sources_mod, "open_source", lambda src: opened.append(src) or real(src))
    resumed = RegionBatches([tmp_path], TOK, 4, 16, start_batch=start, **kw)
    got = _take(resumed, 2)
    names = {os.path.basename(s) for s in opened if s.endswith(".tar")}
    in_play = {os.path.basename(ds.sources[src]) for src, _, _ in windows[23]}
    assert names == in_play and len(opened) == 4  # the 4 shards of window 23, nothing before it
    monkeypatch.setattr(sources_mod, "open_source", real)
    ref = list(zip(range(start + 2), iter(RegionBatches([tmp_path], TOK, 4, 16, **kw))))
    _same([b for _, b in ref[start:]], got)


def test_ranks_are_balanced_when_shards_do_not_divide(served):
    srcs = [str(served.root / "idx" / f"shard-{i:05d}.tar") for i in range(5)]  # 5 shards, 3 ranks
    parts = [RegionBatches(srcs, TOK, 4, 32, rank=r, world_size=3, whole_image_ratio=0.0) for r in range(3)]
    sizes = [p.epoch_items for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == sum(parts[0].items)
    # each epoch the ranks' segments tile the sources' samples exactly once
    for epoch in (0, 1):
        seen = {}
        for p in parts:
            for src, a, b in p.epoch_segments(epoch):
                for k in range(a, b):
                    assert (src, k) not in seen
                    seen[(src, k)] = p.rank
        assert len(seen) == sum(parts[0].items)


def test_count_source_and_writer_sidecar_agree(served, tmp_path):
    path = tmp_path / "w.tar"
    recs = list(iter_records(str(served.root / "idx" / "shard-00002.tar")))
    with ShardWriter(path) as w:
        for image, rec in recs:
            w.write(image, rec)
    side = json.loads((tmp_path / "w.index.json").read_text())
    assert ShardCounts.from_json(side) == load_counts([str(served.root / "raw" / "shard-00002.tar")])[0]
    assert side["samples"] == PER_SHARD and side["bytes"] == path.stat().st_size
    written = build_index([str(tmp_path)])
    assert list(written) == [str(tmp_path)] and (tmp_path / INDEX_NAME).is_file()


DDP_DATA = r'''
import json, os, sys, torch.distributed as dist, open_clip
from alphaclip_train.data import RegionBatches
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
def keys(ds, start, n):
    it, out = ds.batch_descriptors(start), []
    for _ in range(n):
        b, items, probs = next(it)
        out.append([b, [[d.record["key"], d.region] for d in items], len(probs)])
    return out
res = {}
for name, src in (("local", sys.argv[2]), ("http", sys.argv[3])):
    kw = dict(whole_image_ratio=0.2, shuffle_buffer=4, interleave=2, seed=3, rank=rank, world_size=world)
    full = keys(RegionBatches([src], tok, 4, 32, **kw), 0, 6)
    resumed = keys(RegionBatches([src], tok, 4, 32, start_batch=4, **kw), 4, 2)
    res[name] = {"full": full, "resumed": resumed}
json.dump(res, open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
'''


def test_torchrun_ranks_split_and_resume_locally_and_over_http(served, tmp_path):
    (tmp_path / "worker.py").write_text(DDP_DATA)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    served.gets.clear()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", str(tmp_path / "worker.py"),
           str(tmp_path), str(served.root / "raw"), f"{served.url}/raw/shard-{{00000..{N_SHARDS - 1:05d}}}.tar"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["local"] == r["http"]  # remote = local, batch for batch
        assert r["local"]["full"][4:] == r["local"]["resumed"]  # resume = uninterrupted, on every rank
    k0 = {tuple(x) for b in r0["local"]["full"][:2] for x in b[1]}
    k1 = {tuple(x) for b in r1["local"]["full"][:2] for x in b[1]}
    assert k0 and k1 and not k0 & k1
    # no index in raw/: rank 0 counted the shards (once per source list) and broadcast the counts
    tar_gets = [g for g in served.gets if g.endswith(".tar")]
    assert tar_gets.count("/raw/shard-00000.tar") <= 1 + 3  # one count + at most one read per stream built


def test_training_from_http_equals_local_and_resumes_exactly(served, tmp_path):
    from alphaclip_train.loop import KILL_ENV, TrainConfig, train
    from alphaclip_train.synthetic import MICRO_CFG, init_model_dir

    init_model_dir(tmp_path / "model", MICRO_CFG, seed=0)

    def cfg(data, out, steps):
        return TrainConfig(data=[data], output=str(tmp_path / out), model=f"local-dir:{tmp_path / 'model'}",
                           steps=steps, batch_size=6, lr=1e-2, warmup=1, save_every=2, log_every=1, shuffle_buffer=8,
                           threads=1, progress=False, seed=3)

    local = train(cfg(str(served.root / "idx"), "local", 4))
    remote = train(cfg(_http_shards(served), "remote", 4))
    assert remote["loss"] == local["loss"] and remote["samples"] == local["samples"]
    script = ("from alphaclip_train.loop import TrainConfig, train\n"
              f"train(TrainConfig(**{cfg(_http_shards(served), 'resumed', 4).__dict__!r}))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", **{KILL_ENV: "3"})  # SIGKILLed after step 3: the checkpoint is step 2
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(cfg(_http_shards(served), "resumed", 4))        # resumes at step 2, over HTTP
    assert resumed["loss"] == remote["loss"]
    a = torch.load(tmp_path / "remote" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "latest.pt", weights_only=True)
    assert a["next_batch"] == b["next_batch"] == 4 and a["data"] == b["data"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # bitwise


def test_docs_training_data_example_runs(tmp_path, monkeypatch, capsys):
    from conftest import doc_blocks

    blocks = doc_blocks("docs/training-data.md")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/training-data.md", "exec"), {})
    assert "batch 9 starts in epoch" in capsys.readouterr().out
    assert (tmp_path / "toy-stream" / "index.json").is_file()
