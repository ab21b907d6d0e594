"""Metric functions on known inputs (no corpus, no probe)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from df_eval import metrics as M


def _track(T=200, seed=0):
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.random(T + 8), np.ones(5) / 5, mode="same")[4:-4]
    return x


def test_lip_sync_perfect_and_shifted():
    gt = _track()
    r = M.lip_sync(gt, gt, max_offset=5)
    assert r["sync_corr"] == pytest.approx(1.0)
    assert r["sync_offset"] == 0 and r["sync_rmse"] == 0.0
    assert len(r["curve"]) == 11
    # A mouth that lags the ground truth by 3 frames: pred[t] = gt[t - 3].
    lagged = np.concatenate([np.full(3, gt[0]), gt[:-3]])
    r = M.lip_sync(lagged, gt, max_offset=5)
    assert r["sync_offset"] == 3
    assert r["sync_conf"] > 0.99 > r["sync_corr"]
    # Leading by 2.
    r = M.lip_sync(np.concatenate([gt[2:], np.full(2, gt[-1])]), gt, max_offset=5)
    assert r["sync_offset"] == -2


def test_lip_sync_destroyed_by_time_permutation():
    gt = _track(400)
    perm = np.random.default_rng(1).permutation(len(gt))
    r = M.lip_sync(gt[perm], gt)
    assert abs(r["sync_corr"]) < 0.15
    assert r["sync_conf"] < 0.3
    assert r["sync_rmse"] > 0.05


def test_constant_track_has_zero_correlation():
    gt = _track()
    r = M.lip_sync(np.full_like(gt, 0.3), gt)
    assert r["sync_corr"] == 0.0 and r["sync_conf"] == 0.0 and r["sync_offset"] == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.floats(0.1, 10), st.floats(-5, 5))
def test_pearson_is_invariant_to_affine_maps(seed, a, b):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert M.pearson(a * x + b, y) == pytest.approx(M.pearson(x, y), abs=1e-9)
    assert M.pearson(x, x) == pytest.approx(1.0)
    assert M.pearson(-x, x) == pytest.approx(-1.0)


def test_pose_metrics_on_frozen_and_moving_heads():
    scale = np.array([0.1, 0.2, 0.05, 0.02, 0.02, 0.05])
    frozen = np.tile(np.array([0.1, 0.0, 0.0, 0.0, 0.0, 1.0]), (50, 1))
    assert M.pose_diversity(frozen, scale) == pytest.approx(0.0, abs=1e-12)
    assert M.jitter(frozen, scale) == pytest.approx(0.0, abs=1e-12)
    t = np.linspace(0, 1, 50)[:, None]
    smooth = frozen + scale * np.sin(2 * np.pi * t)
    noisy = smooth + np.random.default_rng(0).normal(size=smooth.shape) * scale * 0.3
    assert M.pose_diversity(smooth, scale) == pytest.approx(np.sin(2 * np.pi * t).std(), rel=1e-6)
    assert M.jitter(smooth, scale) < 0.05 < M.jitter(noisy, scale)
    assert M.pose_error(smooth, smooth, scale) == 0.0
    # A constant offset of one std in every dimension is an error of exactly 1.
    assert M.pose_error(smooth + scale, smooth, scale) == pytest.approx(1.0)


def test_identity_drift():
    ref = np.linspace(0, 1, 44)
    frames = np.stack([ref + 0.01 * k for k in range(10)])
    d = M.identity_drift(frames, ref)
    assert d.shape == (10,)
    np.testing.assert_allclose(d, 0.01 * np.arange(10), atol=1e-12)


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32]
    smooth = 128 + 100 * np.sin(x / 5.0)[..., None] * np.cos(y / 7.0)[..., None] * np.ones(3)
    a = np.repeat(smooth[None], 3, axis=0).astype(np.uint8)
    assert np.all(M.psnr(a, a) == M.PSNR_CAP_DB)
    np.testing.assert_allclose(M.ssim(a, a), 1.0)
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (5.0, 20.0)]
    p5, p20 = (M.psnr(b, a) for b in noisy)
    assert np.all(p5 == pytest.approx(10 * np.log10(255**2 / 25.0), abs=0.5))
    assert np.all(p20 < p5)
    s5, s20 = (M.ssim(b, a) for b in noisy)
    assert np.all((s20 < s5) & (s5 < 0.99))
    with pytest.raises(ValueError, match="equal shape"):
        M.psnr(a[:, :16], a)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two samples of one Gaussian are close; a shifted mean adds |shift|².
    b = rng.normal(size=(500, 8))
    base = M.frechet_distance(a, b)
    assert base < 0.3
    shifts = [M.frechet_distance(a, b + s) for s in (0.5, 1.0, 2.0)]
    assert base < shifts[0] < shifts[1] < shifts[2]
    assert shifts[2] == pytest.approx(8 * 4.0, rel=0.1)
    # Rank-deficient covariances (fewer samples than features) still give a finite value.
    assert np.isfinite(M.frechet_distance(a[:5], b[:5]))
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        M.frechet_distance(a, b[:, :4])
