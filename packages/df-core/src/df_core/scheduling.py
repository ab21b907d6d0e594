"""Scheduling matrices for autoregressive sampling (Diffusion Forcing, Chen et al. 2024, §3.3).

A scheduling matrix says, for every sampler iteration ``i`` and every frame ``t``, how far
along its K-step schedule that frame is. Frames are grouped into chunks of ``chunk_size``
frames; chunk ``c`` starts ``c * stagger`` iterations after chunk 0 and then advances one step
per iteration until it reaches step K (clean):

    step[i, t] = clamp(i - (t // chunk_size) * stagger, 0, K)

- ``stagger = K``: chunk-wise sampling, one chunk after another (frame-wise for chunk 1);
- ``stagger < K``: staggered ("pyramid") sampling, several chunks in flight at once, each
  noisier than the one before it, which only a model trained with independent per-frame noise
  can do;
- ``stagger = 0`` would denoise all frames together (full-sequence sampling) and is allowed for
  reference samplers.

Row 0 is the start (every frame at step 0); row ``i + 1`` is the state after iteration ``i``.
A frame is updated at iteration ``i`` exactly when ``step[i + 1, t] > step[i, t]``.
"""

from __future__ import annotations

import torch

from df_core.checks import non_negative_int, positive_int, unit_tensor


def scheduling_steps(
    num_frames: int,
    num_steps: int,
    *,
    chunk_size: int = 1,
    stagger: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Step index of every frame at every iteration.

    Args:
        num_frames: ``T``, frames to generate.
        num_steps: ``K``, denoising steps per frame.
        chunk_size: frames that share one noise level and are denoised together.
        stagger: iterations between the starts of consecutive chunks; ``None`` means ``K``.

    Returns:
        ``steps_IT``: int64 ``[I + 1, T]`` with ``I = (num_chunks - 1) * stagger + K``; values in
        [0, K], non-decreasing down each column, non-increasing along each row.
    """
    positive_int("num_frames", num_frames)
    positive_int("num_steps", num_steps)
    positive_int("chunk_size", chunk_size)
    stagger = num_steps if stagger is None else stagger
    non_negative_int("stagger", stagger)
    if stagger > num_steps:
        raise ValueError(
            f"stagger must be at most num_steps={num_steps} (a chunk may not start before the "
            f"previous one is clean plus idle iterations), got {stagger}"
        )
    num_chunks = -(-num_frames // chunk_size)
    iterations = (num_chunks - 1) * stagger + num_steps
    i_I = torch.arange(iterations + 1, device=device)
    chunk_T = torch.arange(num_frames, device=device) // chunk_size
    return (i_I[:, None] - chunk_T[None, :] * stagger).clamp(0, num_steps)


def scheduling_matrix(
    num_frames: int,
    sigmas_K1: torch.Tensor,
    *,
    chunk_size: int = 1,
    stagger: int | None = None,
) -> torch.Tensor:
    """Noise level of every frame at every iteration: ``sigmas_K1[steps_IT]``.

    Pass the video schedule for ``sigma_v`` and the structure schedule (same K) for
    ``sigma_s``: both matrices then share their iterations, and structure that finishes early
    stays at 0 while video continues.

    Args:
        sigmas_K1: ``[K + 1]`` levels from the start level down to 0 (see
            :func:`df_core.schedules.flow_sigmas`).

    Returns:
        ``sigma_IT``: ``[I + 1, T]`` in the dtype and device of ``sigmas_K1``.
    """
    if sigmas_K1.dim() != 1 or sigmas_K1.numel() < 2:
        raise ValueError(
            f"sigmas_K1 must be 1-D with at least 2 levels, got {tuple(sigmas_K1.shape)}"
        )
    unit_tensor("sigmas_K1", sigmas_K1)
    steps = scheduling_steps(
        num_frames,
        sigmas_K1.numel() - 1,
        chunk_size=chunk_size,
        stagger=stagger,
        device=sigmas_K1.device,
    )
    return sigmas_K1[steps]


def active_frames(steps_IT: torch.Tensor, iteration: int) -> torch.Tensor:
    """Bool ``[T]``: the frames that iteration ``iteration`` updates."""
    return steps_IT[iteration + 1] > steps_IT[iteration]


def finished_frames(steps_IT: torch.Tensor, iteration: int, num_steps: int) -> torch.Tensor:
    """Bool ``[T]``: the frames that become clean (reach step ``num_steps``) at iteration
    ``iteration``; their clean pass then writes them to the KV cache."""
    positive_int("num_steps", num_steps)
    return (steps_IT[iteration + 1] == num_steps) & (steps_IT[iteration] < num_steps)
