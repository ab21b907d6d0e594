"""One fixed crop box per clip, LivePortrait's driving-video convention, and cropping with it.

Legend: ``T`` frames, ``H W`` source frame size, ``S`` output side.

LivePortrait (``src/utils/crop.py: parse_bbox_from_landmark``, ``average_bbox_lst``) takes the
eye centre and the mouth centre (``parse_pt2_from_pt5``) as the face's vertical axis, the
landmarks' extent across and along it, a square of ``scale`` times that extent, and moves its
centre by ``vy_ratio`` times the square's side along the eye-to-mouth axis (negative: towards
the forehead). For a driving video it averages the boxes of all frames and does not rotate.

Its extent comes from 203 landmarks (brows to chin, contour to contour); five points span far
less, so here the extent is ``max(box width, EXTENT_PER_BOX_HEIGHT * box height)`` of the
detector's box (RetinaFace boxes run from the forehead, above the brows, to the chin) and the
centre the five points' mean. That substitution is an assumption stated, not a measurement
against LivePortrait's landmark model, which is not available offline.

The box is square and axis-aligned: every frame of a clip is cut by the same box, so the video
latents and the structure describe the same pixels. Parts outside the frame are black.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EXTENT_PER_BOX_HEIGHT = 0.8  # brows-to-chin over forehead-to-chin (assumption, module doc)
MOUTH_BOX_RULE = (
    "from the mouth corners: x from the left corner - 0.4 d to the right corner + 0.4 d "
    "(d: corner distance), y from halfway between nose and mouth centre to the mouth centre + "
    "1.2 times their distance"
)


@dataclass(frozen=True)
class CropBox:
    """A square ``(x0, y0)`` top-left corner and ``side``, in source pixels."""

    x0: float
    y0: float
    side: float

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x0 + self.side, self.y0 + self.side]

    def outside_fraction(self, height: int, width: int) -> float:
        """Fraction of the box's area that lies outside a ``height x width`` frame."""
        ix = max(0.0, min(self.x0 + self.side, width) - max(self.x0, 0.0))
        iy = max(0.0, min(self.y0 + self.side, height) - max(self.y0, 0.0))
        return float(1.0 - ix * iy / (self.side * self.side))


def face_box(
    box_4: np.ndarray, points_52: np.ndarray, *, scale: float, vy: float
) -> tuple[np.ndarray, float]:
    """One frame's crop centre ``(x, y)`` and side from its detector box and five points."""
    eyes, mouth = points_52[:2].mean(0), points_52[3:5].mean(0)
    axis = mouth - eyes
    length = float(np.linalg.norm(axis))
    uy = axis / length if length > 1e-3 else np.array([0.0, 1.0])
    extent = max(box_4[2] - box_4[0], EXTENT_PER_BOX_HEIGHT * (box_4[3] - box_4[1]))
    side = float(extent * scale)
    centre = points_52.mean(0) + uy * (vy * side)
    return centre, side


def average_crop_box(
    boxes_T4: np.ndarray, points_T52: np.ndarray, *, scale: float, vy: float
) -> CropBox:
    """The clip's box: per-frame boxes (``face_box``) averaged over its frames."""
    if boxes_T4.shape[0] == 0:
        raise ValueError("average_crop_box needs at least one frame")
    per_frame = [
        face_box(b, p, scale=scale, vy=vy) for b, p in zip(boxes_T4, points_T52, strict=True)
    ]
    centre = np.mean([c for c, _ in per_frame], axis=0)
    side = float(np.mean([s for _, s in per_frame]))
    return CropBox(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def crop_frame(frame_HW3: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The box cut from the frame (black outside it), resized to ``size x size`` uint8."""
    H, W = frame_HW3.shape[:2]
    x0, y0 = round(box.x0), round(box.y0)
    side = max(1, round(box.side))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + side, W), min(y0 + side, H)
    patch = np.zeros((side, side, 3), np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = frame_HW3[cy0:cy1, cx0:cx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop(xy_N2: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Source pixel coordinates -> pixel coordinates in the ``size`` crop (same rounding as
    ``crop_frame``)."""
    side = max(1, round(box.side))
    return (np.asarray(xy_N2, np.float64) - [round(box.x0), round(box.y0)]) * (size / side)


def mouth_boxes(points_T52: np.ndarray) -> np.ndarray:
    """Mouth boxes ``[T, 4]`` ``(x0, y0, x1, y1)`` from five points (``MOUTH_BOX_RULE``)."""
    nose, left, right = points_T52[:, 2], points_T52[:, 3], points_T52[:, 4]
    centre = (left + right) / 2
    d = np.linalg.norm(right - left, axis=1)
    drop = np.abs(centre[:, 1] - nose[:, 1])
    x0 = np.minimum(left[:, 0], right[:, 0]) - 0.4 * d
    x1 = np.maximum(left[:, 0], right[:, 0]) + 0.4 * d
    y0 = centre[:, 1] - 0.5 * drop
    y1 = centre[:, 1] + 1.2 * drop
    return np.stack([x0, y0, x1, y1], 1)
