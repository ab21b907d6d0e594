"""Source clips: the directories extraction reads, found, validated and decoded.

Legend: ``T`` video frames, ``H W`` frame size, ``Ds`` structure dimension, ``N`` audio samples.

A source is any directory under ``src_dir`` holding ``video.mp4`` (H.264, 25 fps),
``audio.wav`` (16 kHz mono), ``metadata.json`` (``fps``, ``frames``, ``split``,
``struct_names``, ...) and the structure: either ground truth, ``gt.safetensors`` (``struct``
float32 ``[T, Ds]``, ``identity`` float32 ``[Di]``, optionally ``mouth_box`` float32 ``[T, 4]``
pixel boxes ``(x0, y0, x1, y1)``), as SynthTalk writes, or a ``StructExtractor``
(``df_data.structure``) that computes it from the frames, as the real clips that ``dualforce
data prepare`` writes need (their ``landmarks.safetensors`` ``mouth_box`` is used unless the
extractor gives its own). An extractor, when given, is used for every source, ground truth or
not, so that a store holds one structure. Without either, the source fails with kind
``no_structure``. The structure's mirror rule (``struct_mirror``, ``df_data.structure.mirror``)
goes into the metadata: the extractor's, or for ground truth the source metadata's own, else
SynthTalk's rule.
Its clip id is ``"<split>-<directory name>"``. Directories whose path below ``src_dir`` has a
component starting with a dot (a generator's temporary output) are ignored.

``read_source`` validates it (files present, metadata fps == 25, the mp4 decodes at 25 fps with
the metadata's frame count, gt finite with one structure row per frame, audio and video
durations within 40 ms); a ``SourceError`` carries a machine-readable ``kind``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from df_core.conventions import AUDIO_SAMPLE_RATE, FPS
from df_data.media import MediaError, read_video, read_wav
from df_data.store import StoreError, check_clip_id
from df_data.structure.base import StructResult, extractor_identity
from df_data.structure.mirror import LEGACY_MIRROR, MIRROR_KEY, StructMirror, mirror_to_json

VIDEO_FILE = "video.mp4"
AUDIO_FILE = "audio.wav"
GT_FILE = "gt.safetensors"
METADATA_FILE = "metadata.json"
LANDMARKS_FILE = "landmarks.safetensors"  # prepared real clips (df_data.prepare.clip_writer)
SOURCE_FILES = (VIDEO_FILE, AUDIO_FILE, METADATA_FILE)  # plus gt.safetensors or an extractor
SPLITS = ("train", "val", "test")
MAX_AV_OFFSET_S = 0.040  # audio and video durations may differ by one video frame at most
FPS_TOLERANCE = 1e-3


class SourceError(ValueError):
    """A source clip is unusable; ``kind`` is a short machine-readable category."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SourceClip:
    """A validated source clip, decoded.

    Attributes:
        directory: the source directory.
        clip_id: ``"<split>-<directory name>"``.
        metadata: its ``metadata.json``.
        frames: uint8 RGB ``[T, H, W, 3]``.
        audio: float32 mono audio ``[N]`` at 16 kHz.
        struct: float32 ``[T, Ds]``.
        mouth_box: float32 ``[T, 4]`` pixel boxes, or None when the source has none.
        files: sha256 of each source file, by name.
    """

    directory: Path
    clip_id: str
    metadata: dict[str, Any]
    frames: np.ndarray
    audio: np.ndarray
    struct: torch.Tensor
    files: dict[str, str]
    mouth_box: torch.Tensor | None = None


# Sources ----------------------------------------------------------------------------------------


def discover_sources(src_dir: str | Path) -> list[Path]:
    """Directories under ``src_dir`` (itself included) holding ``video.mp4``, sorted."""
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"src_dir {str(src)!r} is not a directory")
    found = {
        p.parent
        for p in src.rglob(VIDEO_FILE)
        if not any(part.startswith(".") for part in p.relative_to(src).parts)
    }
    return sorted(found)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_source_metadata(directory: Path) -> tuple[dict[str, Any], str]:
    """``(metadata, clip_id)`` of a source; SourceError if metadata.json is unusable."""
    path = directory / METADATA_FILE
    if not path.is_file():
        raise SourceError("missing_file", f"{path}: missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError("bad_metadata", f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SourceError("bad_metadata", f"{path}: not a JSON object")
    missing = [k for k in ("fps", "frames", "split", "struct_names") if k not in meta]
    if missing:
        raise SourceError("bad_metadata", f"{path}: lacks keys {missing}")
    if meta["split"] not in SPLITS:
        raise SourceError("bad_metadata", f"{path}: split {meta['split']!r} not in {SPLITS}")
    if not isinstance(meta["frames"], int) or meta["frames"] < 1:
        raise SourceError("bad_metadata", f"{path}: frames must be a positive integer")
    if not isinstance(meta["struct_names"], list):
        raise SourceError("bad_metadata", f"{path}: struct_names must be a list")
    fps = meta["fps"]
    if not isinstance(fps, int | float) or abs(fps - FPS) > FPS_TOLERANCE:
        raise SourceError("bad_fps", f"{path}: fps is {fps}, the pipeline needs {FPS:g}")
    clip_id = f"{meta['split']}-{directory.name}"
    try:
        check_clip_id(clip_id)
    except StoreError as e:
        raise SourceError("bad_clip_id", f"{directory}: {e}") from e
    return meta, clip_id


class StructExtractor(Protocol):
    """Structure from frames, for sources without ground truth (``df_data.structure`` has the
    real ones).

    ``name`` (recorded in the metadata), ``names`` (one per dimension), ``mirror`` (a
    ``StructMirror``: how a horizontal flip acts on the structure; None or absent: no known
    mirror, flip augmentation is refused), optionally ``identity()`` (what the store records),
    and ``extractor(frames_THWC uint8) -> float [T, Ds]`` or a ``StructResult`` (structure,
    optional mouth boxes, per-clip quantities).
    """

    name: str
    names: Sequence[str]

    def __call__(self, frames_THWC: np.ndarray) -> torch.Tensor | StructResult: ...


def _read_gt(directory: Path, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(struct [T, Ds], mouth_box [T, 4] or None)`` from ``gt.safetensors``, validated."""
    try:
        gt = load_file(str(directory / GT_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError("bad_gt", f"{directory / GT_FILE}: unreadable ({e})") from e
    struct = gt.get("struct")
    if struct is None or struct.ndim != 2 or not struct.is_floating_point():
        shape = None if struct is None else tuple(struct.shape)
        raise SourceError(
            "bad_gt", f"{directory / GT_FILE}: struct must be float [T, Ds], got {shape}"
        )
    if struct.shape[1] != len(meta["struct_names"]):
        raise SourceError(
            "bad_gt",
            f"{directory / GT_FILE}: struct dim {struct.shape[1]} != "
            f"{len(meta['struct_names'])} struct_names",
        )
    for key, value in gt.items():
        bad = int((~torch.isfinite(value.float())).sum()) if value.is_floating_point() else 0
        if bad:
            raise SourceError("nan_gt", f"{directory / GT_FILE}: {key} has {bad} NaN/inf values")
    return struct, _check_box(gt.get("mouth_box"), struct.shape[0], directory / GT_FILE)


def _check_box(box: torch.Tensor | None, frames: int, path: Path) -> torch.Tensor | None:
    if box is not None and (
        box.ndim != 2 or box.shape != (frames, 4) or not box.is_floating_point()
    ):
        raise SourceError(
            "bad_gt" if path.name == GT_FILE else "bad_landmarks",
            f"{path}: mouth_box must be float [T={frames}, 4], got {box.dtype} {tuple(box.shape)}",
        )
    return box


def _extract_struct(
    directory: Path, frames_THWC: np.ndarray, extractor: StructExtractor
) -> StructResult:
    result = extractor(frames_THWC)
    if not isinstance(result, StructResult):
        result = StructResult(torch.as_tensor(result))
    struct, frames = result.struct, frames_THWC.shape[0]
    if struct.ndim != 2 or struct.shape != (frames, len(extractor.names)):
        raise SourceError(
            "bad_struct",
            f"{directory}: the structure extractor {extractor.name!r} must return "
            f"[T={frames}, Ds={len(extractor.names)}], got {tuple(struct.shape)}",
        )
    if not torch.isfinite(struct.float()).all():
        raise SourceError("nan_struct", f"{directory}: extracted structure has NaN/inf values")
    box = result.mouth_box
    if box is not None and (tuple(box.shape) != (frames, 4) or not torch.isfinite(box).all()):
        raise SourceError(
            "bad_struct",
            f"{directory}: the structure extractor {extractor.name!r} must return finite mouth "
            f"boxes [T={frames}, 4], got {tuple(box.shape)}",
        )
    return StructResult(struct.float(), None if box is None else box.float(), result.per_clip)


def _structure_metadata(
    meta: dict[str, Any], extractor: StructExtractor, result: StructResult, has_box: bool
) -> dict[str, Any]:
    """The source metadata with the extractor's names, identity, mirror rule and per-clip
    quantities."""
    meta = {**meta, "struct_names": list(extractor.names)}
    meta["struct_extractor"] = extractor.name
    meta["struct_extractor_identity"] = extractor_identity(extractor)
    meta[MIRROR_KEY] = mirror_to_json(getattr(extractor, "mirror", None))
    meta["struct_per_clip"] = result.per_clip
    if result.mouth_box is not None:
        meta["mouth_box_source"] = f"structure extractor {extractor.name}"
    elif has_box:
        meta["mouth_box_source"] = f"the source's own ({GT_FILE} or {LANDMARKS_FILE})"
    return meta


def read_source(directory: Path, struct_extractor: StructExtractor | None = None) -> SourceClip:
    """Reads and validates a source clip; SourceError (with a ``kind``) says what is wrong.

    The structure is ``struct_extractor``'s output on the decoded frames when one is given (a
    store holds one structure: with an extractor, even sources with ground truth get the
    extractor's, and keep only their ground-truth mouth boxes when it gives none), else the
    source's ground truth (``gt.safetensors``) (module doc).
    """
    # Step 1: files present, metadata usable, a structure source.
    missing = [name for name in SOURCE_FILES if not (directory / name).is_file()]
    if missing:
        raise SourceError("missing_file", f"{directory}: missing {missing}")
    meta, clip_id = read_source_metadata(directory)
    has_gt = (directory / GT_FILE).is_file()
    if not has_gt and struct_extractor is None:
        raise SourceError(
            "no_structure",
            f"{directory}: has no {GT_FILE} (ground-truth structure) and no structure extractor "
            "was given: a real clip from 'dualforce data prepare' needs one "
            "(extract_store(struct_extractor=...), e.g. a LivePortrait motion extractor)",
        )

    # Step 2: ground truth finite, one structure row per metadata frame.
    struct = box = None
    if has_gt:
        struct, box = _read_gt(directory, meta)
    gt_frames = None if struct is None else struct.shape[0]
    if struct_extractor is not None:
        struct = None  # the extractor's structure, below

    # Step 3: the video decodes at 25 fps with the metadata's frame count.
    try:
        frames_THWC, fps = read_video(directory / VIDEO_FILE)
    except MediaError as e:
        raise SourceError("decode_video", str(e)) from e
    if abs(fps - FPS) > FPS_TOLERANCE:
        raise SourceError(
            "bad_fps", f"{directory / VIDEO_FILE}: decodes at {fps:g} fps, need {FPS:g}"
        )
    frames = frames_THWC.shape[0]
    if frames != meta["frames"] or (gt_frames is not None and gt_frames != frames):
        raise SourceError(
            "frame_count",
            f"{directory}: metadata says {meta['frames']} frames, the video decodes "
            f"{frames}, gt struct has {gt_frames}",
        )
    if struct is None:  # Step 3b: structure (and mouth boxes) from the extractor
        result = _extract_struct(directory, frames_THWC, struct_extractor)
        struct, gt_box, box = result.struct, box, result.mouth_box
        if box is None:  # else the source's own boxes: ground truth, or the prepared clip's
            box = gt_box if gt_box is not None else _read_landmark_box(directory, frames)
        meta = _structure_metadata(meta, struct_extractor, result, box is not None)
    elif MIRROR_KEY not in meta:  # ground truth without a rule: SynthTalk's (mirror.LEGACY_MIRROR)
        names = meta["struct_names"]
        legacy = StructMirror(tuple(n for n in LEGACY_MIRROR.negate if n in names))
        meta = {**meta, MIRROR_KEY: mirror_to_json(legacy)}

    # Step 4: the audio decodes and lasts as long as the video (within 40 ms).
    try:
        audio_N = read_wav(directory / AUDIO_FILE)
    except MediaError as e:
        raise SourceError("decode_audio", str(e)) from e
    audio_s, video_s = audio_N.shape[0] / AUDIO_SAMPLE_RATE, frames / FPS
    if abs(audio_s - video_s) > MAX_AV_OFFSET_S + 1e-9:
        raise SourceError(
            "av_duration",
            f"{directory}: audio lasts {audio_s:.3f} s, video {video_s:.3f} s "
            f"(more than {MAX_AV_OFFSET_S * 1000:.0f} ms apart)",
        )
    if not np.isfinite(audio_N).all():
        raise SourceError("decode_audio", f"{directory / AUDIO_FILE}: NaN or inf samples")

    names = (*SOURCE_FILES, GT_FILE, LANDMARKS_FILE)
    files = {name: sha256_file(directory / name) for name in names if (directory / name).is_file()}
    if box is not None:
        box = box.float()
    return SourceClip(directory, clip_id, meta, frames_THWC, audio_N, struct.float(), files, box)


def _read_landmark_box(directory: Path, frames: int) -> torch.Tensor | None:
    """The ``mouth_box`` of a prepared clip's ``landmarks.safetensors``, when it has one."""
    path = directory / LANDMARKS_FILE
    if not path.is_file():
        return None
    try:
        box = load_file(str(path)).get("mouth_box")
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError("bad_landmarks", f"{path}: unreadable ({e})") from e
    return _check_box(box, frames, path)
