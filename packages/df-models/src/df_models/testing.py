"""Helpers for tests of DualForce models here and downstream (df-train, df-infer): random
weights for every parameter and random inputs of the right shapes for a config."""

from __future__ import annotations

import torch

from df_core import SIGMA_S_MAX
from df_models.config import DualForceConfig
from df_models.dit import DualForceDiT


def randomize(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Random values for every parameter, zero-initialised gates and heads included, so that
    tests exercise every path (a freshly initialised model outputs exactly zero). Norm scales
    become ``1 + std * noise`` so deep models keep their signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype) * std
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return model


def random_inputs(
    config: DualForceConfig, batch: int, frames: int, seed: int
) -> dict[str, torch.Tensor]:
    """Random inputs for :meth:`DualForceDiT.forward` (keyword names as its arguments)."""
    g = torch.Generator().manual_seed(seed)
    c = config
    audio_shape = (
        (batch, frames, c.audio_window)
        + ((c.audio_layers,) if c.audio_layers > 1 else ())
        + (c.audio_dim,)
    )
    inputs = {
        "z_BTCHW": torch.randn(
            batch, frames, c.latent_channels, c.latent_height, c.latent_width, generator=g
        ),
        "s_BTDs": torch.randn(batch, frames, c.struct_raw_dim, generator=g)
        if c.struct_enabled
        else None,
        "sigma_v_BT": torch.rand(batch, frames, generator=g),
        "sigma_s_BT": torch.rand(batch, frames, generator=g) * SIGMA_S_MAX
        if c.struct_enabled
        else None,
        "audio_BTLDa": torch.randn(audio_shape, generator=g),
        "ref_latent_BCHW": torch.randn(
            batch, c.latent_channels, c.latent_height, c.latent_width, generator=g
        ),
        "ref_feats_BRD": torch.randn(batch, 3, c.ref_feature_dim, generator=g)
        if c.ref_tokens_enabled
        else None,
    }
    return inputs


def random_model(config: DualForceConfig, seed: int = 0) -> DualForceDiT:
    """A model with every parameter random (see :func:`randomize`), in eval mode."""
    model = DualForceDiT(config)
    model.init_weights()
    return randomize(model, seed).eval()


def tiny_wan_vae(latents_mean: list[float], latents_std: list[float], seed: int = 0):
    """A tiny randomly initialised diffusers ``AutoencoderKLWan`` (4 latent channels, 4 video
    frames per latent frame), for tests of the pretrained-VAE code paths. Needs diffusers."""
    from diffusers import AutoencoderKLWan

    if len(latents_mean) != 4 or len(latents_std) != 4:
        raise ValueError("latents_mean and latents_std must have 4 entries (z_dim=4)")
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=list(latents_mean),
        latents_std=list(latents_std),
    )
