"""The metrics df-eval reports: key, which direction is better, and what each means.

A table of its own so that scoring (``evaluate``) and reporting (``report``, ``demo_report``)
both read it and neither imports the other for it.
"""

from __future__ import annotations

from df_eval.metrics import PSNR_CAP_DB

# (key, direction, meaning) of every per-clip scalar, in report order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("sync_corr", "higher", "Pearson r of generated vs ground-truth jaw opening at offset 0"),
    ("sync_conf", "higher", "best Pearson r over offsets -K..K (Sync-C analogue)"),
    ("sync_offset", "zero", "offset (frames) of the best r; > 0: the mouth lags"),
    ("sync_rmse", "lower", "jaw opening RMSE at offset 0, jaw units [0, 1] (Sync-D analogue)"),
    ("pose_err", "lower", "head pose RMSE / corpus std, mean of 6 pose dims"),
    ("rot_err_deg", "lower", "yaw/pitch/roll RMSE in degrees"),
    ("pose_div", "higher", "std over time of head pose / corpus std (APD analogue)"),
    ("id_dist", "lower", "mean probe identity distance to the reference frame (ACD analogue)"),
    ("id_dist_last", "lower", "the same over the last quarter of the frames (drift)"),
    ("psnr", "higher", f"dB vs ground-truth frames (capped at {PSNR_CAP_DB:g})"),
    ("ssim", "higher", "SSIM vs ground-truth frames"),
    ("jitter", "lower", "mean |second time difference| of head pose / corpus std"),
)
AGGREGATE_ONLY = (
    ("fd", "lower", "Fréchet distance of probe features to the ground truth (FID analogue)"),
)
