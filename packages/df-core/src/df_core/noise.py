"""Diffusion Forcing noise levels for training: one independent level per frame.

Diffusion Forcing (Chen et al. 2024) trains a causal denoiser with a noise level drawn per
frame, so at inference any frame may be cleaner than the next. DualForce draws a level for
every frame of both modalities (DESIGN.md, "Training"):

- video ``sigma_v_BT`` from a base distribution over [0, 1];
- structure ``sigma_s_BT`` over [0, sigma_s_max] (0.7 by default, so structure is cleaner on
  average and leads), with an optional tail probability that draws it from
  [sigma_s_max, 1] instead;
- optionally a clean-context prefix (the first frames at sigma 0, or at a small context level
  ``sigma_ctx``) that matches inference, where the past is clean;
- optionally monotone noise along time (``temporal="sorted"``: each clip's levels sorted so
  later frames are noisier) or a pyramid (``temporal="pyramid"``: a linear ramp in time around a
  random pivot frame, the rows a staggered sampler visits).

All functions are deterministic given a ``torch.Generator`` and draw on its device.
"""

from __future__ import annotations

import math

import torch

from df_core.checks import one_of, positive_float, positive_int, unit_float
from df_core.conventions import SIGMA_S_MAX
from df_core.schedules import shift_sigma

DISTRIBUTIONS = ("uniform", "logit_normal")
TEMPORAL = ("independent", "sorted", "pyramid")


def sample_base_sigmas(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Levels in [0, 1] from the base distribution.

    ``uniform`` is U(0, 1); ``logit_normal`` is sigmoid(N(loc, scale^2)) (SD3's training
    distribution, mean 0.5 for loc = 0).
    """
    one_of("distribution", distribution, DISTRIBUTIONS)
    positive_float("scale", scale)
    device = generator.device
    if distribution == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    normal = torch.randn(shape, generator=generator, device=device)
    return torch.sigmoid(loc + scale * normal)


def clean_prefix_lengths(
    batch: int, frames: int, *, generator: torch.Generator, prob: float
) -> torch.Tensor:
    """Per clip, how many leading frames are clean context: 0 with probability ``1 - prob``,
    otherwise uniform in [1, frames - 1] (at least one frame is always left to denoise).

    Returns:
        ``prefix_B``: int64, shape ``[batch]``.
    """
    positive_int("batch", batch)
    positive_int("frames", frames)
    unit_float("prob", prob)
    device = generator.device
    use = torch.rand(batch, generator=generator, device=device) < prob
    if frames < 2:
        return torch.zeros(batch, dtype=torch.long, device=device)
    length = torch.randint(1, frames, (batch,), generator=generator, device=device)
    return torch.where(use, length, torch.zeros_like(length))


def sample_frame_sigmas(
    batch: int,
    frames: int,
    *,
    generator: torch.Generator,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    shift: float = 1.0,
    sigma_max: float = 1.0,
    tail_prob: float = 0.0,
    temporal: str = "independent",
    pyramid_slope: float = 0.1,
    prefix_B: torch.Tensor | None = None,
    sigma_ctx: float = 0.0,
) -> torch.Tensor:
    """Per-frame noise levels for one modality.

    Args:
        batch, frames: ``B`` and ``T``.
        distribution, loc, scale: the base distribution (see :func:`sample_base_sigmas`).
        shift: the SD3/Wan shift applied to the base draw (1 = none).
        sigma_max: upper bound of the main range; levels are scaled into [0, sigma_max].
        tail_prob: per frame, the probability of drawing from [sigma_max, 1] instead
            (uniform), so the model also sees the levels above its usual range.
        temporal: ``independent`` (Diffusion Forcing), ``sorted`` (each clip's levels, tail
            included, sorted ascending in time) or ``pyramid`` (``range * clamp(base + slope *
            (t - pivot), 0, 1)`` with a random pivot frame per clip; the range is sigma_max, or
            1 for a whole clip drawn in the tail).
        pyramid_slope: change per frame of the unscaled ramp for ``pyramid``.
        prefix_B: ``[B]`` int, number of leading clean-context frames per clip (see
            :func:`clean_prefix_lengths`); share one draw between modalities.
        sigma_ctx: context frames get a level uniform in [0, sigma_ctx] instead of exactly 0
            (the inference-time context noise of CausVid / Self-Forcing / SkyReels-V2).

    Returns:
        ``sigma_BT``: float32, shape ``[B, T]``, in [0, 1].
    """
    positive_int("batch", batch)
    positive_int("frames", frames)
    unit_float("sigma_max", sigma_max)
    unit_float("tail_prob", tail_prob)
    unit_float("sigma_ctx", sigma_ctx)
    one_of("temporal", temporal, TEMPORAL)
    if not math.isfinite(pyramid_slope) or pyramid_slope < 0:
        raise ValueError(f"pyramid_slope must be a finite number >= 0, got {pyramid_slope!r}")
    device = generator.device
    B, T = batch, frames

    # Step 1: the main range, [0, sigma_max], and (per frame, or per clip for the pyramid,
    # whose ramp must stay a ramp) the tail above it.
    if temporal == "pyramid":
        base_B = sample_base_sigmas(
            (B,), generator=generator, distribution=distribution, loc=loc, scale=scale
        )
        pivot_B = torch.randint(0, T, (B,), generator=generator, device=device)
        t_T = torch.arange(T, device=device)
        ramp_BT = base_B[:, None] + pyramid_slope * (t_T[None, :] - pivot_B[:, None])
        in_tail_B = torch.rand((B,), generator=generator, device=device) < tail_prob
        range_B = torch.where(in_tail_B, 1.0, sigma_max)
        sigma_BT = shift_sigma(ramp_BT.clamp(0.0, 1.0), shift) * range_B[:, None]
    else:
        u_BT = sample_base_sigmas(
            (B, T), generator=generator, distribution=distribution, loc=loc, scale=scale
        )
        sigma_BT = shift_sigma(u_BT, shift) * sigma_max
        # Step 2: the tail above sigma_max, per frame.
        if tail_prob > 0.0:
            in_tail = torch.rand((B, T), generator=generator, device=device) < tail_prob
            u_tail = torch.rand((B, T), generator=generator, device=device)
            sigma_BT = torch.where(in_tail, sigma_max + (1.0 - sigma_max) * u_tail, sigma_BT)
        if temporal == "sorted":
            sigma_BT = sigma_BT.sort(dim=1).values

    # Step 3: the clean-context prefix.
    if prefix_B is not None:
        if prefix_B.shape != (B,):
            raise ValueError(f"prefix_B must have shape [{B}], got {tuple(prefix_B.shape)}")
        is_ctx_BT = torch.arange(T, device=device)[None, :] < prefix_B.to(device)[:, None]
        ctx = sigma_ctx * torch.rand((B, T), generator=generator, device=device)
        sigma_BT = torch.where(is_ctx_BT, ctx, sigma_BT)
    return sigma_BT.clamp(0.0, 1.0).float()


def sample_dual_sigmas(
    batch: int,
    frames: int,
    *,
    generator: torch.Generator,
    distribution: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    shift: float = 1.0,
    sigma_s_max: float = SIGMA_S_MAX,
    struct_tail_prob: float = 0.0,
    temporal: str = "independent",
    clean_prefix_prob: float = 0.0,
    sigma_ctx: float = 0.0,
    prefix_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and structure levels for one batch, sharing one clean-context prefix.

    Args:
        prefix_B: ``[B]`` clean-context lengths already drawn (:func:`clean_prefix_lengths`;
            a caller that must know which frames are context passes them); None draws them
            here with ``clean_prefix_prob``.

    Returns:
        ``(sigma_v_BT, sigma_s_BT)``, each float32 ``[B, T]``.
    """
    unit_float("sigma_s_max", sigma_s_max)
    unit_float("struct_tail_prob", struct_tail_prob)
    unit_float("clean_prefix_prob", clean_prefix_prob)
    if prefix_B is None:
        prefix_B = clean_prefix_lengths(batch, frames, generator=generator, prob=clean_prefix_prob)
    common = dict(
        generator=generator,
        distribution=distribution,
        loc=loc,
        scale=scale,
        shift=shift,
        temporal=temporal,
        prefix_B=prefix_B,
        sigma_ctx=sigma_ctx,
    )
    sigma_v_BT = sample_frame_sigmas(batch, frames, sigma_max=1.0, **common)
    sigma_s_BT = sample_frame_sigmas(
        batch, frames, sigma_max=sigma_s_max, tail_prob=struct_tail_prob, **common
    )
    return sigma_v_BT, sigma_s_BT
