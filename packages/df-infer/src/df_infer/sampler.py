"""Autoregressive samplers: streaming through the KV cache, and the full-sequence reference.

Legend: B batch, T frames, n frames of one chunk, C latent channels, H W latent size, Ds
structure dim, K steps, I iterations, La audio window, Da audio feature dim.

Both follow df-core's scheduling matrix (``step[i, t] = clamp(i - (t // chunk) * stagger, 0,
K)``): chunk ``c`` starts at iteration ``c * stagger`` from noise (video at sigma 1, structure
at ``sigma_s_start``, "structure first" when ``struct_finish_step < K``) and takes one Euler
step per iteration until it is clean. ``stagger = K`` is chunk-wise sampling (frame-wise for
chunk 1); ``stagger < K`` keeps several chunks in flight, each noisier than the one before.

The streaming sampler (:func:`sample_stream`) runs one forward pass per iteration over the
frames in flight. A chunk that became clean at iteration ``i - 1`` is written to the cache by
one more pass at sigma 0 (or ``sigma_ctx``) before iteration ``i``: DESIGN.md's "one extra
forward at sigma 0 on the clean chunk", so the clean frames' keys are exactly what training
saw as clean context. With ``fuse_clean`` that chunk instead rides in front of iteration
``i``'s pass (K passes per chunk instead of K + 1, but every pass is then two chunks long
and needs a mask: the cache keeps a spare slot, so some slot is always hidden from some
query). Separate, a one-frame chunk's passes see every slot once the window is full and run
with no mask (:meth:`df_core.KVCache.all_visible`), which on the H100 is the faster of the
two (BENCHMARKS.md). ``clean_pass="approx"`` instead commits a chunk's keys from its own last
step (K passes, slightly off-distribution). The full-sequence sampler
(:func:`sample_full`) runs the training forward over every frame at every iteration: given the
same noise it produces the same frames, which is the end-to-end form of the cache invariant.

Noise is drawn per frame from a generator seeded by ``(seed, frame)``, so a frame's noise does
not depend on how frames are chunked or on the batch composition of earlier passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from df_core import flow_sigmas, scheduling_steps, struct_sigmas

_SEED_STRIDE = 1_000_003  # frame-noise seeds: seed * stride + frame


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 4  # K: denoising steps per frame
    chunk: int = 1  # frames generated together
    stagger: int | None = None  # iterations between chunk starts; None = steps (chunk-wise)
    shift: float = 1.0  # shift of the video schedule (default: the training shift)
    sigma_s_start: float = 0.7  # structure starts here (= training sigma_s_max)
    struct_finish_step: int | None = None  # structure clean after this step; None = K
    clean_pass: str = "exact"  # exact: clean frames rewritten at sigma_ctx | approx: last step's
    sigma_ctx: float = 0.0  # noise level of the clean pass (training's context noise)
    fuse_clean: bool = False  # exact: clean chunk rides in the next chunk's first pass
    cfg_audio: float = 1.0  # classifier-free guidance scale on audio; 1 = off
    # the structure stream's own audio-guidance scale; None = cfg_audio. Guidance sharpens the
    # video's mouth but extrapolates the structure too (its jaw overshoots), so the two
    # streams may want different scales.
    cfg_struct: float | None = None
    struct_prior: str = "previous"  # structure starts from the last clean frame's | zero
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplerConfig.{name} must be a positive integer, got {value!r}")
        if self.stagger is not None and not (
            isinstance(self.stagger, int) and 1 <= self.stagger <= self.steps
        ):
            raise ValueError(
                f"SamplerConfig.stagger must be in [1, steps={self.steps}] or None, got {self.stagger!r}"
            )
        if not self.shift > 0:
            raise ValueError(f"SamplerConfig.shift must be > 0, got {self.shift!r}")
        for name in ("sigma_s_start", "sigma_ctx"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"SamplerConfig.{name} must be in [0, 1], got {getattr(self, name)!r}"
                )
        if self.sigma_s_start == 0.0:
            raise ValueError("SamplerConfig.sigma_s_start must be > 0")
        if self.struct_finish_step is not None and not 1 <= self.struct_finish_step <= self.steps:
            raise ValueError(
                f"SamplerConfig.struct_finish_step must be in [1, steps={self.steps}], got "
                f"{self.struct_finish_step!r}"
            )
        if self.clean_pass not in ("exact", "approx"):
            raise ValueError(
                f"SamplerConfig.clean_pass must be exact or approx, got {self.clean_pass!r}"
            )
        if not isinstance(self.fuse_clean, bool):
            raise ValueError(f"SamplerConfig.fuse_clean must be a bool, got {self.fuse_clean!r}")
        if self.fuse_clean and self.clean_pass != "exact":
            raise ValueError(
                "SamplerConfig.fuse_clean needs clean_pass='exact' (the approximate pass has no "
                "clean pass to fuse)"
            )
        if self.struct_prior not in ("previous", "zero"):
            raise ValueError(
                f"SamplerConfig.struct_prior must be previous or zero, got {self.struct_prior!r}"
            )
        if not self.cfg_audio >= 0:
            raise ValueError(f"SamplerConfig.cfg_audio must be >= 0, got {self.cfg_audio!r}")
        if self.cfg_struct is not None and not self.cfg_struct >= 0:
            raise ValueError(
                f"SamplerConfig.cfg_struct must be >= 0 or None, got {self.cfg_struct!r}"
            )

    @property
    def struct_guidance(self) -> float:
        """The structure stream's guidance scale."""
        return self.cfg_audio if self.cfg_struct is None else self.cfg_struct

    @property
    def guided(self) -> bool:
        """Whether a pass needs the unconditional half of the batch."""
        return self.cfg_audio != 1.0 or self.struct_guidance != 1.0

    @property
    def every(self) -> int:
        """Iterations between chunk starts."""
        return self.steps if self.stagger is None else self.stagger

    @property
    def max_pass_frames(self) -> int:
        """Frames of the largest pass: the clean chunk plus every chunk in flight."""
        in_flight = -(-self.steps // self.every)
        riding = self.clean_pass == "exact" and self.fuse_clean
        return self.chunk * (in_flight + riding)

    def sigmas(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigma_v_K1, sigma_s_K1)``, float32 on ``device``."""
        v = flow_sigmas(self.steps, shift=self.shift, device=device)
        s = struct_sigmas(
            self.steps,
            sigma_start=self.sigma_s_start,
            shift=self.shift,
            finish_step=self.struct_finish_step,
            device=device,
        )
        return v, s


@dataclass
class FrameNoise:
    """Initial and context noise of one frame: ``v`` ``[B, C, H, W]``, ``s`` ``[B, Ds]``."""

    v: torch.Tensor
    s: torch.Tensor | None
    ctx_v: torch.Tensor
    ctx_s: torch.Tensor | None


def frame_noise(
    model_config, batch: int, frame: int, seed: int, device, generator: torch.Generator
) -> FrameNoise:
    """The noise of frame ``frame``: a function of ``(seed, frame)`` only (and the device
    type's generator)."""
    c = model_config
    generator.manual_seed(seed * _SEED_STRIDE + frame)
    shape_v = (batch, c.latent_channels, c.latent_height, c.latent_width)
    shape_s = (batch, c.struct_raw_dim)
    kw = dict(generator=generator, device=device)
    v = torch.randn(shape_v, **kw)
    s = torch.randn(shape_s, **kw) if c.struct_enabled else None
    ctx_v = torch.randn(shape_v, **kw)
    ctx_s = torch.randn(shape_s, **kw) if c.struct_enabled else None
    return FrameNoise(v, s, ctx_v, ctx_s)


def _noise_generator(device) -> torch.Generator:
    return torch.Generator(device=torch.device(device))


@dataclass
class _Chunk:
    t0: int  # first frame
    n: int  # frames
    k: int  # steps taken
    xv: torch.Tensor  # [B, n, C, H, W]
    xs: torch.Tensor | None  # [B, n, Ds]
    ctx_v: torch.Tensor  # context noise [B, n, C, H, W]
    ctx_s: torch.Tensor | None


def _start_chunk(model, cfg, t0, n, batch, prior_s, sig_s0, device, gen) -> _Chunk:
    noise = [frame_noise(model.config, batch, t, cfg.seed, device, gen) for t in range(t0, t0 + n)]
    xv = torch.stack([z.v for z in noise], 1)
    ctx_v = torch.stack([z.ctx_v for z in noise], 1)
    xs = ctx_s = None
    if model.config.struct_enabled:
        eps_s = torch.stack([z.s for z in noise], 1)
        # Structure starts at sigma_s_start on the flow path from its prior (DESIGN.md,
        # correction 3): x = (1 - sigma) * prior + sigma * eps.
        xs = (1 - sig_s0) * prior_s[:, None] + sig_s0 * eps_s
        ctx_s = torch.stack([z.ctx_s for z in noise], 1)
    return _Chunk(t0, n, 0, xv, xs, ctx_v, ctx_s)


def _combine(cfg: SamplerConfig, out):
    """Classifier-free guidance on audio: the batch holds [conditional; unconditional] halves;
    the video takes ``cfg_audio``, the structure ``struct_guidance``."""
    if not cfg.guided:
        return out
    v, s = out
    half, g = v.shape[0] // 2, cfg.cfg_audio
    v = v[half:] + g * (v[:half] - v[half:])
    if s is not None:
        gs = cfg.struct_guidance
        s = s[half:] + gs * (s[:half] - s[half:])
    return v, s


def _double(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, x])


@dataclass
class SampledFrames:
    """Frames that just became clean: ``t0`` and ``z`` ``[B, n, C, H, W]`` (normalised
    latents), ``s`` ``[B, n, Ds]`` (model-space structure) or None."""

    t0: int
    z: torch.Tensor
    s: torch.Tensor | None


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
) -> Iterator[SampledFrames]:
    """Generates frames as their audio arrives, yielding each chunk as soon as it is clean.

    Args:
        model: a :class:`~df_models.DualForceDiT` (eval mode).
        ref_latent_BCHW: the reference image's normalised codec latent (the sink frame).
        audio: an audio-window source: ``ensure(t_end) -> frames ready`` (pulls audio, blocks
            for live input), ``windows(t0, n) -> [n, La, Da]`` or ``[B, n, La, Da]``, and
            optionally ``release(t0)``; see :class:`df_infer.audio.StreamingFeatures`.
        config: the sampler settings.
        max_frames: stop after this many frames (default: when the audio ends).
        cache: a cache from ``model.new_cache`` to reuse (it is reset); built when None.

    Yields:
        :class:`SampledFrames`, in frame order.
    """
    cfg, mc = config, model.config
    B = ref_latent_BCHW.shape[0]
    device, dtype = ref_latent_BCHW.device, next(model.parameters()).dtype
    cfg_on = cfg.guided
    Bc = 2 * B if cfg_on else B
    if cache is None:
        cache = model.new_cache(Bc, max_chunk=cfg.max_pass_frames, device=device)
    elif cache.batch != Bc or cache.max_chunk < cfg.max_pass_frames:
        raise ValueError(
            f"cache must have batch {Bc} and max_chunk >= {cfg.max_pass_frames}, got "
            f"{cache.batch} and {cache.max_chunk}"
        )
    drop = torch.arange(Bc, device=device) >= B if cfg_on else None
    # Step 1: the reference sink frame.
    model.prefill(
        cache,
        _double(ref_latent_BCHW) if cfg_on else ref_latent_BCHW,
        _double(ref_feats_BRD) if cfg_on else ref_feats_BRD,
    )
    # The flow state and the levels stay in float32; only the model's inputs take its dtype.
    sig_v, sig_s = cfg.sigmas(device)
    K, every = cfg.steps, cfg.every
    ctx_level = torch.tensor(cfg.sigma_ctx, device=device)
    gen = _noise_generator(device)
    prior_s = torch.zeros(B, mc.struct_raw_dim, device=device)
    flight: list[_Chunk] = []
    clean: _Chunk | None = None  # finished last iteration; written by the next pass

    def one_pass(cleans: list[_Chunk], noisy: list[_Chunk], commit: bool | int):
        """One forward over clean chunks (at ``sigma_ctx``) then noisy ones; the guided and
        float32 velocity ``(v_hat, s_hat)``."""
        zv, zs, sv, ss, aud = [], [], [], [], []
        for ch, is_clean in [(c, True) for c in cleans] + [(c, False) for c in noisy]:
            if is_clean:
                zv.append((1 - ctx_level) * ch.xv + ctx_level * ch.ctx_v)
                sv.append(ctx_level.expand(B, ch.n))
            else:
                zv.append(ch.xv)
                sv.append(sig_v[ch.k].expand(B, ch.n))
            if mc.struct_enabled:
                if is_clean:
                    zs.append((1 - ctx_level) * ch.xs + ctx_level * ch.ctx_s)
                    ss.append(ctx_level.expand(B, ch.n))
                else:
                    zs.append(ch.xs)
                    ss.append(sig_s[ch.k].expand(B, ch.n))
            a = audio.windows(ch.t0, ch.n)
            if device.type == "cuda" and a.device.type == "cpu":
                a = a.pin_memory()  # a pageable copy could wait for the queued passes
            a = a.to(device=device, dtype=dtype, non_blocking=True)
            aud.append(a.expand(B, *a.shape) if a.dim() == 3 else a)
        zv_, sv_, aud_ = torch.cat(zv, 1).to(dtype), torch.cat(sv, 1), torch.cat(aud, 1)
        zs_ = torch.cat(zs, 1).to(dtype) if zs else None
        ss_ = torch.cat(ss, 1) if ss else None
        if device.type == "cuda":
            # A new step for CUDA-graph trees (a pass compiled with reduce-overhead): this
            # pass may reuse the previous pass's output memory, which the Euler step has
            # already consumed. A no-op for eager models.
            torch.compiler.cudagraph_mark_step_begin()
        if cfg_on:
            out = model.forward_stream(
                cache,
                _double(zv_),
                _double(zs_),
                _double(sv_),
                _double(ss_),
                _double(aud_),
                commit=commit,
                ref_feats_BRD=_double(ref_feats_BRD),
                drop_audio_B=drop,
            )
        else:
            out = model.forward_stream(
                cache, zv_, zs_, sv_, ss_, aud_, commit=commit, ref_feats_BRD=ref_feats_BRD
            )
        v_hat, s_hat = _combine(cfg, out)
        return v_hat.float(), (s_hat.float() if s_hat is not None else None)

    next_t0, i, done = 0, 0, False
    while True:
        # Step 2: start the chunk whose turn it is, once its audio is there.
        if not done and i % every == 0:
            want = next_t0 + cfg.chunk
            if max_frames is not None:
                want = min(want, max_frames)
            ready = audio.ensure(want) if want > next_t0 else next_t0
            n = ready - next_t0
            if n > 0:
                flight.append(
                    _start_chunk(model, cfg, next_t0, n, B, prior_s, sig_s[0], device, gen)
                )
                next_t0 += n
            if n < cfg.chunk or (max_frames is not None and next_t0 >= max_frames):
                done = True
        if not flight:
            break
        # Step 3: one pass over [clean chunk at sigma_ctx] + chunks in flight; or, unfused,
        # the clean chunk's own pass first.
        if clean is not None and not cfg.fuse_clean:
            one_pass([clean], [], commit=clean.n)  # only its cache write matters
            clean = None
        if clean is not None:
            commit = clean.n
        elif cfg.clean_pass == "approx" and flight[0].k == K - 1:
            commit = flight[0].n
        else:
            commit = False
        v_hat, s_hat = one_pass([clean] if clean is not None else [], flight, commit=commit)
        # Step 4: an Euler step for every chunk in flight; finished chunks are yielded.
        offset = clean.n if clean is not None else 0
        clean = None
        still = []
        for ch in flight:
            sl = slice(offset, offset + ch.n)
            offset += ch.n
            ch.xv = ch.xv + (sig_v[ch.k + 1] - sig_v[ch.k]) * v_hat[:, sl]
            if mc.struct_enabled:
                ch.xs = ch.xs + (sig_s[ch.k + 1] - sig_s[ch.k]) * s_hat[:, sl]
            ch.k += 1
            if ch.k == K:
                if cfg.struct_prior == "previous" and mc.struct_enabled:
                    prior_s = ch.xs[:, -1]
                if cfg.clean_pass == "exact":
                    clean = ch
                yield SampledFrames(ch.t0, ch.xv, ch.xs)
                if hasattr(audio, "release"):
                    audio.release(ch.t0)  # the clean pass still reads this chunk's audio
            else:
                still.append(ch)
        flight = still
        i += 1


@torch.no_grad()
def sample_full(
    model,
    ref_latent_BCHW: torch.Tensor,
    audio_BTLaDa: torch.Tensor,
    config: SamplerConfig,
    *,
    ref_feats_BRD: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference sampler: the training forward over all ``T`` frames at every iteration of
    the scheduling matrix (clean frames at ``sigma_ctx``, frames not yet started as noise).

    Returns:
        ``(z_BTCHW, s_BTDs)``: the clean frames (normalised latents, model-space structure).
    """
    cfg, mc = config, model.config
    if cfg.clean_pass != "exact":
        raise ValueError("sample_full is the reference of clean_pass='exact' only")
    B, T = audio_BTLaDa.shape[:2]
    device, dtype = ref_latent_BCHW.device, next(model.parameters()).dtype
    sig_v, sig_s = cfg.sigmas(device)
    K = cfg.steps
    steps_IT = scheduling_steps(T, K, chunk_size=cfg.chunk, stagger=cfg.every).tolist()
    gen = _noise_generator(device)
    noise = [frame_noise(mc, B, t, cfg.seed, device, gen) for t in range(T)]
    xv = torch.stack([z.v for z in noise], 1)
    ctx_v = torch.stack([z.ctx_v for z in noise], 1)
    xs = ctx_s = None
    if mc.struct_enabled:
        xs = torch.stack([z.s for z in noise], 1)  # replaced when a frame starts
        ctx_s = torch.stack([z.ctx_s for z in noise], 1)
        eps_s = xs.clone()
    prior_s = torch.zeros(B, mc.struct_raw_dim, device=device)
    ctx = torch.tensor(cfg.sigma_ctx, device=device)
    cfg_on = cfg.guided
    for i in range(len(steps_IT) - 1):
        now, nxt = steps_IT[i], steps_IT[i + 1]
        active = [t for t in range(T) if nxt[t] > now[t]]
        if mc.struct_enabled:
            for t in active:
                if now[t] == 0:
                    xs[:, t] = (1 - sig_s[0]) * prior_s + sig_s[0] * eps_s[:, t]
        finished = torch.tensor([s == K for s in now], device=device)
        level_v = torch.where(finished, ctx, sig_v[torch.tensor(now, device=device)])
        in_v = torch.where(finished[None, :, None, None, None], (1 - ctx) * xv + ctx * ctx_v, xv)
        args = dict(
            z_BTCHW=in_v.to(dtype),
            sigma_v_BT=level_v.expand(B, T),
            audio_BTLaDa=audio_BTLaDa.to(dtype),
            ref_latent_BCHW=ref_latent_BCHW,
            ref_feats_BRD=ref_feats_BRD,
        )
        if mc.struct_enabled:
            args["s_BTDs"] = torch.where(
                finished[None, :, None], (1 - ctx) * xs + ctx * ctx_s, xs
            ).to(dtype)
            args["sigma_s_BT"] = torch.where(
                finished, ctx, sig_s[torch.tensor(now, device=device)]
            ).expand(B, T)
        else:
            args["s_BTDs"] = args["sigma_s_BT"] = None
        if cfg_on:
            doubled = {k: _double(v) for k, v in args.items()}
            drop = torch.arange(2 * B, device=device) >= B
            v_hat, s_hat = _combine(cfg, model(**_rename(doubled), drop_audio_B=drop))
        else:
            v_hat, s_hat = model(**_rename(args))
        v_hat = v_hat.float()
        s_hat = s_hat.float() if s_hat is not None else None
        for t in active:
            k = now[t]
            xv[:, t] = xv[:, t] + (sig_v[k + 1] - sig_v[k]) * v_hat[:, t]
            if mc.struct_enabled:
                xs[:, t] = xs[:, t] + (sig_s[k + 1] - sig_s[k]) * s_hat[:, t]
        # Frames finishing now set the structure prior of chunks starting next iteration.
        done_now = [t for t in active if nxt[t] == K]
        if done_now and mc.struct_enabled and cfg.struct_prior == "previous":
            prior_s = xs[:, max(done_now)].clone()
    return xv, xs


def _rename(args: dict) -> dict:
    out = dict(args)
    out["audio_BTLDa"] = out.pop("audio_BTLaDa")
    return out
