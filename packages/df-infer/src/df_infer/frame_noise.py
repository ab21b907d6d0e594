"""Per-frame noise: each frame's initial and context noise is a function of ``(seed, frame)``.

Legend: B batch, n frames, C latent channels, H W latent size, Ds structure dim.

Seeding a generator per frame makes a frame's noise independent of how frames are chunked or
batched into passes, so the streaming and the full-sequence sampler start from the same noise.

``share`` mixes one noise shared by every frame of a stream into each frame's initial video
noise, ``v_t = sqrt(share) * v_shared + sqrt(1 - share) * v_own_t`` (the "mixed" noise prior of
Ge et al., *Preserve Your Own Correlation*, ICCV 2023): every frame's noise is still exactly
N(0, I), but neighbouring frames start correlated, so a deterministic sampler draws similar
texture in them instead of new texture every frame (issue 14: frame-to-frame flicker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_SEED_STRIDE = 1_000_003  # frame-noise seeds: seed * stride + frame
_SHARED_FRAME = _SEED_STRIDE - 1  # the shared noise's slot (a frame 11 hours in at 25 fps)


@dataclass(frozen=True, slots=True)
class FrameNoise:
    """Initial and context noise of one frame: ``v`` ``[B, C, H, W]``, ``s`` ``[B, Ds]``."""

    v: torch.Tensor
    s: torch.Tensor | None
    ctx_v: torch.Tensor
    ctx_s: torch.Tensor | None


def noise_generator(device) -> torch.Generator:
    return torch.Generator(device=torch.device(device))


def frame_noise(
    model_config,
    batch: int,
    frame: int,
    seed: int | Sequence[int],
    device,
    generator: torch.Generator,
    share: float = 0.0,
) -> FrameNoise:
    """The noise of frame ``frame``: a function of ``(seed, frame, share)`` only (and the
    device type's generator). ``share`` in [0, 1]: the shared part of the video noise.

    ``seed`` is one int for the whole batch (the batch's noise drawn together), or one seed per
    batch element: element ``b`` then gets exactly the noise a batch of one with ``seed[b]``
    gets, so clips generated together equal the same clips generated one at a time."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"frame_noise share must be in [0, 1], got {share}")
    if not isinstance(seed, int):
        seeds = [int(x) for x in seed]
        if len(seeds) != batch:
            raise ValueError(f"frame_noise: {len(seeds)} seeds for a batch of {batch}")
        parts = [frame_noise(model_config, 1, frame, x, device, generator, share) for x in seeds]
        return FrameNoise(
            *(
                None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
                for f in ("v", "s", "ctx_v", "ctx_s")
            )
        )
    c = model_config
    shape_v = (batch, c.latent_channels, c.latent_height, c.latent_width)
    shape_s = (batch, c.struct_raw_dim)
    kw = dict(generator=generator, device=device)
    shared_v = None
    if share > 0.0:
        generator.manual_seed(seed * _SEED_STRIDE + _SHARED_FRAME)
        shared_v = torch.randn(shape_v, **kw)
    generator.manual_seed(seed * _SEED_STRIDE + frame)
    v = torch.randn(shape_v, **kw)
    if shared_v is not None:
        v = share**0.5 * shared_v + (1.0 - share) ** 0.5 * v
    s = torch.randn(shape_s, **kw) if c.struct_enabled else None
    ctx_v = torch.randn(shape_v, **kw)
    ctx_s = torch.randn(shape_s, **kw) if c.struct_enabled else None
    return FrameNoise(v, s, ctx_v, ctx_s)


def frames_noise(
    model_config,
    batch: int,
    t0: int,
    n: int,
    seed: int | Sequence[int],
    device,
    generator: torch.Generator,
    share: float = 0.0,
) -> FrameNoise:
    """The noise of frames ``t0 .. t0 + n - 1`` stacked: ``v`` ``[B, n, C, H, W]``, ``s``
    ``[B, n, Ds]``."""
    noise = [
        frame_noise(model_config, batch, t, seed, device, generator, share)
        for t in range(t0, t0 + n)
    ]

    def stack(name: str) -> torch.Tensor | None:
        parts = [getattr(z, name) for z in noise]
        return None if parts[0] is None else torch.stack(parts, 1)

    return FrameNoise(stack("v"), stack("s"), stack("ctx_v"), stack("ctx_s"))
