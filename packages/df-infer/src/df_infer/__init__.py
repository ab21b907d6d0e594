"""DualForce inference: streaming generation with the KV cache.

``StreamingGenerator`` (checkpoint + reference image + audio -> frames as they are made),
``SamplerConfig`` with ``sample_stream`` (the streaming sampler over any DualForceDiT) and
``sample_full`` (its full-sequence reference), ``StreamingFeatures`` (incremental audio
features), ``generate_video`` (-> mp4 with the audio muxed in).
"""

from df_infer.audio import StreamingFeatures
from df_infer.generate import GenerationSummary, generate_video
from df_infer.pipeline import Frame, StreamingGenerator
from df_infer.sampler import SamplerConfig, sample_full, sample_stream

__all__ = [
    "Frame",
    "GenerationSummary",
    "SamplerConfig",
    "StreamingFeatures",
    "StreamingGenerator",
    "generate_video",
    "sample_full",
    "sample_stream",
]
