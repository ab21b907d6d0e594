"""Checks of the DualForce DiT's inputs, each a ``ValueError`` naming the argument and the
shape it must have. They read shapes and host counters only (no device sync), and run eagerly,
outside the compiled pass.

Legend: B batch, T latent frames, C latent channels, H W latent size, Ds structure dim, La audio
window, Da audio feature dim.
"""

from __future__ import annotations

import torch

from df_core import KVCache
from df_models.config import DualForceConfig


def check_frames(
    config: DualForceConfig,
    z_BTCHW: torch.Tensor,
    s_BTDs: torch.Tensor | None,
    sigma_v_BT: torch.Tensor,
    sigma_s_BT: torch.Tensor | None,
    audio_BTLDa: torch.Tensor,
) -> None:
    """The per-frame inputs of a training clip or a streamed chunk agree with the config and
    with each other (batch B and frames T from ``sigma_v_BT``)."""
    c = config
    if sigma_v_BT.dim() != 2:
        raise ValueError(f"sigma_v_BT must be [B, T], got {tuple(sigma_v_BT.shape)}")
    B, T = sigma_v_BT.shape
    expected = (B, T, c.latent_channels, c.latent_height, c.latent_width)
    if tuple(z_BTCHW.shape) != expected:
        raise ValueError(f"z_BTCHW must have shape {expected}, got {tuple(z_BTCHW.shape)}")
    if c.struct_enabled:
        if s_BTDs is None or tuple(s_BTDs.shape) != (B, T, c.struct_raw_dim):
            got = None if s_BTDs is None else tuple(s_BTDs.shape)
            raise ValueError(f"s_BTDs must have shape {(B, T, c.struct_raw_dim)}, got {got}")
        if sigma_s_BT is None or sigma_s_BT.shape != (B, T):
            got = None if sigma_s_BT is None else tuple(sigma_s_BT.shape)
            raise ValueError(f"sigma_s_BT must have shape {(B, T)}, got {got}")
    if (
        tuple(audio_BTLDa.shape[:3]) != (B, T, c.audio_window)
        or audio_BTLDa.shape[-1] != c.audio_dim
    ):
        raise ValueError(
            f"audio_BTLDa must hold {T} windows of {c.audio_window} feature frames "
            f"[B={B}, T={T}, La={c.audio_window}, ..., Da={c.audio_dim}], "
            f"got {tuple(audio_BTLDa.shape)}"
        )


def check_drop(name: str, drop_B: torch.Tensor, batch: int) -> None:
    """A CFG dropout flag per sample: bool ``[B]``."""
    if drop_B.dtype != torch.bool or tuple(drop_B.shape) != (batch,):
        raise ValueError(
            f"{name} must be a bool tensor of shape [{batch}], got {drop_B.dtype} {tuple(drop_B.shape)}"
        )


def check_stream_fits(config: DualForceConfig, cache: KVCache, num_frames: int) -> None:
    """A model without a sliding window (``config.window=None``) trained on every past frame:
    its cache's window is a capacity, and a pass whose queries would lose sight of a frame
    (frames committed + the chunk > window) would differ from the training forward, so it is
    refused before it claims a slot.

    A query of frame ``t`` sees frames ``t - window + 1 .. t``, and the ring holds
    ``window - 1 + max_chunk >= window`` frames, so up to ``window`` frames nothing is hidden
    or overwritten.
    """
    if config.window is not None:
        return
    end = cache.frames_committed + num_frames
    if end > cache.window:
        raise ValueError(
            f"this pass would stream frame {end - 1} through a cache of window={cache.window} "
            "frames, but the model has DualForceConfig.window=None (trained on every past "
            "frame): it would no longer see frame 0 and would differ from its training forward; "
            f"make the cache's window at least the stream's length (new_cache(window=...)), or "
            "use a model trained with a sliding window"
        )
