"""FID, FVD and LPIPS networks: random weights in the published key layout, saved in the
published format and reloaded strictly; plumbing; a video against itself is perfect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from df_eval.real import fid as FID
from df_eval.real import fvd as FVD
from df_eval.real import lpips_metric as LP
from df_eval.real.weights import (
    WEIGHTS,
    MissingWeightsError,
    WeightsMismatchError,
    load_state_dict_strict,
    weights_path,
)


def _video(T=6, H=32, W=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def test_missing_weights_name_the_file_and_where_published(tmp_path):
    for key, entry in WEIGHTS.items():
        with pytest.raises(MissingWeightsError) as e:
            weights_path(tmp_path, key)
        assert entry.relpath in str(e.value) and entry.source in str(e.value)


def test_strict_loading_tolerates_only_missing_batch_counters():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: v for k, v in net.state_dict().items() if "num_batches" not in k}
    state = {k: torch.randn_like(v.float()) for k, v in state.items()}
    load_state_dict_strict(net, state, "x.pth")
    assert torch.equal(net[0].weight, state["0.weight"])
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_state_dict_strict(net, {k: v for k, v in state.items() if k != "1.bias"}, "x.pth")
    with pytest.raises(WeightsMismatchError, match="unexpected"):
        load_state_dict_strict(net, {**state, "extra": torch.zeros(1)}, "x.pth")
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        load_state_dict_strict(net, {**state, "1.bias": torch.zeros(5)}, "x.pth")


def test_fid_inception_has_the_published_layout_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = FID.FIDInceptionFeatures()
    state = model.inception.state_dict()
    # pytorch-fid's file: torchvision Inception3 names, 1008 classes, no AuxLogits.
    assert len(state) == 566 and state["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in state)
    assert sum(v.numel() for v in state.values()) == 23_885_486
    path = tmp_path / WEIGHTS["inception"].relpath
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, path)
    loaded = FID.FIDInceptionFeatures.from_file(weights_path(tmp_path, "inception"))
    for k, v in state.items():
        if "num_batches" not in k:
            assert torch.equal(loaded.inception.state_dict()[k], v), k
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsMismatchError, match="AuxLogits"):
        FID.FIDInceptionFeatures.from_file(path)


def test_fid_blocks_pool_like_tensorflow():
    # FIDInceptionA equals torchvision's InceptionA with the same weights except in the pool
    # branch (its last 32 channels) on the border, where TensorFlow's pool ignores padding.
    from torchvision.models.inception import InceptionA

    torch.manual_seed(0)
    ours, theirs = FID.FIDInceptionA(8, pool_features=32).eval(), InceptionA(8, 32).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(1, 8, 9, 9) + 1.0
    a, b = ours(x), theirs(x)
    assert torch.allclose(a[:, :-32], b[:, :-32])
    assert torch.allclose(a[:, -32:, 1:-1, 1:-1], b[:, -32:, 1:-1, 1:-1])
    assert not torch.allclose(a[:, -32:, 0], b[:, -32:, 0])
    # Mixed_7c max-pools (the 2015 graph's quirk), Mixed_7b average-pools without padding.
    net = FID.fid_inception_v3()
    y = torch.randn(1, 4, 6, 6)
    assert torch.equal(net.Mixed_7c._pool(y), torch.nn.functional.max_pool2d(y, 3, 1, 1))
    ones = torch.ones(1, 1, 5, 5)
    assert torch.equal(net.Mixed_7b._pool(ones), ones)


@pytest.mark.slow
def test_fid_of_a_video_against_itself_is_zero():
    torch.manual_seed(0)
    model = FID.FIDInceptionFeatures()
    frames = _video(T=3, H=48, W=48)
    feats = FID.image_features(model, frames, batch_size=2)
    assert feats.shape == (3, FID.FID_DIMS) and np.isfinite(feats).all()
    assert FID.fid(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert FID.fid(feats, FID.image_features(model, frames[:, ::-1].copy())) > 0


class _StubI3D(nn.Module):
    """StyleGAN-V's detector call signature; features: fixed random projection of per-frame
    channel means (so they depend on content and time)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(3 * FVD.FVD_CLIP_LEN, FVD.I3D_FEATURES))

    def forward(
        self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool
    ) -> torch.Tensor:
        assert rescale and resize and return_features
        m = x.mean(dim=(3, 4)) / 255.0  # [B, 3, T]
        return m.flatten(1) @ self.proj


# The published I3D exists only as TorchScript, which torch 2.11 deprecates.
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_fvd_plumbing_on_a_torchscript_stub(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / WEIGHTS["i3d"].relpath
    torch.jit.save(torch.jit.script(_StubI3D()), str(path))
    detector = FVD.load_i3d(weights_path(tmp_path, "i3d"))
    video = _video(T=40, H=16, W=16)
    clips = FVD.video_clips(video)
    assert clips.shape == (2, 16, 16, 16, 3)  # 40 frames: two clips, 8 frames dropped
    assert np.array_equal(clips[1, 0], video[16])
    feats = FVD.clip_features(detector, clips, batch_size=1)
    assert feats.shape == (2, FVD.I3D_FEATURES)
    # The stub sees [B, 3, T, H, W] in [0, 255]: its features equal the projection computed here.
    m = video[:32].reshape(2, 16, -1, 3).mean(axis=2).transpose(0, 2, 1) / 255.0
    expected = m.reshape(2, -1) @ detector.proj.detach().double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    assert FVD.fvd(feats, feats) == pytest.approx(0.0, abs=1e-9)
    other = FVD.clip_features(detector, FVD.video_clips(_video(T=32, H=16, W=16, seed=1)))
    assert FVD.fvd(feats, other) > 0


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_fvd_short_clip_and_wrong_archive_are_named_errors(tmp_path):
    with pytest.raises(FVD.ClipTooShortError, match="15 frames"):
        FVD.video_clips(_video(T=15), name="short.mp4")

    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(Wrong()), str(path))
    with pytest.raises(WeightsMismatchError, match="signature"):
        FVD.load_i3d(path)
    path.write_bytes(b"not an archive")
    with pytest.raises(WeightsMismatchError, match="TorchScript"):
        FVD.load_i3d(path)


def test_lpips_trunk_loads_from_the_torchvision_file(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(0)
    tv = alexnet(weights=None)
    torch.save(tv.state_dict(), tmp_path / WEIGHTS["alexnet"].relpath)
    model = LP.load_lpips(weights_path(tmp_path, "alexnet"))
    trunk = model.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], tv.features[0].weight)
    assert torch.equal(trunk["slice5.10.bias"], tv.features[10].bias)
    # The calibrated v0.1 heads come from the wheel (not random: all weights >= 0).
    assert (model.lin0.model[-1].weight >= 0).all()
    a, b = _video(T=3, H=64, W=64), _video(T=3, H=64, W=64, seed=1)
    self_score = LP.lpips_per_frame(model, a, a)
    assert self_score.shape == (3,) and np.allclose(self_score, 0.0, atol=1e-6)
    assert (LP.lpips_per_frame(model, a, b, batch_size=2) > 1e-3).all()
    with pytest.raises(LP.MismatchedFramesError, match="correspond"):
        LP.lpips_per_frame(model, a, b[:2])
    torch.save(
        {k: v for k, v in tv.state_dict().items() if k != "features.0.bias"}, tmp_path / "bad.pth"
    )
    with pytest.raises(WeightsMismatchError, match=r"features\.0\.bias"):
        LP.load_lpips(tmp_path / "bad.pth")
