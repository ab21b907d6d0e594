"""Scoring generated videos of SynthTalk test clips with the probe.

Naming: a generated video for the test clip ``<data>/test/clip_00003/`` is
``<pred>/clip_00003.mp4`` (the clip id is the clip's directory name). It was driven by that
clip's audio, so it is scored against that clip's ground truth: the jaw track for lip sync, the
head pose, and its frames for PSNR/SSIM. The identity reference is the ground-truth clip's
first frame (the reference image a generator is given) unless another is passed.

Three entry points: ``evaluate_frames`` scores in-memory frames (baselines such as a still
reference frame need no encoding), ``evaluate_videos`` reads a directory of mp4s, and
``evaluate`` does that, adds the ground-truth videos' own scores (the probe's ceiling) and
writes ``metrics.json``, ``report.md`` and the plots.

Legend: T frames, H W pixels, Ds structure dimension, Di identity dimension, F features.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from df_data.media import read_video
from df_data.synthtalk.structure import IDX
from df_eval import metrics as M
from df_eval.corpus import GroundTruth, clip_dirs, load_ground_truth
from df_eval.probe import Probe, ProbeConfig, load_or_train_probe
from df_eval.report import write_report

log = logging.getLogger(__name__)

POSE_DIMS = [IDX[n] for n in ("yaw", "pitch", "roll", "tx", "ty", "scale")]
JAW = IDX["jaw"]
DEFAULT_MAX_OFFSET = 5  # the sync search covers +-5 frames (+-200 ms at 25 fps)


def score_clip(
    pred_THWC: np.ndarray,
    gt: GroundTruth,
    probe: Probe,
    *,
    gt_frames_THWC: np.ndarray | None = None,
    reference_HWC: np.ndarray | None = None,
    max_offset: int = DEFAULT_MAX_OFFSET,
    name: str = "pred",
) -> tuple[dict, dict, np.ndarray]:
    """Scores one generated clip (uint8 ``[T, H, W, 3]``) against its ground truth.

    Frames beyond the shorter of the two are ignored (logged). Returns (scalars by ``metric_names.METRICS``
    key plus ``frames``, curves ``{"id_drift": [T], "pose_err": [T], "jitter": [T - 2],
    "sync": [2K + 1]}``, probe features ``[T, F]``). Against frame index: ``pose_err`` is each
    frame's RMS over the pose dimensions of the error divided by the corpus std, ``jitter``
    value ``i`` the norm of the pose's second difference at frame ``i + 1`` (its mean is the
    clip's jitter). ``name`` labels errors (e.g. the mp4 path).
    """
    pred = np.asarray(pred_THWC)
    if pred.ndim != 4 or pred.shape[-1] != 3 or pred.dtype != np.uint8 or len(pred) == 0:
        raise ValueError(
            f"{name}: frames must be uint8 [T, H, W, 3], got {pred.dtype} {pred.shape}"
        )
    gt_frames = gt.video() if gt_frames_THWC is None else np.asarray(gt_frames_THWC)
    if pred.shape[1:] != gt_frames.shape[1:]:
        raise ValueError(
            f"{name}: frame size {pred.shape[2]}x{pred.shape[1]} does not match the ground truth "
            f"{gt_frames.shape[2]}x{gt_frames.shape[1]} of {gt.directory}"
        )
    T = min(len(pred), len(gt_frames), gt.frames_count)
    if len(pred) != T:
        log.warning(
            "%s: %d frames, ground truth %s has %d; scoring the first %d",
            name,
            len(pred),
            gt.clip_id,
            gt.frames_count,
            T,
        )
    pred, gt_frames, struct = pred[:T], gt_frames[:T], gt.struct[:T]
    reference = gt_frames[0] if reference_HWC is None else np.asarray(reference_HWC)
    out = probe.predict(np.concatenate([reference[None], pred]))
    ref_id, p_struct, p_id, feats = (
        out.identity[0],
        out.struct[1:],
        out.identity[1:],
        out.features[1:],
    )
    pose_scale = probe.struct_std[POSE_DIMS]
    sync = M.lip_sync(p_struct[:, JAW], struct[:, JAW], max_offset)
    drift = M.identity_drift(p_id, ref_id)
    rot = p_struct[:, POSE_DIMS[:3]] - struct[:, POSE_DIMS[:3]]
    scalars = {
        "frames": int(T),
        "sync_corr": sync["sync_corr"],
        "sync_conf": sync["sync_conf"],
        "sync_offset": sync["sync_offset"],
        "sync_rmse": sync["sync_rmse"],
        "pose_err": M.pose_error(p_struct[:, POSE_DIMS], struct[:, POSE_DIMS], pose_scale),
        "rot_err_deg": float(np.degrees(np.sqrt(np.mean(rot.astype(np.float64) ** 2)))),
        "pose_div": M.pose_diversity(p_struct[:, POSE_DIMS], pose_scale),
        "id_dist": float(drift.mean()),
        "id_dist_last": float(drift[-max(1, T // 4) :].mean()),
        "psnr": float(M.psnr(pred, gt_frames).mean()),
        "ssim": float(M.ssim(pred, gt_frames).mean()),
        "jitter": M.jitter(p_struct[:, POSE_DIMS], pose_scale),
    }
    pose_err = (p_struct[:, POSE_DIMS] - struct[:, POSE_DIMS]).astype(np.float64) / pose_scale
    curves = {
        "id_drift": drift.tolist(),
        "pose_err": np.sqrt(np.mean(pose_err**2, axis=1)).tolist(),
        "jitter": M.jitter_curve(p_struct[:, POSE_DIMS], pose_scale).tolist(),
        "sync": sync["curve"].tolist(),
    }
    return scalars, curves, feats


def _mean_curve(curves: list[list[float]]) -> list[float]:
    """Mean over curves of different lengths, index by index."""
    n = max(len(c) for c in curves)
    total, count = np.zeros(n), np.zeros(n)
    for c in curves:
        total[: len(c)] += c
        count[: len(c)] += 1
    return (total / count).tolist()


def evaluate_frames(
    preds: Mapping[str, np.ndarray],
    data_dir: str | Path,
    *,
    probe: Probe | None = None,
    probe_config: ProbeConfig | None = None,
    references: Mapping[str, np.ndarray] | None = None,
    max_offset: int = DEFAULT_MAX_OFFSET,
    progress: bool = True,
    names: Mapping[str, str] | None = None,
) -> dict:
    """Scores generated frames ``{clip_id: uint8 [T, H, W, 3]}`` of test clips of the
    SynthTalk corpus ``data_dir``.

    Args:
        probe: a trained probe; by default ``load_or_train_probe(data_dir, probe_config)``.
        references: optional identity reference frame ``[H, W, 3]`` per clip id (default: the
            ground-truth clip's first frame).
        names: optional label per clip id for error messages (e.g. the mp4 path).

    Returns:
        ``{"clips": {clip_id: scalars}, "aggregate": scalars, "curves": {"id_drift": [T],
        "pose_err": [T], "jitter": [T - 2], "sync": [2K + 1], "sync_offsets": [2K + 1]}}``
        (per-frame curves: the mean over the clips that reach each frame). The aggregate is the mean over clips of
        each scalar, except ``sync_offset`` / ``sync_conf``, the argmax and maximum of the mean
        sync curve, and ``fd``, the Fréchet distance between the probe features of all generated
        frames and of all ground-truth frames of the same clips.
    """
    if not preds:
        raise ValueError("evaluate_frames: no generated clips to score")
    test = clip_dirs(data_dir, "test")
    unknown = sorted(set(preds) - set(test))
    if unknown:
        raise ValueError(
            f"clip ids {unknown[:5]} are not in the test split of {Path(data_dir) / 'test'} "
            f"(which holds {', '.join(list(test)[:5])}{', ...' if len(test) > 5 else ''})"
        )
    probe = (
        probe
        if probe is not None
        else load_or_train_probe(data_dir, probe_config or ProbeConfig(), progress=progress)
    )
    clips, curves, feats, gt_feats = {}, [], [], []
    for clip_id in tqdm(sorted(preds), desc="eval", unit="clip", disable=not progress):
        gt = load_ground_truth(test[clip_id])
        gt_frames = gt.video()
        scalars, c, f = score_clip(
            preds[clip_id],
            gt,
            probe,
            gt_frames_THWC=gt_frames,
            reference_HWC=None if references is None else references.get(clip_id),
            max_offset=max_offset,
            name=(names or {}).get(clip_id, clip_id),
        )
        clips[clip_id] = scalars
        curves.append(c)
        feats.append(f)
        gt_feats.append(probe.predict(gt_frames[: scalars["frames"]]).features)
    aggregate = {
        k: float(np.mean([s[k] for s in clips.values()])) for k in clips[next(iter(clips))]
    }
    sync_mean = _mean_curve([c["sync"] for c in curves])
    offsets = list(range(-max_offset, max_offset + 1))
    best = int(np.lexsort((np.abs(offsets), -np.asarray(sync_mean)))[0])
    aggregate["sync_offset"], aggregate["sync_conf"] = offsets[best], sync_mean[best]
    a, b = np.concatenate(feats), np.concatenate(gt_feats)
    aggregate["fd"] = M.frechet_distance(a, b) if len(a) >= 2 and len(b) >= 2 else float("nan")
    aggregate["clips"] = len(clips)
    return {
        "clips": clips,
        "aggregate": aggregate,
        "curves": {
            "id_drift": _mean_curve([c["id_drift"] for c in curves]),
            "pose_err": _mean_curve([c["pose_err"] for c in curves]),
            "jitter": _mean_curve([c["jitter"] for c in curves]),
            "sync": sync_mean,
            "sync_offsets": offsets,
        },
    }


def read_pred_dir(
    pred_dir: str | Path, data_dir: str | Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads every ``<clip_id>.mp4`` of ``pred_dir``; returns frames and file names by clip id.
    Errors name the file: a missing directory, no mp4s, a clip id not in the corpus's test split,
    an unreadable mp4."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction directory does not exist")
    # Hidden files are writers' temporaries (an interrupted run), not videos.
    files = sorted(p for p in pred_dir.glob("*.mp4") if not p.name.startswith("."))
    if not files:
        raise ValueError(f"{pred_dir}: holds no <clip_id>.mp4 videos")
    test = clip_dirs(data_dir, "test")
    for f in files:
        if f.stem not in test:
            raise ValueError(
                f"{f}: clip id {f.stem!r} is not in the test split of {Path(data_dir) / 'test'} "
                "(name generated videos after the test clip directories, e.g. clip_00000.mp4)"
            )
    frames, names = {}, {}
    for f in files:
        frames[f.stem], _ = read_video(f)  # MediaError (a ValueError) names the file
        names[f.stem] = str(f)
    return frames, names


def evaluate_videos(pred_dir: str | Path, data_dir: str | Path, **kwargs) -> dict:
    """``evaluate_frames`` on the mp4s of ``pred_dir`` (see ``read_pred_dir``)."""
    frames, names = read_pred_dir(pred_dir, data_dir)
    return evaluate_frames(frames, data_dir, names=names, **kwargs)


def evaluate_ground_truth(data_dir: str | Path, clip_ids: list[str], **kwargs) -> dict:
    """Scores the ground-truth videos themselves: the ceiling (and noise floor) of every metric
    as the probe measures it."""
    test = clip_dirs(data_dir, "test")
    frames = {c: load_ground_truth(test[c]).video() for c in clip_ids}
    return evaluate_frames(frames, data_dir, **kwargs)


def evaluate(
    pred_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    train_log: str | Path | None = None,
    probe: Probe | None = None,
    probe_config: ProbeConfig | None = None,
    max_offset: int = DEFAULT_MAX_OFFSET,
    name: str = "pred",
    progress: bool = True,
) -> dict:
    """Scores ``pred_dir`` against the corpus ``data_dir`` and writes ``metrics.json``,
    ``report.md`` and PNG plots into ``out_dir``; returns the ``metrics.json`` content.

    ``probe`` defaults to ``load_or_train_probe(data_dir, probe_config)``. The report has two rows: ``name`` (the generated videos) and ``ground_truth`` (the same
    clips' real videos, the probe's ceiling).
    """
    frames, names = read_pred_dir(pred_dir, data_dir)
    if probe is None:
        probe = load_or_train_probe(data_dir, probe_config or ProbeConfig(), progress=progress)
    common = {"probe": probe, "max_offset": max_offset, "progress": progress}
    systems = {
        name: evaluate_frames(frames, data_dir, names=names, **common),
        "ground_truth": evaluate_ground_truth(data_dir, sorted(frames), **common),
    }
    return write_report(out_dir, systems, probe=probe, data_dir=data_dir, train_log=train_log)
