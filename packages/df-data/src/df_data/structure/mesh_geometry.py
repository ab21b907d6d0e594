"""Head pose, expression and the mouth box from MediaPipe's 468-point face mesh.

Legend: ``P`` mesh points (468), ``T`` frames, ``H W`` frame size.

The points are ``(x, y, z)`` in image pixels, x right, y down, z away from the camera (the
mesh model's depth, on the scale of x). Indices below are MediaPipe's face-mesh topology;
"left" and "right" are as seen in the image (smaller x first for a frontal face).

Pose (degrees; the signs of SynthTalk's structure): the head's x axis is the mean of four
right-minus-left vectors of symmetric rigid points (outer and inner eye corners, cheeks,
mouth corners); its y axis the forehead (10) to nose base (2) direction, made orthogonal to x
(both points are rigid: the chin would tilt the axis when the jaw opens); z = x cross y points
into the head. With the face direction ``f = -z``: ``yaw = atan2(f_x, -f_z)`` (> 0: the nose
moves right), ``pitch = atan2(-f_y, |f_xz|)`` (> 0: the face tilts up), ``roll = atan2(-x_y,
x_x)`` (> 0: counter-clockwise in the image). ``tx, ty``: the centre of the eye corners and the
nose base, relative to the frame centre, in frame widths / heights; ``scale``: the 3-D outer eye
corner distance over the frame width.

Expression: distances in the head frame (pose removed) over the 3-D outer eye corner
distance, so they do not change with pose or face size: mouth opening (inner lips), width
(corners), lip protrusion (lip centres ahead of the corners), jaw drop (nose base to chin),
upper lip (nose base to upper lip), corner lift left/right (corner above the lips' centre),
eye opening left/right (upper to lower eyelid) and brow height left/right (brow above eyelid).

The mirror rule (``MESH_MIRROR``) follows from the definitions: a flip negates x, so yaw,
roll and tx change sign and the left/right measures swap; everything else is unchanged.
"""

from __future__ import annotations

import numpy as np

from df_data.structure.mirror import StructMirror

NUM_POINTS = 468
FOREHEAD, NOSE_BASE, CHIN = 10, 2, 152
EYE_OUTER = (33, 263)  # left, right
EYE_INNER = (133, 362)
CHEEK = (234, 454)
MOUTH_CORNER = (61, 291)
LIP_INNER = (13, 14)  # upper, lower
LIP_OUTER = (0, 17)
EYELID = ((159, 145), (386, 374))  # (upper, lower) of the left and the right eye
BROW = (105, 334)
# The outer lip contour, for the mouth box.
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
MOUTH_BOX_MARGIN = 0.25  # of the lips' width on every side, as SynthTalk's ground truth

MESH_STRUCT_NAMES: tuple[str, ...] = (
    "yaw",
    "pitch",
    "roll",
    "tx",
    "ty",
    "scale",
    "mouth_open",
    "mouth_width",
    "lip_protrusion",
    "jaw_drop",
    "upper_lip",
    "corner_left",
    "corner_right",
    "eye_open_left",
    "eye_open_right",
    "brow_left",
    "brow_right",
)
MESH_MIRROR = StructMirror(
    negate=("yaw", "roll", "tx"),
    swap=(
        ("corner_left", "corner_right"),
        ("eye_open_left", "eye_open_right"),
        ("brow_left", "brow_right"),
    ),
)
MOUTH_BOX_RULE = (
    "face-mesh outer lip contour, grown by 0.25 of its width on every side, clipped to the frame"
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def head_axes(points_P3: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` whose columns are the head's x, y, z axes in the image frame."""
    p = points_P3
    x = sum(p[r] - p[l] for l, r in (EYE_OUTER, EYE_INNER, CHEEK, MOUTH_CORNER))
    x = _unit(x)
    y = p[NOSE_BASE] - p[FOREHEAD]
    y = _unit(y - (y @ x) * x)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def pose_degrees(axes_33: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees of ``head_axes`` (module doc)."""
    x, f = axes_33[:, 0], -axes_33[:, 2]
    yaw = np.arctan2(f[0], -f[2])
    pitch = np.arctan2(-f[1], np.hypot(f[0], f[2]))
    roll = np.arctan2(-x[1], x[0])
    return tuple(float(np.degrees(a)) for a in (yaw, pitch, roll))


def mesh_struct(points_P3: np.ndarray, height: int, width: int) -> np.ndarray:
    """The structure ``[17]`` float32 (``MESH_STRUCT_NAMES``) of one frame's mesh."""
    p = np.asarray(points_P3, np.float64)
    if p.shape != (NUM_POINTS, 3):
        raise ValueError(f"points_P3 must be [{NUM_POINTS}, 3], got {p.shape}")
    axes = head_axes(p)
    yaw, pitch, roll = pose_degrees(axes)
    iod = max(float(np.linalg.norm(p[EYE_OUTER[1]] - p[EYE_OUTER[0]])), 1e-9)
    origin = p[[*EYE_OUTER, *EYE_INNER, NOSE_BASE]].mean(0)
    centre = origin[:2]
    q = (p - origin) @ axes / iod  # head frame: pose and size removed
    lip_mid_y = q[list(LIP_INNER), 1].mean()
    values = [
        yaw,
        pitch,
        roll,
        centre[0] / width - 0.5,
        centre[1] / height - 0.5,
        iod / width,
        q[LIP_INNER[1], 1] - q[LIP_INNER[0], 1],
        float(np.linalg.norm(q[MOUTH_CORNER[1]] - q[MOUTH_CORNER[0]])),
        q[list(MOUTH_CORNER), 2].mean() - q[list(LIP_OUTER), 2].mean(),
        q[CHIN, 1] - q[NOSE_BASE, 1],
        q[LIP_OUTER[0], 1] - q[NOSE_BASE, 1],
        lip_mid_y - q[MOUTH_CORNER[0], 1],
        lip_mid_y - q[MOUTH_CORNER[1], 1],
        q[EYELID[0][1], 1] - q[EYELID[0][0], 1],
        q[EYELID[1][1], 1] - q[EYELID[1][0], 1],
        q[EYELID[0][0], 1] - q[BROW[0], 1],
        q[EYELID[1][0], 1] - q[BROW[1], 1],
    ]
    return np.asarray(values, np.float32)


def mesh_mouth_box(points_P3: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel box ``[4]`` ``(x0, y0, x1, y1)`` float32 around the lips (``MOUTH_BOX_RULE``)."""
    lips = np.asarray(points_P3)[list(LIPS), :2]
    lo, hi = lips.min(0), lips.max(0)
    pad = MOUTH_BOX_MARGIN * (hi[0] - lo[0])
    box = np.concatenate([lo - pad, hi + pad])
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)
