"""The per-frame ground-truth structure vector of SynthTalk (``Ds = 11``).

Sign conventions hold at the frontal pose, as seen in the image:

====  ===========  ==================================================================
 idx  name         unit and meaning
====  ===========  ==================================================================
   0  yaw          radians; > 0 turns the face toward the image right (nose moves right)
   1  pitch        radians; > 0 tilts the face up (nose moves up)
   2  roll         radians; > 0 rotates the head counter-clockwise in the image
   3  tx           fraction of the image width; > 0 moves the head centre right
   4  ty           fraction of the image height; > 0 moves the head centre down
   5  scale        head size factor, 1 at rest (about 0.9 to 1.1)
   6  jaw          [0, 1]; 0 closed, 1 fully open (jaw rotation of ``JAW_MAX_RAD``)
   7  lip_spread   [0, 1]; 0 neutral, 1 fully spread (wide mouth, as in "ee")
   8  lip_round    [0, 1]; 0 neutral, 1 fully rounded and protruded (as in "oo")
   9  blink        [0, 1]; 0 eyes open, 1 eyelids closed
  10  brow         [0, 1]; 0 rest, 1 fully raised
====  ===========  ==================================================================

Rotations are about the head centre (origin of the head frame), applied yaw, then pitch, then
roll: ``R = Rz(roll) @ Rx(pitch) @ Ry(yaw)``.
"""

from __future__ import annotations

import numpy as np

STRUCT_NAMES: tuple[str, ...] = (
    "yaw",
    "pitch",
    "roll",
    "tx",
    "ty",
    "scale",
    "jaw",
    "lip_spread",
    "lip_round",
    "blink",
    "brow",
)
STRUCT_DIM = len(STRUCT_NAMES)  # Ds
STRUCT_UNITS: dict[str, str] = {
    "yaw": "rad, + face turns to image right",
    "pitch": "rad, + face tilts up",
    "roll": "rad, + counter-clockwise in the image",
    "tx": "image widths, + right",
    "ty": "image heights, + down",
    "scale": "factor, 1 at rest",
    "jaw": "[0, 1], 1 fully open",
    "lip_spread": "[0, 1], 1 fully spread",
    "lip_round": "[0, 1], 1 fully rounded",
    "blink": "[0, 1], 1 eyes closed",
    "brow": "[0, 1], 1 fully raised",
}
IDX = {name: i for i, name in enumerate(STRUCT_NAMES)}
JAW_MAX_RAD = 0.30  # jaw rotation at jaw = 1


def rest_struct() -> np.ndarray:
    """The neutral frontal structure: float32 ``[Ds]`` (zeros, scale 1)."""
    s = np.zeros(STRUCT_DIM, dtype=np.float32)
    s[IDX["scale"]] = 1.0
    return s


def make_struct(**values: float) -> np.ndarray:
    """``rest_struct()`` with the named entries replaced, e.g. ``make_struct(yaw=0.2, jaw=1)``."""
    s = rest_struct()
    for name, value in values.items():
        if name not in IDX:
            raise ValueError(f"unknown struct entry {name!r}; names are {STRUCT_NAMES}")
        s[IDX[name]] = value
    return s


def check_struct(struct: np.ndarray) -> np.ndarray:
    """Validates one frame's structure ``[Ds]`` and returns it as float64."""
    s = np.asarray(struct, dtype=np.float64)
    if s.shape != (STRUCT_DIM,):
        raise ValueError(f"struct must have shape ({STRUCT_DIM},), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"struct must be finite, got {s}")
    if s[IDX["scale"]] <= 0:
        raise ValueError(f"struct scale must be positive, got {s[IDX['scale']]}")
    return s
