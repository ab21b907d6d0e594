"""Rectified-flow (flow matching) algebra with per-frame noise levels.

One convention everywhere (DESIGN.md):

    x_sigma = (1 - sigma) * x0 + sigma * eps          (noising)
    v       = eps - x0                                  (the network's target)
    x0_hat  = x_sigma - sigma * v_hat                   (clean estimate)
    x_next  = x + (sigma_next - sigma) * v_hat          (Euler step, Liu et al. 2022)

Noise levels are per frame: ``sigma_BT`` broadcasts over every dimension after ``T``, so the
same functions serve video latents ``[B, T, C, H, W]`` and structure ``[B, T, Ds]``. The
samplers (df-infer) call a denoiser for ``v_hat`` and step with :func:`euler_update`.
"""

from __future__ import annotations

import torch


def expand_sigma(sigma_BT: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Views ``sigma_BT`` ``[B, T]`` as ``[B, T, 1, ...]`` to broadcast against ``x`` ``[B, T, ...]``."""
    if x.shape[:2] != sigma_BT.shape:
        raise ValueError(
            f"sigma_BT has shape {tuple(sigma_BT.shape)} but x has leading dims {tuple(x.shape[:2])}"
        )
    return sigma_BT.reshape(*sigma_BT.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma_BT: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) * x0 + sigma * eps``; ``x0``, ``eps`` ``[B, T, ...]``."""
    s = expand_sigma(sigma_BT, x0)
    return (1.0 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ``v = eps - x0`` (independent of sigma)."""
    return eps - x0


def x0_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma_BT: torch.Tensor) -> torch.Tensor:
    """Clean estimate ``x0 = x_sigma - sigma * v``; exact when ``v`` is the true velocity."""
    return x - expand_sigma(sigma_BT, x) * v


def eps_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma_BT: torch.Tensor) -> torch.Tensor:
    """Noise estimate ``eps = x_sigma + (1 - sigma) * v``."""
    return x + (1.0 - expand_sigma(sigma_BT, x)) * v


def euler_update(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow ODE (Liu et al. 2022): ``x + (sigma_next - sigma) * v``.

    ``sigma`` and ``sigma_next`` broadcast against ``x`` (a 0-d level shared by a chunk, or
    :func:`expand_sigma` of per-frame levels); ``v`` is the velocity predicted at ``(x,
    sigma)``. With the true velocity the step is exact: flow paths are straight.
    """
    return x + (sigma_next - sigma) * v


def frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per frame: ``[B, T, ...]`` -> ``[B, T]`` (mean over tokens/channels)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 2:
        raise ValueError(f"pred must be [B, T, ...], got {tuple(pred.shape)}")
    err = (pred.float() - target.float()).pow(2)
    return err if err.dim() == 2 else err.flatten(2).mean(dim=2)


def reduce_frame_loss(
    loss_BT: torch.Tensor,
    weight_BT: torch.Tensor | None = None,
    valid_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean of per-frame losses over the frames that count.

    Args:
        loss_BT: ``[B, T]`` per-frame losses.
        weight_BT: optional ``[B, T]`` non-negative weights (e.g. a per-sigma loss weight).
        valid_BT: optional ``[B, T]`` bool; frames outside it (clean context, padding) do not
            contribute. If no frame counts the result is 0, not NaN.

    Returns:
        A scalar, at least float32: ``sum(w * loss) / sum(w)`` over valid frames.
    """
    dtype = torch.promote_types(loss_BT.dtype, torch.float32)  # float16 sums lose small weights
    loss = loss_BT.to(dtype)
    w = torch.ones_like(loss) if weight_BT is None else weight_BT.to(dtype)
    if w.shape != loss.shape:
        raise ValueError(f"weight_BT {tuple(w.shape)} must match loss_BT {tuple(loss.shape)}")
    if valid_BT is not None:
        if valid_BT.shape != loss.shape:
            raise ValueError(
                f"valid_BT {tuple(valid_BT.shape)} must match loss_BT {tuple(loss.shape)}"
            )
        # Select rather than multiply: an excluded frame's inf weight or NaN loss must not leak.
        w = torch.where(valid_BT, w, torch.zeros_like(w))
        loss = torch.where(valid_BT, loss, torch.zeros_like(loss))
    total = w.sum()
    return (w * loss).sum() / torch.where(total > 0, total, torch.ones_like(total))
