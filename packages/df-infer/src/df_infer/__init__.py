"""DualForce inference: streaming generation with the KV cache.

``StreamingGenerator`` (checkpoint + reference image + audio -> frames as they are made),
``SamplerConfig`` (resolved against a bundle by ``resolve_sampler``; a bundle's recommended
one is ``bundle_sampler``) with ``sample_stream`` (the streaming sampler over any
DualForceDiT) and ``sample_full`` (its full-sequence reference), ``StreamingFeatures`` (incremental
audio features; ``BatchedFeatures``: several streams as one batch), ``generate_video`` (-> mp4
with the audio muxed in) and ``generate_videos`` (several clips in one batch).
"""

from df_infer.audio import BatchedFeatures, StreamingFeatures
from df_infer.full import sample_full
from df_infer.generate import GenerationSummary, generate_video, generate_videos
from df_infer.pipeline import Frame, StreamingGenerator
from df_infer.sampler_config import SamplerConfig, bundle_sampler, resolve_sampler
from df_infer.stream import SampledFrames, sample_stream

__all__ = [
    "BatchedFeatures",
    "Frame",
    "GenerationSummary",
    "SampledFrames",
    "SamplerConfig",
    "StreamingFeatures",
    "StreamingGenerator",
    "bundle_sampler",
    "generate_video",
    "generate_videos",
    "resolve_sampler",
    "sample_full",
    "sample_stream",
]
