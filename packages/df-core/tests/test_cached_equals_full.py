"""The central invariant: streaming through the KV cache equals the full training forward.

A small two-stream causal attention stack (a video stream on an ``h x w`` grid with 3D RoPE,
a structure stream with ``(t, slot)`` RoPE) is run (a) over the whole clip with the
(sliding-window) block-causal mask, as in training, and (b) chunk by chunk through the
:class:`KVCache`, as in streaming, with sink, eviction, window-relative RoPE and read-only
denoising passes between clean passes. Legend: B batch, L tokens, D width, Hd heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core import (
    KVCache,
    StreamSpec,
    apply_rope,
    attention,
    block_causal_mask,
    frame_positions,
    is_sink,
    rope_cos_sin,
    split_head_dim,
    token_frames,
)


@dataclass(frozen=True)
class Stream:
    name: str
    grid: tuple[int, ...]  # (h, w) for video, (slots,) for structure
    layers: int
    heads: int
    head_dim: int

    @property
    def tokens(self) -> int:
        return int(torch.tensor(self.grid).prod())

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


def make_weights(stream: Stream, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    D = stream.width

    def w(*shape):
        return torch.randn(*shape, generator=generator) / shape[0] ** 0.5

    return [
        {"qkv": w(D, 3 * D), "out": w(D, D), "up": w(D, 2 * D), "down": w(2 * D, D)}
        for _ in range(stream.layers)
    ]


def positions(stream: Stream, frames_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for tokens with these frame ids; in-frame coordinates come from the slot index."""
    n = stream.tokens
    j = torch.arange(frames_L.numel()) % n  # sinks are one frame of n tokens, so this holds
    axes = [frame_positions(frames_L)]
    if len(stream.grid) == 2:
        axes += [j // stream.grid[1], j % stream.grid[1]]
    else:
        axes += [j]
    dims = split_head_dim(stream.head_dim, len(axes))
    return rope_cos_sin(axes, dims, timeless=is_sink(frames_L))


def heads(x_BLD: torch.Tensor, h: int) -> torch.Tensor:
    B, L, D = x_BLD.shape
    return x_BLD.view(B, L, h, D // h).transpose(1, 2)


def layer(x_BLD, w, stream: Stream, q_frames, window, kv_source):
    """One pre-norm attention + MLP block. ``kv_source(k, v) -> (k_all, v_all, kv_frames)`` is
    the only difference between the full and the streaming forward. The pass's own queries and
    keys are rotated (absolute frame positions) before the keys reach the cache, so cached
    keys are never rotated again."""
    h = torch.nn.functional.layer_norm(x_BLD, (x_BLD.shape[-1],))
    q, k, v = (h @ w["qkv"]).chunk(3, dim=-1)
    q, k, v = heads(q, stream.heads), heads(k, stream.heads), heads(v, stream.heads)
    cos, sin = positions(stream, q_frames)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_all, v_all, kv_frames = kv_source(k, v)
    mask = block_causal_mask(q_frames, kv_frames, window=window)
    o = attention(q, k_all, v_all, mask, backend="dense")
    x_BLD = x_BLD + o.transpose(1, 2).flatten(2) @ w["out"]
    h = torch.nn.functional.layer_norm(x_BLD, (x_BLD.shape[-1],))
    return x_BLD + torch.nn.functional.gelu(h @ w["up"]) @ w["down"]


def full_forward(x_BLD, weights, stream: Stream, num_frames: int, window: int | None):
    frames = token_frames(num_frames, stream.tokens, sink_tokens=stream.tokens)
    for w in weights:
        x_BLD = layer(x_BLD, w, stream, frames, window, lambda k, v: (k, v, frames))
    return x_BLD


def stream_pass(cache: KVCache, streams, weights, x_by_stream, *, q_frames_C, window):
    """One pass of every stream: the sink (``q_frames_C is None``, written once) or the chunk
    that ``cache.begin_chunk`` claimed."""
    sink = q_frames_C is None
    out = {}
    for s in streams:
        x = x_by_stream[s.name]
        if sink:
            frames = token_frames(0, s.tokens, sink_tokens=s.tokens)
        else:
            frames = q_frames_C.repeat_interleave(s.tokens)
        for li, w in enumerate(weights[s.name]):

            def kv_source(k, v, s=s, li=li, frames=frames):
                if sink:
                    cache.write_sink(s.name, li, k, v)
                    return k, v, frames
                cache.write(s.name, li, k, v)
                return cache.view(s.name, li)

            x = layer(x, w, s, frames, window, kv_source)
        out[s.name] = x
    return out


@given(
    batch=st.integers(1, 2),
    num_frames=st.integers(1, 8),
    chunk=st.integers(1, 3),
    window=st.one_of(st.none(), st.integers(1, 9)),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 2)),
    slots=st.integers(1, 3),
    layers=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    heads_=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    noisy_passes=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_full_forward(
    batch, num_frames, chunk, window, grid, slots, layers, heads_, noisy_passes, seed
):
    g = torch.Generator().manual_seed(seed)
    video = Stream("video", grid, layers[0], heads_[0], 12)
    struct = Stream("struct", (slots,), layers[1], heads_[1], 8)
    streams = (video, struct)
    weights = {s.name: make_weights(s, g) for s in streams}
    tokens = {
        s.name: torch.randn(batch, (num_frames + 1) * s.tokens, s.width, generator=g)
        for s in streams
    }

    full = {
        s.name: full_forward(tokens[s.name], weights[s.name], s, num_frames, window)
        for s in streams
    }

    cache_window = window if window is not None else num_frames
    cache = KVCache(
        {
            s.name: StreamSpec(
                num_layers=s.layers,
                heads=s.heads,
                head_dim=s.head_dim,
                tokens_per_frame=s.tokens,
                sink_tokens=s.tokens,
            )
            for s in streams
        },
        batch=batch,
        window=cache_window,
        max_chunk=chunk,
    )
    # Step 1: the reference sink, written once.
    sink_in = {s.name: tokens[s.name][:, : s.tokens] for s in streams}
    sink_out = stream_pass(cache, streams, weights, sink_in, q_frames_C=None, window=window)
    for s in streams:
        torch.testing.assert_close(sink_out[s.name], full[s.name][:, : s.tokens], rtol=0, atol=1e-5)

    # Step 2: the frames, chunk by chunk; noisy read-only passes before each clean pass.
    for start in range(0, num_frames, chunk):
        c = min(chunk, num_frames - start)
        for _ in range(noisy_passes):
            q_frames_C = cache.begin_chunk(c)
            noise = {
                s.name: torch.randn(batch, c * s.tokens, s.width, generator=g) for s in streams
            }
            stream_pass(cache, streams, weights, noise, q_frames_C=q_frames_C, window=window)
        q_frames_C = cache.begin_chunk(c)
        chunk_in = {
            s.name: tokens[s.name][:, (1 + start) * s.tokens : (1 + start + c) * s.tokens]
            for s in streams
        }
        out = stream_pass(cache, streams, weights, chunk_in, q_frames_C=q_frames_C, window=window)
        cache.commit(c)
        for s in streams:
            expected = full[s.name][:, (1 + start) * s.tokens : (1 + start + c) * s.tokens]
            err = (out[s.name] - expected).abs().max().item()
            assert err <= 1e-5, f"{s.name} frames {start}..{start + c - 1}: max abs error {err}"
    assert cache.frames_committed == num_frames
