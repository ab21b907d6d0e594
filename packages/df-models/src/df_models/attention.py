"""Attention modules of the DualForce DiT and the per-forward "sites" that feed them.

An :class:`AttnSite` says, for one kind of attention in one forward (video self-attention,
the bridge into the struct stream, ...), where keys and values come from and which mask,
RoPE tables and attention layout apply. The training forward builds sites over the whole clip;
the streaming forward builds them over a chunk and the KV cache. The modules themselves are
identical in both, which is why the two forwards agree.

Legend: B batch, F frames in this pass, N tokens per frame, L = F*N tokens, D width,
Hd heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from df_core import KVCache, apply_rope, attention, resolve_backend
from df_core.masks import FrameMask


@dataclass(kw_only=True, slots=True)
class AttnSite:
    """Context of one kind of attention for one forward (mutable: the masks' kernel forms are
    built on first use).

    Attributes:
        mask: frame mask over (query tokens, key tokens); None attends to every key.
        block_mask: FlexAttention form of ``mask``, built on first use and then shared by
            every layer of the forward.
        dense_mask: the dense boolean form, likewise (for the dense backends).
        rope: ``(cos, sin)`` tables of this pass's own tokens (self-attention: the queries and
            the keys they contribute); None for no RoPE. Keys are rotated *before* they go into
            the KV cache, at their absolute frame positions, so keys read back from the cache
            are never rotated again (see :mod:`df_core.rope`).
        per_frame: same-frame attention done as a batch of per-frame attentions (queries of
            frame f against the keys of frame f only), which needs no mask.
        kv_tokens: tokens per frame of the key stream (for ``per_frame``).
        cache, cache_stream: keys/values go through this KV cache stream (streaming).
        sink_pass: this pass is the sink prefill: keys/values are the sink's.
        backend: the df-core attention backend.
    """

    mask: FrameMask | None = None
    block_mask: BlockMask | None = None
    dense_mask: torch.Tensor | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    per_frame: bool = False
    kv_tokens: int = 0
    cache: KVCache | None = None
    cache_stream: str = ""
    sink_pass: bool = False
    backend: str = "auto"

    def block_mask_for(self, q: torch.Tensor) -> BlockMask | None:
        """The BlockMask when FlexAttention will run for queries like ``q``, else None."""
        if self.mask is None:
            return None
        if resolve_backend(self.backend, self.mask, q.device, q.shape[-1]) != "flex":
            return None
        if self.block_mask is None:
            self.block_mask = self.mask.block_mask()
        return self.block_mask

    def dense_mask_for(self, q: torch.Tensor) -> torch.Tensor | None:
        """The dense mask when a dense backend will run for queries like ``q``, else None."""
        if self.mask is None:
            return None
        if resolve_backend(self.backend, self.mask, q.device, q.shape[-1]) == "flex":
            return None
        if self.dense_mask is None:
            self.dense_mask = self.mask.dense()
        return self.dense_mask

    def keys_values(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``[B, Hd, S, Dh]`` to attend to, given this pass's own ``k``, ``v``."""
        if self.cache is None:
            return k, v
        if self.sink_pass:
            self.cache.write_sink(self.cache_stream, layer, k, v)
            return k, v
        self.cache.write(self.cache_stream, layer, k, v)
        k_all, v_all, _ = self.cache.view(self.cache_stream, layer)
        return k_all, v_all

    def write_keys_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes this pass's own ``k``, ``v`` into the cache and reads nothing back (a pass
        that needs only this layer's keys/values)."""
        if self.cache is None:
            raise ValueError("only a streaming pass writes keys/values: this site has no cache")
        if self.sink_pass:
            self.cache.write_sink(self.cache_stream, layer, k, v)
        else:
            self.cache.write(self.cache_stream, layer, k, v)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learned scale (for per-head q/k norm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    """Multi-head attention from a query stream (width ``q_dim``) to a key/value stream (width
    ``kv_dim``); self-attention when both are the same tokens."""

    def __init__(self, q_dim: int, kv_dim: int, heads: int, *, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = q_dim // heads
        inner = heads * self.head_dim
        self.q = nn.Linear(q_dim, inner)
        self.kv = nn.Linear(kv_dim, 2 * inner)
        self.out = nn.Linear(inner, q_dim)
        self.q_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()

    def _keys_values(self, xkv_BSD: torch.Tensor, site: AttnSite) -> tuple[torch.Tensor, ...]:
        k, v = rearrange(self.kv(xkv_BSD), "b s (two h d) -> two b h s d", two=2, h=self.heads)
        k = self.k_norm(k)
        return (apply_rope(k, *site.rope) if site.rope is not None else k), v

    def write_kv(self, xkv_BSD: torch.Tensor, site: AttnSite, layer: int) -> None:
        """Only the keys/values of ``xkv_BSD``, written into the site's cache (the last
        layer of a clean pass, whose attention output nobody reads)."""
        site.write_keys_values(layer, *self._keys_values(xkv_BSD, site))

    def forward(
        self, xq_BLD: torch.Tensor, xkv_BSD: torch.Tensor, site: AttnSite, layer: int
    ) -> torch.Tensor:
        q = self.q_norm(rearrange(self.q(xq_BLD), "b l (h d) -> b h l d", h=self.heads))
        if site.rope is not None:
            q = apply_rope(q, *site.rope)
        k, v = site.keys_values(layer, *self._keys_values(xkv_BSD, site))
        if site.per_frame:
            frames = k.shape[2] // site.kv_tokens
            q = rearrange(q, "b h (f n) d -> (b f) h n d", f=frames)
            k, v = (rearrange(t, "b h (f n) d -> (b f) h n d", f=frames) for t in (k, v))
            o = attention(q, k, v, None, backend=site.backend)
            o = rearrange(o, "(b f) h n d -> b (f n) (h d)", f=frames)
        else:
            o = attention(
                q,
                k,
                v,
                site.mask,
                block_mask=site.block_mask_for(q),
                dense_mask=site.dense_mask_for(q),
                backend=site.backend,
            )
            o = rearrange(o, "b h l d -> b l (h d)")
        return self.out(o)

    def init_weights(self, *, zero_out: bool = False) -> None:
        for layer in (self.q, self.kv, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if zero_out:
            nn.init.zeros_(self.out.weight)
        for norm in (self.q_norm, self.k_norm):
            if isinstance(norm, RMSNorm):
                norm.init_weights()
