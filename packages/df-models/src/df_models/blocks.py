"""One DualForce block: a video-stream block and (while the struct stream lasts) a
struct-stream block, exchanging information through the gated bridge in shallow blocks.

Per stream and block (DESIGN.md, "The model"):

1. AdaLN-Zero modulation per frame from that frame's own noise embedding;
2. causal self-attention (block-causal, sink, window, RoPE);
3. shallow blocks: the bridge (gated cross-attention to the other stream, ``tanh(alpha)``
   with ``alpha = 0`` at init so a fresh bridge is closed), audio cross-attention, reference
   cross-attention;
4. feed-forward.

Legend: B batch, F frames in this pass, N tokens per frame, D width.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from df_models.attention import Attention, AttnSite
from df_models.config import DualForceConfig
from df_models.layers import modulate
from df_models.sites import AttentionSites


class FeedForward(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x), approximate="tanh"))

    def init_weights(self) -> None:
        for layer in (self.up, self.down):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class StreamBlock(nn.Module):
    """One block of one stream. ``other_dim`` adds the bridge from the other stream, of that
    width; ``audio_token_dim`` / ``ref_token_dim`` add cross-attention to audio / reference
    tokens of that width (the model projects both to the video width, whatever the raw
    feature dims ``DualForceConfig.audio_dim`` / ``ref_feature_dim``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float,
        eps: float,
        qk_norm: bool,
        other_dim: int | None = None,
        audio_token_dim: int | None = None,
        ref_token_dim: int | None = None,
    ) -> None:
        super().__init__()
        kw = dict(qk_norm=qk_norm, eps=eps)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.attn = Attention(dim, dim, heads, **kw)
        self.modulation = nn.Linear(dim, 6 * dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.bridge = self.bridge_norm = self.bridge_alpha = None
        if other_dim is not None:
            self.bridge_norm = nn.LayerNorm(dim, eps=eps)
            self.bridge = Attention(dim, other_dim, heads, **kw)
            self.bridge_alpha = nn.Parameter(torch.zeros(1))
        self.audio = self.audio_norm = None
        if audio_token_dim is not None:
            self.audio_norm = nn.LayerNorm(dim, eps=eps)
            self.audio = Attention(dim, audio_token_dim, heads, **kw)
        self.ref = self.ref_norm = None
        if ref_token_dim is not None:
            self.ref_norm = nn.LayerNorm(dim, eps=eps)
            self.ref = Attention(dim, ref_token_dim, heads, **kw)

    def modulations(self, c_BFD: torch.Tensor) -> torch.Tensor:
        """shift/scale/gate for attention and MLP side by side, ``[B, F, 6D]`` (a function of
        the frames' noise levels only: :meth:`DualForceDiT.modulations` computes it once per
        level for a whole stream)."""
        return self.modulation(nn.functional.silu(c_BFD))

    def _attn_input(self, x_BFND, mods) -> torch.Tensor:
        shift, scale = mods[:2]
        return rearrange(modulate(self.norm1(x_BFND), shift, scale), "b f n d -> b (f n) d")

    def self_attention(self, x_BFND, mods, site: AttnSite, layer: int) -> torch.Tensor:
        """``mods``: the 6 chunks of :meth:`modulations`."""
        h = self._attn_input(x_BFND, mods)
        out = rearrange(self.attn(h, h, site, layer), "b (f n) d -> b f n d", n=x_BFND.shape[2])
        return x_BFND + mods[2][:, :, None] * out

    def write_self_kv(self, x_BFND, mods, site: AttnSite, layer: int) -> None:
        """Only this block's self-attention keys/values, into the cache."""
        self.attn.write_kv(self._attn_input(x_BFND, mods), site, layer)

    def bridge_update(self, x_BFND, other_BFND, site: AttnSite, layer: int) -> torch.Tensor:
        q = rearrange(self.bridge_norm(x_BFND), "b f n d -> b (f n) d")
        kv = rearrange(other_BFND, "b f n d -> b (f n) d")
        out = rearrange(self.bridge(q, kv, site, layer), "b (f n) d -> b f n d", n=x_BFND.shape[2])
        return torch.tanh(self.bridge_alpha) * out

    def conditions(
        self,
        x_BFND: torch.Tensor,
        *,
        audio_BFAD: torch.Tensor,
        ref_BRD: torch.Tensor | None,
        sites: AttentionSites,
        layer: int,
    ) -> torch.Tensor:
        """Adds audio and reference cross-attention, where this block has them."""
        n = x_BFND.shape[2]
        if self.audio is not None:
            q = rearrange(self.audio_norm(x_BFND), "b f n d -> b (f n) d")
            kv = rearrange(audio_BFAD, "b f a d -> b (f a) d")
            x_BFND = x_BFND + rearrange(
                self.audio(q, kv, sites.audio, layer), "b (f n) d -> b f n d", n=n
            )
        if self.ref is not None and ref_BRD is not None:
            q = rearrange(self.ref_norm(x_BFND), "b f n d -> b (f n) d")
            x_BFND = x_BFND + rearrange(
                self.ref(q, ref_BRD, sites.ref, layer), "b (f n) d -> b f n d", n=n
            )
        return x_BFND

    def feed_forward(self, x_BFND, mods) -> torch.Tensor:
        shift, scale, gate = mods[3:]
        return x_BFND + gate[:, :, None] * self.mlp(modulate(self.norm2(x_BFND), shift, scale))

    def init_weights(self) -> None:
        self.attn.init_weights()
        self.mlp.init_weights()
        # AdaLN-Zero: zero modulation makes every gate 0, so each block starts as the identity
        # and the deep network trains stably from step 0 (Peebles & Xie 2023).
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        if self.bridge is not None:
            self.bridge.init_weights()
            self.bridge_norm.reset_parameters()
            # tanh(0) = 0: a fresh bridge is closed (correction 2: not sigmoid, which is 0.5).
            nn.init.zeros_(self.bridge_alpha)
        # Condition cross-attention starts as a no-op through a zero output projection.
        for attn, norm in ((self.audio, self.audio_norm), (self.ref, self.ref_norm)):
            if attn is not None:
                attn.init_weights(zero_out=True)
                norm.reset_parameters()


class DualBlock(nn.Module):
    """Block ``index`` of both streams (the struct part exists while ``index < L_s``)."""

    def __init__(self, config: DualForceConfig, index: int) -> None:
        super().__init__()
        c = config
        self.index = index
        shallow = index < c.n_fusion
        common = dict(mlp_ratio=c.mlp_ratio, eps=c.norm_eps, qk_norm=c.qk_norm)
        audio = c.audio_in_block(index)
        self.video = StreamBlock(
            c.video_dim,
            c.video_heads,
            other_dim=c.struct_dim if shallow and c.bridge_to_video else None,
            audio_token_dim=c.video_dim if audio else None,
            ref_token_dim=c.video_dim if c.ref_in_block(index) else None,
            **common,
        )
        self.struct = None
        if c.struct_enabled and index < c.struct_depth:
            self.struct = StreamBlock(
                c.struct_dim,
                c.struct_heads,
                other_dim=c.video_dim if shallow and c.bridge_to_struct else None,
                audio_token_dim=c.video_dim if audio else None,
                **common,
            )

    def forward(
        self,
        xv: torch.Tensor,
        xs: torch.Tensor | None,
        *,
        video_cond_BFD: torch.Tensor | None,
        struct_cond_BFD: torch.Tensor | None,
        audio_BFAD: torch.Tensor,
        ref_BRD: torch.Tensor | None,
        sites: AttentionSites,
        video_mod_BF6D: torch.Tensor | None = None,
        struct_mod_BF6D: torch.Tensor | None = None,
        video_out: bool = True,
        struct_out: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Video tokens ``xv`` ``[B, F, N_v, D_v]`` and struct tokens ``xs`` ``[B, F, N_s, D_s]``
        (None without the struct stream) through this block, with each stream's per-frame
        noise embedding ``[B, F, D]``, audio tokens ``[B, F, La, D_v]`` and reference tokens
        ``[B, R, D_v]`` (or None). Tensors are keyword arguments at the top level, not in a
        container, so that df-train's mixed-precision hook casts them.

        ``video_mod_BF6D`` / ``struct_mod_BF6D``: the stream's modulations computed before
        (:meth:`StreamBlock.modulations`; its noise embedding is then not read).
        ``video_out=False`` / ``struct_out=False``: nothing reads that stream's state after
        this block (the last block of a clean pass), which comes back as None; in a block
        without a bridge the stream then only writes its self-attention keys/values."""
        i = self.index
        video, struct = self.video, self.struct
        mv = video.modulations(video_cond_BFD) if video_mod_BF6D is None else video_mod_BF6D
        mv = mv.chunk(6, dim=-1)
        # A bridge reads both streams' post-self-attention states (and a causal one caches
        # its keys), so only a block without one may stop a stream at its keys/values.
        bridged = video.bridge is not None or (struct is not None and struct.bridge is not None)
        if not video_out and not bridged:
            video.write_self_kv(xv, mv, sites.video_self, i)
            xv = None
        else:
            xv = video.self_attention(xv, mv, sites.video_self, i)
        if struct is not None:
            ms = struct.modulations(struct_cond_BFD) if struct_mod_BF6D is None else struct_mod_BF6D
            ms = ms.chunk(6, dim=-1)
            if not struct_out and not bridged:
                struct.write_self_kv(xs, ms, sites.struct_self, i)
                xs = None
            else:
                xs = struct.self_attention(xs, ms, sites.struct_self, i)
                # Both directions read the post-self-attention states of this block.
                dv = video.bridge_update(xv, xs, sites.bridge_to_video, i) if video.bridge else None
                ds = (
                    struct.bridge_update(xs, xv, sites.bridge_to_struct, i)
                    if struct.bridge
                    else None
                )
                xv = xv if dv is None else xv + dv
                xs = xs if ds is None else xs + ds
                if struct_out:
                    xs = struct.conditions(
                        xs, audio_BFAD=audio_BFAD, ref_BRD=None, sites=sites, layer=i
                    )
                    xs = struct.feed_forward(xs, ms)
                else:
                    xs = None
        if not video_out:
            return None, xs
        xv = video.conditions(xv, audio_BFAD=audio_BFAD, ref_BRD=ref_BRD, sites=sites, layer=i)
        xv = video.feed_forward(xv, mv)
        return xv, xs

    def init_weights(self) -> None:
        self.video.init_weights()
        if self.struct is not None:
            self.struct.init_weights()
