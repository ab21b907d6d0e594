"""SynthTalk identities: the appearance and voice of one procedurally generated speaker.

An identity is fully determined by its seed. Train and test identities come from disjoint seed
ranges (``identity_seed``), so a held-out test speaker never appears in training.

Units: lengths are in head units, the head frame of ``face3d`` (the skull's half-width is about
1); colours are linear RGB in [0, 1]; pitch in Hz.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test")
_SPLIT_BASE = {"train": 0, "test": 1 << 31}  # disjoint seed ranges, one per split
_SPLIT_SPAN = 1 << 31

# (field, low, high) of every scalar appearance/voice parameter; the identity vector maps each
# to [0, 1] with these ranges.
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("head_width", 0.86, 1.02),  # skull half-width
    ("head_height", 1.16, 1.32),  # skull half-height
    ("head_depth", 0.95, 1.10),  # skull half-depth
    ("jaw_width", 0.55, 0.85),  # width at the chin relative to the cheeks
    ("hairline", 0.40, 0.80),  # height of the front hairline, fraction of head_height
    ("hair_back", -0.70, 0.05),  # lowest extent of the hair at the back, fraction of head_height
    ("hair_volume", 0.02, 0.14),  # outward thickness of the hair
    ("eye_spacing", 0.32, 0.40),  # half distance between the eye centres
    ("eye_height", 0.10, 0.20),  # eye centre height above the head centre
    ("eye_size", 0.15, 0.19),  # half-width of the eye opening
    ("brow_gap", 0.13, 0.20),  # brow height above the eye centre
    ("brow_thickness", 0.040, 0.075),
    ("nose_length", 0.22, 0.34),  # protrusion of the nose tip
    ("nose_width", 0.11, 0.17),  # half-width of the nostril wings
    ("mouth_width", 0.36, 0.46),  # half-width of the mouth at rest
    ("mouth_height", -0.50, -0.40),  # mouth line height (below the head centre)
    ("lip_thickness", 0.060, 0.095),
    ("f0_hz", 85.0, 235.0),  # mean voice pitch
    ("formant_scale", 0.88, 1.18),  # vocal tract length factor (higher: shorter tract)
    ("speech_rate", 3.6, 5.6),  # syllables per second
    ("prosody_semitones", 2.0, 6.0),  # size of the pitch accents
    ("motion_gain", 0.5, 1.5),  # how much the head moves with speech and drift
    ("blink_interval", 2.5, 5.0),  # mean seconds between blinks
)
_COLOURS = (
    "skin_rgb",
    "hair_rgb",
    "iris_rgb",
    "lip_rgb",
    "bg_top_rgb",
    "bg_bottom_rgb",
    "shirt_rgb",
)

_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.22, 0.15])
_HAIR = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.25, 0.15, 0.08],  # dark brown
        [0.45, 0.30, 0.16],  # brown
        [0.85, 0.70, 0.40],  # blond
        [0.60, 0.25, 0.10],  # red
        [0.70, 0.70, 0.70],  # grey
    ]
)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30], [0.50, 0.40, 0.20]])


@dataclass(frozen=True)
class Identity:
    """Appearance and voice of one speaker. Build with ``sample_identity``; see ``_RANGES``."""

    seed: int
    head_width: float
    head_height: float
    head_depth: float
    jaw_width: float
    hairline: float
    hair_back: float
    hair_volume: float
    eye_spacing: float
    eye_height: float
    eye_size: float
    brow_gap: float
    brow_thickness: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_height: float
    lip_thickness: float
    f0_hz: float
    formant_scale: float
    speech_rate: float
    prosody_semitones: float
    motion_gain: float
    blink_interval: float
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    bg_top_rgb: tuple[float, float, float]
    bg_bottom_rgb: tuple[float, float, float]
    shirt_rgb: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"Identity.seed must be >= 0, got {self.seed}")
        for name, lo, hi in _RANGES:
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"Identity.{name} must be in [{lo}, {hi}], got {value}")
        for name in _COLOURS:
            rgb = getattr(self, name)
            if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
                raise ValueError(f"Identity.{name} must be 3 values in [0, 1], got {rgb}")

    def vector(self) -> np.ndarray:
        """The identity embedding ground truth: float32 ``[IDENTITY_DIM]`` in [0, 1]
        (each scalar mapped through its range, then the RGB colours)."""
        scalars = [(getattr(self, name) - lo) / (hi - lo) for name, lo, hi in _RANGES]
        colours = [c for name in _COLOURS for c in getattr(self, name)]
        return np.asarray(scalars + colours, dtype=np.float32)

    def to_dict(self) -> dict:
        """JSON-ready parameters (for metadata.json)."""
        return dataclasses.asdict(self)


IDENTITY_DIM = len(_RANGES) + 3 * len(_COLOURS)  # Di


def identity_seed(split: str, index: int) -> int:
    """Seed of the ``index``-th identity of ``split``; train and test ranges are disjoint."""
    if split not in _SPLIT_BASE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < _SPLIT_SPAN:
        raise ValueError(f"index must be in [0, {_SPLIT_SPAN}), got {index}")
    return _SPLIT_BASE[split] + index


def identity_split(seed: int) -> str:
    """The split whose seed range holds ``seed`` (inverse of ``identity_seed``)."""
    if not 0 <= seed < 2 * _SPLIT_SPAN:
        raise ValueError(f"seed must be in [0, {2 * _SPLIT_SPAN}), got {seed}")
    return "train" if seed < _SPLIT_BASE["test"] else "test"


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in np.clip(values, 0.0, 1.0))
    return (r, g, b)


def sample_identity(seed: int) -> Identity:
    """A random identity, deterministic in ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED1D]))
    scalars = {name: float(rng.uniform(lo, hi)) for name, lo, hi in _RANGES}
    if rng.random() < 0.5:  # two voice registers rather than one uniform pitch range
        scalars["f0_hz"] = float(rng.uniform(85.0, 150.0))
    else:
        scalars["f0_hz"] = float(rng.uniform(165.0, 235.0))
        scalars["formant_scale"] = float(rng.uniform(1.03, 1.18))
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.uniform() + rng.normal(0, 0.02, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 0.03, 3)
    iris = _IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 0.03, 3)
    lip = 0.45 * skin + 0.55 * np.array([0.72, 0.24, 0.28]) + rng.normal(0, 0.02, 3)
    hue = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.3 * np.cos(hue + np.array([0.0, 2.1, 4.2]))
    bg_top = base * rng.uniform(0.6, 1.1)
    bg_bottom = base * rng.uniform(0.3, 0.7) + rng.normal(0, 0.05, 3)
    shirt = rng.uniform(0.1, 0.8, 3)
    return Identity(
        seed=int(seed),
        **scalars,
        skin_rgb=_rgb(skin),
        hair_rgb=_rgb(hair),
        iris_rgb=_rgb(iris),
        lip_rgb=_rgb(lip),
        bg_top_rgb=_rgb(bg_top),
        bg_bottom_rgb=_rgb(bg_bottom),
        shirt_rgb=_rgb(shirt),
    )
