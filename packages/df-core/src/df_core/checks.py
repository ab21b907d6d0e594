"""Argument and config-field checks shared by every package: each user error is a
``ValueError`` naming the argument (or ``Owner.field``) and what was expected.

Config dataclasses validate in ``__post_init__`` with these, passing the qualified field name:
``positive_int("TrainConfig.steps", self.steps)``.
"""

from __future__ import annotations

import math

import torch


def positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def unit_float(name: str, value: float) -> float:
    """A noise level or probability: a finite float in [0, 1]."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def positive_float(name: str, value: float) -> float:
    bad_type = not isinstance(value, int | float) or isinstance(value, bool)
    if bad_type or not math.isfinite(value) or not value > 0.0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def non_negative_float(name: str, value: float) -> float:
    bad_type = not isinstance(value, int | float) or isinstance(value, bool)
    if bad_type or not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def float_at_least(name: str, value: float, low: float) -> float:
    """A finite number ``>= low``."""
    bad_type = not isinstance(value, int | float) or isinstance(value, bool)
    if bad_type or not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return float(value)


def boolean(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def unit_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """Checks that a tensor of noise levels lies in [0, 1].

    This reads the tensor on the host, so it is for setup code only, never the hot loop.
    """
    if value.numel() and not bool(((value >= 0) & (value <= 1)).all()):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{value.min().item()}, {value.max().item()}]"
        )
    return value
