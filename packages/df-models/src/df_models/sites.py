"""Where each attention of one DualForce forward reads from: the :class:`AttentionSites` built
from token frame ids, the RoPE tables of each stream, and the KV-cache streams of a model.

The training forward and the streaming forward differ only in what they pass here: the whole
clip's token frame ids and no cache, or a chunk's query frame ids against the cache's slot frame
ids. The blocks themselves are the same, which is why the two forwards agree (DESIGN.md, "The
model").

RoPE positions are absolute frame ids (0 for the time-less sink), in training and in streaming
alike: keys are rotated once, when a pass writes them into the KV cache, and logits depend only
on frame differences (:mod:`df_core.rope`).

Legend: L tokens of one stream in this pass (frame-major), S key tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from df_core import (
    KVCache,
    StreamSpec,
    block_causal_mask,
    bridge_mask,
    frame_positions,
    is_sink,
    rope_cos_sin,
    split_head_dim,
)
from df_core.masks import FrameMask
from df_models.attention import AttnSite
from df_models.config import DualForceConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class AttentionSites:
    """The attention sites of one forward (see :class:`~df_models.attention.AttnSite`), shared
    by every block; the struct and bridge sites are None where the config has no such
    attention."""

    video_self: AttnSite
    struct_self: AttnSite | None
    bridge_to_video: AttnSite | None
    bridge_to_struct: AttnSite | None
    audio: AttnSite
    ref: AttnSite


def video_rope(
    config: DualForceConfig, frames_L: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE tables ``(cos, sin)`` of video tokens with frame ids ``frames_L`` ``[L]``:
    (frame, row, column) axes."""
    c = config
    h, w = c.grid
    j = torch.arange(frames_L.numel(), device=frames_L.device) % (h * w)
    axes = [frame_positions(frames_L), j // w, j % w]
    dims = split_head_dim(c.video_dim // c.video_heads, 3)
    return rope_cos_sin(axes, dims, timeless=is_sink(frames_L), theta=c.rope_theta)


def struct_rope(
    config: DualForceConfig, frames_L: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE tables ``(cos, sin)`` of structure tokens with frame ids ``frames_L`` ``[L]``:
    (frame, slot) axes."""
    c = config
    j = torch.arange(frames_L.numel(), device=frames_L.device) % c.struct_tokens
    axes = [frame_positions(frames_L), j]
    dims = split_head_dim(c.struct_dim // c.struct_heads, 2)
    return rope_cos_sin(axes, dims, timeless=is_sink(frames_L), theta=c.rope_theta)


def build_sites(
    config: DualForceConfig,
    *,
    backend: str,
    video_q_L: torch.Tensor,
    video_kv_S: torch.Tensor,
    struct_q_L: torch.Tensor,
    struct_kv_S: torch.Tensor,
    cache: KVCache | None,
    sink_pass: bool,
    window: int | None,
    all_visible: bool = False,
) -> AttentionSites:
    """The sites of one forward, from the frame ids of each stream's query tokens
    (``video_q_L``, ``struct_q_L``) and key tokens (``video_kv_S``, ``struct_kv_S``).

    ``cache``: keys/values go through it (streaming), None for the training forward.
    ``sink_pass``: the pass that writes the reference sink. With ``all_visible`` (or for the
    sink pass) every query sees every key, so no masks are built.
    """
    c = config
    unmasked = sink_pass or all_visible

    def site(mask: FrameMask | None, **kw) -> AttnSite:
        return AttnSite(mask=mask, backend=backend, **kw)

    def cached(mask: FrameMask | None, stream: str, **kw) -> AttnSite:
        return site(mask, cache=cache, sink_pass=sink_pass, cache_stream=stream, **kw)

    # Video frames (and the sink, which has as many tokens) span whole attention blocks at the
    # usual sizes: the mask's block table is then exact (df_core.masks). Masks are built only
    # where they are used (``unmasked`` drops them).
    video_self = cached(
        None
        if unmasked
        else block_causal_mask(video_q_L, video_kv_S, window=window, granule=c.video_tokens),
        "video",
        rope=video_rope(c, video_q_L),
    )
    struct_self = to_video = to_struct = None
    if c.struct_enabled:
        struct_self = cached(
            None if unmasked else block_causal_mask(struct_q_L, struct_kv_S, window=window),
            "struct",
            rope=struct_rope(c, struct_q_L),
        )
        same_frame = c.bridge_temporal == "same_frame"

        def bridge(q_L, kv_S, kv_tokens: int, stream: str) -> AttnSite:
            if same_frame:
                return site(None, per_frame=True, kv_tokens=kv_tokens)
            mask = None if unmasked else bridge_mask(q_L, kv_S, temporal="causal", window=window)
            return cached(mask, stream)

        if c.bridge_to_video:
            to_video = bridge(video_q_L, struct_kv_S, c.struct_tokens, "bridge_to_video")
        if c.bridge_to_struct:
            to_struct = bridge(struct_q_L, video_kv_S, c.video_tokens, "bridge_to_struct")
    return AttentionSites(
        video_self=video_self,
        struct_self=struct_self,
        bridge_to_video=to_video,
        bridge_to_struct=to_struct,
        audio=site(None, per_frame=True, kv_tokens=c.audio_window),
        ref=site(None),
    )


def struct_layers(config: DualForceConfig) -> int:
    """Blocks with a struct-stream part (the struct head reads the last of them)."""
    return min(config.struct_depth, config.video_depth)


def cache_streams(config: DualForceConfig) -> dict[str, StreamSpec]:
    """The KV-cache streams of a model: video and struct self-attention, and the causal bridge's
    keys in the shallow blocks (the same-frame bridge attends within the pass and caches
    nothing)."""
    c = config
    vh, sh = c.video_dim // c.video_heads, c.struct_dim // c.struct_heads
    specs = {"video": _spec(c.video_depth, c.video_heads, vh, c.video_tokens)}
    if c.struct_enabled:
        specs["struct"] = _spec(struct_layers(c), c.struct_heads, sh, c.struct_tokens)
        if c.bridge_temporal == "causal" and c.n_fusion > 0:
            if c.bridge_to_video:
                specs["bridge_to_video"] = _spec(c.n_fusion, c.video_heads, vh, c.struct_tokens)
            if c.bridge_to_struct:
                specs["bridge_to_struct"] = _spec(c.n_fusion, c.struct_heads, sh, c.video_tokens)
    return specs


def _spec(layers: int, heads: int, head_dim: int, tokens: int) -> StreamSpec:
    # Every stream's sink is one frame of its own tokens (the reference frame).
    return StreamSpec(
        num_layers=layers,
        heads=heads,
        head_dim=head_dim,
        tokens_per_frame=tokens,
        sink_tokens=tokens,
    )
