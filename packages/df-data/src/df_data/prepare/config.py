"""``PrepareConfig``: every threshold of ``dualforce data prepare``, validated, recorded in each
clip's metadata and in ``prepare.json`` (a re-run into the same folder must use the same one)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from df_core.checks import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_float,
)


@dataclass(frozen=True)
class PrepareConfig:
    # Output.
    size: int = 512  # crop side in pixels after resizing (64..1024)
    crf: int = 18  # H.264 quality of video.mp4
    # Detection and tracking.
    det_size: int = 640  # long side frames are resized to for the detector
    score_threshold: float = 0.8  # detector face probability
    track_iou: float = 0.3  # a detection continues the track if it overlaps its last box this much
    max_gap_frames: int = 12  # frames without the speaker before the track breaks (0.48 s)
    # Crop (LivePortrait's driving-video convention, one box per clip; crop.py).
    crop_scale: float = 2.3  # crop side / face extent
    crop_vy: float = -0.125  # centre shift along the eye-to-mouth axis, in crop sides
    # Splitting.
    min_seconds: float = 2.0  # shorter pieces fail as too_short
    max_seconds: float = 20.0  # longer pieces are cut into equal parts
    scene_cut_threshold: float = 27.0  # mean |HSV difference| of consecutive frames (0..255)
    min_silence_seconds: float = 1.0  # a silence at least this long splits a clip
    silence_pad_seconds: float = 0.2  # silence a clip keeps at each side of such a split
    # Filters (each a named failure with its measured value).
    min_face_px: float = 256.0  # median face size (box's longer side) in source pixels
    second_face_ratio: float = 0.5  # another face at least this large relative to the speaker...
    max_second_face_fraction: float = 0.1  # ...in more than this fraction of frames fails
    max_lost_fraction: float = 0.2  # frames without a detection (interpolated) allowed
    min_sharpness: float = 40.0  # median Laplacian variance of the face at 128x128 (blur)
    min_speech_ratio: float = 0.5  # frames with speech (silero-vad)
    max_crop_outside: float = 0.05  # fraction of the crop box area outside the frame
    vad_threshold: float = 0.5  # silero-vad speech probability

    def __post_init__(self) -> None:
        positive_int("PrepareConfig.size", self.size)
        if not 64 <= self.size <= 1024 or self.size % 2:
            raise ValueError(
                f"PrepareConfig.size must be an even number in [64, 1024], got {self.size}"
            )
        non_negative_int("PrepareConfig.crf", self.crf)
        positive_int("PrepareConfig.det_size", self.det_size)
        unit_float("PrepareConfig.score_threshold", self.score_threshold)
        unit_float("PrepareConfig.track_iou", self.track_iou)
        non_negative_int("PrepareConfig.max_gap_frames", self.max_gap_frames)
        positive_float("PrepareConfig.crop_scale", self.crop_scale)
        if not -1.0 <= self.crop_vy <= 1.0:
            raise ValueError(f"PrepareConfig.crop_vy must be in [-1, 1], got {self.crop_vy!r}")
        positive_float("PrepareConfig.min_seconds", self.min_seconds)
        positive_float("PrepareConfig.max_seconds", self.max_seconds)
        if self.max_seconds < 2 * self.min_seconds:
            raise ValueError(
                "PrepareConfig.max_seconds must be at least twice min_seconds (an over-long "
                f"piece is cut in parts of at least min_seconds), got {self.max_seconds} < "
                f"2 * {self.min_seconds}"
            )
        positive_float("PrepareConfig.scene_cut_threshold", self.scene_cut_threshold)
        positive_float("PrepareConfig.min_silence_seconds", self.min_silence_seconds)
        non_negative_float("PrepareConfig.silence_pad_seconds", self.silence_pad_seconds)
        if 2 * self.silence_pad_seconds >= self.min_silence_seconds:
            raise ValueError(
                "PrepareConfig.silence_pad_seconds must be less than half of min_silence_seconds"
            )
        non_negative_float("PrepareConfig.min_face_px", self.min_face_px)
        unit_float("PrepareConfig.second_face_ratio", self.second_face_ratio)
        unit_float("PrepareConfig.max_second_face_fraction", self.max_second_face_fraction)
        unit_float("PrepareConfig.max_lost_fraction", self.max_lost_fraction)
        non_negative_float("PrepareConfig.min_sharpness", self.min_sharpness)
        unit_float("PrepareConfig.min_speech_ratio", self.min_speech_ratio)
        unit_float("PrepareConfig.max_crop_outside", self.max_crop_outside)
        unit_float("PrepareConfig.vad_threshold", self.vad_threshold)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
