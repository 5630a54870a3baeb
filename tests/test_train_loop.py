"""The training loop: loss, optimizer groups, schedule, frozen text tower, outputs, exact resume, DDP."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.checkpoints import detect_format, read_state_dict
from alphaclip_train.loop import KILL_ENV, build_model, lr_lambda, param_groups, train
from alphaclip_train.loss import contrastive_loss
from conftest import micro_world, train_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A micro model folder and 48 synthetic 32px scenes in 4 shards."""
    return micro_world(tmp_path_factory.mktemp("world"), 48, per_shard=12)


def _cfg(world, out, **kw):
    return train_config(world, out, **{"steps": 4, "lr": 1e-2, "save_every": 2, **kw})


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / ".dev") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_contrastive_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    loss, value = contrastive_loss(img, txt, 100.0, label_smoothing=0.1)
    logits = 100 * img @ txt.t()
    eps = 0.1

    def ce(lg):  # label smoothing spelled out: (1 - eps) * NLL + eps * mean over classes of -log p
        logp = lg.log_softmax(-1)
        return ((1 - eps) * -logp.diag() + eps * -logp.mean(-1)).mean()

    want = 0.5 * (ce(logits) + ce(logits.t()))
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # replicas scales the backpropagated loss (DDP averages), not the logged value
    loss2, value2 = contrastive_loss(img, txt, 100.0, replicas=2)
    assert loss2.item() == pytest.approx(2 * value2.item(), rel=1e-6)
    with pytest.raises(ValueError, match="text_features: expected 6 rows"):
        contrastive_loss(img, txt[:5], 100.0)
    with pytest.raises(ValueError, match="offset: 3 does not fit 6 rows"):
        contrastive_loss(img, txt, 100.0, offset=3, all_image=img, all_text=txt)


def test_a_repeated_phrase_is_no_false_negative():
    """The same phrase twice in one batch (a frozen text tower gives identical rows): SPEC's symmetric
    loss equals the multi-positive loss whose target mass is shared between the two rows, so no
    duplicate-aware variant is needed (the toy's batches repeat a phrase in about a third of rows)."""
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt[3] = txt[1]
    logits = 100 * img @ txt.t()
    target = torch.eye(5)
    target[1, 3] = target[3, 1] = 1.0
    target = target / target.sum(1, keepdim=True)

    def ce(lg):  # soft targets: mean over rows of -sum_j target_ij log p_ij
        return -(target * lg.log_softmax(-1)).sum(-1).mean()

    _, value = contrastive_loss(img, txt, 100.0, label_smoothing=0.0)
    assert value.item() == pytest.approx((0.5 * (ce(logits) + ce(logits.t()))).item(), rel=1e-5)
    other = txt.clone()
    other[3] = F.normalize(torch.randn(8, generator=g), dim=-1)  # not a repeat: the two differ
    assert contrastive_loss(img, other, 100.0, label_smoothing=0.0)[1].item() != pytest.approx(value.item(), rel=1e-3)


def test_keep_every_keeps_the_weights_of_those_steps(world, tmp_path):
    """keep_every=2 over 4 steps: step-0000002 and step-0000004 (fp32, the whole model); the last equals
    the final open_clip weights bit for bit, the first differs from it; latest.pt is still written."""
    from safetensors.torch import load_file

    train(_cfg(world, tmp_path / "k", keep_every=2))
    ckpt = tmp_path / "k" / "checkpoints"
    assert sorted(f.name for f in ckpt.glob("step-*")) == ["step-0000002.safetensors", "step-0000004.safetensors"]
    assert (ckpt / "latest.pt").is_file()
    final = load_file(str(tmp_path / "k" / "final" / "open_clip_model.safetensors"))
    last, early = load_file(str(ckpt / "step-0000004.safetensors")), load_file(str(ckpt / "step-0000002.safetensors"))
    assert set(last) == set(final) and all(torch.equal(last[k], final[k]) for k in final)
    assert last["visual.conv1_alpha.weight"].dtype == torch.float32
    assert not torch.equal(early["visual.conv1_alpha.weight"], final["visual.conv1_alpha.weight"])
    with pytest.raises(ValueError, match=r"keep_every: expected >= 0 \(0: keep no step files\), got -1"):
        _cfg(world, tmp_path / "bad", keep_every=-1).validate()


def test_param_groups_schedule_and_frozen_text(world):
    model = build_model(f"local-dir:{world / 'model'}")
    cfg = _cfg(world, "unused", lr=2e-4)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["alpha"]["lr"] == 2e-4 and groups["alpha"]["params"] == [model.visual.conv1_alpha.weight]
    assert groups["decay"]["lr"] == pytest.approx(2e-6) and groups["no_decay"]["lr"] == pytest.approx(2e-6)
    assert groups["decay"]["weight_decay"] == 2e-2 and groups["no_decay"]["weight_decay"] == 0.0
    in_opt = {id(p) for g in groups.values() for p in g["params"]}
    visual = {id(p) for p in model.visual.parameters()}
    assert in_opt == visual  # the whole vision tower, nothing else (no text tower, no logit scale)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual."))
    # unfreeze_last=0: only conv1_alpha
    groups0 = param_groups(model, _cfg(world, "unused", unfreeze_last=0))
    assert [p for g in groups0 for p in g["params"]] == [model.visual.conv1_alpha.weight]
    with pytest.raises(ValueError, match="unfreeze_last: the vision tower has 1 blocks, got 3"):
        param_groups(model, _cfg(world, "unused", unfreeze_last=3))
    # stage clip: everything but conv1_alpha, logit scale included, one lr
    clip = {id(p) for g in param_groups(model, _cfg(world, "unused", stage="clip")) for p in g["params"]}
    assert id(model.visual.conv1_alpha.weight) not in clip and id(model.logit_scale) in clip
    assert id(model.token_embedding.weight) in clip
    f = lr_lambda(10, 110, 0.0)
    assert [f(0), f(4), f(9)] == [0.1, 0.5, 1.0]
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="stage: expected 'alpha' or 'clip'"):
        _cfg(world, "x", stage="beta").validate()


def test_train_outputs_frozen_text_and_accumulation(world, tmp_path):
    init = build_model(f"local-dir:{world / 'model'}")
    res = train(_cfg(world, tmp_path / "a", steps=2))
    assert res["step"] == 2 and res["samples"] == 16 and res["skipped"] == 0
    final = tmp_path / "a" / "final"
    ref = read_state_dict(final / "visual.pth")
    assert detect_format(ref) == "alpha-reference"
    trained = open_clip.create_model(f"local-dir:{final}")
    sd0, sd1 = init.state_dict(), trained.state_dict()
    text_keys = [k for k in sd0 if not k.startswith("visual.")]
    assert text_keys and all(torch.equal(sd0[k], sd1[k]) for k in text_keys)  # text tower bit-identical
    assert not torch.equal(sd0["visual.conv1_alpha.weight"], sd1["visual.conv1_alpha.weight"])
    assert torch.equal(ref["conv1_alpha.weight"], sd1["visual.conv1_alpha.weight"])
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["samples"] > 0 for r in rows)
    # accumulation: 2 micro-batches of 4 == one batch of 8 (same samples, exact large-batch loss)
    one = train(_cfg(world, tmp_path / "b1", steps=1, batch_size=8, lr=1e-3))
    two = train(_cfg(world, tmp_path / "b2", steps=1, batch_size=4, accum=2, lr=1e-3))
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    w1 = open_clip.create_model(f"local-dir:{tmp_path / 'b1' / 'final'}").state_dict()
    w2 = open_clip.create_model(f"local-dir:{tmp_path / 'b2' / 'final'}").state_dict()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6, rtol=1e-5), k


def test_resume_after_kill_is_exact(world, tmp_path):
    straight = train(_cfg(world, tmp_path / "straight", steps=6, save_every=2))
    script = textwrap.dedent(f"""
        from alphaclip_train.loop import TrainConfig, train
        train(TrainConfig(**{_cfg(world, tmp_path / 'killed', steps=6, save_every=2).__dict__!r}))
    """)
    env = _env()
    env[KILL_ENV] = "5"  # dies by SIGKILL after step 5; the last checkpoint is step 4
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 4 and state["next_batch"] == 4
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(_cfg(world, tmp_path / "killed", steps=6, save_every=2))
    assert resumed["step"] == 6 and resumed["loss"] == straight["loss"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # bitwise
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    assert a["scheduler"] == b["scheduler"] and a["next_batch"] == b["next_batch"] == 6
    rows = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]  # the rows of the lost step 5 were replaced, not duplicated


DDP_WORKER = r'''
import json, os, sys, torch, torch.distributed as dist
import alphaclip_integrations.open_clip  # noqa
from alphaclip_train.loop import TrainConfig, build_model, _Towers, _step, train
out, model_dir = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
# 1) the DDP gradient equals the single-process gradient of the global-batch loss
g = torch.Generator().manual_seed(0)
N = 8
images = torch.randn(N, 3, 32, 32, generator=g)
alphas = torch.where(torch.rand(N, 1, 32, 32, generator=g) > 0.5, 1.9231, -1.9231)
texts = torch.randint(1, 400, (N, 16), generator=g)
report = {}
for stage, accum in (("alpha", 1), ("alpha", 2), ("clip", 2)):
    cfg = TrainConfig(data=["-"], output="-", stage=stage)
    grads = []
    for distributed in (False, True):
        torch.manual_seed(0)
        model = build_model("local-dir:" + model_dir)
        with torch.no_grad():
            model.visual.conv1_alpha.weight.normal_(0, 0.02)
        from alphaclip_train.loop import param_groups
        param_groups(model, cfg)  # sets requires_grad for the stage
        towers = _Towers(model, stage == "clip")
        if distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(towers)
            lo, hi = rank * N // world, (rank + 1) * N // world
            idx = list(range(lo, hi))
            r, w = rank, world
        else:
            ddp, idx, r, w = towers, list(range(N)), 0, 1
        chunks = [idx[i::accum] for i in range(accum)]
        micro = [{"image": images[c], "alpha": alphas[c], "text": texts[c]} for c in chunks]
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        import contextlib
        if not distributed:  # one batch of all N rows (the loss does not depend on the row order)
            micro = [{"image": images, "alpha": alphas, "text": texts}]
        loss = _step(ddp, towers, micro, torch.device("cpu"), contextlib.nullcontext, scaler, stage == "clip",
                     cfg, r, w)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    single, multi = grads
    assert single.keys() == multi.keys() and single, (stage, sorted(single)[:3])
    worst = max(float((single[k] - multi[k]).abs().max() / (single[k].abs().max() + 1e-12)) for k in single)
    report[f"{stage}-accum{accum}"] = worst
# 2) a few steps of the real loop
res = train(TrainConfig(data=[os.path.join(out, "..", "data")], output=out, model="local-dir:" + model_dir,
                        steps=3, batch_size=4, lr=1e-2, warmup=1, save_every=3, log_every=1, threads=1,
                        progress=False, shuffle_buffer=4))
if rank == 0:
    json.dump({"grad_rel_err": report, "result": res}, open(os.path.join(out, "..", "ddp.json"), "w"))
'''


def test_torchrun_two_cpu_processes(world, tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    (tmp_path / "data").symlink_to(world / "data")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           str(tmp_path / "worker.py"), str(tmp_path / "run"), str(world / "model")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    for name, err in report["grad_rel_err"].items():
        assert err < 1e-5, (name, err)
    res = report["result"]
    assert res["world_size"] == 2 and res["step"] == 3 and res["samples"] == 3 * 2 * 4
    assert Path(res["files"]["reference"]).is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [8, 16, 24]


def test_bf16_autocast_and_gradient_checkpointing_run(world, tmp_path):
    plain = train(_cfg(world, tmp_path / "p", steps=1, lr=1e-3))
    ckpt = train(_cfg(world, tmp_path / "c", steps=1, lr=1e-3, grad_checkpointing=True))
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)  # recomputation does not change the math
    bf16 = train(_cfg(world, tmp_path / "b", steps=1, lr=1e-3, precision="bf16"))
    assert bf16["loss"] == pytest.approx(plain["loss"], rel=0.05) and bf16["loss"] != plain["loss"]
    w = open_clip.create_model(f"local-dir:{tmp_path / 'b' / 'final'}").state_dict()
    assert all(torch.isfinite(v).all() for v in w.values())


def test_tensorboard_logging_or_a_clear_error(world, tmp_path):
    cfg = _cfg(world, tmp_path / "tb", steps=1, tensorboard=True)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            train(cfg)
    else:
        train(cfg)
        assert list((tmp_path / "tb" / "tensorboard").glob("events.*"))


def test_fp16_grad_scaler_and_dataloader_workers(world, tmp_path):
    ref = train(_cfg(world, tmp_path / "w0", steps=2, lr=1e-3))
    workers = train(_cfg(world, tmp_path / "w2", steps=2, lr=1e-3, workers=2))
    assert workers["loss"] == ref["loss"] and workers["samples"] == ref["samples"]  # same batches, same math
    train(_cfg(world, tmp_path / "h", steps=2, lr=1e-3, precision="fp16"))
    # the first step's loss (before any update: the scaler skips the steps whose fp16 gradients overflow,
    # so later steps see other weights than fp32's) matches fp32 within 5%
    first = [json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[0])["loss"] for d in ("w0", "h")]
    assert first[1] == pytest.approx(first[0], rel=0.05)
    state = torch.load(tmp_path / "h" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the grad scaler's state is checkpointed
