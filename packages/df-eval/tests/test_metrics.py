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
@given(st.integers(0, 1000), st.integers(2, 60), st.floats(-3, 3))
def test_pearson_equals_numpy(seed, n, mix):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = mix * x + rng.normal(size=n)
    assert M.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)


def test_sync_curve_equals_shifted_correlations():
    rng = np.random.default_rng(2)
    pred, gt = rng.normal(size=40), rng.normal(size=40)
    curve = M.sync_curve(pred, gt, max_offset=3)
    for j, k in enumerate(range(-3, 4)):
        a, b = (pred[k:], gt[: 40 - k]) if k >= 0 else (pred[:k], gt[-k:])
        assert curve[j] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_sync_rmse_of_a_constant_offset_is_the_offset():
    gt = _track()
    assert M.lip_sync(gt + 0.125, gt)["sync_rmse"] == pytest.approx(0.125, abs=1e-12)


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


def test_jitter_of_a_parabola_is_its_second_difference():
    # pose_t = c t^2: the second difference is 2 c at every frame, jitter |2 c / scale|.
    c, scale = np.array([0.3, -0.4]), np.array([0.5, 2.0])
    t = np.arange(10.0)[:, None]
    assert M.jitter(c * t**2, scale) == pytest.approx(np.linalg.norm(2 * c / scale), rel=1e-12)


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
    # An error of d grey levels in every pixel: PSNR = 20 log10(255 / d) exactly.
    np.testing.assert_allclose(M.psnr(a - 3, a), 20 * np.log10(255 / 3), rtol=1e-12)
    p5, p20 = (M.psnr(b, a) for b in noisy)
    assert np.all(p5 == pytest.approx(10 * np.log10(255**2 / 25.0), abs=0.5))
    assert np.all(p20 < p5)
    s5, s20 = (M.ssim(b, a) for b in noisy)
    assert np.all((s20 < s5) & (s5 < 0.99))
    with pytest.raises(ValueError, match="equal shape"):
        M.psnr(a[:, :16], a)


def test_ssim_of_flat_frames_is_the_luminance_term():
    # Flat frames have no variance, so SSIM is (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2
    # (Wang et al. 2004), averaged over the channels.
    a_c, b_c = np.array([40.0, 128.0, 200.0]), np.array([60.0, 100.0, 200.0])
    a = np.broadcast_to(a_c, (1, 16, 16, 3)).astype(np.uint8)
    b = np.broadcast_to(b_c, (1, 16, 16, 3)).astype(np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = np.mean((2 * a_c * b_c + c1) / (a_c**2 + b_c**2 + c1))
    np.testing.assert_allclose(M.ssim(b, a), [expected], rtol=1e-9)


def _exact_gaussian_sample(rng, n, mean, std):
    """Samples whose mean and (unbiased) covariance are exactly ``mean`` and ``diag(std^2)``."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z * std + mean


def test_frechet_distance_closed_form():
    # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    rng = np.random.default_rng(3)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    a = _exact_gaussian_sample(rng, 200, mu_a, sd_a)
    b = _exact_gaussian_sample(rng, 300, mu_b, sd_b)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_equals_an_eigenvalue_implementation():
    # tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of S_a S_b (real and
    # >= 0: the product is similar to S_a^1/2 S_b S_a^1/2), computed without a matrix sqrt.
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.3
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b).real.clip(min=0)
    d = a.mean(0) - b.mean(0)
    expected = d @ d + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eig).sum()
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)


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


def _scipy_frechet(mu_a, s_a, mu_b, s_b):
    """pytorch-fid's ``calculate_frechet_distance`` as scipy >= 1.18 allows it (``sqrtm``
    without ``disp``), the reference the eigen route must match."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s_a)) * 1e-6
        covmean = scipy.linalg.sqrtm((s_a + offset) @ (s_b + offset))
    d = mu_a - mu_b
    return d @ d + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean.real)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.floats(0.0, 3.0))
def test_frechet_from_stats_equals_scipy_sqrtm(seed, F, shift):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4 * F + 8, F)) @ rng.normal(size=(F, F))
    b = rng.normal(size=(3 * F + 8, F)) @ rng.normal(size=(F, F)) + shift
    stats_a, stats_b = M.gaussian_stats(a), M.gaussian_stats(b)
    expected = _scipy_frechet(*stats_a, *stats_b)
    got = M.frechet_distance_from_stats(*stats_a, *stats_b)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert got == pytest.approx(M.frechet_distance(a, b), rel=1e-12, abs=1e-12)


def test_frechet_from_stats_closed_form_and_self():
    # Diagonal covariances: |mu_a - mu_b|² + Σ (√s_a - √s_b)².
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 4.0]), np.array([0.5, 1.0, 0.0, 4.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = M.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)
    # A rank-deficient set (3 samples of 64 features) against itself is 0.
    x = np.random.default_rng(0).normal(size=(3, 64))
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="mu"):
        M.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b[:3], np.diag(var_b))
