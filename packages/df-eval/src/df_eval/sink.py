"""What the attention sink contributes (issue 14): how much attention the video stream pays to
the reference frame's sink tokens, and what the model generates when it cannot see them.

Both work on any :class:`~df_models.DualForceDiT` during streaming (``df_infer.sample_stream``)
or training forwards, eagerly, by wrapping the attention call of each video self-attention
layer. The sink is the first ``video_tokens`` keys of every such call: the sink frame leads the
training sequence and the KV cache alike (:mod:`df_core.kv_cache`).

- :func:`sink_attention` records, per layer, the softmax mass the current queries put on the
  sink keys, next to the share a uniform attention over the visible keys would give them
  (over the passes that attend: the key-only clean pass computes no attention in the last
  layer; stream with ``key_only_clean=False`` to count it there too).
- :func:`without_sink` masks the sink keys out of every video self-attention (the reference
  then reaches the video only through ``ref_concat``, if the model has it, and the bridge).

Both compute the attention in float32 with explicit logits: a diagnostic, not a fast path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

import df_models.attention as attention_module
from df_models import DualForceDiT


@dataclass
class SinkAttention:
    """Per video layer: the mean attention mass on the sink keys, and the mean share of the
    visible keys the sink tokens are (what uniform attention would give them)."""

    mass: dict[int, list[float]] = field(default_factory=dict)
    uniform: dict[int, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float | list[float]]:
        layers = sorted(self.mass)
        if not layers:
            raise RuntimeError("no video self-attention call was recorded")
        per_layer = [sum(self.mass[i]) / len(self.mass[i]) for i in layers]
        uniform = [sum(self.uniform[i]) / len(self.uniform[i]) for i in layers]
        return {
            "mass": sum(per_layer) / len(per_layer),
            "uniform": sum(uniform) / len(uniform),
            "mass_per_layer": per_layer,
            "uniform_per_layer": uniform,
        }


def _logits(q, k, mask, dense_mask, scale) -> torch.Tensor:
    """Attention logits ``[B, H, L, S]`` in float32, ``-inf`` where the frame mask hides a key."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if mask is not None:
        dense = dense_mask if dense_mask is not None else mask.dense()
        logits = logits.masked_fill(~dense.to(logits.device), float("-inf"))
    return logits


def _sees_more_than_the_sink(logits: torch.Tensor, sink: int) -> torch.Tensor:
    """``[B, H, L]``: the queries that see some key besides the sink's (not the sink frame's
    own queries, in the sink's prefill pass or the training sequence's first frame)."""
    return torch.isfinite(logits[..., sink:]).any(dim=-1)


@contextlib.contextmanager
def _video_attention(model: DualForceDiT, fn) -> Iterator[None]:
    """Within the block, ``fn(layer, q, k, v, mask, dense_mask, scale, original)`` replaces
    the attention call of every video self-attention layer of ``model`` (others unchanged)."""
    current: list[int | None] = [None]
    hooks = []
    for i, block in enumerate(model.blocks):
        attn = block.video.attn
        hooks.append(attn.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        hooks.append(attn.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    original = attention_module.attention

    def wrapped(q, k, v, mask=None, *, dense_mask=None, scale=None, **kwargs):
        if current[0] is None:
            return original(q, k, v, mask, dense_mask=dense_mask, scale=scale, **kwargs)
        return fn(current[0], q, k, v, mask, dense_mask, scale, original)

    attention_module.attention = wrapped
    try:
        yield
    finally:
        attention_module.attention = original
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def sink_attention(model: DualForceDiT) -> Iterator[SinkAttention]:
    """Records the video stream's attention mass on the sink tokens (outputs unchanged)."""
    record = SinkAttention()
    sink = model.config.video_tokens

    def fn(layer, q, k, v, mask, dense_mask, scale, original):
        logits = _logits(q, k, mask, dense_mask, scale)
        rows = _sees_more_than_the_sink(logits, sink)
        if rows.any():
            p = logits.softmax(dim=-1)
            visible = torch.isfinite(logits).sum(-1).float()
            sink_visible = torch.isfinite(logits[..., :sink]).sum(-1).float()
            record.mass.setdefault(layer, []).append(float(p[..., :sink].sum(-1)[rows].mean()))
            record.uniform.setdefault(layer, []).append(
                float((sink_visible / visible)[rows].mean())
            )
        return original(q, k, v, mask, dense_mask=dense_mask, scale=scale, backend="math")

    with _video_attention(model, fn):
        yield record


@contextlib.contextmanager
def without_sink(model: DualForceDiT) -> Iterator[None]:
    """The video stream's self-attention ignores the sink keys (the reference frame) while the
    block runs, for every query that sees any other key (the sink's own queries keep it)."""
    sink = model.config.video_tokens

    def fn(layer, q, k, v, mask, dense_mask, scale, original):
        logits = _logits(q, k, mask, dense_mask, scale)
        rows = _sees_more_than_the_sink(logits, sink)
        logits[..., :sink] = logits[..., :sink].masked_fill(rows[..., None], float("-inf"))
        p = logits.softmax(dim=-1)
        return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)

    with _video_attention(model, fn):
        yield
