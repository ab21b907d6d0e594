"""LivePortrait's motion extractor: the released checkpoint's 212 keys, loading from .pth and
.safetensors (strict, errors naming the file and key), degrees arithmetic."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from df_models.liveportrait import (
    MotionExtractor,
    MotionExtractorConfig,
    headpose_to_degrees,
    load_motion_extractor,
    motion_struct,
    struct_names,
)

TINY = MotionExtractorConfig(depths=(1, 1, 2, 1), dims=(8, 8, 16, 16), num_kp=21)


def _tiny(seed: int = 0) -> MotionExtractor:
    torch.manual_seed(seed)
    model = MotionExtractor(TINY)
    model.init_weights()
    with torch.no_grad():  # GRN starts as identity: give it values so the test sees it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_full_size_keys_are_liveportraits_212():
    with torch.device("meta"):
        model = MotionExtractor()
    keys = list(model.state_dict())
    assert len(keys) == 212
    assert keys[0] == "detector.downsample_layers.0.0.weight"
    assert keys[-1] == "detector.fc_exp.bias"
    assert "detector.stages.2.8.grn.gamma" in keys
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["detector.stages.0.0.grn.gamma"] == (1, 1, 1, 384)
    assert shapes["detector.fc_pitch.weight"] == (66, 768)
    assert shapes["detector.fc_kp.weight"] == (63, 768)
    assert sum(v.numel() for v in model.state_dict().values()) == 28_118_728


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_roundtrip_through_liveportrait_files(tmp_path, suffix):
    model = _tiny()
    path = tmp_path / f"motion_extractor{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)  # LivePortrait's release: a bare state dict
    else:
        save_file(state, str(path))
    loaded = load_motion_extractor(path, TINY)
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    struct = motion_struct(got)
    assert struct.shape == (3, 70) and len(struct_names()) == 70
    assert struct_names()[:7] == ("pitch", "yaw", "roll", "tx", "ty", "tz", "scale")
    torch.testing.assert_close(struct[:, 7:], got["exp"])  # exp last, in order


def test_wrong_files_name_file_and_key(tmp_path):
    state = _tiny().state_dict()
    path = tmp_path / "m.pth"
    torch.save({k: v for k, v in state.items() if k != "detector.fc_t.bias"}, path)
    with pytest.raises(ValueError, match=r"m\.pth.*missing keys \['detector\.fc_t\.bias'\]"):
        load_motion_extractor(path, TINY)
    torch.save({**state, "head.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"m\.pth.*unexpected keys \['head\.weight'\]"):
        load_motion_extractor(path, TINY)
    torch.save({"model": state}, path)  # a training checkpoint, not the bare state dict
    with pytest.raises(ValueError, match=r"m\.pth.*\['model'\] are not tensors"):
        load_motion_extractor(path, TINY)
    with pytest.raises(ValueError, match=r"m\.pth.*shape mismatches.*detector\.fc_kp\.weight"):
        torch.save(state, path)
        load_motion_extractor(path, dataclasses.replace(TINY, num_kp=20))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_motion_extractor(tmp_path / "bad.safetensors", TINY)
    with pytest.raises(ValueError, match="no such file"):
        load_motion_extractor(tmp_path / "absent.pth", TINY)


def test_degrees_arithmetic():
    onehot = torch.full((3, 66), -1e4)
    onehot[0, 0] = onehot[1, 65] = 0.0
    onehot[2] = 0.0  # uniform
    torch.testing.assert_close(headpose_to_degrees(onehot), torch.tensor([-97.5, 97.5, 0.0]))
    logits = torch.zeros(1, 66)
    logits[0, 40] = 50.0  # bin 40: 40 * 3 - 97.5
    torch.testing.assert_close(headpose_to_degrees(logits), torch.tensor([22.5]))


def test_config_validation():
    with pytest.raises(ValueError, match="depths"):
        MotionExtractorConfig(depths=(1, 1), dims=(8, 8, 8))
    with pytest.raises(ValueError, match="num_kp"):
        MotionExtractorConfig(num_kp=0)
