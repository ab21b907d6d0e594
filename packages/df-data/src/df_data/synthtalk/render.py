"""Pose, camera and rasterisation of the SynthTalk head.

Camera: a pinhole at ``(0, 0, distance)`` in head units looking down -z. A head-frame point
``p`` goes to the world as ``P = scale * R @ p + t`` (``R`` and the sign conventions in
``structure``; ``t`` places the head centre at image position ``centre + (tx, ty)``), then to
pixels as ``x = size * (cx + focal * X / (distance - Z))``, ``y = size * (cy - focal * Y /
(distance - Z))``. Pixel coordinates have the image's top-left corner at (0, 0); pixel
``[i, j]`` covers ``x in [j, j + 1)``, ``y in [i, i + 1)``.

Rasterisation: painter's algorithm with ``cv2.fillConvexPoly``, back-face culled and sorted
by depth, flat Lambert shading under a fixed light, drawn ``supersample`` times larger and
reduced with ``cv2.INTER_AREA`` for anti-aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from df_core.checks import positive_float
from df_data.synthtalk import face3d
from df_data.synthtalk.identity import Identity
from df_data.synthtalk.structure import IDX, check_struct

SUPERSAMPLE = 4  # rendering scale before the anti-aliasing reduction
_SHIFT = 4  # fractional bits of the fixed-point coordinates given to cv2
_LIGHT = np.array([-0.35, 0.5, 0.8]) / np.linalg.norm([-0.35, 0.5, 0.8])  # toward the light
_AMBIENT, _DIFFUSE = 0.42, 0.62


@dataclass(frozen=True, kw_only=True, slots=True)
class Camera:
    distance: float = 7.0  # camera to head centre, head units
    focal: float = 2.05  # focal length in image widths
    centre_x: float = 0.5  # where the head centre projects at tx = 0, image widths
    centre_y: float = 0.48  # where the head centre projects at ty = 0, image heights

    def __post_init__(self) -> None:
        if positive_float("Camera.distance", self.distance) <= 2.0:
            raise ValueError(f"Camera.distance must be > 2 head units, got {self.distance}")
        positive_float("Camera.focal", self.focal)


CAMERA = Camera()


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``R = Rz(roll) @ Rx(pitch) @ Ry(yaw)`` ``[3, 3]``, signs as in ``structure``."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def pose(struct_11: np.ndarray, camera: Camera = CAMERA) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation ``[3, 3]``, scale and world translation ``[3]`` of one frame's structure."""
    s = check_struct(struct_11)
    r = rotation(s[IDX["yaw"]], s[IDX["pitch"]], s[IDX["roll"]])
    k = camera.distance / camera.focal
    t = np.array([s[IDX["tx"]] * k, -s[IDX["ty"]] * k, 0.0])
    return r, float(s[IDX["scale"]]), t


def project(world_K3: np.ndarray, size: int, camera: Camera = CAMERA) -> np.ndarray:
    """Pixel positions ``[K, 2]`` (x, y) of world points ``[K, 3]``."""
    depth = camera.distance - world_K3[:, 2]
    x = size * (camera.centre_x + camera.focal * world_K3[:, 0] / depth)
    y = size * (camera.centre_y - camera.focal * world_K3[:, 1] / depth)
    return np.column_stack([x, y])


def to_world(head_K3: np.ndarray, struct_11: np.ndarray) -> np.ndarray:
    """World positions ``[K, 3]`` of head-frame points ``[K, 3]`` under the frame's pose."""
    r, scale, t = pose(struct_11)
    return scale * head_K3 @ r.T + t


def project_landmarks(
    identity: Identity, struct_11: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Pixel positions ``[2]`` (x, y) of the named landmarks of ``face3d.LANDMARK_NAMES``,
    with the camera ``render_frame`` uses."""
    lm = face3d.landmarks_3d(identity, struct_11)
    names = list(lm)
    xy = project(to_world(np.stack([lm[n] for n in names]), struct_11), size)
    return {n: xy[i] for i, n in enumerate(names)}


def mouth_box(
    identity: Identity, struct_11: np.ndarray, size: int, margin: float = 0.25
) -> np.ndarray:
    """Pixel box ``[4]`` (x0, y0, x1, y1) around the lips, grown by ``margin`` of its width on
    every side and clipped to the image (the region of a lip-sync loss)."""
    pts = project(to_world(face3d.mouth_points(identity, struct_11), struct_11), size)
    lo, hi = pts.min(0), pts.max(0)
    pad = margin * (hi[0] - lo[0])
    return np.clip(np.concatenate([lo - pad, hi + pad]), 0, size).astype(np.float32)


def _colour(albedo: np.ndarray, normal_K3: np.ndarray) -> np.ndarray:
    """Lambert-shaded 0..255 colours ``[K, 3]`` of albedos ``[K, 3]`` under unit normals."""
    shade = _AMBIENT + _DIFFUSE * np.maximum(normal_K3 @ _LIGHT, 0.0)
    return np.minimum(albedo * shade[:, None] * 255.0, 255.0)  # albedo and shade are >= 0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


@lru_cache(maxsize=32)
def _background(identity: Identity, size: int, ss: int) -> np.ndarray:
    """Vertical gradient with a soft vignette, uint8 ``[S, S, 3]`` (S = size * ss)."""
    n = size * ss
    y = (np.arange(n) + 0.5) / n
    top, bottom = np.asarray(identity.bg_top_rgb), np.asarray(identity.bg_bottom_rgb)
    grad = top[None, :] * (1 - y[:, None]) + bottom[None, :] * y[:, None]
    yy, xx = np.meshgrid(y - 0.45, y - 0.5, indexing="ij")
    vignette = 1.0 - 0.35 * np.clip(xx * xx + yy * yy, 0, 1)
    img = grad[:, None, :] * vignette[:, :, None]
    img.setflags(write=False)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


class _Canvas:
    """A supersampled uint8 RGB image with fixed-point polygon drawing."""

    def __init__(self, image: np.ndarray, size: int, ss: int) -> None:
        self.image, self.size, self.ss = image, size, ss

    def fixed(self, xy_K2: np.ndarray) -> np.ndarray:
        return np.round((xy_K2 * self.ss - 0.5) * (1 << _SHIFT)).astype(np.int32)

    def triangles(self, xy_F32: np.ndarray, colours_F3: np.ndarray) -> None:
        for pts, col in zip(self.fixed(xy_F32), colours_F3.tolist(), strict=True):
            cv2.fillConvexPoly(self.image, pts, col, cv2.LINE_8, _SHIFT)

    def polygon(
        self, xy_K2: np.ndarray, colour, kind: str = "convex", hole=None, width=0.0
    ) -> None:
        pts = self.fixed(xy_K2)
        if kind == "convex":
            cv2.fillConvexPoly(self.image, pts, colour, cv2.LINE_8, _SHIFT)
        elif kind == "poly":
            cv2.fillPoly(self.image, [pts], colour, cv2.LINE_8, _SHIFT)
        elif kind == "ring":
            cv2.fillPoly(self.image, [pts, self.fixed(hole)], colour, cv2.LINE_8, _SHIFT)
        elif kind == "line":
            thickness = max(1, round(width * self.ss))
            cv2.polylines(self.image, [pts], False, colour, thickness, cv2.LINE_8, _SHIFT)
        else:
            raise ValueError(f"unknown polygon kind {kind!r}")


def _draw_mesh(
    canvas: _Canvas,
    verts_V3: np.ndarray,
    faces_F3: np.ndarray,
    albedo_F3,
    size: int,
    double_sided: np.ndarray | None = None,
    camera: Camera = CAMERA,
) -> np.ndarray:
    """Draws world-space triangles back to front, culling back faces; returns the drawn mask [F]."""
    xy = project(verts_V3, size, camera)
    tri_xy = xy[faces_F3]
    d1, d2 = tri_xy[:, 1] - tri_xy[:, 0], tri_xy[:, 2] - tri_xy[:, 0]
    front = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0] < 0  # counter-clockwise in a y-up view
    tri = verts_V3[faces_F3]
    normal = _unit(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    if double_sided is not None:
        normal = np.where((double_sided & ~front)[:, None], -normal, normal)
        front = front | double_sided
    order = np.flatnonzero(front)[np.argsort(tri[front, :, 2].mean(1), kind="stable")]
    canvas.triangles(tri_xy[order], _colour(albedo_F3[order], normal[order]))
    return front


def _draw_body(canvas: _Canvas, identity: Identity, s: np.ndarray, size: int) -> None:
    """Shoulders and a neck that follows the head's pose (translation and scale only below)."""
    r, scale, t = pose(s)
    b = identity.head_height
    neck_top = scale * np.array([[-0.40, -0.45 * b, -0.2], [0.40, -0.45 * b, -0.2]]) @ r.T + t

    def body(p) -> np.ndarray:  # the body translates and scales with the head, never rotates
        return scale * np.asarray(p) + t

    neck_bottom = body([[0.50, -2.3, -0.3], [-0.50, -2.3, -0.3]])
    skin = np.asarray(identity.skin_rgb)
    neck = project(np.vstack([neck_top, neck_bottom]), size)
    canvas.polygon(neck, tuple(np.clip(skin * 0.62 * 255, 0, 255).tolist()))
    theta = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    shoulders = body(
        np.column_stack([2.1 * np.cos(theta), -2.4 + 0.75 * np.sin(theta), np.full(24, -0.6)])
    )
    canvas.polygon(
        project(shoulders, size), tuple((np.asarray(identity.shirt_rgb) * 0.85 * 255).tolist())
    )
    collar = body(
        np.column_stack([0.55 * np.cos(theta), -1.72 + 0.2 * np.sin(theta), np.full(24, -0.5)])
    )
    canvas.polygon(project(collar, size), tuple(np.clip(skin * 0.55 * 255, 0, 255).tolist()))


def _draw_features(
    canvas: _Canvas,
    feats: list[face3d.Feature],
    r: np.ndarray,
    scale: float,
    t: np.ndarray,
    size: int,
) -> None:
    """Draws the features in list order, skipping those whose surface faces away; all their
    points are posed and projected in one batch."""
    parts = [f.points for f in feats] + [f.hole for f in feats if f.hole is not None]
    ends = np.cumsum([len(p) for p in parts])
    world = scale * np.concatenate(parts) @ r.T + t
    xy = np.split(project(world, size), ends[:-1])
    normals = np.stack([f.normal for f in feats]) @ r.T
    anchors = world[np.concatenate([[0], ends[: len(feats) - 1]])]
    eye = np.array([0.0, 0.0, CAMERA.distance])
    facing = np.einsum("fk,fk->f", normals, eye - anchors) > 0
    colours = _colour(np.array([f.albedo for f in feats]), normals).tolist()
    px_per_unit = size * CAMERA.focal * scale / CAMERA.distance
    holes = iter(xy[len(feats) :])
    for i, feat in enumerate(feats):
        hole = None if feat.hole is None else next(holes)
        if facing[i]:
            canvas.polygon(xy[i], colours[i], feat.kind, hole, feat.width * px_per_unit)


def render_frame(
    identity: Identity, struct_11: np.ndarray, size: int, *, supersample: int = SUPERSAMPLE
) -> np.ndarray:
    """Renders one frame: uint8 RGB ``[size, size, 3]``, deterministic in its arguments.

    Args:
        identity: the speaker.
        struct_11: the frame's structure ``[Ds]`` (see ``structure.STRUCT_NAMES``).
        size: output height and width in pixels (even, >= 16).
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    s = check_struct(struct_11)
    r, scale, t = pose(s)
    canvas = _Canvas(_background(identity, size, supersample).copy(), size, supersample)
    # Step 1: the body, under the head.
    _draw_body(canvas, identity, s, size)
    # Step 2: the skull (with hair and ears), jaw opened.
    mesh = face3d.skull(identity)
    verts = (
        scale * face3d.skull_vertices(identity, min(max(float(s[IDX["jaw"]]), 0.0), 1.0)) @ r.T + t
    )
    _draw_mesh(canvas, verts, mesh.faces, mesh.albedo, size, mesh.double_sided)
    # Step 3: flat features in order, skipped when their surface faces away (one batched projection).
    _draw_features(canvas, face3d.features(identity, s), r, scale, t, size)
    # Step 4: the nose, on top of the features it may hide when the head turns.
    nz = face3d.nose(identity)
    nverts = scale * nz.vertices @ r.T + t
    albedo = np.tile(np.asarray(identity.skin_rgb), (len(nz.faces), 1))
    front = _draw_mesh(canvas, nverts, nz.faces, albedo, size)
    for f in nz.nostril_faces:
        if front[f]:
            tri = nverts[nz.faces[f]]
            small = tri.mean(0) + 0.45 * (tri - tri.mean(0))
            canvas.polygon(project(small, size), (20.0, 10.0, 10.0))
    return cv2.resize(canvas.image, (size, size), interpolation=cv2.INTER_AREA)
