"""The multi-modal Diffusion Forcing objective (DESIGN.md, "Training"), as :class:`Objective`.

One call, ``objective(model, batch, generator=g, step=s) -> (loss, terms)``:

1. draw (:func:`draw_noise`) per-frame noise levels for video and structure with one shared
   clean-context prefix (df-core's :func:`~df_core.sample_dual_sigmas`), the noise, and the
   conditioning dropout for CFG, and noise both streams (:func:`~df_core.add_noise`);
2. run the training forward (whole clip, block-causal);
3. compute the velocity losses per frame, context frames excluded (:func:`velocity_losses`,
   against :func:`~df_core.velocity_target`), ``L_aux`` on the struct stream's clean estimate
   (:func:`~df_core.x0_from_velocity`), and combine them (:func:`weighted_sum` or the learned
   :class:`UncertaintyWeighting`);
4. add ``L_lip`` (:mod:`df_train.lipsync`) on the predicted clean latents where the clips have
   mouth boxes.

Several processes: the draws are made for the global batch (``batch * world_size`` clips) from
a generator every rank holds in the same state, and each rank keeps its rows ``rank, rank +
world, ...``; so W processes see the noise one process with the whole batch would see.

Legend: B batch (this rank), G global batch, T latent frames, C latent channels, H W latent
size, Ds structure dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from df_core import (
    add_noise,
    clean_prefix_lengths,
    sample_dual_sigmas,
    velocity_target,
    x0_from_velocity,
)
from df_train.config import NoiseConfig, TrainConfig
from df_train.lipsync import LipSyncLoss
from df_train.losses import (
    aux_struct_loss,
    aux_weight,
    mouth_box_to_latent,
    mouth_weight_map,
    velocity_losses,
)
from df_train.weighting import UncertaintyWeighting, weighted_sum

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True, slots=True)
class NoiseDraw:
    """One batch's random draws, for this rank's clips (CPU tensors)."""

    sigma_v: torch.Tensor  # float32 [B, T], video noise levels
    sigma_s: torch.Tensor  # float32 [B, T], structure noise levels
    valid: torch.Tensor  # bool [B, T], frames that carry loss (not clean context)
    eps_v: torch.Tensor  # [B, T, C, H, W] video noise
    eps_s: torch.Tensor | None  # [B, T, Ds] structure noise (None without a struct stream)
    drop_audio: torch.Tensor  # bool [B], audio dropped (CFG)
    drop_ref: torch.Tensor  # bool [B], reference tokens dropped (CFG)


def draw_noise(
    noise: NoiseConfig,
    *,
    video_shape: torch.Size | tuple[int, ...],
    struct_shape: torch.Size | tuple[int, ...] | None,
    audio_drop_prob: float,
    ref_drop_prob: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> NoiseDraw:
    """Draws, in a fixed order from ``generator``, the levels, noise and dropout of one
    micro-batch of this rank (``video_shape`` ``[B, T, C, H, W]`` and ``struct_shape`` ``[B,
    T, Ds]`` are this rank's); the draws are for the global batch of ``B * world_size`` clips.
    """
    g = generator
    B, T = video_shape[:2]
    G, mine = B * world_size, slice(rank, None, world_size)
    prefix_G = clean_prefix_lengths(G, T, generator=g, prob=noise.clean_prefix_prob)
    sigma_v_GT, sigma_s_GT = sample_dual_sigmas(
        G,
        T,
        generator=g,
        distribution=noise.distribution,
        loc=noise.loc,
        scale=noise.scale,
        shift=noise.shift,
        sigma_s_max=noise.sigma_s_max,
        struct_tail_prob=noise.struct_tail_prob,
        temporal=noise.temporal,
        sigma_ctx=noise.sigma_ctx,
        prefix_B=prefix_G,
    )
    dev = g.device  # drawn where the generator lives: on the training GPU, no host copies
    valid_BT = torch.arange(T, device=dev)[None, :] >= prefix_G[mine][:, None]  # context: no loss
    eps_v = torch.randn((G, *video_shape[1:]), generator=g, device=dev)[mine]
    drop_audio_B = (torch.rand(G, generator=g, device=dev) < audio_drop_prob)[mine]
    # Drawn whether or not the model has reference tokens, so that the random stream (and every
    # draw after this one) does not depend on the model.
    drop_ref_B = (torch.rand(G, generator=g, device=dev) < ref_drop_prob)[mine]
    eps_s = None
    if struct_shape is not None:
        eps_s = torch.randn((G, *struct_shape[1:]), generator=g, device=dev)[mine]
    return NoiseDraw(
        sigma_v=sigma_v_GT[mine],
        sigma_s=sigma_s_GT[mine],
        valid=valid_BT,
        eps_v=eps_v,
        eps_s=eps_s,
        drop_audio=drop_audio_B,
        drop_ref=drop_ref_B,
    )


def mouth_boxes(batch: dict, latent_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The batch's mouth boxes in latent pixels, ``[B, T, 4]``."""
    sizes = set(map(tuple, batch["image_size"]))
    if len(sizes) != 1:
        raise ValueError(f"mouth boxes of one batch refer to several frame sizes {sizes}")
    return mouth_box_to_latent(batch["mouth_box"].to(device), sizes.pop(), latent_size)


def video_pixel_weights(
    batch: dict, mouth_weight: float, latent_size: tuple[int, int], device: torch.device
) -> torch.Tensor | None:
    """The video loss's per-pixel weights ``[B, T, H, W]`` (the mouth box weighted up, clips
    without a box uniform), or None for a plain mean: ``mouth_weight == 1`` or no box at all."""
    if mouth_weight == 1.0 or not bool(batch["has_mouth_box"].any()):
        return None
    H, W = latent_size
    w_BTHW = mouth_weight_map(mouth_boxes(batch, (H, W), device), H, W, mouth_weight)
    has_box_B = batch["has_mouth_box"].to(device)
    return torch.where(has_box_B[:, None, None, None], w_BTHW, torch.ones_like(w_BTHW))


class Objective:
    """The training loss of a DualForce model on a batch of windows
    (:class:`df_data.dataset.WindowDataset`'s, collated).

    ``weighting`` replaces the fixed weights by learned ones; ``lip`` (the lip-sync heads)
    adds ``L_lip`` and the heads' own term. Both are trained with the model, so the caller
    owns them (optimiser, checkpoints).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        device: torch.device,
        weighting: UncertaintyWeighting | None = None,
        lip: LipSyncLoss | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config, self.device = config, device
        self.weighting, self.lip = weighting, lip
        self.rank, self.world_size = rank, world_size

    def __call__(
        self, model: Callable, batch: dict, *, generator: torch.Generator, step: int
    ) -> tuple[torch.Tensor, Terms]:
        """``(loss, terms)``: the scalar to minimise and its named terms (undetached)."""
        return self.loss(model, batch, self.draw(batch, generator), step=step)

    def draw(self, batch: dict, generator: torch.Generator) -> NoiseDraw:
        c = self.config
        return draw_noise(
            c.noise,
            video_shape=batch["latents"].shape,
            struct_shape=batch["struct"].shape if c.model.struct_enabled else None,
            audio_drop_prob=c.loss.audio_drop_prob,
            ref_drop_prob=c.loss.ref_drop_prob,
            generator=generator,
            rank=self.rank,
            world_size=self.world_size,
        )

    def loss(
        self, model: Callable, batch: dict, draw: NoiseDraw, *, step: int
    ) -> tuple[torch.Tensor, Terms]:
        """The loss under given draws (``step`` sets the decaying weight of ``L_aux``)."""
        c, dev = self.config, self.device
        # Step 1: noise both streams at their per-frame levels.
        x0_v, eps_v = batch["latents"].to(dev), draw.eps_v.to(dev)
        sigma_v, sigma_s = draw.sigma_v.to(dev), draw.sigma_s.to(dev)
        x_v = add_noise(x0_v, eps_v, sigma_v)
        x0_s = eps_s = s_noisy = None
        if c.model.struct_enabled:
            x0_s, eps_s = batch["struct"].to(dev), draw.eps_s.to(dev)
            s_noisy = add_noise(x0_s, eps_s, sigma_s)
        # Step 2: the training forward.
        drop_audio = draw.drop_audio.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=c.precision == "bf16"):
            v_v, v_s = model(
                x_v,
                sigma_v_BT=sigma_v,
                audio_BTLDa=batch["audio"].to(dev),
                ref_latent_BCHW=batch["ref_latent"].to(dev),
                drop_audio_B=drop_audio,
                drop_ref_B=draw.drop_ref.to(dev) if c.model.ref_tokens_enabled else None,
                ref_feats_BRD=batch["ref_tokens"].to(dev) if c.model.ref_tokens_enabled else None,
                s_BTDs=s_noisy,
                sigma_s_BT=sigma_s if c.model.struct_enabled else None,
            )
        # Step 3: velocity losses, per token averaged per frame, context frames excluded.
        valid = draw.valid.to(dev)
        pixel_w = video_pixel_weights(batch, c.loss.mouth_weight, tuple(v_v.shape[-2:]), dev)
        terms = {
            "loss_video": velocity_losses(
                v_v, velocity_target(x0_v, eps_v), valid_BT=valid, pixel_weight_BTHW=pixel_w
            )
        }
        weights = {"loss_video": 1.0}
        if v_s is not None:
            terms["loss_struct"] = velocity_losses(
                v_s, velocity_target(x0_s, eps_s), valid_BT=valid
            )
            weights["loss_struct"] = c.loss.lambda_struct
            # L_aux: the struct stream's clean estimate against the clip's 3-D labels (SynthTalk:
            # its exact ground truth), with a weight that decays so the stream can drift from
            # them. Labels and estimate are both in the normalised units the struct stream sees.
            if c.loss.lambda_aux > 0:
                s0_hat = x0_from_velocity(s_noisy, v_s.float(), sigma_s)
                terms["loss_aux"] = aux_struct_loss(s0_hat, x0_s, valid)
                weights["loss_aux"] = aux_weight(step, c.loss.lambda_aux, c.loss.aux_decay_steps)
        if self.weighting is None:
            total = weighted_sum(terms, weights)
        else:
            total, _ = self.weighting(terms)
        # Step 4: L_lip on the predicted clean latents, where the clip has mouth boxes.
        if self.lip is not None and bool(batch["has_mouth_box"].any()):
            lip_terms = self.lip_terms(batch, x_v, v_v, sigma_v, valid, drop_audio)
            lip_weights = {"loss_lip_heads": 1.0, "loss_lip": c.loss.lambda_lip}
            total = weighted_sum(lip_terms, lip_weights, start=total)
            terms.update(lip_terms)
        return total, terms

    def lip_terms(
        self,
        batch: dict,
        x_v: torch.Tensor,
        v_v: torch.Tensor,
        sigma_v_BT: torch.Tensor,
        valid_BT: torch.Tensor,
        drop_audio_B: torch.Tensor,
    ) -> Terms:
        """``loss_lip_heads``: the heads' InfoNCE on ground-truth latents (trains the heads
        only); ``loss_lip``: the generator's InfoNCE on ``x0_hat = x_sigma - sigma * v_hat``
        against the same heads, frozen (trains the model only), on frames that carry loss, with
        a box, with audio (not dropped for CFG) and ``sigma_v <= lip_sigma_max``."""
        dev = self.device
        box = mouth_boxes(batch, tuple(x_v.shape[-2:]), dev)
        audio = batch["audio"].to(dev)
        if audio.dim() == 5:  # [B, T, La, K, Da] stacked encoder layers: the heads read their mean
            audio = audio.mean(dim=3)
        has_box_BT = batch["has_mouth_box"].to(dev)[:, None].expand(valid_BT.shape)
        heads, _ = self.lip(batch["latents"].to(dev), box, audio, has_box_BT)
        gen_valid_BT = (
            has_box_BT
            & valid_BT
            & ~drop_audio_B[:, None]
            & (sigma_v_BT <= self.config.loss.lip_sigma_max)
        )
        x0_hat = x0_from_velocity(x_v, v_v.float(), sigma_v_BT)
        gen, _ = self.lip(x0_hat, box, audio, gen_valid_BT, heads_grad=False)
        return {"loss_lip_heads": heads, "loss_lip": gen}
