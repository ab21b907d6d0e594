"""Rotary position embeddings over several axes: 3D (t, h, w) for video, (t, slot) for structure.

RoPE (Su et al. 2021) rotates channel pairs of queries and keys by ``position * freq``, so an
attention logit depends only on position *differences*. The head dimension is split between
axes (time first); each axis has its own frequencies ``theta^(-2i/d_axis)``. Pairs are
"rotate-half" pairs ``(x[i], x[i + Dh/2])``.

Time is handled so that a stream of any length gives the attention of the training forward:

- The reference sink is *time-less*: its temporal channels get ``cos = sin = 0``, so its
  logits do not depend on the query's frame. That is what lets one sink serve frame 0 and
  frame 100 000 alike, and lets the windowed training forward and the streaming forward agree
  exactly. Only its spatial channels carry position.
- Every other logit depends only on frame *differences*, which a sliding window bounds by
  ``W + chunk``. So temporal positions are absolute frame ids (:func:`frame_positions`): a
  streaming pass rotates only its own queries and keys, before writing the keys into the KV
  cache, and cached keys are never rotated again. Angles are computed in float64 from integer
  frame ids, so frame 10^6 is as accurate as frame 0 (tested in df-models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from df_core.checks import positive_float, positive_int
from df_core.masks import SINK_FRAME


def split_head_dim(head_dim: int, num_axes: int) -> tuple[int, ...]:
    """Channels per axis, each even, summing to ``head_dim``; time (axis 0) gets the rest.

    3 axes follow Wan: spatial axes ``2 * (Dh // 6)`` each; 2 axes split in half.
    """
    positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    if num_axes == 1:
        return (head_dim,)
    if num_axes == 2:
        other = 2 * (head_dim // 4)
        return (head_dim - other, other)
    if num_axes == 3:
        spatial = 2 * (head_dim // 6)
        return (head_dim - 2 * spatial, spatial, spatial)
    raise ValueError(f"num_axes must be 1, 2 or 3, got {num_axes}")


def axis_angles(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles ``positions[:, None] * theta^(-2i/dim)``: ``[L] -> [L, dim/2]`` (float64)."""
    positive_float("theta", theta)
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    inv_freq = theta ** (
        -torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
    )
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def rope_cos_sin(
    positions: Sequence[torch.Tensor],
    dims: Sequence[int],
    *,
    timeless: torch.Tensor | None = None,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines for a multi-axis RoPE.

    Args:
        positions: one ``[L]`` tensor per axis; axis 0 is time.
        dims: channels per axis (see :func:`split_head_dim`).
        timeless: optional bool ``[L]``: tokens whose temporal channels get ``cos = sin = 0``
            (the sink, see the module docstring).

    Returns:
        ``(cos_LD2, sin_LD2)``: ``[L, Dh/2]`` each, angles computed in float64 then cast.

    The tables are one opaque operator (``df_core::rope_cos_sin``) to ``torch.compile``: they
    are computed once per forward and read by every layer. Left to inductor, the float64
    cosines were fused into (recomputed by) every layer's rotation of the cached keys: 210 us
    per layer at 10,240 keys on the H100, a quarter of a streaming pass.
    """
    if len(positions) != len(dims):
        raise ValueError(f"got {len(positions)} position axes but {len(dims)} dims")
    for d in dims:
        if d % 2:
            raise ValueError(f"dims must be even, got {list(dims)}")
    positive_float("theta", theta)
    stacked = torch.stack([p.to(torch.long) for p in positions])
    return _rope_tables(stacked, list(dims), timeless, float(theta), dtype)


@torch.library.custom_op("df_core::rope_cos_sin", mutates_args=())
def _rope_tables(
    positions_AL: torch.Tensor,
    dims: list[int],
    timeless: torch.Tensor | None,
    theta: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.cat(
        [axis_angles(p, d, theta) for p, d in zip(positions_AL, dims, strict=True)], dim=1
    )
    cos, sin = angles.cos(), angles.sin()
    if timeless is not None:
        keep = torch.ones_like(cos)
        keep[:, : dims[0] // 2] = (~timeless).to(torch.float64)[:, None]
        cos, sin = cos * keep, sin * keep
    return cos.to(dtype), sin.to(dtype)


@_rope_tables.register_fake
def _(positions_AL, dims, timeless, theta, dtype):
    shape = (positions_AL.shape[1], sum(dims) // 2)
    empty = positions_AL.new_empty(shape, dtype=dtype)
    return empty, torch.empty_like(empty)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x`` ``[..., L, Dh]`` by ``cos``/``sin`` ``[L, Dh/2]`` (rotate-half pairs)."""
    half = x.shape[-1] // 2
    if cos.shape != (x.shape[-2], half):
        raise ValueError(f"cos has shape {tuple(cos.shape)}, expected {(x.shape[-2], half)}")
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def frame_positions(frames: torch.Tensor) -> torch.Tensor:
    """Temporal positions of tokens: their absolute frame ids, and 0 for the sink and empty
    cache slots (the sink is time-less; empty slots are masked out).

    Args:
        frames: int64 ``[L]`` frame ids (see :mod:`df_core.masks`).
    """
    return torch.where(frames >= 0, frames, torch.zeros_like(frames))


def is_sink(frames: torch.Tensor) -> torch.Tensor:
    """Bool ``[L]``: the tokens of the reference sink frame."""
    return frames == SINK_FRAME


def grid_positions(
    frames: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, h, w) positions of video tokens laid out frame-major, then row-major in a frame.

    Args:
        frames: int64 ``[L]`` frame id per token, ``L`` a multiple of ``height * width``.

    Returns:
        ``(t_L, h_L, w_L)``: the frame ids and the in-frame row and column.
    """
    positive_int("height", height)
    positive_int("width", width)
    n = height * width
    if frames.numel() % n:
        raise ValueError(f"frames has {frames.numel()} tokens, not a multiple of {height}x{width}")
    idx = torch.arange(frames.numel(), device=frames.device) % n
    return frames, idx // width, idx % width


def slot_positions(
    frames: torch.Tensor, tokens_per_frame: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, slot) positions of structure tokens laid out frame-major."""
    positive_int("tokens_per_frame", tokens_per_frame)
    if frames.numel() % tokens_per_frame:
        raise ValueError(
            f"frames has {frames.numel()} tokens, not a multiple of {tokens_per_frame}"
        )
    return frames, torch.arange(frames.numel(), device=frames.device) % tokens_per_frame
