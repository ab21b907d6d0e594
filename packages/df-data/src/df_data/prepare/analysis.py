"""The first pass over an input: faces, the speaker's tracks, sharpness and scene cuts per frame.

Legend: ``T`` frames of the input at 25 fps, ``H W`` frame size.

Per 25 fps frame (``decode.iter_frames``): the detector's faces, the speaker tracker's update,
the sharpness of the speaker's face (variance of the Laplacian of its grey box resized to
``SHARPNESS_SIDE`` pixels, so the number does not depend on the face's size) and a scene-cut
score (PySceneDetect's content measure: the mean absolute difference of consecutive frames'
HSV channels, on a ``CUT_THUMB_WIDTH`` pixel wide thumbnail; a cut where it reaches the
threshold). Nothing but these numbers is kept, so memory does not grow with the frame size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from df_data.prepare.decode import PrepareError, iter_frames
from df_data.prepare.faces import Face
from df_data.prepare.track import SpeakerTracker, Track

SHARPNESS_SIDE = 128
CUT_THUMB_WIDTH = 96


@dataclass(frozen=True)
class Analysis:
    frames: int  # 25 fps frames decoded
    height: int
    width: int
    tracks: list[Track]
    cut_score: np.ndarray  # float [T]: content change from frame k-1 to k (0 at k = 0)


def sharpness(frame_HW3: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the face box, grey, resized to ``SHARPNESS_SIDE``."""
    H, W = frame_HW3.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in face.box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    grey = cv2.cvtColor(frame_HW3[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _thumb(frame_HW3: np.ndarray) -> np.ndarray:
    H, W = frame_HW3.shape[:2]
    h = max(1, round(H * CUT_THUMB_WIDTH / W))
    small = cv2.resize(frame_HW3, (CUT_THUMB_WIDTH, h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.int16)


def analyse(
    path: str,
    detector: Callable[[np.ndarray], list[Face]],
    *,
    start: float,
    end: float | None,
    iou_min: float,
    max_gap: int,
    progress: bool = False,
) -> Analysis:
    """Runs the first pass (module doc) over ``path`` from ``start`` to ``end`` seconds."""
    tracker = SpeakerTracker(iou_min=iou_min, max_gap=max_gap)
    scores: list[float] = []
    prev = None
    size = (0, 0)
    with tqdm(desc=f"analyse {path}", unit="frame", disable=not progress, leave=False) as bar:
        for k, frame in enumerate(iter_frames(path, start=start, end=end)):
            size = frame.shape[:2]
            faces = detector(frame)
            face = tracker.update(k, faces)
            if face is not None:
                tracker.set_sharpness(sharpness(frame, face))
            thumb = _thumb(frame)
            scores.append(0.0 if prev is None else float(np.abs(thumb - prev).mean()))
            prev = thumb
            bar.update()
    if not scores:
        raise PrepareError(
            "no_frames",
            f"{path}: no 25 fps frame in [{start}, {end}) s",
            field="frames",
            value=0,
            expected=">= 1",
        )
    return Analysis(len(scores), size[0], size[1], tracker.finish(), np.asarray(scores))
