"""Training on any backbone: the loss follows the base (SigLIP's sigmoid loss with its learnable bias),
the lr groups find conv1_alpha in any tower, a short run lowers the loss, and the outputs load back exactly."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

import alphaclip_integrations.open_clip  # noqa: F401
import backbones_kit as kit
from alphaclip_core.checkpoints import detect_format, read_state_dict, save_safetensors
from alphaclip_train.data import RegionBatches
from alphaclip_train.loop import build_model, loss_name, param_groups, train
from alphaclip_train.loss import contrastive_loss, loss_for, sigmoid_loss
from conftest import micro_world, train_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    kit.register(tmp_path_factory.mktemp("toy_configs"))
    return micro_world(tmp_path_factory.mktemp("backbone_world"), 48, per_shard=12, model=False)


def _cfg(world, out, name, **kw):
    # grad clipping: on the v2 toy world (relations, twins) the EVA tower at lr 3e-3 and batch 8 was
    # unstable without it (training loss 12 -> 40 at step 2, the eval loss up after 24 steps)
    return train_config(world, out, **{"model": "alpha-" + name, "steps": 24, "lr": 3e-3, "lr_ratio": 1.0,
                                       "save_every": 100, "grad_clip": 1.0, **kw})


# ------------------------------------------------------------------------------------------------ the loss
def test_sigmoid_loss_against_a_hand_computed_value():
    # two pairs; cosines <x_i, y_j>: [[1, 0.6], [0, 0.8]]; t = 10, b = -5 -> z = [[5, 1], [-5, 3]]
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731   -log sigmoid(x) = softplus(-x)
    # matching pairs (label +1): -log s(5), -log s(3); the others (label -1): -log s(-1), -log s(5)
    by_hand = (softplus(-5) + softplus(-3) + softplus(1) + softplus(-5)) / 2
    assert by_hand == pytest.approx(0.687640, abs=1e-6)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-5.0, requires_grad=True)
    loss, value = sigmoid_loss(img, txt, scale, bias)
    assert value.item() == pytest.approx(by_hand, abs=1e-6) and loss.item() == pytest.approx(by_hand, abs=1e-6)
    loss.backward()
    # d/db = 1/N * sum_ij -label_ij * sigmoid(-label_ij * z_ij)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    dbias = (-sig(-5) - sig(-3) + sig(1) + sig(-5)) / 2
    assert bias.grad.item() == pytest.approx(dbias, abs=1e-6)
    # open_clip's SigLipLoss agrees (an independent implementation)
    ref = SigLipLoss()(img, txt, torch.tensor(10.0), torch.tensor(-5.0))
    assert value.item() == pytest.approx(ref.item(), abs=1e-6)


def test_sigmoid_loss_global_batch_replicas_and_errors():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    _, whole = sigmoid_loss(img, txt, 10.0, -3.0)
    # rank 1 of 2 holds rows 3..5: the same global value, the backpropagated loss scaled by the world size
    loss, part = sigmoid_loss(img[3:], txt[3:], 10.0, -3.0, offset=3, replicas=2, all_image=img, all_text=txt)
    assert part.item() == pytest.approx(whole.item(), rel=1e-6) and loss.item() == pytest.approx(2 * whole.item())
    bias = torch.tensor(-3.0, requires_grad=True)
    sigmoid_loss(img, txt, 10.0, bias, replicas=2, accum=3)[0].backward()
    ref_bias = torch.tensor(-3.0, requires_grad=True)
    sigmoid_loss(img, txt, 10.0, ref_bias)[0].backward()
    assert bias.grad.item() == pytest.approx(ref_bias.grad.item() * 2 / 6, rel=1e-5)  # shared scalar: / (2 * 3)
    with pytest.raises(ValueError, match="text_features: expected 6 rows"):
        sigmoid_loss(img, txt[:5], 10.0, 0.0)


def test_the_loss_follows_the_base(world):
    siglip, eva = build_model("alpha-Toy-SL-8"), build_model("alpha-Toy-EVA-8")
    assert loss_for(siglip) == "sigmoid" and loss_for(eva) == "contrastive"
    assert loss_name(siglip, _cfg(world, "x", "Toy-SL-8")) == "sigmoid"
    assert loss_name(siglip, _cfg(world, "x", "Toy-SL-8", loss="contrastive")) == "contrastive"
    with pytest.raises(ValueError, match="loss: 'sigmoid' needs a model with a logit_bias"):
        loss_name(eva, _cfg(world, "x", "Toy-EVA-8", loss="sigmoid"))
    with pytest.raises(ValueError, match="loss: expected 'auto', 'contrastive' or 'sigmoid', got 'hinge'"):
        _cfg(world, "x", "Toy-EVA-8", loss="hinge").validate()


@pytest.mark.parametrize("name", ["Toy-SL-8", "Toy-EVA-8"])
def test_lr_groups_of_timm_towers(world, name):
    model = build_model("alpha-" + name)
    cfg = _cfg(world, "unused", name, lr=2e-4, lr_ratio=0.01)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    named = {id(p): n for n, p in model.named_parameters()}
    assert groups["alpha"]["lr"] == 2e-4
    assert [named[id(p)] for p in groups["alpha"]["params"]] == ["visual.trunk.patch_embed.conv1_alpha.weight"]
    rest = {named[id(p)] for g in ("decay", "no_decay") for p in groups[g]["params"]}
    assert groups["decay"]["lr"] == pytest.approx(2e-6) and groups["no_decay"]["lr"] == pytest.approx(2e-6)
    visual = {n for n in named.values() if n.startswith("visual.")} - {"visual.trunk.patch_embed.conv1_alpha.weight"}
    assert rest == visual  # the whole rest of the vision tower, nothing of the text tower
    if name == "Toy-SL-8":  # SigLIP's bias learns at lr, without weight decay; the scale stays the base's
        assert [named[id(p)] for p in groups["logit_bias"]["params"]] == ["logit_bias"]
        assert groups["logit_bias"]["lr"] == 2e-4 and groups["logit_bias"]["weight_decay"] == 0.0
    else:
        assert "logit_bias" not in groups
    assert not model.logit_scale.requires_grad
    # unfreeze_last: conv1_alpha, the last block and what follows it (final norm, pooling head)
    param_groups(model, _cfg(world, "unused", name, unfreeze_last=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert "visual.trunk.patch_embed.conv1_alpha.weight" in trained and "visual.trunk.norm.weight" in trained
    assert any(n.startswith("visual.trunk.blocks.1.") for n in trained)
    assert not any(n.startswith(("visual.trunk.blocks.0.", "visual.trunk.patch_embed.proj")) for n in trained)
    with pytest.raises(ValueError, match="unfreeze_last: the vision tower has 2 blocks, got 3"):
        param_groups(model, _cfg(world, "unused", name, unfreeze_last=3))


# ------------------------------------------------------------------------------------------------ a run
def _batch(world, name, model):
    tokenizer = open_clip.get_tokenizer("alpha-" + name)
    data = RegionBatches([str(world / "data")], tokenizer, 24, 32, whole_image_ratio=0.1, seed=11, shuffle_buffer=1)
    return next(iter(data))


def _eval_loss(model, batch, loss):
    with torch.no_grad():
        img = model.encode_image(batch["image"], batch["alpha"], normalize=True)
        txt = model.encode_text(batch["text"], normalize=True)
        if loss == "sigmoid":
            return sigmoid_loss(img, txt, model.logit_scale.exp(), model.logit_bias)[1].item()
        return contrastive_loss(img, txt, 100.0)[1].item()


@pytest.mark.parametrize("name", list(kit.FAMILIES.values()))
def test_a_short_run_lowers_the_loss_and_its_outputs_load_back(world, tmp_path, name):
    torch.manual_seed(5)
    start = open_clip.create_model("alpha-" + name).eval()
    save_safetensors(start, tmp_path / "init.safetensors")
    assert detect_format(read_state_dict(tmp_path / "init.safetensors")) == "open_clip-alpha"
    loss = "sigmoid" if name == "Toy-SL-8" else "contrastive"
    batch = _batch(world, name, start)
    before = _eval_loss(start, batch, loss)
    summary = train(_cfg(world, tmp_path / "run", name, init=str(tmp_path / "init.safetensors")))
    assert summary["step"] == 24
    final = open_clip.create_model(f"local-dir:{tmp_path / 'run' / 'final'}").eval()
    after = _eval_loss(final, batch, loss)
    assert after < 0.8 * before, (before, after)
    assert torch.count_nonzero(final.visual.conv1_alpha.weight) > 0  # the alpha conv learned
    # the text tower stayed frozen, bit for bit; SigLIP's scale stayed the base's, its bias moved
    for k, v in start.state_dict().items():
        if not k.startswith("visual.") and k != "logit_bias":
            assert torch.equal(final.state_dict()[k], v), k
    if loss == "sigmoid":
        assert final.logit_bias.item() != start.logit_bias.item()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert ("logit_bias" in rows[-1]) == (loss == "sigmoid")
    # the outputs: the open_clip folder is exactly the last checkpoint's model; the reference visual.pth
    # only exists for open_clip's own ViT (the reference format has no names for timm towers)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    for k, v in ckpt["model"].items():
        assert torch.equal(final.state_dict()[k], v), k
    assert set(summary["files"]) == ({"reference", "open_clip", "open_clip_config"} if name == "Toy-ViT-8"
                                     else {"open_clip", "open_clip_config"})
