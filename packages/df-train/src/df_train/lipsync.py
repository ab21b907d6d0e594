"""The lip-sync loss ``L_lip`` (DESIGN.md, "Training"): a contrastive (InfoNCE) audio-mouth loss
on clean video latents cropped to the mouth box, with time-shifted audio of the same clip as
negatives. :class:`LipSyncConfig` holds its options (``LossConfig.lip``).

Legend: B batch, T latent frames, C latent channels, H W latent size, La audio window (feature
frames per latent frame), Da audio feature dim, E embedding dim, S crop size, N = B * T frames
of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from df_core.checks import boolean, float_at_least, one_of, positive_float, positive_int

AUDIO_POOLS = ("flatten", "attention", "mean")


@dataclass(frozen=True, kw_only=True, slots=True)
class LipSyncConfig:
    """The options of :class:`LipSyncLoss` (``LossConfig.lip``)."""

    embed_dim: int = 128  # E, the joint embedding
    hidden: int = 128  # width of both heads
    crop_size: int = 4  # S, the mouth crop is resampled to S x S latent pixels
    min_shift: int = 2  # same-clip negatives are at least this many frames away
    cross_clip: bool = True  # other clips' frames are negatives too
    symmetric: bool = False  # add the audio-to-video direction
    audio_pool: str = "flatten"  # flatten | attention | mean (see _AudioHead)
    temperature: float = 0.07  # initial (or fixed) temperature, CLIP's 0.07
    learnable_temperature: bool = True  # CLIP-style learned logit scale
    max_logit_scale: float = 100.0  # clamp of exp(log_scale), as CLIP

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden", "crop_size", "min_shift"):
            positive_int(f"LipSyncConfig.{name}", getattr(self, name))
        for name in ("cross_clip", "symmetric", "learnable_temperature"):
            boolean(f"LipSyncConfig.{name}", getattr(self, name))
        one_of("LipSyncConfig.audio_pool", self.audio_pool, AUDIO_POOLS)
        positive_float("LipSyncConfig.temperature", self.temperature)
        float_at_least("LipSyncConfig.max_logit_scale", self.max_logit_scale, 1.0)


def crop_and_resize(z_NCHW: torch.Tensor, box_N4: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable bilinear crop of one box per image, resized to ``size x size``.

    Output cell ``(i, j)`` samples the box at ``x = x0 + (j + 0.5) / S * (x1 - x0)`` (``y``
    likewise) with :func:`torch.nn.functional.grid_sample` (``align_corners=False``: latent
    pixel ``k`` has its centre at ``k + 0.5``); outside the image the border is repeated.

    Args:
        z_NCHW: ``[N, C, H, W]`` latents.
        box_N4: ``[N, 4]`` boxes ``(x0, y0, x1, y1)`` in latent pixels.
        size: ``S``.

    Returns:
        ``[N, C, S, S]``; gradients flow into ``z_NCHW`` (and into ``box_N4``).
    """
    N, _, H, W = z_NCHW.shape
    if box_N4.shape != (N, 4):
        raise ValueError(f"box_N4 must have shape [{N}, 4], got {tuple(box_N4.shape)}")
    box = box_N4.to(z_NCHW.dtype)
    frac_S = (torch.arange(size, device=z_NCHW.device, dtype=z_NCHW.dtype) + 0.5) / size
    x0, y0, x1, y1 = box.unbind(-1)
    xs_NS = x0[:, None] + frac_S[None] * (x1 - x0)[:, None]
    ys_NS = y0[:, None] + frac_S[None] * (y1 - y0)[:, None]
    gx_NS, gy_NS = 2.0 * xs_NS / W - 1.0, 2.0 * ys_NS / H - 1.0
    grid_NSS2 = torch.stack(
        [gx_NS[:, None, :].expand(N, size, size), gy_NS[:, :, None].expand(N, size, size)], -1
    )
    return F.grid_sample(
        z_NCHW, grid_NSS2, mode="bilinear", padding_mode="border", align_corners=False
    )


class _AudioHead(nn.Module):
    """Audio window ``[N, La, Da]`` -> ``[N, E]``: a per-token LayerNorm + MLP, a pool over the
    window, then an MLP.

    Pools: ``flatten`` concatenates the window (its MLP sees every token at its position, so it
    can compare the centre with the context, e.g. remove the speaker's voice, as SyncNet's
    audio encoder sees its whole window); ``attention`` is a softmax-weighted mean with a
    learned score per token plus a position embedding (so it can find the centre); ``mean`` is
    a plain mean. The last two are convex combinations of per-token features: they cannot
    subtract one token from another.
    """

    def __init__(self, audio_dim: int, audio_window: int, hidden: int, embed_dim: int, pool: str):
        super().__init__()
        self.pool = pool
        self.token = nn.Sequential(nn.LayerNorm(audio_dim), nn.Linear(audio_dim, hidden), nn.SiLU())
        if pool == "attention":  # no unused parameters otherwise (DDP would complain)
            self.pos_LH = nn.Parameter(torch.zeros(audio_window, hidden))
            self.score = nn.Linear(hidden, 1)
        pooled = hidden * audio_window if pool == "flatten" else hidden
        self.out = nn.Sequential(
            nn.Linear(pooled, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, embed_dim),
        )

    def forward(self, audio_NLDa: torch.Tensor) -> torch.Tensor:
        h_NLH = self.token(audio_NLDa)
        if self.pool == "flatten":
            return self.out(h_NLH.flatten(1))
        if self.pool == "mean":
            return self.out(h_NLH.mean(1))
        h_NLH = h_NLH + self.pos_LH
        w_NL1 = self.score(h_NLH).softmax(dim=1)
        return self.out((w_NL1 * h_NLH).sum(1))


class LipSyncLoss(nn.Module):
    """Contrastive audio-mouth loss ``L_lip`` (InfoNCE, as SyncNet / CLIP) on clean latents.

    Per frame ``n = (b, t)``: ``v_n = f(crop(z0_hat[b, t], box[b, t]))`` and ``a_n = g(audio[b,
    t])``, both L2-normalised to ``E`` dims; with logit scale ``s = exp(log_scale)`` (clamped),

        L = mean_n [ -s <v_n, a_n> + log sum_{m in P(n)} exp(s <v_n, a_m>) ]

    over valid anchors with at least one negative, where ``P(n)`` is the positive ``n`` plus
    the negatives: frames ``(b, t')`` of the same clip with ``|t' - t| >= min_shift`` and, with
    ``cross_clip``, every frame of the other clips. Frames closer than ``min_shift`` are left
    out, not used as negatives: neighbouring frames have nearly the same mouth and overlapping
    audio windows, so they would be false negatives. ``symmetric`` adds the audio-to-video
    direction (CLIP's symmetric loss).

    Why shifted frames of the same clip are the right negatives: they share the identity, the
    background, the lighting, the head pose (nearly) and the speaker's voice, so every cue
    except the momentary correspondence between the mouth and the sound is the same for the
    positive and the negatives; the only way to score the positive higher is to read the mouth
    and the audio of that instant, which is what sync is. Negatives from other clips alone can
    be separated by identity or voice and teach nothing about sync (SyncNet's and Wav2Lip's
    off-sync pairs are the same idea). Other clips still help as extra, easy negatives.

    Gradient flows into ``z0_hat`` (``x0_hat = x_sigma - sigma * v_hat``), so the generator is
    pushed towards mouths that match the audio. ``heads_grad=False`` runs the heads with
    detached parameters. Wav2Lip (Prajwal et al. 2020) found a sync discriminator trained
    alongside the generator, on its outputs, a weak judge of sync and used an expert trained on
    real video, kept frozen; the online equivalent here trains the heads on ground-truth latents
    and the generator against the heads without updating them::

        expert, _ = lip(z0_BTCHW, box, audio, valid)                     # heads only
        gen, m = lip(z0_hat_BTCHW, box, audio, valid, heads_grad=False)  # generator only

    ``z0_hat`` is blurry at high sigma; the caller may restrict ``valid_BT`` to
    ``sigma_v <= LossConfig.lip_sigma_max``.
    """

    def __init__(
        self,
        latent_channels: int,
        audio_dim: int,
        audio_window: int,
        config: LipSyncConfig | None = None,
    ) -> None:
        super().__init__()
        positive_int("LipSyncLoss.latent_channels", latent_channels)
        positive_int("LipSyncLoss.audio_dim", audio_dim)
        positive_int("LipSyncLoss.audio_window", audio_window)
        c = config if config is not None else LipSyncConfig()
        self.config = c
        hidden, crop_size, embed_dim = c.hidden, c.crop_size, c.embed_dim
        self.crop_size, self.min_shift = crop_size, c.min_shift
        self.cross_clip, self.symmetric = c.cross_clip, c.symmetric
        self.audio_window, self.temperature = audio_window, c.temperature
        self.max_log_scale = math.log(c.max_logit_scale)
        self.video_head = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(hidden * crop_size * crop_size, hidden),
            nn.SiLU(),
            nn.Linear(hidden, embed_dim),
        )
        self.audio_head = _AudioHead(audio_dim, audio_window, hidden, embed_dim, c.audio_pool)
        log_scale = torch.tensor(math.log(1.0 / c.temperature))
        if c.learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @torch.no_grad()
    def init_weights(self) -> None:
        """PyTorch's default init for the heads, zero position embeddings, the initial
        temperature (for modules built on the meta device)."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.LayerNorm):
                m.reset_parameters()
        if self.audio_head.pool == "attention":
            self.audio_head.pos_LH.zero_()
        self.log_scale.fill_(math.log(1.0 / self.temperature))

    def _run(self, module: nn.Module, heads_grad: bool, x: torch.Tensor) -> torch.Tensor:
        if heads_grad:
            return module(x)
        params = {k: p.detach() for k, p in module.named_parameters()}
        return functional_call(module, params, (x,))

    def embed_video(
        self,
        z_BTCHW: torch.Tensor,
        box_BT4: torch.Tensor,
        valid_BT: torch.Tensor | None = None,
        *,
        heads_grad: bool = True,
    ) -> torch.Tensor:
        """Unit mouth embeddings ``[B, T, E]`` (float32) of latents ``[B, T, C, H, W]`` and
        boxes ``[B, T, 4]`` in latent pixels; invalid frames embed zeros, whatever their
        latents or boxes hold (NaN included)."""
        B, T, _, H, W = z_BTCHW.shape
        if box_BT4.shape != (B, T, 4):
            raise ValueError(f"box_BT4 must have shape [{B}, {T}, 4], got {tuple(box_BT4.shape)}")
        valid_N = _valid(valid_BT, B, T, z_BTCHW.device).flatten()
        full_4 = box_BT4.new_tensor([0.0, 0.0, W, H])
        # Select, not multiply: a NaN latent or box of an excluded frame must not reach a
        # gradient as 0 * NaN.
        box_N4 = torch.where(valid_N[:, None], box_BT4.flatten(0, 1), full_4)
        crop_NCSS = crop_and_resize(z_BTCHW.flatten(0, 1), box_N4, self.crop_size)
        crop_NCSS = torch.where(
            valid_N[:, None, None, None], crop_NCSS, torch.zeros_like(crop_NCSS)
        )
        e_NE = F.normalize(self._run(self.video_head, heads_grad, crop_NCSS).float(), dim=-1)
        e_NE = torch.where(valid_N[:, None], e_NE, torch.zeros_like(e_NE))
        return rearrange(e_NE, "(b t) e -> b t e", b=B)

    def embed_audio(
        self,
        audio_BTLDa: torch.Tensor,
        valid_BT: torch.Tensor | None = None,
        *,
        heads_grad: bool = True,
    ) -> torch.Tensor:
        """Unit audio embeddings ``[B, T, E]`` (float32) of windows ``[B, T, La, Da]``
        (``[B, T, La, layers, Da]`` is averaged over layers); invalid frames embed zeros."""
        if audio_BTLDa.dim() == 5:
            audio_BTLDa = audio_BTLDa.mean(3)
        B, T, La = audio_BTLDa.shape[:3]
        if audio_BTLDa.dim() != 4 or La != self.audio_window:
            raise ValueError(
                f"audio_BTLDa must be [B, T, {self.audio_window}, Da], got {tuple(audio_BTLDa.shape)}"
            )
        valid_N = _valid(valid_BT, B, T, audio_BTLDa.device).flatten()
        a_NLDa = audio_BTLDa.flatten(0, 1)
        a_NLDa = torch.where(valid_N[:, None, None], a_NLDa, torch.zeros_like(a_NLDa))
        e_NE = F.normalize(self._run(self.audio_head, heads_grad, a_NLDa).float(), dim=-1)
        e_NE = torch.where(valid_N[:, None], e_NE, torch.zeros_like(e_NE))
        return rearrange(e_NE, "(b t) e -> b t e", b=B)

    def candidates(self, valid_BT: torch.Tensor) -> torch.Tensor:
        """Bool ``[N, N]``: row ``n`` (video of frame n) may be scored against column ``m``
        (audio of frame m); the diagonal (the positive) is always on, and the matrix is
        symmetric, so its transpose serves the audio-to-video direction."""
        B, T = valid_BT.shape
        dev = valid_BT.device
        b_N = torch.arange(B, device=dev).repeat_interleave(T)
        t_N = torch.arange(T, device=dev).repeat(B)
        same_NN = b_N[:, None] == b_N[None, :]
        far_NN = (t_N[:, None] - t_N[None, :]).abs() >= self.min_shift
        neg_NN = same_NN & far_NN
        if self.cross_clip:
            neg_NN = neg_NN | ~same_NN
        v_N = valid_BT.flatten()
        neg_NN = neg_NN & v_N[:, None] & v_N[None, :]
        return neg_NN | torch.eye(B * T, dtype=torch.bool, device=dev)

    def forward(
        self,
        z0_hat_BTCHW: torch.Tensor,
        mouth_box_BT4: torch.Tensor,
        audio_BTLDa: torch.Tensor,
        valid_BT: torch.Tensor | None = None,
        *,
        heads_grad: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The InfoNCE loss of a batch of clips.

        Args:
            z0_hat_BTCHW: ``[B, T, C, H, W]`` predicted (or ground-truth) clean latents.
            mouth_box_BT4: ``[B, T, 4]`` mouth boxes ``(x0, y0, x1, y1)`` in latent pixels
                (:func:`mouth_box_to_latent`).
            audio_BTLDa: ``[B, T, La, Da]`` the audio window of each frame (the DiT's input).
            valid_BT: optional bool ``[B, T]``; excluded frames are neither anchors nor
                negatives (padding, frames without a box, frames too noisy to judge).
            heads_grad: False runs the heads (and temperature) with detached parameters.

        Returns:
            ``(loss, metrics)``: the float32 scalar loss (0 when no anchor has a negative) and
            detached scalars: ``accuracy`` (the positive scores highest among its
            candidates), ``chance`` (mean of 1 / candidates), ``logit_scale``, ``anchors``.
            No host sync.
        """
        B, T = z0_hat_BTCHW.shape[:2]
        valid_BT = _valid(valid_BT, B, T, z0_hat_BTCHW.device)
        v_NE = self.embed_video(z0_hat_BTCHW, mouth_box_BT4, valid_BT, heads_grad=heads_grad)
        a_NE = self.embed_audio(audio_BTLDa, valid_BT, heads_grad=heads_grad)
        v_NE, a_NE = v_NE.flatten(0, 1), a_NE.flatten(0, 1)
        log_scale = self.log_scale if heads_grad else self.log_scale.detach()
        scale = log_scale.float().clamp(max=self.max_log_scale).exp()
        allowed_NN = self.candidates(valid_BT)
        logits_NN = (scale * v_NE @ a_NE.T).masked_fill(~allowed_NN, -math.inf)
        pos_N = logits_NN.diagonal()
        ce_N = torch.logsumexp(logits_NN, dim=1) - pos_N
        if self.symmetric:
            ce_N = 0.5 * (ce_N + torch.logsumexp(logits_NN, dim=0) - pos_N)
        count_N = allowed_NN.sum(1)
        anchor_N = valid_BT.flatten() & (count_N > 1)
        n_anchor = anchor_N.sum()
        denom = n_anchor.clamp(min=1).float()
        loss = torch.where(anchor_N, ce_N, torch.zeros_like(ce_N)).sum() / denom
        with torch.no_grad():
            hit_N = logits_NN.argmax(dim=1) == torch.arange(B * T, device=logits_NN.device)
            metrics = {
                "accuracy": (hit_N & anchor_N).sum().float() / denom,
                "chance": torch.where(anchor_N, 1.0 / count_N.float(), 0.0).sum() / denom,
                "logit_scale": scale.detach(),
                "anchors": n_anchor.float(),
            }
        return loss, metrics


def _valid(valid_BT: torch.Tensor | None, B: int, T: int, device: torch.device) -> torch.Tensor:
    if valid_BT is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    if valid_BT.shape != (B, T) or valid_BT.dtype != torch.bool:
        raise ValueError(
            f"valid_BT must be bool [{B}, {T}], got {valid_BT.dtype} {tuple(valid_BT.shape)}"
        )
    return valid_BT
