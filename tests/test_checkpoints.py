"""Weight formats: the reference visual-only .pth, OpenAI/open_clip bases, safetensors; and errors."""
import pickle

import pytest
import torch
from safetensors.torch import load_file

from alphaclip_core import AlphaCLIP, CheckpointError, describe, load_alpha_clip, read_state_dict
from alphaclip_core.checkpoints import (detect_format, open_clip_to_reference, reference_to_open_clip,
                                        save_reference, save_safetensors, vision_arch)
from conftest import (TINY_CFG, openai_state_dict, randomize_alpha_conv, reference_state_dict, tiny_cfg,
                      write_torchscript_archive)


@pytest.fixture
def trained(alpha_clip):
    return randomize_alpha_conv(alpha_clip, seed=3)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0, msg=k)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("base_kind", ["state_dict", "torchscript"])
def test_reference_pth_loads_strictly(tmp_path, trained, prefix, base_kind):
    ref = {prefix + k: v for k, v in reference_state_dict(trained).items()}
    torch.save(ref, tmp_path / "alpha.pth")
    base = tmp_path / "base.pt"
    if base_kind == "torchscript":
        write_torchscript_archive(openai_state_dict(trained), base)
    else:
        torch.save(openai_state_dict(trained), base)
    torch.manual_seed(123)
    fresh = AlphaCLIP(**TINY_CFG)
    load_alpha_clip(fresh, tmp_path / "alpha.pth", base=base)
    _assert_same_weights(fresh, trained)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval().encode_image(x), trained.encode_image(x), atol=0, rtol=0)


def test_reference_round_trip_keeps_exact_key_names(tmp_path, trained):
    save_reference(trained, tmp_path / "out.pth")
    sd = torch.load(tmp_path / "out.pth", weights_only=True)
    expected = reference_state_dict(trained)
    assert set(sd) == set(expected)
    assert "transformer.resblocks.0.attn.in_proj.weight" in sd and "conv1_alpha.weight" in sd
    for k in sd:
        torch.testing.assert_close(sd[k], expected[k], atol=0, rtol=0)
    assert detect_format(sd) == "alpha-reference"
    assert reference_to_open_clip(open_clip_to_reference(trained.state_dict())).keys() == \
        {k for k in trained.state_dict() if k.startswith("visual.")}


def test_safetensors_round_trip_and_info(tmp_path, trained):
    save_safetensors(trained, tmp_path / "m.safetensors")
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left behind
    sd = load_file(tmp_path / "m.safetensors")
    assert detect_format(sd) == "open_clip-alpha"
    fresh = AlphaCLIP(**TINY_CFG)
    load_alpha_clip(fresh, tmp_path / "m.safetensors")
    _assert_same_weights(fresh, trained)
    info = describe(tmp_path / "m.safetensors")
    assert info["format"] == "open_clip-alpha" and info["has_conv1_alpha"] is True
    assert info["vision"].startswith("ViT width 64, patch 8, 2 layers, 32px")
    assert info["conv1_alpha_abs_mean"] > 0.1
    assert info["has_text_tower"] is True


def test_vision_arch_names_released_shapes():
    sd = {"conv1.weight": torch.empty(1024, 3, 14, 14), "positional_embedding": torch.empty(577, 1024),
          "conv1_alpha.weight": torch.empty(1024, 1, 14, 14)}
    sd.update({f"transformer.resblocks.{i}.ln_1.weight": torch.empty(1) for i in range(24)})
    arch = vision_arch(sd)
    assert (arch.width, arch.patch_size, arch.layers, arch.image_size) == (1024, 14, 24, 336)
    assert arch.name == "alpha-ViT-L-14-336" and arch.has_alpha


def test_architecture_mismatch_is_named(tmp_path):
    wide = randomize_alpha_conv(AlphaCLIP(**tiny_cfg(width=96, head_width=32)))
    torch.save(reference_state_dict(wide), tmp_path / "wide.pth")
    torch.save(openai_state_dict(AlphaCLIP(**TINY_CFG)), tmp_path / "base.pt")
    with pytest.raises(CheckpointError, match=r"The file's vision tower is ViT width 96, patch 8, 2 layers, 32px; "
                                              r"the model's is ViT width 64.*shape mismatch: .*'conv1.weight: "
                                              r"file \[96, 3, 8, 8\] vs model \[64, 3, 8, 8\]'"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "wide.pth", base=tmp_path / "base.pt")


def test_missing_and_extra_keys(tmp_path, trained):
    torch.save(openai_state_dict(trained), tmp_path / "base.pt")
    sd = reference_state_dict(trained)
    del sd["transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing: \['transformer.resblocks.1.mlp.c_fc.bias'\]"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "missing.pth", base=tmp_path / "base.pt")
    sd = reference_state_dict(trained)
    sd["transformer.resblocks.9.ln_1.weight"] = torch.ones(64)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected: \['transformer.resblocks.9.ln_1.weight'\]"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "extra.pth", base=tmp_path / "base.pt")
    sd = reference_state_dict(trained)
    del sd["proj"]
    torch.save(sd, tmp_path / "noproj.pth")
    with pytest.raises(CheckpointError, match=r"missing \['proj'\]"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "noproj.pth", base=tmp_path / "base.pt")


def test_wrong_roles_are_explained(tmp_path, trained):
    torch.save(reference_state_dict(trained), tmp_path / "alpha.pth")
    torch.save(openai_state_dict(trained), tmp_path / "base.pt")
    with pytest.raises(ValueError, match="base: the reference Alpha-CLIP file holds only the vision tower"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "alpha.pth")
    with pytest.raises(CheckpointError, match="is not an Alpha-CLIP checkpoint.*It is a plain CLIP"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "base.pt", base=tmp_path / "base.pt")
    with pytest.raises(CheckpointError, match="base: .* is not a whole CLIP checkpoint"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "alpha.pth", base=tmp_path / "alpha.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_and_corrupt_files(tmp_path, trained, capsys):
    with pytest.raises(FileNotFoundError, match="alpha_checkpoint: no such file"):
        load_alpha_clip(AlphaCLIP(**TINY_CFG), tmp_path / "nope.pth")
    torch.save({"conv1.weight": torch.ones(1), "x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_state_dict(tmp_path / "evil.pth")
    assert "never run" not in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save(reference_state_dict(trained), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch/safetensors checkpoint"):
        read_state_dict(tmp_path / "cut.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save({"epoch": 3}, tmp_path / "notensors.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(tmp_path / "notensors.pth")
    with open(tmp_path / "pickled.pkl", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "pickled.pkl")
