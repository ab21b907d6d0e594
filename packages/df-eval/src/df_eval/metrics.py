"""SynthTalk metrics: pure functions on arrays (numpy in, floats or arrays out).

Each metric is the SynthTalk analogue of a metric of the talking-head literature, computed on
the probe's readings (``df_eval.probe``) of generated frames against the exact ground truth:

- lip sync (Sync-C / Sync-D analogue): ``lip_sync`` and ``sync_curve`` on the jaw opening;
- pose error and diversity (APD analogue): ``pose_error``, ``pose_diversity``;
- identity consistency (CSIM / ACD analogue): ``identity_drift``;
- quality: ``psnr``, ``ssim`` (FID analogue: ``frechet_distance`` on probe features) and
  ``jitter``.

Legend: T frames, H W pixels, Ds structure dimension, Di identity dimension, F features,
K maximum offset in frames.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; reported as this cap


def pearson(x_T: np.ndarray, y_T: np.ndarray) -> float:
    """Pearson correlation of two series ``[T]``; 0 when either is constant (a frozen mouth
    carries no sync information) or shorter than 2."""
    x = np.asarray(x_T, np.float64)
    y = np.asarray(y_T, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two series of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return 0.0
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    if den < 1e-12 * max(len(x), 1):
        return 0.0
    return float((x * y).sum() / den)


def sync_curve(pred_T: np.ndarray, gt_T: np.ndarray, max_offset: int) -> np.ndarray:
    """Correlation ``[2K + 1]`` of ``pred[t + k]`` with ``gt[t]`` over the overlapping frames,
    for offsets ``k = -K .. K`` (``k > 0``: the generated mouth lags the ground truth by k
    frames). Offsets that leave fewer than 2 overlapping frames score 0."""
    pred = np.asarray(pred_T, np.float64)
    gt = np.asarray(gt_T, np.float64)
    if pred.shape != gt.shape or pred.ndim != 1:
        raise ValueError(f"sync_curve needs [T] and [T], got {pred.shape} and {gt.shape}")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    T = len(pred)
    out = np.zeros(2 * max_offset + 1)
    for j, k in enumerate(range(-max_offset, max_offset + 1)):
        if k >= 0:
            a, b = pred[k:], gt[: T - k]
        else:
            a, b = pred[: T + k], gt[-k:]
        out[j] = pearson(a, b) if len(a) >= 2 else 0.0
    return out


def lip_sync(pred_jaw_T: np.ndarray, gt_jaw_T: np.ndarray, max_offset: int = 5) -> dict:
    """Lip sync of a generated jaw track ``[T]`` (probe reading) against the ground-truth jaw
    track ``[T]`` of the driving audio's clip (which itself follows the audio by the corpus's
    ``DEFAULT_AV_LAG_FRAMES``, so offset 0 means in sync with the audio as the corpus defines it).

    Returns ``sync_corr`` (Pearson at offset 0), ``sync_rmse`` (jaw RMSE at offset 0, jaw units
    [0, 1]), ``sync_offset`` (the offset in frames in [-K, K] that maximises the correlation; the
    smallest |k| on ties) and ``sync_conf`` (the correlation there: our Sync-C), and ``curve``
    (``sync_curve``, for plots).
    """
    pred = np.asarray(pred_jaw_T, np.float64)
    gt = np.asarray(gt_jaw_T, np.float64)
    curve = sync_curve(pred, gt, max_offset)
    offsets = np.arange(-max_offset, max_offset + 1)
    order = np.lexsort((np.abs(offsets), -curve))  # highest correlation, then smallest |k|
    best = int(order[0])
    return {
        "sync_corr": pearson(pred, gt),
        "sync_rmse": float(np.sqrt(np.mean((pred - gt) ** 2))),
        "sync_offset": int(offsets[best]),
        "sync_conf": float(curve[best]),
        "curve": curve,
    }


def pose_error(pred_TP: np.ndarray, gt_TP: np.ndarray, scale_P: np.ndarray) -> float:
    """RMSE of head pose ``[T, P]`` against the ground truth, each dimension divided by
    ``scale_P`` (the corpus's per-dimension std), averaged over the P dimensions: 0 is exact,
    about 1 is as far off as a random pose of the corpus."""
    pred, gt = np.asarray(pred_TP, np.float64), np.asarray(gt_TP, np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pose_error needs [T, P] and [T, P], got {pred.shape} and {gt.shape}")
    rmse = np.sqrt(np.mean((pred - gt) ** 2, axis=0)) / np.asarray(scale_P, np.float64)
    return float(rmse.mean())


def pose_diversity(pose_TP: np.ndarray, scale_P: np.ndarray) -> float:
    """Pose diversity (APD analogue) as the standard deviation over time of each pose dimension
    ``[T, P]``, divided by ``scale_P`` and averaged over dimensions: 0 for a frozen head."""
    pose = np.asarray(pose_TP, np.float64)
    if pose.ndim != 2:
        raise ValueError(f"pose_diversity needs [T, P], got {pose.shape}")
    return float((pose.std(axis=0) / np.asarray(scale_P, np.float64)).mean())


def jitter(pose_TP: np.ndarray, scale_P: np.ndarray) -> float:
    """Temporal jitter: the mean L2 norm of the second difference in time (frame-to-frame
    acceleration) of the pose ``[T, P]``, each dimension divided by ``scale_P``. Smooth head
    motion has almost none, flicker has much; 0 for a frozen head or fewer than 3 frames. The
    ground truth's own value (probe noise plus real motion) is the floor to compare with."""
    curve = jitter_curve(pose_TP, scale_P)
    return float(curve.mean()) if len(curve) else 0.0


def jitter_curve(pose_TP: np.ndarray, scale_P: np.ndarray) -> np.ndarray:
    """The jitter against frame index: ``[T - 2]``, value ``i`` the norm of the normalised
    pose's second difference at frame ``i + 1`` (empty for fewer than 3 frames)."""
    pose = np.asarray(pose_TP, np.float64) / np.asarray(scale_P, np.float64)
    if pose.ndim != 2:
        raise ValueError(f"jitter needs [T, P], got {pose.shape}")
    if len(pose) < 3:
        return np.zeros(0)
    acc = pose[2:] - 2 * pose[1:-1] + pose[:-2]
    return np.linalg.norm(acc, axis=1)


def identity_drift(identity_TDi: np.ndarray, reference_Di: np.ndarray) -> np.ndarray:
    """Identity distance ``[T]`` of each frame's probe identity vector ``[T, Di]`` to the
    reference frame's ``[Di]``: the RMS difference in identity-parameter units (fraction of
    each parameter's range). Its curve over frame index is the drift curve, its mean our ACD
    analogue (lower is better)."""
    a = np.asarray(identity_TDi, np.float64)
    b = np.asarray(reference_Di, np.float64)
    if a.ndim != 2 or b.shape != a.shape[1:]:
        raise ValueError(f"identity_drift needs [T, Di] and [Di], got {a.shape} and {b.shape}")
    return np.sqrt(np.mean((a - b) ** 2, axis=1))


def _check_frames(pred: np.ndarray, gt: np.ndarray, name: str) -> None:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(
            f"{name} needs frames [T, H, W, 3] of equal shape, got {pred.shape} and {gt.shape}"
        )


def psnr(pred_THWC: np.ndarray, gt_THWC: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-frame PSNR ``[T]`` in dB, capped at ``PSNR_CAP_DB`` (identical frames)."""
    _check_frames(pred_THWC, gt_THWC, "psnr")
    diff = np.asarray(pred_THWC, np.float64) - np.asarray(gt_THWC, np.float64)
    mse = np.mean(diff**2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        value = 10 * np.log10(data_range**2 / mse)
    return np.minimum(value, PSNR_CAP_DB)


def ssim(pred_THWC: np.ndarray, gt_THWC: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-frame SSIM ``[T]`` (``skimage.metrics.structural_similarity``, 7x7 uniform
    window, colour channels averaged)."""
    _check_frames(pred_THWC, gt_THWC, "ssim")
    return np.array(
        [
            structural_similarity(p, g, channel_axis=-1, data_range=data_range)
            for p, g in zip(np.asarray(pred_THWC), np.asarray(gt_THWC), strict=True)
        ]
    )


def gaussian_stats(x_NF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` (float64) of a feature set ``[N, F]``:
    what FID/FVD code caches per data set (pytorch-fid's ``mu``, ``sigma``)."""
    x = np.asarray(x_NF, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"gaussian_stats needs [N, F] with N >= 2, got {x.shape}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s_FF: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0
    from rounding are clipped)."""
    w, v = np.linalg.eigh((s_FF + s_FF.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``:
    ``|mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^½)``.

    ``tr((S_a S_b)^½)`` is computed as ``Σ √λ(S_a^½ S_b S_a^½)``: the product ``S_a S_b`` is
    similar to that symmetric PSD matrix, so the two traces are equal, and a symmetric
    eigendecomposition needs no complex arithmetic, no ``eps`` retry and no
    ``scipy.linalg.sqrtm`` (whose ``disp`` argument, which pytorch-fid and StyleGAN-V pass,
    scipy 1.18 removed). Rank-deficient covariances (fewer samples than features) are fine.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    s_a = np.atleast_2d(np.asarray(sigma_a, np.float64))
    s_b = np.atleast_2d(np.asarray(sigma_b, np.float64))
    F = mu_a.shape[0] if mu_a.ndim == 1 else -1
    if mu_b.shape != (F,) or s_a.shape != (F, F) or s_b.shape != (F, F):
        raise ValueError(
            f"frechet_distance_from_stats needs mu [F] and sigma [F, F] twice, got "
            f"{mu_a.shape}, {s_a.shape}, {mu_b.shape}, {s_b.shape}"
        )
    root_a = _psd_sqrt(s_a)
    inner = root_a @ s_b @ root_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean
    return float(max(value, 0.0))


def frechet_distance(a_NF: np.ndarray, b_MF: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, F]`` and ``[M, F]``
    (the FID formula, ``frechet_distance_from_stats`` of their ``gaussian_stats``)."""
    a, b = np.asarray(a_NF, np.float64), np.asarray(b_MF, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs [N, F] and [M, F], got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"frechet_distance needs at least 2 samples per set, got {len(a)} and {len(b)}"
        )
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
