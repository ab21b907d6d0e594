"""A parametric 3-D head: skull mesh (with hair, ears and a hinged jaw), facial features and nose.

Head frame: origin at the head centre, x to the image right at the frontal pose, y up, z toward
the camera; lengths in head units (the skull's half-width is about 1). Everything here is in the
head frame; ``render`` applies the pose and the camera.

The skull is an ellipsoid, narrowed toward the chin, whose vertices below the mouth line rotate
about a jaw hinge near the ears. Features (eyes, eyelids, brows, lips, mouth interior, teeth)
are flat polygons laid on the skull's analytic surface; the nose is a small closed mesh on top.

Legend: V vertices, F triangles, K polygon points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from df_data.synthtalk.identity import Identity
from df_data.synthtalk.structure import IDX, JAW_MAX_RAD, check_struct

_N_LAT = 20  # latitude bands of the skull mesh
_N_LON = 28  # longitude segments
_LIFT = 0.015  # features float this far above the skull surface
_MOUTH_DARK = (0.10, 0.02, 0.03)
_TEETH = (0.93, 0.91, 0.86)
_EYE_WHITE = (0.95, 0.94, 0.92)
_PUPIL = (0.03, 0.03, 0.04)
_LINE = (0.08, 0.05, 0.05)


@dataclass(frozen=True, eq=False)
class Skull:
    """The identity's rest skull mesh; triangles are wound counter-clockwise seen from outside."""

    vertices: np.ndarray  # [V, 3] rest positions
    faces: np.ndarray  # [F, 3] int32 vertex indices
    albedo: np.ndarray  # [F, 3] RGB in [0, 1]
    jaw_weight: np.ndarray  # [V] how fully each vertex follows the jaw rotation
    double_sided: np.ndarray  # [F] bool, the ears (never culled)


@dataclass(frozen=True, eq=False)
class Feature:
    """One flat polygon in the head frame, drawn in list order on top of the skull.

    ``kind``: "convex" (filled), "poly" (filled, any shape), "ring" (``points`` minus ``hole``)
    or "line" (an open polyline of width ``width`` head units). ``group`` names the set of
    features that is culled together when its ``normal`` faces away from the camera.
    """

    points: np.ndarray  # [K, 3]
    albedo: tuple[float, float, float]
    normal: np.ndarray  # [3] unit, the surface normal under the feature
    kind: str = "convex"
    hole: np.ndarray | None = None  # [K2, 3] for rings
    width: float = 0.0  # for lines
    group: str = ""


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _width_factor(dy: np.ndarray, jaw_width: float) -> np.ndarray:
    """Skull width relative to an ellipsoid at normalised height ``dy`` (narrows to the chin)."""
    return 1.0 - (1.0 - jaw_width) * np.minimum(np.maximum(-dy, 0.0), 1.0) ** 1.6


def surface_z(identity: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the rest skull's front surface at head-frame ``(x, y)`` (any equal shapes)."""
    dy = np.minimum(np.maximum(np.asarray(y) / identity.head_height, -1.0), 1.0)
    dx = np.asarray(x) / (identity.head_width * _width_factor(dy, identity.jaw_width))
    return identity.head_depth * np.sqrt(np.maximum(1.0 - dx * dx - dy * dy, 0.0))


def surface_normal(identity: Identity, x: float, y: float) -> np.ndarray:
    """Unit outward normal of the rest skull at the front point above ``(x, y)`` ``[3]``."""
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    z = float(surface_z(identity, x, y))
    n = np.array([x / a**2, y / b**2, z / c**2])
    return n / np.linalg.norm(n)


def _lift(identity: Identity, xy: np.ndarray, lift: float = _LIFT) -> np.ndarray:
    """Head-frame points ``[K, 3]`` on the skull surface (plus ``lift``) above ``xy [K, 2]``."""
    z = surface_z(identity, xy[:, 0], xy[:, 1]) + lift
    return np.column_stack([xy, z])


def _jaw_hinge(identity: Identity) -> np.ndarray:
    return np.array([0.0, identity.eye_height - 0.25, -0.25 * identity.head_depth])


def rotate_jaw(points: np.ndarray, weight: np.ndarray, jaw: float, hinge: np.ndarray) -> np.ndarray:
    """Rotates ``points [K, 3]`` about the jaw hinge (an x-axis line) by ``weight [K] * jaw``
    times ``JAW_MAX_RAD``; positive angles move the chin down and back."""
    alpha = JAW_MAX_RAD * jaw * weight
    ca, sa = np.cos(alpha), np.sin(alpha)
    dy, dz = points[:, 1] - hinge[1], points[:, 2] - hinge[2]
    out = points.copy()
    out[:, 1] = hinge[1] + dy * ca - dz * sa
    out[:, 2] = hinge[2] + dy * sa + dz * ca
    return out


def _sphere() -> tuple[np.ndarray, np.ndarray]:
    """Unit directions ``[V, 3]`` and outward triangles ``[F, 3]`` of a latitude/longitude sphere
    with longitude 0 facing +z."""
    lat = np.linspace(-np.pi / 2, np.pi / 2, _N_LAT + 1)[1:-1]
    lon = np.linspace(-np.pi, np.pi, _N_LON, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    dirs = np.stack([np.cos(la) * np.sin(lo), np.sin(la), np.cos(la) * np.cos(lo)], -1).reshape(
        -1, 3
    )
    bottom, top = len(dirs), len(dirs) + 1
    dirs = np.concatenate([dirs, [[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]]])
    faces = []
    rings = _N_LAT - 1
    for i in range(rings - 1):
        for j in range(_N_LON):
            a, b = i * _N_LON + j, i * _N_LON + (j + 1) % _N_LON
            c, d = a + _N_LON, b + _N_LON
            faces += [(a, b, d), (a, d, c)]
    last = (rings - 1) * _N_LON
    for j in range(_N_LON):
        jn = (j + 1) % _N_LON
        faces += [(bottom, jn, j), (top, last + j, last + jn)]
    return dirs, np.asarray(faces, dtype=np.int64)


def _orient_outward(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Flips triangles whose normal points toward ``centre``."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = np.einsum("fk,fk->f", n, tri.mean(1) - centre) < 0
    faces = faces.copy()
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return faces


def _hair_line(identity: Identity, lon: np.ndarray) -> np.ndarray:
    """Normalised height above which the skull is hair, per longitude (0 = front)."""
    side = min(identity.hairline, identity.eye_height / identity.head_height + 0.12)
    a = np.abs(lon)
    return np.interp(
        a,
        [0.0, 0.55, 1.35, np.pi],
        [identity.hairline, identity.hairline, side, identity.hair_back],
    )


def _ears(identity: Identity, base_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fan-shaped ear flaps: vertices ``[V, 3]`` and triangles ``[F, 3]``."""
    y = identity.eye_height - 0.12
    dy = y / identity.head_height
    verts, faces = [], []
    for s in (-1.0, 1.0):
        x = (
            s
            * identity.head_width
            * _width_factor(np.array(dy), identity.jaw_width)
            * np.sqrt(1 - dy * dy)
        )
        base = np.array([float(x) * 0.97, y, -0.12 * identity.head_depth])
        e1 = np.array([0.0, 1.0, 0.0])
        e2 = np.array([0.55 * s, 0.0, -0.85])
        e2 /= np.linalg.norm(e2)
        centre = base + 0.08 * e2
        theta = np.linspace(0, 2 * np.pi, 9, endpoint=False)
        ring = centre + np.outer(0.19 * np.sin(theta), e1) + np.outer(0.09 * np.cos(theta), e2)
        start = base_index + len(verts) * 10
        verts.append(np.vstack([centre, ring]))
        faces += [(start, start + 1 + k, start + 1 + (k + 1) % 9) for k in range(9)]
    return np.vstack(verts), np.asarray(faces, dtype=np.int64)


@lru_cache(maxsize=64)
def skull(identity: Identity) -> Skull:
    """The rest skull mesh of ``identity`` (cached)."""
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    dirs, faces = _sphere()
    lon = np.arctan2(dirs[:, 0], dirs[:, 2])
    verts = np.column_stack(
        [
            a * dirs[:, 0] * _width_factor(dirs[:, 1], identity.jaw_width),
            b * dirs[:, 1],
            c * dirs[:, 2],
        ]
    )
    # Step 1: hair adds volume above the hairline (the hair itself is a colour on the skull).
    above = dirs[:, 1] - _hair_line(identity, lon)
    verts *= (1.0 + identity.hair_volume * _smoothstep(above / 0.12))[:, None]
    faces = _orient_outward(verts, faces, np.zeros(3))
    # Step 2: the jaw follows the hinge below the mouth line, fading out toward the back.
    y_m = identity.mouth_height
    jaw_weight = _smoothstep((y_m + 0.02 - verts[:, 1]) / 0.12) * _smoothstep(
        (verts[:, 2] + 0.5 * c) / (0.5 * c)
    )
    # Step 3: albedo per triangle: hair, skin with a cheek blush.
    centroid_dir = dirs[faces].mean(1)
    centroid_lon = np.arctan2(centroid_dir[:, 0], centroid_dir[:, 2])
    is_hair = centroid_dir[:, 1] > _hair_line(identity, centroid_lon)
    skin, hair = np.asarray(identity.skin_rgb), np.asarray(identity.hair_rgb)
    centre = verts[faces].mean(1)
    blush = np.zeros(len(faces))
    for s in (-1.0, 1.0):
        d2 = (centre[:, 0] - s * 0.55 * a) ** 2 + (centre[:, 1] - y_m - 0.22) ** 2
        blush += np.exp(-d2 / 0.03) * (centre[:, 2] > 0)
    skin_tri = (
        skin * (1 - 0.12 * blush[:, None]) + np.array([0.85, 0.30, 0.30]) * 0.12 * blush[:, None]
    )
    strand = 1.0 + 0.06 * np.sin(37.0 * centroid_lon + 11.0 * centroid_dir[:, 1])  # hair texture
    albedo = np.where(is_hair[:, None], hair * strand[:, None], skin_tri)
    # Step 4: ears, double-sided.
    ear_v, ear_f = _ears(identity, len(verts))
    ear_albedo = np.tile(skin * 0.93, (len(ear_f), 1))
    return Skull(
        vertices=np.vstack([verts, ear_v]),
        faces=np.vstack([faces, ear_f]).astype(np.int32),
        albedo=np.clip(np.vstack([albedo, ear_albedo]), 0.0, 1.0),
        jaw_weight=np.concatenate([jaw_weight, np.zeros(len(ear_v))]),
        double_sided=np.concatenate([np.zeros(len(faces), bool), np.ones(len(ear_f), bool)]),
    )


def skull_vertices(identity: Identity, jaw: float) -> np.ndarray:
    """Skull vertices ``[V, 3]`` with the jaw opened by ``jaw`` in [0, 1]."""
    mesh = skull(identity)
    return rotate_jaw(mesh.vertices, mesh.jaw_weight, jaw, _jaw_hinge(identity))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + rx * np.cos(t), cy + ry * np.sin(t)])


@dataclass(frozen=True)
class _Mouth:
    inner_upper: np.ndarray  # [K, 3] left to right
    inner_lower: np.ndarray  # [K, 3] left to right
    outer_upper: np.ndarray  # [K, 3]
    outer_lower: np.ndarray  # [K, 3]


def _mouth(identity: Identity, jaw: float, spread: float, rnd: float) -> _Mouth:
    """Lip contours in the head frame for the given jaw opening, spread and rounding."""
    k = 13
    t = np.linspace(-1.0, 1.0, k)
    half_w = identity.mouth_width * (1.0 + 0.22 * spread - 0.32 * rnd)
    q = 2.0 + 2.5 * spread  # spread lips open as a flatter slot, rounded ones as an O
    prof = (1.0 - np.abs(t) ** q) ** 0.5
    y_m = identity.mouth_height
    gap_u = (0.05 * jaw + 0.035 * rnd) * prof
    gap_l = 0.035 * rnd * prof
    lip = identity.lip_thickness * (1.0 + 0.5 * rnd) * (1.0 - 0.3 * spread)
    x_in, x_out = t * half_w, t * (half_w + 0.025)
    pout = 0.10 * rnd * prof
    hinge = _jaw_hinge(identity)

    def place(x: np.ndarray, y: np.ndarray, lift: float, lower: bool) -> np.ndarray:
        p = np.column_stack([x, y, surface_z(identity, x, y) + _LIFT + lift + pout])
        return rotate_jaw(p, prof, jaw, hinge) if lower else p

    return _Mouth(
        inner_upper=place(x_in, y_m + gap_u, 0.0, False),
        inner_lower=place(x_in, y_m - gap_l, 0.0, True),
        outer_upper=place(x_out, y_m + gap_u + lip * (0.35 + 0.65 * prof), 0.01, False),
        outer_lower=place(x_out, y_m - gap_l - 1.2 * lip * (0.35 + 0.65 * prof), 0.01, True),
    )


@lru_cache(maxsize=128)
def _eye_static(identity: Identity, side: float) -> tuple[list[Feature], np.ndarray, np.ndarray]:
    """The parts of one eye that no expression changes: sclera, iris, pupil, highlight
    (features), the socket outline ``[K, 3]`` and the lower lid arc ``[11, 2]``."""
    cx, cy = side * identity.eye_spacing, identity.eye_height
    ew = identity.eye_size
    eh = 0.5 * ew
    normal = surface_normal(identity, cx, cy)
    group = f"eye{side:+.0f}"
    r_iris = 0.85 * eh
    parts = [
        (_ellipse(cx, cy, ew, eh, 14), _EYE_WHITE),
        (_ellipse(cx, cy, r_iris, r_iris, 12), identity.iris_rgb),
        (_ellipse(cx, cy, 0.45 * r_iris, 0.45 * r_iris, 8), _PUPIL),
        (
            _ellipse(cx - 0.35 * r_iris, cy + 0.35 * r_iris, 0.2 * r_iris, 0.2 * r_iris, 6),
            (1.0, 1.0, 1.0),
        ),
    ]
    static = [Feature(_lift(identity, xy), colour, normal, group=group) for xy, colour in parts]
    socket = _lift(identity, _ellipse(cx, cy + 0.1 * eh, 1.4 * ew, 2.2 * eh, 16))
    u = np.linspace(-1.0, 1.0, 11)
    lower = np.column_stack([cx + ew * u, cy - eh * np.sqrt(1.0 - u * u)])
    return static, socket, lower


def _eye_features(identity: Identity, side: float, blink: float) -> list[Feature]:
    """One eye: the static parts, then the lid (a skin ring around the opening) and lash line.
    ``blink`` lowers the upper lid arc onto the lower one."""
    static, socket, lower = _eye_static(identity, side)
    cy = identity.eye_height
    upper = np.column_stack([lower[:, 0], cy + (1.0 - 2.0 * blink) * (cy - lower[:, 1])])
    upper3 = _lift(identity, upper)
    opening = np.vstack([_lift(identity, lower), upper3[::-1][1:-1]])
    normal, group = static[0].normal, static[0].group
    lid = tuple(np.asarray(identity.skin_rgb) * 0.92)
    return [
        *static,
        Feature(socket, lid, normal, kind="ring", hole=opening, group=group),
        Feature(upper3, _LINE, normal, kind="line", width=0.028, group=group),
    ]


def _brow(identity: Identity, side: float, raise_: float) -> Feature:
    u = np.linspace(0.0, 1.0, 8)
    ew = identity.eye_size
    x = side * (identity.eye_spacing - 1.15 * ew + u * 2.4 * ew)
    y = (
        identity.eye_height
        + identity.brow_gap
        + 0.035 * np.sin(np.pi * (0.3 + 0.7 * u))
        + 0.10 * raise_
    )
    y = y + 0.03 * raise_ * (1.0 - u)  # the inner end lifts more, as with the frontalis
    half = 0.5 * identity.brow_thickness * (1.0 - 0.45 * u)
    outline = np.vstack([np.column_stack([x, y + half]), np.column_stack([x, y - half])[::-1]])
    colour = tuple(np.asarray(identity.hair_rgb) * 0.6 + 0.02)
    normal = surface_normal(
        identity, side * identity.eye_spacing, identity.eye_height + identity.brow_gap
    )
    return Feature(_lift(identity, outline), colour, normal, kind="poly", group=f"eye{side:+.0f}")


def _mouth_features(identity: Identity, m: _Mouth) -> list[Feature]:
    normal = surface_normal(identity, 0.0, identity.mouth_height)
    feats = []
    opening = np.linalg.norm(m.inner_upper - m.inner_lower, axis=1).max()
    if opening > 1e-3:
        interior = np.vstack([m.inner_upper, m.inner_lower[::-1]])
        feats.append(Feature(interior, _MOUTH_DARK, normal, kind="poly", group="mouth"))
        sel = slice(3, -3)
        top = m.inner_upper[sel]
        bottom = top + 0.3 * (m.inner_lower[sel] - top)
        feats.append(
            Feature(np.vstack([top, bottom[::-1]]), _TEETH, normal, kind="poly", group="mouth")
        )
    lip = identity.lip_rgb
    upper_lip = np.vstack([m.outer_upper, m.inner_upper[::-1]])
    lower_lip = np.vstack([m.outer_lower, m.inner_lower[::-1]])
    feats.append(
        Feature(upper_lip, tuple(np.asarray(lip) * 0.9), normal, kind="poly", group="mouth")
    )
    feats.append(Feature(lower_lip, lip, normal, kind="poly", group="mouth"))
    feats.append(Feature(m.inner_upper, _LINE, normal, kind="line", width=0.02, group="mouth"))
    return feats


def features(identity: Identity, struct_11: np.ndarray) -> list[Feature]:
    """The flat features of one frame in drawing order (head frame, expression applied)."""
    s = check_struct(struct_11)
    blink = min(max(float(s[IDX["blink"]]), 0.0), 1.0)
    brow = min(max(float(s[IDX["brow"]]), 0.0), 1.0)
    feats = []
    for side in (-1.0, 1.0):
        feats += _eye_features(identity, side, blink)
        feats.append(_brow(identity, side, brow))
    mouth = _mouth(identity, *_mouth_params(s))
    return feats + _mouth_features(identity, mouth)


def _mouth_params(s: np.ndarray) -> tuple[float, float, float]:
    return tuple(min(max(float(s[IDX[k]]), 0.0), 1.0) for k in ("jaw", "lip_spread", "lip_round"))


@dataclass(frozen=True, eq=False)
class Nose:
    vertices: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3] outward
    nostril_faces: tuple[int, ...]  # indices of the two bottom faces that carry a nostril


@lru_cache(maxsize=64)
def nose(identity: Identity) -> Nose:
    """The nose mesh: bridge, tip, wings and base (rigid, head frame)."""
    y_tip = identity.mouth_height + 0.40 * (identity.eye_height - identity.mouth_height)
    y_top = identity.eye_height - 0.03
    w = identity.nose_width

    def on(x: float, y: float, out: float) -> np.ndarray:
        return np.array([x, y, float(surface_z(identity, x, y)) + out])

    v = np.array(
        [
            on(0.0, y_top, 0.02),  # 0 bridge
            on(0.0, y_tip, identity.nose_length),  # 1 tip
            on(-w, y_tip - 0.02, 0.03),  # 2 left wing
            on(w, y_tip - 0.02, 0.03),  # 3 right wing
            on(0.0, y_tip - 0.07, 0.05),  # 4 base (under the tip)
            on(-0.07, y_top - 0.02, 0.0),  # 5 left of the bridge
            on(0.07, y_top - 0.02, 0.0),  # 6 right of the bridge
        ]
    )
    f = np.array([(0, 5, 1), (0, 1, 6), (5, 2, 1), (6, 1, 3), (1, 2, 4), (1, 4, 3)])
    inner = np.array([0.0, y_tip, float(surface_z(identity, 0.0, y_tip)) - 0.3])
    return Nose(v, _orient_outward(v, f, inner).astype(np.int32), (4, 5))


LANDMARK_NAMES = (
    "nose_tip",
    "eye_left",  # the eye on the image left at the frontal pose (the subject's right eye)
    "eye_right",
    "mouth_left",  # mouth corners, image left and right
    "mouth_right",
    "mouth_top",  # inner upper lip, centre
    "mouth_bottom",  # inner lower lip, centre
    "chin",
    "head_centre",
)


def landmarks_3d(identity: Identity, struct_11: np.ndarray) -> dict[str, np.ndarray]:
    """Named landmarks ``[3]`` in the head frame, expression applied, pose not."""
    s = check_struct(struct_11)
    jaw, spread, rnd = _mouth_params(s)
    m = _mouth(identity, jaw, spread, rnd)
    mid = len(m.inner_upper) // 2
    eyes = {
        name: np.array([side * identity.eye_spacing, identity.eye_height, 0.0])
        for name, side in (("eye_left", -1.0), ("eye_right", 1.0))
    }
    for p in eyes.values():
        p[2] = float(surface_z(identity, p[0], p[1])) + _LIFT
    y_chin = -0.92 * identity.head_height
    chin = np.array([[0.0, y_chin, float(surface_z(identity, 0.0, y_chin))]])
    chin = rotate_jaw(chin, np.ones(1), jaw, _jaw_hinge(identity))[0]
    return {
        "nose_tip": nose(identity).vertices[1].copy(),
        **eyes,
        "mouth_left": m.inner_upper[0].copy(),
        "mouth_right": m.inner_upper[-1].copy(),
        "mouth_top": m.inner_upper[mid].copy(),
        "mouth_bottom": m.inner_lower[mid].copy(),
        "chin": chin,
        "head_centre": np.zeros(3),
    }


def mouth_points(identity: Identity, struct_11: np.ndarray) -> np.ndarray:
    """All lip contour points ``[K, 3]`` (head frame, expression applied)."""
    m = _mouth(identity, *_mouth_params(check_struct(struct_11)))
    return np.vstack([m.outer_upper, m.outer_lower, m.inner_upper, m.inner_lower])
