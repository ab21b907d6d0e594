"""The full-sequence reference sampler: the training forward over every frame at every
iteration of the same schedule as the streaming sampler.

Legend: B batch, T frames, C latent channels, H W latent size, Ds structure dim, La audio
window, Da audio feature dim.
"""

from __future__ import annotations

import torch

from df_core import chunk_steps, euler_update
from df_infer.denoiser import Denoiser
from df_infer.frame_noise import frames_noise, noise_generator
from df_infer.sampler_config import SamplerConfig


@torch.no_grad()
def sample_full(
    model,
    ref_latent_BCHW: torch.Tensor,
    audio_BTLaDa: torch.Tensor,
    config: SamplerConfig,
    *,
    ref_feats_BRD: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference sampler: at every iteration of :func:`df_core.chunk_steps`, the training
    forward over all ``T`` frames (clean frames at ``sigma_ctx``, frames not yet started as
    noise), and an Euler step for the frames the schedule steps.

    Returns:
        ``(z_BTCHW, s_BTDs)``: the clean frames (normalised latents, model-space structure).
    """
    cfg, mc = config, model.config
    if cfg.clean_pass != "exact":
        raise ValueError("sample_full is the reference of clean_pass='exact' only")
    cfg.check_resolved()
    B, T = audio_BTLaDa.shape[:2]
    device = ref_latent_BCHW.device
    sig_v, sig_s = cfg.sigmas(device)
    K = cfg.steps
    denoise = Denoiser.for_sampler(
        model,
        ref_latent_BCHW,
        cfg,
        ref_feats_BRD=ref_feats_BRD,
    )
    noise = frames_noise(mc, B, 0, T, cfg.seed, device, noise_generator(device), cfg.noise_share)
    xv, xs = noise.v, None
    if mc.struct_enabled:
        xs = noise.s.clone()  # replaced when a frame starts
    prior_s = torch.zeros(B, mc.struct_raw_dim, device=device)
    ctx = torch.tensor(cfg.sigma_ctx, device=device)
    now = [0] * T  # steps each frame has taken
    i = 0
    while min(now) < K:
        plan = chunk_steps(i, num_steps=K, stagger=cfg.every)  # {chunk: the step it takes now}
        active = [t for t in range(T) if t // cfg.chunk in plan]
        # Step 1: frames that start now take their structure from the prior.
        if mc.struct_enabled:
            for t in active:
                if now[t] == 0:
                    xs[:, t] = (1 - sig_s[0]) * prior_s + sig_s[0] * noise.s[:, t]
        # Step 2: the whole clip at its levels: clean frames at the context level, re-noised
        # with their context noise.
        finished = torch.tensor([k == K for k in now], device=device)
        now_T = torch.tensor(now, device=device)
        level_v = torch.where(finished, ctx, sig_v[now_T])
        in_v = torch.where(
            finished[None, :, None, None, None], (1 - ctx) * xv + ctx * noise.ctx_v, xv
        )
        in_s = level_s = None
        if mc.struct_enabled:
            in_s = torch.where(finished[None, :, None], (1 - ctx) * xs + ctx * noise.ctx_s, xs)
            level_s = torch.where(finished, ctx, sig_s[now_T]).expand(B, T)
        v_hat, s_hat = denoise(in_v, in_s, level_v.expand(B, T), level_s, audio_BTLaDa)
        # Step 3: an Euler step for the frames the schedule steps.
        for t in active:
            k = now[t]
            xv[:, t] = euler_update(xv[:, t], v_hat[:, t], sig_v[k], sig_v[k + 1])
            if mc.struct_enabled:
                xs[:, t] = euler_update(xs[:, t], s_hat[:, t], sig_s[k], sig_s[k + 1])
            now[t] = k + 1
        # Step 4: frames finishing now set the structure prior of chunks starting next.
        done_now = [t for t in active if now[t] == K]
        if done_now and mc.struct_enabled and cfg.struct_prior == "previous":
            prior_s = xs[:, max(done_now)].clone()
        i += 1
    return xv, xs
