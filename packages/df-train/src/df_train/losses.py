"""DualForce's training losses (DESIGN.md, "Training").

    L = L_video + lambda_s * L_struct + lambda_aux(step) * L_aux + lambda_lip * L_lip

- :func:`velocity_losses`: flow-matching velocity MSE, per token averaged per frame, then a
  weighted mean over the frames that count (``L_video`` and ``L_struct``).
- :func:`mouth_weight_map` and :func:`weighted_frame_mse`: the video loss re-weighted towards
  the mouth box (``LossConfig.mouth_weight``).
- :func:`aux_struct_loss` and :func:`aux_weight`: the struct stream's clean estimate aligned with
  auxiliary 3-D labels where a clip has them, under a weight that decays to 0.
- :class:`LipSyncLoss`: contrastive (InfoNCE) audio-mouth loss on predicted clean video latents
  cropped to the mouth box, with time-shifted audio of the same clip as negatives.
- :func:`weighted_sum` (fixed weights, the default) and :class:`UncertaintyWeighting` (learned
  weights, Kendall et al. 2018) combine the terms.

Legend: B batch, T latent frames, C latent channels, H W latent size, Ds structure dim,
La audio window (feature frames per latent frame), Da audio feature dim, E embedding dim,
S crop size, N = B * T frames of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from df_core import frame_mse, reduce_frame_loss

AUDIO_POOLS = ("flatten", "attention", "mean")
AUX_SCHEDULES = ("cosine", "linear")


def velocity_losses(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    valid_BT: torch.Tensor | None = None,
    weight_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flow-matching velocity loss of one stream.

    ``L = sum_{b,t} w_bt * m_bt * mean_tokens (v_hat - v)^2 / sum_{b,t} w_bt * m_bt``

    Args:
        v_pred: ``[B, T, ...]`` predicted velocity (video ``[B, T, C, H, W]`` or structure
            ``[B, T, Ds]``).
        v_target: same shape, ``v = eps - x0``.
        valid_BT: optional bool ``[B, T]``, the frames ``m`` that count. The caller excludes
            clean-context frames (``sigma == 0``: their target is the input, nothing to learn)
            and padding.
        weight_BT: optional non-negative ``[B, T]`` per-frame weights ``w`` (e.g. by sigma).

    Returns:
        A float32 scalar; 0 (not NaN) when no frame counts.
    """
    return reduce_frame_loss(frame_mse(v_pred, v_target), weight_BT=weight_BT, valid_BT=valid_BT)


def aux_struct_loss(
    s0_hat_BTDs: torch.Tensor, aux_BTDs: torch.Tensor, aux_mask_BT: torch.Tensor
) -> torch.Tensor:
    """Aligns the struct stream's clean estimate with auxiliary 3-D labels.

    ``s0_hat = s_sigma - sigma_s * v_hat_s`` (:func:`df_core.x0_from_velocity`), and

    ``L_aux = sum_{b,t} m_bt * mean_d (s0_hat - aux)^2 / sum_{b,t} m_bt``

    Args:
        s0_hat_BTDs: ``[B, T, Ds]`` the predicted clean structure.
        aux_BTDs: ``[B, T, Ds]`` the labels in the same parameterisation (labels in another
            space, e.g. FLAME, need a head on ``s0_hat`` first). Values where the mask is off
            are never read, so they may be NaN.
        aux_mask_BT: bool ``[B, T]`` (or ``[B]``, per clip): where labels exist. The caller may
            also drop clean-context frames, whose ``s0_hat`` is the input itself.

    Returns:
        A float32 scalar; 0 when no frame has a label.
    """
    if s0_hat_BTDs.shape != aux_BTDs.shape or s0_hat_BTDs.dim() != 3:
        raise ValueError(
            f"s0_hat_BTDs {tuple(s0_hat_BTDs.shape)} and aux_BTDs {tuple(aux_BTDs.shape)} must "
            "be the same [B, T, Ds]"
        )
    B, T = s0_hat_BTDs.shape[:2]
    if aux_mask_BT.shape == (B,):
        aux_mask_BT = aux_mask_BT[:, None].expand(B, T)
    if aux_mask_BT.shape != (B, T) or aux_mask_BT.dtype != torch.bool:
        raise ValueError(
            f"aux_mask_BT must be bool [{B}, {T}] or [{B}], got {aux_mask_BT.dtype} "
            f"{tuple(aux_mask_BT.shape)}"
        )
    # Missing labels are replaced by the (detached) prediction rather than masked afterwards: a
    # NaN label would otherwise reach the gradient as 0 * NaN.
    aux = torch.where(aux_mask_BT[..., None], aux_BTDs.to(s0_hat_BTDs.dtype), s0_hat_BTDs.detach())
    return reduce_frame_loss(frame_mse(s0_hat_BTDs, aux), valid_BT=aux_mask_BT)


def aux_weight(step: int, lambda_aux: float, decay_steps: int, schedule: str = "cosine") -> float:
    """The decaying weight of ``L_aux``: ``lambda_aux`` at step 0, 0 from ``decay_steps`` on.

    With ``p = min(step / decay_steps, 1)``:

    - ``cosine``: ``lambda_aux * (1 + cos(pi * p)) / 2`` (flat start and end: the labels shape
      the struct stream early, and the switch-off is gentle);
    - ``linear``: ``lambda_aux * (1 - p)``.

    Both are non-increasing in ``step``. The labels are a scaffold (the proposal's FLAME
    supervision): once the struct stream has learned a 3-D-aware code, the diffusion loss alone
    decides it, so label noise stops pulling on it.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1:
        raise ValueError(f"decay_steps must be a positive integer, got {decay_steps!r}")
    if not math.isfinite(lambda_aux) or lambda_aux < 0:
        raise ValueError(f"lambda_aux must be a finite number >= 0, got {lambda_aux!r}")
    if schedule not in AUX_SCHEDULES:
        raise ValueError(f"schedule must be one of {AUX_SCHEDULES}, got {schedule!r}")
    p = min(step / decay_steps, 1.0)
    if schedule == "linear":
        return float(lambda_aux * (1.0 - p))
    return float(lambda_aux * 0.5 * (1.0 + math.cos(math.pi * p)))


def mouth_box_to_latent(
    box_px_BT4: torch.Tensor,
    image_size: int | tuple[int, int],
    latent_size: int | tuple[int, int],
) -> torch.Tensor:
    """Scales pixel boxes ``(x0, y0, x1, y1)`` to latent pixels.

    Both coordinate systems put pixel ``i`` on ``[i, i + 1)``, so the map is a pure scale,
    ``x * w / W`` and ``y * h / H`` (no half-pixel shift).

    Args:
        box_px_BT4: ``[..., 4]`` boxes in image pixels (``synthtalk.mouth_box``'s convention).
        image_size: ``H`` (square) or ``(H, W)`` of the images the boxes refer to.
        latent_size: ``h`` or ``(h, w)`` of the latents.

    Returns:
        Float ``[..., 4]`` boxes in latent pixels. A horizontally flipped latent needs the box
        flipped too (``x0' = w - x1``, ``x1' = w - x0``); a temporal codec needs one box per
        latent frame (e.g. the union of the boxes of the frames it covers).
    """
    if box_px_BT4.shape[-1] != 4:
        raise ValueError(f"box_px_BT4 must end in 4 coordinates, got {tuple(box_px_BT4.shape)}")
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    if min(H, W, h, w) < 1:
        raise ValueError(f"sizes must be positive, got image {image_size}, latent {latent_size}")
    box = box_px_BT4.float() if not box_px_BT4.is_floating_point() else box_px_BT4
    scale = box.new_tensor([w / W, h / H, w / W, h / H])
    return box * scale


def mouth_weight_map(
    box_BT4: torch.Tensor, height: int, width: int, mouth_weight: float
) -> torch.Tensor:
    """Per-latent-pixel loss weights: ``1 + (mouth_weight - 1) * coverage``.

    ``coverage`` is the fraction of latent pixel ``(i, j)`` (the square ``[j, j + 1) x [i, i +
    1)``) that lies inside the box, so a box edge between pixel centres gives its pixels a
    partial weight, and the map changes continuously with the box (no jump when a box edge
    crosses a pixel centre).

    Why: the mouth is a small part of a talking-head frame, and the part that only the audio
    explains; with a plain mean over the frame its error is drowned by the rest (identity, pose,
    background), so a small model learns a still mouth first. Weighting the mouth region up is
    the usual remedy in talking-head generation (e.g. Wav2Lip's and many successors' mouth or
    lower-face losses).

    Args:
        box_BT4: ``[B, T, 4]`` boxes ``(x0, y0, x1, y1)`` in latent pixels
            (:func:`mouth_box_to_latent`).
        height, width: the latent size ``H, W``.
        mouth_weight: the weight of a pixel fully inside the box (>= 1; 1 gives all ones).

    Returns:
        Float ``[B, T, H, W]`` weights in ``[1, mouth_weight]``.
    """
    if box_BT4.dim() != 3 or box_BT4.shape[-1] != 4:
        raise ValueError(f"box_BT4 must be [B, T, 4], got {tuple(box_BT4.shape)}")
    if not math.isfinite(mouth_weight) or mouth_weight < 1:
        raise ValueError(f"mouth_weight must be a finite number >= 1, got {mouth_weight!r}")
    box = box_BT4 if box_BT4.is_floating_point() else box_BT4.float()
    x0, y0, x1, y1 = (box[..., k, None] for k in range(4))
    cols = torch.arange(width, device=box.device, dtype=box.dtype)
    rows = torch.arange(height, device=box.device, dtype=box.dtype)
    cover_x_BTW = (torch.minimum(cols + 1, x1) - torch.maximum(cols, x0)).clamp(0, 1)
    cover_y_BTH = (torch.minimum(rows + 1, y1) - torch.maximum(rows, y0)).clamp(0, 1)
    coverage_BTHW = cover_y_BTH[..., :, None] * cover_x_BTW[..., None, :]
    return 1.0 + (mouth_weight - 1.0) * coverage_BTHW


def weighted_frame_mse(
    pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, weight_BTHW: torch.Tensor
) -> torch.Tensor:
    """Per-frame MSE under per-pixel weights: ``sum_hw w * mean_c (pred - target)^2 / sum_hw
    w``, ``[B, T, C, H, W] -> [B, T]``.

    A weighted *mean* per frame: with all weights equal it is :func:`df_core.frame_mse`, and a
    larger mouth weight moves the frame's loss towards the mouth without changing its scale
    (the balance with ``L_struct`` and the learning rate stay as tuned).
    """
    if pred_BTCHW.shape != target_BTCHW.shape or pred_BTCHW.dim() != 5:
        raise ValueError(
            f"pred {tuple(pred_BTCHW.shape)} and target {tuple(target_BTCHW.shape)} must be the "
            "same [B, T, C, H, W]"
        )
    B, T, _, H, W = pred_BTCHW.shape
    if weight_BTHW.shape != (B, T, H, W):
        raise ValueError(
            f"weight_BTHW must be [{B}, {T}, {H}, {W}], got {tuple(weight_BTHW.shape)}"
        )
    err_BTHW = (pred_BTCHW.float() - target_BTCHW.float()).pow(2).mean(dim=2)
    w = weight_BTHW.float()
    return (w * err_BTHW).sum(dim=(2, 3)) / w.sum(dim=(2, 3))


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
    ``sigma_v < sigma_lip_max``.
    """

    def __init__(
        self,
        latent_channels: int,
        audio_dim: int,
        audio_window: int,
        *,
        embed_dim: int = 128,  # E, the joint embedding
        hidden: int = 128,  # width of both heads
        crop_size: int = 4,  # S, the mouth crop is resampled to S x S latent pixels
        min_shift: int = 2,  # same-clip negatives are at least this many frames away
        cross_clip: bool = True,  # other clips' frames are negatives too
        symmetric: bool = False,  # add the audio-to-video direction
        audio_pool: str = "flatten",  # "flatten", "attention" or "mean" (see _AudioHead)
        temperature: float = 0.07,  # initial (or fixed) temperature, CLIP's 0.07
        learnable_temperature: bool = True,  # CLIP-style learned logit scale
        max_logit_scale: float = 100.0,  # clamp of exp(log_scale), as CLIP
    ) -> None:
        super().__init__()
        for name, value in (
            ("latent_channels", latent_channels),
            ("audio_dim", audio_dim),
            ("audio_window", audio_window),
            ("embed_dim", embed_dim),
            ("hidden", hidden),
            ("crop_size", crop_size),
            ("min_shift", min_shift),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if audio_pool not in AUDIO_POOLS:
            raise ValueError(f"audio_pool must be one of {AUDIO_POOLS}, got {audio_pool!r}")
        if not 0.0 < temperature < math.inf or not 1.0 <= max_logit_scale < math.inf:
            raise ValueError(
                f"need temperature > 0 and max_logit_scale >= 1, got {temperature}, {max_logit_scale}"
            )
        self.crop_size, self.min_shift = crop_size, min_shift
        self.cross_clip, self.symmetric = cross_clip, symmetric
        self.audio_window, self.temperature = audio_window, temperature
        self.max_log_scale = math.log(max_logit_scale)
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
        self.audio_head = _AudioHead(audio_dim, audio_window, hidden, embed_dim, audio_pool)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
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


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Fixed weighting (the default): ``L = sum_i lambda_i * L_i`` over the terms present in
    ``losses``; a term without a weight is an error, a weight without a term is skipped."""
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss terms {missing}; weights has {sorted(weights)}")
    if not losses:
        raise ValueError("losses is empty")
    return sum(weights[k] * v for k, v in losses.items())


class UncertaintyWeighting(nn.Module):
    """Learned loss weights from homoscedastic uncertainty (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance ``s_i`` per term, and

        L = sum_i exp(-s_i) * L_i + s_i

    For fixed ``L_i`` the minimum over ``s_i`` is at ``exp(-s_i) L_i = 1``, i.e. ``s_i* = log
    L_i``: each term ends up weighted by ``1 / L_i``, so every term contributes on the same
    (unit) scale whatever its units. Kendall's Gaussian form is ``0.5 exp(-s) L + 0.5 s``,
    exactly half of ours: the same stationary points, with gradients halved (a learning-rate
    factor). We drop the 0.5s so that at the initial ``s = 0`` the total equals the unweighted
    sum, i.e. the fixed weights of 1 it replaces. Leave ``log_vars`` out of weight decay.

    A term that can approach 0 drives ``s_i`` to ``-inf`` and its weight up without bound;
    ``min_log_var`` clamps ``s_i`` from below (its gradient is then 0 there).
    """

    def __init__(
        self, names: Sequence[str], *, init_log_var: float = 0.0, min_log_var: float | None = None
    ) -> None:
        super().__init__()
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"names must be non-empty and distinct, got {names}")
        self.names, self.init_log_var, self.min_log_var = names, init_log_var, min_log_var
        self.log_vars = nn.Parameter(torch.full((len(names),), float(init_log_var)))

    @torch.no_grad()
    def init_weights(self) -> None:
        self.log_vars.fill_(self.init_log_var)

    def forward(
        self, losses: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Combines the terms present in ``losses`` (a subset of ``names``; an absent term, e.g.
        ``aux`` in a batch without labels, leaves its ``s_i`` untouched).

        Returns:
            ``(total, weights)`` with the detached weights ``exp(-s_i)`` of the present terms.
        """
        unknown = sorted(set(losses) - set(self.names))
        if unknown or not losses:
            raise ValueError(
                f"losses must be a non-empty subset of {self.names}, got {sorted(losses)}"
            )
        s_K = self.log_vars
        if self.min_log_var is not None:
            s_K = s_K.clamp(min=self.min_log_var)
        total, weights = 0.0, {}
        for i, name in enumerate(self.names):
            if name in losses:
                total = total + torch.exp(-s_K[i]) * losses[name] + s_K[i]
                weights[name] = torch.exp(-s_K[i]).detach()
        return total, weights
