"""Cutting an input into clips, and the filters each clip must pass.

Legend: ``T`` frames of the input at 25 fps.

Pieces (``split``): each speaker track is cut at scene cuts and around long silences (a run of
non-speech of at least ``min_silence_seconds`` becomes a piece of its own, less
``silence_pad_seconds`` left to the speech at either side, and fails the speech filter), and a
piece longer than ``max_seconds`` is cut into equal parts.

Filters (``measure`` then ``failures``), in this order, each a named reason with the measured
value and the bound: ``too_short`` (seconds), ``face_lost`` (fraction of frames the speaker was
interpolated over), ``face_too_small`` (median face size in source pixels), ``crop_outside``
(fraction of the crop box outside the frame), ``second_face`` (fraction of frames with another
face at least ``second_face_ratio`` of the speaker's size), ``blur`` (median sharpness),
``low_speech`` (fraction of frames with speech). The first failing one is the reason; all
failing ones and every measured value are recorded.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from df_core.conventions import FPS
from df_data.prepare.config import PrepareConfig
from df_data.prepare.crop import CropBox, average_crop_box
from df_data.prepare.decode import PrepareError
from df_data.prepare.track import Track


@dataclass(frozen=True)
class Piece:
    start: int  # first frame (input's 25 fps timeline)
    end: int  # one past the last frame
    track: int  # index of the speaker track it belongs to


def runs(mask_T: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as ``(start, end)`` frame ranges."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask_T, np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def split(
    tracks: list[Track], cut_T: np.ndarray, speech_T: np.ndarray, cfg: PrepareConfig
) -> list[Piece]:
    """The pieces of an input (module doc), sorted by start frame."""
    frames = speech_T.shape[0]
    min_silence = round(cfg.min_silence_seconds * FPS)
    pad = round(cfg.silence_pad_seconds * FPS)
    max_len = round(cfg.max_seconds * FPS)
    silences = [(s, e) for s, e in runs(~speech_T) if e - s >= min_silence]
    pieces = []
    for index, track in enumerate(tracks):
        s, e = track.start, min(track.end, frames)
        if e <= s:
            continue
        bounds = {s, e}
        bounds.update(int(k) for k in np.flatnonzero(cut_T[s:e]) + s if k > s)
        for a, b in silences:
            for k in (a + pad if a > s else a, b - pad if b < e else b):
                if s < k < e:
                    bounds.add(k)
        edges = sorted(bounds)
        for a, b in itertools.pairwise(edges):
            parts = max(1, math.ceil((b - a) / max_len))
            cuts = np.linspace(a, b, parts + 1).round().astype(int)
            pieces += [Piece(int(x), int(y), index) for x, y in itertools.pairwise(cuts)]
    return sorted(pieces, key=lambda p: p.start)


def measure(
    piece: Piece, track: Track, speech_T: np.ndarray, height: int, width: int, cfg: PrepareConfig
) -> tuple[dict[str, float], CropBox]:
    """The piece's measured values (module doc) and its crop box."""
    a = track.arrays()
    sl = slice(piece.start - track.start, piece.end - track.start)
    boxes, points, detected = a["boxes"][sl], a["points"][sl], a["detected"][sl]
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    box = average_crop_box(boxes, points, scale=cfg.crop_scale, vy=cfg.crop_vy)
    sharp = a["sharpness"][sl][detected]
    values = {
        "seconds": (piece.end - piece.start) / FPS,
        "lost_fraction": float(1.0 - detected.mean()),
        "face_px": float(np.median(sizes[detected])) if detected.any() else 0.0,
        "crop_outside": box.outside_fraction(height, width),
        "second_face_fraction": float((a["other_ratio"][sl] >= cfg.second_face_ratio).mean()),
        "sharpness": float(np.median(sharp)) if sharp.size else 0.0,
        "speech_ratio": float(speech_T[piece.start : piece.end].mean()),
    }
    return {k: round(v, 6) for k, v in values.items()}, box


# (reason, measured value, bound name, failing if ...)
_FILTERS = (
    ("too_short", "seconds", "min_seconds", lambda v, b: v < b),
    ("face_lost", "lost_fraction", "max_lost_fraction", lambda v, b: v > b),
    ("face_too_small", "face_px", "min_face_px", lambda v, b: v < b),
    ("crop_outside", "crop_outside", "max_crop_outside", lambda v, b: v > b),
    ("second_face", "second_face_fraction", "max_second_face_fraction", lambda v, b: v > b),
    ("blur", "sharpness", "min_sharpness", lambda v, b: v < b),
    ("low_speech", "speech_ratio", "min_speech_ratio", lambda v, b: v < b),
)


def failures(values: dict[str, float], cfg: PrepareConfig) -> list[PrepareError]:
    """The filters the measured ``values`` fail, in the module doc's order (empty: kept)."""
    out = []
    for reason, field, bound_name, fails in _FILTERS:
        bound = getattr(cfg, bound_name)
        if fails(values[field], bound):
            op = ">=" if bound_name.startswith("min") else "<="
            out.append(
                PrepareError(
                    reason,
                    f"{field} {values[field]:g} breaks {bound_name} ({op} {bound:g})",
                    field=field,
                    value=values[field],
                    expected=f"{op} {bound:g}",
                )
            )
    return out
