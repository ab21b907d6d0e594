"""Small modules of the DualForce DiT: embeddings, projectors, heads, modulation.

Legend: B batch, T latent frames (plus one sink frame where noted, ``F = 1 + T``), N tokens per
frame, D width, C latent channels, Ds structure dim, Da audio feature dim, La audio window.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from df_core import AUDIO_FEATURES_PER_VIDEO_FRAME, group_first_frame


def modulate(
    x_BFND: torch.Tensor, shift_BFD: torch.Tensor, scale_BFD: torch.Tensor
) -> torch.Tensor:
    """DiT's ``x * (1 + scale) + shift``, per frame: each token of frame f uses frame f's values."""
    return x_BFND * (1 + scale_BFD[:, :, None]) + shift_BFD[:, :, None]


def sinusoidal_embedding(
    sigma: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of ``1000 * sigma`` (DiT's timestep embedding): ``[...] -> [..., dim]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
    )
    args = 1000.0 * sigma.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class NoiseEmbedder(nn.Module):
    """Per-frame noise level -> conditioning vector: ``sigma_BF [B, F] -> [B, F, D]``."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma_BF: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(sigma_BF, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)

    def init_weights(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


class PatchEmbed(nn.Module):
    """Video latents to tokens with ``(1, p, p)`` patches: ``[B, T, C, H, W] -> [B, T, N_v, D]``."""

    def __init__(self, channels: int, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch * patch, dim)

    def forward(self, z_BTCHW: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = rearrange(z_BTCHW, "b t c (h p) (w q) -> b t (h w) (p q c)", p=p, q=p)
        return self.proj(patches)

    def init_weights(self) -> None:
        # As DiT: initialise like a conv (xavier over the flattened patch).
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)


def unpatchify(
    x_BTNP: torch.Tensor, channels: int, patch: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of the patch layout: ``[B, T, N_v, p*p*C] -> [B, T, C, H, W]``."""
    return rearrange(
        x_BTNP,
        "b t (h w) (p q c) -> b t c (h p) (w q)",
        h=height // patch,
        w=width // patch,
        p=patch,
        q=patch,
        c=channels,
    )


class StructTokenizer(nn.Module):
    """A frame's structure vector to ``N_s`` tokens: ``[B, T, Ds] -> [B, T, N_s, D_s]``."""

    def __init__(self, raw_dim: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(nn.Linear(raw_dim, dim), nn.SiLU(), nn.Linear(dim, tokens * dim))

    def forward(self, s_BTDs: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(s_BTDs), "b t (n d) -> b t n d", n=self.tokens)

    def init_weights(self) -> None:
        for layer in (self.proj[0], self.proj[2]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class StructHead(nn.Module):
    """A frame's ``N_s`` structure tokens to its velocity: ``[B, T, N_s, D_s] -> [B, T, Ds]``."""

    def __init__(self, tokens: int, dim: int, raw_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(tokens * dim, dim), nn.SiLU(), nn.Linear(dim, raw_dim))

    def forward(self, x_BTND: torch.Tensor) -> torch.Tensor:
        return self.mlp(x_BTND.flatten(2))

    def init_weights(self) -> None:
        nn.init.xavier_uniform_(self.mlp[0].weight)
        nn.init.zeros_(self.mlp[0].bias)
        # Zero output: a fresh model predicts zero velocity, so early training is stable (DiT).
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)


class AudioProjector(nn.Module):
    """Audio feature windows to tokens: ``[B, T, La, Da]`` (or ``[B, T, La, layers, Da]``) ->
    ``[B, T, La, D]``, one token per feature frame with a learned position in the window.

    With several encoder layers, a learned softmax-weighted sum picks the mix of layers (as
    HuBERT/wav2vec-based talking-head models do).
    """

    def __init__(self, feature_dim: int, layers: int, window: int, dim: int) -> None:
        super().__init__()
        self.layers = layers
        # Only with several layers: an unused parameter would stall DDP/FSDP gradient hooks.
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if layers > 1 else None
        self.proj = nn.Sequential(nn.Linear(feature_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.position = nn.Parameter(torch.zeros(window, dim))
        # The "no audio" tokens: used for the sink frame and for audio dropout (CFG).
        self.null = nn.Parameter(torch.zeros(window, dim))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.layers > 1:
            if a.dim() != 5 or a.shape[3] != self.layers:
                raise ValueError(
                    f"audio must be [B, T, La, {self.layers}, Da], got {tuple(a.shape)}"
                )
            a = torch.einsum("btlkd,k->btld", a, self.layer_logits.softmax(0).to(a.dtype))
        elif a.dim() != 4:
            raise ValueError(f"audio must be [B, T, La, Da], got {tuple(a.shape)}")
        return self.proj(a) + self.position

    def init_weights(self) -> None:
        if self.layer_logits is not None:
            nn.init.zeros_(self.layer_logits)
        for layer in (self.proj[0], self.proj[2]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.null, std=0.02)


class FinalLayer(nn.Module):
    """Per-frame AdaLN then a linear map to the output channels (DiT's final layer)."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_dim)

    def modulations(self, c_BFD: torch.Tensor) -> torch.Tensor:
        """shift and scale side by side, ``[B, F, 2D]``."""
        return self.modulation(nn.functional.silu(c_BFD))

    def forward(
        self, x_BFND: torch.Tensor, c_BFD: torch.Tensor | None, mod_BF2D: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mod_BF2D``: this layer's :meth:`modulations` of ``c_BFD``, computed before
        (then ``c_BFD`` is not read)."""
        mod = self.modulations(c_BFD) if mod_BF2D is None else mod_BF2D
        shift, scale = mod.chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x_BFND), shift, scale))

    def init_weights(self) -> None:
        # Zero modulation and projection: the model starts as the zero velocity (DiT, AdaLN-Zero).
        for layer in (self.modulation, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def gather_audio_windows(
    a_BLDa: torch.Tensor,
    num_frames: int,
    *,
    feats_per_frame: int = AUDIO_FEATURES_PER_VIDEO_FRAME,
    frames_per_latent: int = 1,
    context: int = 2,
    first_frame: int = 0,
) -> torch.Tensor:
    """The audio window of every latent frame: ``[B, L, ...] -> [B, T, La, ...]``.

    Latent frame ``t`` covers the group of ``fpl`` video frames that ends at frame ``t*fpl``
    (:func:`df_core.conventions.group_first_frame`: frame 0 alone for ``t = 0``, then frames
    ``(t-1)*fpl + 1 .. t*fpl``, the 1 + 4k layout of causal video codecs), i.e. feature frames
    ``[g*r, (g + fpl)*r)`` from the group's first frame ``g`` at ``r = feats_per_frame`` (2 for
    50 Hz features at 25 fps), widened by ``context`` video frames on each side: ``La = (fpl +
    2*context) * r``. Feature frames outside the clip (before frame 0 in latent frame 0's group
    too) are zeros (silence in normalised features).

    Args:
        a_BLDa: audio features at their native rate, ``[B, L, Da]`` or ``[B, L, layers, Da]``.
        num_frames: T latent frames to gather.
        first_frame: latent frame index of the first window (streaming).
    """
    r, fpl = feats_per_frame, frames_per_latent
    La = (fpl + 2 * context) * r
    latent = torch.arange(num_frames, device=a_BLDa.device) + first_frame
    starts = (group_first_frame(latent, fpl) - context) * r
    idx = starts[:, None] + torch.arange(La, device=a_BLDa.device)[None, :]
    valid = (idx >= 0) & (idx < a_BLDa.shape[1])
    gathered = a_BLDa[:, idx.clamp(0, max(a_BLDa.shape[1] - 1, 0))]
    shape = (1, num_frames, La) + (1,) * (a_BLDa.dim() - 2)
    return gathered * valid.reshape(shape).to(a_BLDa.dtype)
