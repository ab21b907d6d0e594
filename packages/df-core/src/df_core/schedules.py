"""Sampling schedules for rectified flow: the noise levels a sampler visits.

Convention (DESIGN.md): ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with sigma in [0, 1];
sigma = 1 is pure noise, sigma = 0 is data.

The timestep shift of SD3 (Esser et al. 2024, eq. 23) and Wan maps a level ``s`` to

    shift(s) = a * s / (1 + (a - 1) * s),

which spends more of the K steps at high noise for ``a > 1``. ``a = 1`` is the identity.
"""

from __future__ import annotations

import torch

from df_core.checks import non_negative_int, positive_float, positive_int, unit_float
from df_core.conventions import SIGMA_S_MAX


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Applies the SD3/Wan timestep shift ``a*s / (1 + (a-1)*s)`` elementwise (any shape)."""
    positive_float("shift", shift)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def unshift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of :func:`shift_sigma`: ``s / (a - (a-1)*s)``."""
    positive_float("shift", shift)
    return sigma / (shift - (shift - 1.0) * sigma)


def flow_sigmas(
    num_steps: int,
    *,
    sigma_start: float = 1.0,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The K + 1 noise levels of a K-step sampler, from ``sigma_start`` down to exactly 0.

    Steps are uniform in the unshifted variable and then shifted, so a schedule that starts
    below 1 is the tail of the full shifted curve and its first level is exactly
    ``sigma_start``.

    Returns:
        ``sigmas_K1``: shape ``[num_steps + 1]``, strictly decreasing when ``sigma_start > 0``.
    """
    positive_int("num_steps", num_steps)
    unit_float("sigma_start", sigma_start)
    positive_float("shift", shift)
    # Work in float64 so the endpoints are exact after the round trip through the shift.
    start = unshift_sigma(torch.tensor(sigma_start, dtype=torch.float64), shift)
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64) * start
    sigmas = shift_sigma(u, shift)
    sigmas[0] = sigma_start
    sigmas[-1] = 0.0
    return sigmas.to(device=device, dtype=dtype)


def struct_sigmas(
    num_steps: int,
    *,
    sigma_start: float = SIGMA_S_MAX,
    shift: float = 1.0,
    finish_step: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The structure stream's K + 1 levels: starts at ``sigma_start`` (= ``sigma_s_max``).

    Structure was trained only up to ``sigma_s_max`` (DESIGN.md, correction 3), so sampling it
    from 1.0 would leave the training range. With ``finish_step = k < K`` the structure reaches
    0 after step k and stays clean ("structure first"), so later video steps see a clean
    structure to follow.

    Returns:
        ``sigmas_K1``: shape ``[num_steps + 1]``, non-increasing, first ``sigma_start``, last 0.
    """
    positive_int("num_steps", num_steps)
    finish = num_steps if finish_step is None else finish_step
    non_negative_int("finish_step", finish)
    if not 1 <= finish <= num_steps:
        raise ValueError(f"finish_step must be in [1, num_steps={num_steps}], got {finish_step!r}")
    head = flow_sigmas(finish, sigma_start=sigma_start, shift=shift, dtype=torch.float64)
    tail = torch.zeros(num_steps - finish, dtype=torch.float64)
    return torch.cat([head, tail]).to(device=device, dtype=dtype)
