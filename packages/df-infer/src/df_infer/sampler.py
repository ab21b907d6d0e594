"""Autoregressive samplers: streaming through the KV cache (:mod:`df_infer.stream`), and the
full-sequence reference (:mod:`df_infer.full`), with their settings
(:mod:`df_infer.sampler_config`) and the denoiser both call (:mod:`df_infer.denoiser`).

Both follow df-core's schedule (:func:`df_core.chunk_steps`: chunk ``c`` takes step
``k = i - c * stagger`` at iteration ``i`` while ``0 <= k < K``): chunk ``c`` starts at
iteration ``c * stagger`` from noise (video at sigma 1, structure at ``sigma_s_start``,
"structure first" when ``struct_finish_step < K``) and takes one Euler step per iteration
until it is clean. ``stagger = K`` is chunk-wise sampling (frame-wise for
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
not depend on how frames are chunked or on the batch composition of earlier passes
(:mod:`df_infer.frame_noise`).
"""

from df_infer.denoiser import Denoiser, guide
from df_infer.frame_noise import FrameNoise, frame_noise
from df_infer.full import sample_full
from df_infer.sampler_config import SamplerConfig, bundle_sampler, resolve_sampler
from df_infer.stream import SampledFrames, sample_stream

__all__ = [
    "Denoiser",
    "FrameNoise",
    "SampledFrames",
    "SamplerConfig",
    "bundle_sampler",
    "frame_noise",
    "guide",
    "resolve_sampler",
    "sample_full",
    "sample_stream",
]
