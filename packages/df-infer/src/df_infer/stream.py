"""The streaming sampler: frames generated as their audio arrives, through the KV cache.

Legend: B batch, n frames of one chunk, C latent channels, H W latent size, Ds structure dim,
K steps, La audio window, Da audio feature dim.

At every iteration df-core's schedule (:func:`df_core.chunk_steps`) says which chunks take a
step and which; one forward pass of the :class:`~df_infer.denoiser.Denoiser` over the chunks
in flight gives their velocities, and each takes its Euler step (:func:`df_core.euler_update`).
See :mod:`df_infer.sampler` for the clean pass and its variants.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from df_core import chunk_steps, euler_update
from df_infer.denoiser import Denoiser
from df_infer.frame_noise import frames_noise, noise_generator
from df_infer.sampler_config import SamplerConfig


@dataclass(frozen=True, slots=True)
class SampledFrames:
    """Frames that just became clean: ``t0`` and ``z`` ``[B, n, C, H, W]`` (normalised
    latents), ``s`` ``[B, n, Ds]`` (model-space structure) or None."""

    t0: int
    z: torch.Tensor
    s: torch.Tensor | None


@dataclass(slots=True)
class _Chunk:
    """A chunk's flow state, in float32: ``xv`` ``[B, n, C, H, W]``, ``xs`` ``[B, n, Ds]`` and
    the context noise of its clean pass."""

    t0: int  # first frame
    n: int  # frames
    xv: torch.Tensor
    xs: torch.Tensor | None
    ctx_v: torch.Tensor
    ctx_s: torch.Tensor | None


@torch.no_grad()
def sample_stream(
    model,
    ref_latent_BCHW: torch.Tensor,
    audio,
    config: SamplerConfig,
    *,
    ref_feats_BRD: torch.Tensor | None = None,
    max_frames: int | None = None,
    cache=None,
    seeds: Sequence[int] | None = None,
    cache_modulations: bool = True,
    key_only_clean: bool = True,
) -> Iterator[SampledFrames]:
    """Generates frames as their audio arrives, yielding each chunk as soon as it is clean.

    Args:
        model: a :class:`~df_models.DualForceDiT` (eval mode).
        ref_latent_BCHW: the reference image's normalised codec latent (the sink frame).
        audio: an audio-window source: ``ensure(t_end) -> frames ready`` (pulls audio, blocks
            for live input), ``windows(t0, n) -> [n, La, Da]`` or ``[B, n, La, Da]`` (with
            ``K`` stacked encoder layers, ``[.., La, K, Da]`` and a ``layers = K`` attribute),
            and optionally ``release(t0)``; see :class:`df_infer.audio.StreamingFeatures`.
        config: the sampler settings, resolved (:func:`~df_infer.resolve_sampler`).
        max_frames: stop after this many frames (default: when the audio ends).
        cache: a cache from ``model.new_cache`` to reuse (it is reset); built when None.
        seeds: one noise seed per batch element (each element then samples exactly what a
            batch of one with its seed does); None draws the batch's noise from ``config.seed``.
        cache_modulations: compute the model's modulations once per noise level of the
            schedule (each pass names its levels to the denoiser) rather than in every pass.
        key_only_clean: once the window is full (passes without masks), the exact clean
            pass (its own pass) writes only keys/values and skips what only its discarded
            output needs (each stream's last block and heads); a masked clean pass runs in
            full, as the masked denoising pass's compiled graph. Both are exact; off, they
            measure what they save.

    Yields:
        :class:`SampledFrames`, in frame order.
    """
    cfg, mc = config, model.config
    cfg.check_resolved()
    B, device = ref_latent_BCHW.shape[0], ref_latent_BCHW.device
    K, every = cfg.steps, cfg.every
    seed = cfg.seed if seeds is None else [int(x) for x in seeds]
    if seeds is not None and len(seed) != B:
        raise ValueError(f"sample_stream: {len(seed)} seeds for a batch of {B} references")
    # Step 1: the denoiser over the cache, which starts with the reference sink frame.
    denoise = Denoiser.for_sampler(
        model,
        ref_latent_BCHW,
        cfg,
        ref_feats_BRD=ref_feats_BRD,
        cache=_stream_cache(model, cfg, B, device, cache),
        cache_modulations=cache_modulations,
    )
    denoise.write_sink()
    # The flow state and the levels stay in float32; only the model's inputs take its dtype.
    sig_v, sig_s = cfg.sigmas(device)
    ctx = torch.tensor(cfg.sigma_ctx, device=device)
    gen = noise_generator(device)
    levels = (sig_v, sig_s, ctx)
    prior_s = torch.zeros(B, mc.struct_raw_dim, device=device)
    flight: dict[int, _Chunk] = {}  # chunks being denoised, by chunk index, oldest first
    clean: _Chunk | None = None  # became clean last iteration; the next pass writes it
    next_chunk, next_t0, done, i = 0, 0, False, 0
    while True:
        plan = chunk_steps(i, num_steps=K, stagger=every)  # {chunk: the step it takes now}
        # Step 2: start the chunk that the schedule starts now, once its audio is there.
        if not done and plan.get(next_chunk) == 0:
            want = next_t0 + cfg.chunk
            if max_frames is not None:
                want = min(want, max_frames)
            ready = audio.ensure(want) if want > next_t0 else next_t0
            n = ready - next_t0
            if n > 0:
                flight[next_chunk] = _start_chunk(
                    mc, cfg, next_t0, n, B, prior_s, sig_s[0], gen, seed
                )
                next_chunk, next_t0 = next_chunk + 1, next_t0 + n
            if n < cfg.chunk or (max_frames is not None and next_t0 >= max_frames):
                done = True
        if not flight:
            break
        stepping = [(flight[c], k) for c, k in plan.items() if c in flight]
        # Step 3: unfused, the clean chunk's own pass at sigma_ctx (only its cache write
        # matters: DESIGN.md's extra forward on the clean chunk).
        if clean is not None and not cfg.fuse_clean:
            *inputs, key = _pass_inputs([clean], [], levels, audio, denoise.dtype)
            denoise(*inputs, commit=clean.n, levels=key, outputs=not key_only_clean)
            clean = None
        # Step 4: one pass over [the clean chunk, fused] + the chunks in flight. It commits the
        # clean chunk, or, with the approximate clean pass, the chunk taking its last step.
        riding = [clean] if clean is not None else []
        if clean is not None:
            commit = clean.n
        elif cfg.clean_pass == "approx" and stepping[0][1] == K - 1:
            commit = stepping[0][0].n
        else:
            commit = False
        *inputs, key = _pass_inputs(riding, stepping, levels, audio, denoise.dtype)
        v_hat, s_hat = denoise(*inputs, commit=commit, levels=key)
        # Step 5: an Euler step for every chunk in flight.
        offset = sum(ch.n for ch in riding)
        for ch, k in stepping:
            sl = slice(offset, offset + ch.n)
            offset += ch.n
            ch.xv = euler_update(ch.xv, v_hat[:, sl], sig_v[k], sig_v[k + 1])
            if ch.xs is not None:
                ch.xs = euler_update(ch.xs, s_hat[:, sl], sig_s[k], sig_s[k + 1])
        # Step 6: the chunk that step made clean sets the next chunk's structure prior, waits
        # for its clean pass (exact) and is yielded.
        clean = None
        finished = [c for c, k in plan.items() if k == K - 1 and c in flight]
        for c in finished:
            ch = flight.pop(c)
            if cfg.struct_prior == "previous" and ch.xs is not None:
                prior_s = ch.xs[:, -1]
            if cfg.clean_pass == "exact":
                clean = ch
            yield SampledFrames(ch.t0, ch.xv, ch.xs)
            if hasattr(audio, "release"):
                audio.release(ch.t0)  # the clean pass still reads this chunk's audio
        i += 1


def _start_chunk(mc, cfg, t0, n, B, prior_s, sig_s0, gen, seed) -> _Chunk:
    """Frames ``t0 .. t0 + n - 1`` at their initial noise."""
    noise = frames_noise(mc, B, t0, n, seed, prior_s.device, gen, cfg.noise_share)
    xs = None
    if noise.s is not None:
        # Structure starts at sigma_s_start on the flow path from its prior (DESIGN.md,
        # correction 3): x = (1 - sigma) * prior + sigma * eps.
        xs = (1 - sig_s0) * prior_s[:, None] + sig_s0 * noise.s
    return _Chunk(t0, n, noise.v, xs, noise.ctx_v, noise.ctx_s)


def _pass_inputs(clean: list[_Chunk], stepping: list[tuple[_Chunk, int]], levels, audio, dtype):
    """The inputs ``(z, s, sigma_v, sigma_s, audio)`` of one pass over ``clean`` chunks (at
    the context level, re-noised with their context noise) then ``stepping`` chunks (each at
    the level of the step it takes), all at batch B; and the name of the pass's levels: the
    step index (-1: the context level) and frame count of each chunk, which fix the levels
    within one stream."""
    sig_v, sig_s, ctx = levels
    zv, zs, sv, ss, aud = [], [], [], [], []
    parts = [(ch, None) for ch in clean] + stepping
    key = tuple((-1 if k is None else k, ch.n) for ch, k in parts)
    for ch, k in parts:
        B = ch.xv.shape[0]
        if k is None:
            zv.append((1 - ctx) * ch.xv + ctx * ch.ctx_v)
            sv.append(ctx.expand(B, ch.n))
        else:
            zv.append(ch.xv)
            sv.append(sig_v[k].expand(B, ch.n))
        if ch.xs is not None:
            if k is None:
                zs.append((1 - ctx) * ch.xs + ctx * ch.ctx_s)
                ss.append(ctx.expand(B, ch.n))
            else:
                zs.append(ch.xs)
                ss.append(sig_s[k].expand(B, ch.n))
        a = audio.windows(ch.t0, ch.n)
        device = ch.xv.device
        if device.type == "cuda" and a.device.type == "cpu":
            a = a.pin_memory()  # a pageable copy could wait for the queued passes
        a = a.to(device=device, dtype=dtype, non_blocking=True)
        # Unbatched windows are [n, La, Da], or [n, La, K, Da] from a source of K > 1 layers.
        unbatched = 3 + (getattr(audio, "layers", 1) > 1)
        aud.append(a.expand(B, *a.shape) if a.dim() == unbatched else a)
    cat = torch.cat
    return (
        cat(zv, 1),
        cat(zs, 1) if zs else None,
        cat(sv, 1),
        cat(ss, 1) if ss else None,
        cat(aud, 1),
        key,
    )


def _stream_cache(model, cfg: SamplerConfig, B: int, device, cache):
    """``cache`` checked against the passes of ``cfg``, or a new one."""
    batch = 2 * B if cfg.guided else B
    if cache is None:
        return model.new_cache(batch, max_chunk=cfg.max_pass_frames, device=device)
    if cache.batch != batch or cache.max_chunk < cfg.max_pass_frames:
        raise ValueError(
            f"cache must have batch {batch} and max_chunk >= {cfg.max_pass_frames}, got "
            f"{cache.batch} and {cache.max_chunk}"
        )
    return cache
