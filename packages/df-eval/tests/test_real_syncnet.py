"""SyncNet: the published key layout saved and reloaded strictly, shapes, the MFCC front end,
LSE on synthetic embeddings with a known shift, and the crop geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from df_eval.real import syncnet as S
from df_eval.real.weights import WEIGHTS, weights_path

PUBLISHED_SHAPES = {  # syncnet_python SyncNetModel.S(1024): first and last layer of each part
    "netcnnaud.0.weight": (64, 1, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_var": (512,),
    "netfcaud.0.weight": (512, 512),
    "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7),
    "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netfclip.1.running_mean": (512,),
    "netfclip.3.bias": (1024,),
}


def test_syncnet_published_layout_reloads_strictly(tmp_path):
    torch.manual_seed(0)
    net = S.SyncNet()
    state = net.state_dict()
    for k, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[k].shape) == shape, k
    assert {k.split(".")[0] for k in state} == {"netcnnaud", "netfcaud", "netcnnlip", "netfclip"}
    # The 2017 file has no num_batches_tracked; random running stats so that BN is exercised.
    published = {
        k: (torch.rand_like(v) + 0.5 if "running" in k else v)
        for k, v in state.items()
        if "num_batches" not in k
    }
    torch.save(published, tmp_path / WEIGHTS["syncnet"].relpath)
    loaded = S.SyncNet.from_file(weights_path(tmp_path, "syncnet"))
    for k, v in published.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        assert loaded.forward_aud(torch.randn(3, 1, 13, 20)).shape == (3, 1024)
        assert loaded.forward_lip(torch.rand(1, 3, 5, 224, 224) * 255).shape == (1, 1024)


def test_mfcc_framing_and_window_count():
    audio = S.to_int16(0.1 * np.sin(np.arange(16_000) / 7.0))
    c = S.mfcc(audio)
    assert c.shape == (13, 1 + int(np.ceil((16_000 - 400) / 160)))  # 99 frames at 100 Hz
    assert S.syncnet_windows(25, 16_000) == 20  # min(25, 16000 // 640) - 5
    assert S.syncnet_windows(40, 16_000) == 20 and S.syncnet_windows(5, 16_000) == 0
    assert S.to_int16(np.array([1.0, -1.0, 0.5])).tolist() == [32767, -32768, 16384]


def test_lse_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    W, E, s = 60, 32, 3
    aud = rng.normal(size=(W, E))
    # The mouth lags the audio by s frames: lip[i] = aud[i - s].
    lip = np.concatenate([rng.normal(size=(s, E)), aud[:-s]])
    r = S.lse(lip, aud, vshift=15)
    assert r.offset == s and len(r.mdist) == 31 and r.windows == W
    # At the true offset only the first s windows (against the zero padding) cost anything,
    # beyond pairwise_distance's eps (1e-6 per component) on the matching ones.
    padded = np.linalg.norm(lip[:s] + 1e-6, axis=1).sum()
    expected = (padded + (W - s) * 1e-6 * np.sqrt(E)) / W
    assert r.lse_d == pytest.approx(expected, rel=1e-6)
    assert r.lse_c == pytest.approx(np.median(r.mdist) - r.lse_d)
    assert r.lse_c > 5
    lead = S.lse(np.concatenate([aud[2:], rng.normal(size=(2, E))]), aud)
    assert lead.offset == -2
    exact = S.lse(aud, aud)
    assert exact.offset == 0 and exact.lse_d < 1e-4  # only pairwise_distance's eps
    pd = S.calc_pdist(lip, aud, vshift=2)
    assert pd.shape == (W, 5)
    assert pd[10, 0] == pytest.approx(np.linalg.norm(lip[10] - aud[8] + 1e-6))


def test_embed_windows_on_a_random_network():
    torch.manual_seed(0)
    net = S.SyncNet()
    crops = np.random.default_rng(0).integers(0, 256, (9, 224, 224, 3), dtype=np.uint8)
    audio = np.random.default_rng(1).uniform(-0.3, 0.3, 8 * 640).astype(np.float32)
    lip, aud = S.embed(net, crops, audio, batch_size=2)
    assert lip.shape == aud.shape == (3, 1024)  # min(9, 8) - 5 windows
    # Window 1 sees frames 1..5 in BGR order.
    with torch.no_grad():
        v = torch.from_numpy(crops[1:6, :, :, ::-1].copy()).float().permute(3, 0, 1, 2)
        np.testing.assert_allclose(
            lip[1], net.forward_lip(v[None])[0].double(), rtol=1e-4, atol=1e-4
        )
    with pytest.raises(S.SyncInputError, match="no SyncNet window"):
        S.embed(net, crops[:5], audio, name="short.mp4")


def test_crop_geometry_follows_run_pipeline():
    H = W = 200
    rows = np.repeat(np.arange(H, dtype=np.uint8)[:, None], W, axis=1)
    frames = np.repeat(np.stack([rows] * 3, axis=-1)[None], 20, axis=0)
    boxes = np.tile([40.0, 40.0, 80.0, 80.0], (20, 1))  # centre (60, 60), half-size 20
    crops = S.syncnet_crops(frames, boxes)
    assert crops.shape == (20, 224, 224, 3)
    # Rows [60 - 20, 60 + 20 * 1.8) = [40, 96): more chin than forehead.
    col = crops[10, :, 112, 0].astype(float)
    assert col[0] == pytest.approx(40, abs=1) and col[-1] == pytest.approx(95, abs=1)
    # A box at the image corner is padded with 110.
    corner = S.syncnet_crops(frames, np.tile([0.0, 0.0, 40.0, 40.0], (20, 1)))
    assert (corner[10, :5, :5] == 110).all()
    with pytest.raises(S.SyncInputError, match="smoothing"):
        S.syncnet_crops(frames[:12], boxes[:12])
    # The median filter removes a one-frame outlier box.
    jumpy = boxes.copy()
    jumpy[10] += 50
    assert np.array_equal(S.syncnet_crops(frames, jumpy)[10], crops[10])
