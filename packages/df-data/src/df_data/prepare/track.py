"""Following the speaker's face through a video, one frame at a time (``SpeakerTracker``).

Legend: ``T`` frames of the input (25 fps), ``F`` faces in a frame.

A track starts at the largest face of a frame and continues with the detection that overlaps
its last box most (IoU at least ``iou``); a frame without one is a gap, filled by linear
interpolation when the track resumes within ``max_gap`` frames, and the end of the track
otherwise (the track ends at its last detection). Per frame of a track it records the box, the
five points, whether the speaker was detected (not interpolated), and the size of the largest
other face relative to the speaker's (the second-face filter reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from df_data.prepare.faces import Face


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """A speaker track over frames ``start .. end`` (exclusive)."""

    start: int
    boxes: list[np.ndarray] = field(default_factory=list)  # [4] per frame
    points: list[np.ndarray] = field(default_factory=list)  # [5, 2] per frame
    detected: list[bool] = field(default_factory=list)
    other_ratio: list[float] = field(default_factory=list)  # largest other face / speaker
    sharpness: list[float] = field(default_factory=list)  # NaN where not detected

    @property
    def end(self) -> int:
        return self.start + len(self.boxes)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "boxes": np.asarray(self.boxes, np.float64).reshape(-1, 4),
            "points": np.asarray(self.points, np.float64).reshape(-1, 5, 2),
            "detected": np.asarray(self.detected, bool),
            "other_ratio": np.asarray(self.other_ratio, np.float64),
            "sharpness": np.asarray(self.sharpness, np.float64),
        }


class SpeakerTracker:
    """``update(k, faces) -> Face | None`` per frame in order; ``finish()`` gives the tracks."""

    def __init__(self, *, iou_min: float, max_gap: int) -> None:
        self.iou_min, self.max_gap = iou_min, max_gap
        self.tracks: list[Track] = []
        self._track: Track | None = None
        self._last: Face | None = None
        self._gap = 0

    def update(self, k: int, faces: list[Face]) -> Face | None:
        """Adds frame ``k``'s detections; returns the speaker's face when found in it."""
        face = None
        if self._track is not None:
            scored = [(iou(f.box, self._last.box), f) for f in faces]
            scored = [s for s in scored if s[0] >= self.iou_min]
            if scored:
                face = max(scored, key=lambda s: s[0])[1]
                self._fill_gap(face)
            else:
                self._gap += 1
                if self._gap > self.max_gap:
                    self._close()
                return None
        if self._track is None:
            if not faces:
                return None
            face = faces[0]  # largest
            self._track = Track(start=k)
        others = [f.size for f in faces if f is not face]
        t = self._track
        t.boxes.append(np.asarray(face.box, np.float64))
        t.points.append(np.asarray(face.points, np.float64))
        t.detected.append(True)
        t.other_ratio.append(max(others) / face.size if others else 0.0)
        t.sharpness.append(np.nan)
        self._last, self._gap = face, 0
        return face

    def set_sharpness(self, value: float) -> None:
        """Sets the sharpness of the face that the last ``update`` returned."""
        self._track.sharpness[-1] = value

    def _fill_gap(self, face: Face) -> None:
        """Linear interpolation over the ``_gap`` frames since the last detection."""
        t, n = self._track, self._gap
        a_box, b_box = np.asarray(self._last.box), np.asarray(face.box)
        a_pts, b_pts = np.asarray(self._last.points), np.asarray(face.points)
        for i in range(1, n + 1):
            w = i / (n + 1)
            t.boxes.append((1 - w) * a_box + w * b_box)
            t.points.append((1 - w) * a_pts + w * b_pts)
            t.detected.append(False)
            t.other_ratio.append(0.0)
            t.sharpness.append(np.nan)

    def _close(self) -> None:
        if self._track is not None and self._track.boxes:
            self.tracks.append(self._track)
        self._track, self._last, self._gap = None, None, 0

    def finish(self) -> list[Track]:
        self._close()
        return self.tracks
