"""Training never stops for good on bad data, and resumes cleanly after kills (issue 11 §2, §3, §5):
empty batches are skipped and counted, many in a row fail clearly; bad resume states are explained;
counters survive a resume; stale temp files are cleaned; a torn log line is tolerated; atomic writes
honour the umask. Runs the real ``alphaclip train`` (``main(argv)``) on a micro model."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.checkpoints import atomic_write
from alphaclip_core.cli import main
from alphaclip_train.schema import ShardWriter
from alphaclip_train.synthetic import MICRO_CFG, init_model_dir, write_shards
from conftest import MakeDir, write_hostile_torchscript

ROOT = Path(__file__).resolve().parents[1]
RECORD = {"key": "k", "width": 32, "height": 32, "caption": "a scene",
          "regions": [{"phrase": "a thing", "box": [2, 2, 20, 20]}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_safety")
    init_model_dir(d / "micro", MICRO_CFG, seed=0)
    other = dict(MICRO_CFG, vision_cfg=dict(MICRO_CFG["vision_cfg"], width=48, head_width=16))
    init_model_dir(d / "other", other, seed=0)
    write_shards(d / "good", 8, per_shard=4, seed=1, size=32)
    (d / "corrupt").mkdir()
    with ShardWriter(d / "corrupt" / "bad-00000.tar") as w:
        for i in range(12):
            w.write(b"\xff\xd8\xff not a jpeg", {**RECORD, "key": f"bad{i:03d}"})
    (d / "missing").mkdir()
    with open(d / "missing" / "records.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({**RECORD, "key": f"m{i}", "image": f"images/{i}.jpg"}) + "\n")
    return d


def _train(world, out, *extra, data=None, capsys=None):
    argv = ["train", *(data or [world / "good"]), "-o", out, "--model", f"local-dir:{world / 'micro'}",
            "--batch-size", "4", "--lr", "1e-3", "--warmup", "1", "--log-every", "1", "--save-every", "1",
            "--threads", "1", "--no-progress", "--seed", "3", *extra]
    rc = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()] if capsys else []
    return rc, err


def _rows(out: Path):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _one_error(rc, err, code, pattern):
    assert rc == code and len(err) == 1 and not any("Traceback" in e for e in err), (rc, err)
    assert re.search(pattern, err[0]), err[0]


def test_an_all_corrupt_shard_does_not_stop_the_run(world, tmp_path, capsys):
    """The corrupt shard's batches come out empty (--shuffle-buffer 1 --interleave 1 keep them together):
    they are skipped and counted, and the run finishes with its final weights."""
    out = tmp_path / "run"
    rc, _ = _train(world, out, "--steps", "12", "--shuffle-buffer", "1", "--interleave", "1",
                   data=[world / "good", world / "corrupt"], capsys=capsys)
    assert rc == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["empty_steps"] >= 1 and rows[-1]["skipped"] >= 4 * rows[-1]["empty_steps"]
    # every batch holds 4 descriptors, each trained on or skipped: 12 steps plus the empty ones
    assert rows[-1]["samples"] + rows[-1]["skipped"] == 4 * (12 + rows[-1]["empty_steps"])
    assert (out / "final" / "visual.pth").is_file()
    # every resume of it goes on too (it used to crash at the same step again and again)
    rc, _ = _train(world, out, "--steps", "14", "--shuffle-buffer", "1", "--interleave", "1",
                   data=[world / "good", world / "corrupt"], capsys=capsys)
    assert rc == 0 and _rows(out)[-1]["step"] == 14


def test_many_empty_batches_in_a_row_fail_clearly(world, tmp_path, capsys):
    rc, err = _train(world, tmp_path / "a", "--steps", "5", "--shuffle-buffer", "1", "--max-empty-batches", "2",
                     data=[world / "corrupt"], capsys=capsys)
    _one_error(rc, err, 2, r"^error: data: 2 batches in a row \(batch 0\.\.1\) had no usable sample; is the data "
                           r"readable\? First problems: sample 'bad000' region 0: ValueError: image bytes do not decode")
    rc, err = _train(world, tmp_path / "b", "--steps", "5", "--max-empty-batches", "3",
                     data=[world / "missing" / "records.jsonl"], capsys=capsys)
    _one_error(rc, err, 2, r"^error: data: 3 batches in a row .* First problems: sample 'm\d' region -?\d: "
                           r"FileNotFoundError: .*images/\d\.jpg")


def test_counters_survive_a_resume_exactly(world, tmp_path, capsys, monkeypatch):
    import alphaclip_train.loop as loop

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    data = [world / "good", world / "corrupt"]
    assert _train(world, straight, "--steps", "8", "--shuffle-buffer", "1", data=data, capsys=capsys)[0] == 0
    save = loop._save_checkpoint

    def crash_after_step_5(path, model, opt, sched, scaler, step, *args, **kwargs):
        save(path, model, opt, sched, scaler, step, *args, **kwargs)
        if step == 5:
            raise KeyboardInterrupt  # the run dies right after its step-5 checkpoint

    monkeypatch.setattr(loop, "_save_checkpoint", crash_after_step_5)
    rc, err = _train(world, resumed, "--steps", "8", "--shuffle-buffer", "1", data=data, capsys=capsys)
    assert rc == 130 and err[-1] == "error: interrupted"
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    assert _train(world, resumed, "--steps", "8", "--shuffle-buffer", "1", data=data, capsys=capsys)[0] == 0
    keys = ("step", "loss", "samples", "whole_image", "skipped", "empty_steps")
    a = [{k: r[k] for k in keys} for r in _rows(straight)]
    b = [{k: r[k] for k in keys} for r in _rows(resumed)]
    assert a == b  # not only the weights: samples/skipped continue where the killed run stopped
    state = torch.load(resumed / "checkpoints" / "latest.pt", weights_only=True)
    assert state["totals"].tolist() == [a[-1]["samples"], a[-1]["whole_image"], a[-1]["skipped"], a[-1]["empty_steps"]]


def test_what_kills_leave_behind_is_cleaned_or_tolerated(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(world, out, "--steps", "2", capsys=capsys)[0] == 0
    ckpt = out / "checkpoints"
    stale = [ckpt / f".latest.pt.k{i}ll.tmp" for i in range(3)] + [out / ".config.json.abc.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 4096)
    (ckpt / ".latest.pt.d1r.tmp").mkdir()          # atomic_folder's kind
    keep = ckpt / "notes.tmp"                       # not ours: left alone
    keep.write_text("mine")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')    # the writer was killed mid-line
    rc, err = _train(world, out, "--steps", "4", capsys=capsys)
    assert rc == 0
    assert not any(p.exists() for p in stale) and not (ckpt / ".latest.pt.d1r.tmp").exists() and keep.exists()
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]


def test_bad_resume_states_are_explained(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(world, out, "--steps", "2", capsys=capsys)[0] == 0
    latest = out / "checkpoints" / "latest.pt"
    good = latest.read_bytes()
    hint = r"Start afresh with --no-resume \(the run's checkpoint is then overwritten\) or write to another --output$"
    marker = tmp_path / "MARKER"

    def hostile_ts(p: Path) -> None:
        write_hostile_torchscript(p, marker)

    other = tmp_path / "other"
    assert _train(world, other, "--steps", "1", "--model", f"local-dir:{world / 'other'}", capsys=capsys)[0] == 0
    cases = {
        "truncated": (lambda p: p.write_bytes(good[: len(good) // 2]), r"is not a readable PyTorch/safetensors "
                                                                       r"checkpoint \(corrupt or truncated\?\)"),
        "empty": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        "other architecture": (lambda p: shutil.copy(other / "checkpoints" / "latest.pt", p),
                               r"does not fit the model\. The file's vision tower is ViT width 48.*It was written by "
                               r"a run of another model or architecture"),
        "hostile TorchScript": (hostile_ts, r"is a TorchScript archive, not a torch\.save file"),
        "hostile pickle": (lambda p: torch.save({"model": MakeDir(marker)}, p),
                           r"holds the object posix\.mkdir, not only tensors"),
        "not a training state": (lambda p: torch.save({"model": {}}, p),
                                 r"is not a training checkpoint of `alphaclip train` \(missing \['optimizer'"),
    }
    for name, (spoil, pattern) in cases.items():
        spoil(latest)
        capsys.readouterr()  # (torch.jit.script's deprecation warning, when warnings are not captured)
        rc, err = _train(world, out, "--steps", "3", capsys=capsys)
        _one_error(rc, err, 2, rf"^error: resume: {re.escape(str(latest))}.*{pattern}.*{hint}")
        assert not marker.exists(), name
    rc, _ = _train(world, out, "--steps", "3", "--no-resume", capsys=capsys)
    assert rc == 0 and [r["step"] for r in _rows(out)] == [1, 2, 3]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        with open(tmp_path / "plain.bin", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "a.bin").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain.bin").st_mode & 0o777 == 0o666 & ~umask


DDP_WORKER = r'''
import json, os, sys, torch.distributed as dist
import alphaclip_integrations.open_clip  # noqa
from alphaclip_core.errors import InputError
from alphaclip_train.loop import TrainConfig, train
out, model_dir, good, corrupt = sys.argv[1:5]
dist.init_process_group("gloo")
rank = dist.get_rank()
kw = dict(output=out, model="local-dir:" + model_dir, batch_size=4, lr=1e-3, warmup=1, save_every=2, log_every=1,
          threads=1, progress=False, shuffle_buffer=1, seed=3)
# one rank reads the corrupt shard (one source per rank): its empty steps are skipped on both ranks alike
res = train(TrainConfig(data=[good, corrupt], steps=6, **kw))
# with one empty step tolerated, both ranks stop at the same step with the same error (no hang)
try:
    train(TrainConfig(data=[good, corrupt], steps=6, max_empty_batches=1, resume=False, **dict(kw, output=out + "2")))
    err = None
except InputError as e:
    err = str(e)
json.dump({"result": res, "error": err}, open(os.path.join(os.path.dirname(out), f"rank{rank}.json"), "w"))
'''


def test_ddp_ranks_skip_empty_steps_together(world, tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(tmp_path / "worker.py"), str(tmp_path / "run"), str(world / "micro"),
           str(world / "good"), str(world / "corrupt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["result"]["step"] == r1["result"]["step"] == 6
    assert r0["result"]["empty_steps"] == r1["result"]["empty_steps"] >= 1
    assert r0["result"]["samples"] == r1["result"]["samples"] > 0
    assert r0["error"] == r1["error"] and r0["error"].startswith("data: 1 batch in a row")
    assert "image bytes do not decode" in r0["error"]  # the corrupt rank's problems, named on both ranks


def test_a_resume_follows_this_runs_schedule_from_its_first_step(caplog):
    """Resuming with another --steps / --lr: the first resumed step uses THIS run's schedule (it used to
    take the lr the saved run's schedule had set, 0 at the end of a finished cosine); an unchanged command
    line resumes with exactly the saved values."""
    import math

    from alphaclip_train.loop import _follow_this_schedule, lr_lambda

    def make(lr, steps, wd=0.1):
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW([{"params": [net.weight], "lr": lr}, {"params": [net.bias], "lr": lr * 0.01}],
                                weight_decay=wd)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(1, steps))

    opt, sched = make(1e-3, 4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # a finished cosine: lr 0 for a 5th step
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    def resume(lr, steps, wd=0.1):
        opt, sched = make(lr, steps, wd)
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        base = list(sched.base_lrs)
        opt.load_state_dict(saved_opt)
        sched.load_state_dict(saved_sched)
        _follow_this_schedule(opt, sched, fresh, base)
        return opt, sched

    caplog.clear()
    same, _ = resume(1e-3, 4)
    assert [g["lr"] for g in same.param_groups] == [g["lr"] for g in saved_opt["param_groups"]]
    assert not [r for r in caplog.records if "resume:" in r.getMessage()]

    longer, sched = resume(2e-3, 8, wd=0.2)
    f = lr_lambda(1, 8)(4)
    assert 0.5 < f < 1 and math.isclose(longer.param_groups[0]["lr"], 2e-3 * f, rel_tol=1e-12)
    assert math.isclose(longer.param_groups[1]["lr"], 2e-5 * f, rel_tol=1e-12)
    assert [g["weight_decay"] for g in longer.param_groups] == [0.2, 0.2]
    sched.step()  # the schedule goes on from there
    assert math.isclose(longer.param_groups[0]["lr"], 2e-3 * lr_lambda(1, 8)(5), rel_tol=1e-12)
    msgs = [r.getMessage() for r in caplog.records if "resume:" in r.getMessage()]
    assert msgs and "lr" in msgs[-1] and "weight_decay" in msgs[-1] and "from step 5 on" in msgs[-1], msgs

    caplog.clear()
    resume(1e-3, 8)
    msgs = [r.getMessage() for r in caplog.records if "resume:" in r.getMessage()]
    assert msgs and "the schedule (--steps" in msgs[-1], msgs
