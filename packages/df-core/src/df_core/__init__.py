"""df-core: DualForce's pure math.

Noise schedules and Diffusion Forcing noise sampling, flow-matching algebra and samplers,
scheduling matrices for autoregressive sampling, frame masks (FlexAttention and dense), RoPE,
the multi-modal KV cache and attention dispatch. Depends only on torch and einops.
"""

from df_core.attention import BACKENDS, attention, resolve_backend, xformers_available
from df_core.conventions import (
    AUDIO_FEATURES_PER_VIDEO_FRAME,
    AUDIO_SAMPLE_RATE,
    FPS,
    SIGMA_S_MAX,
    group_first_frame,
    latent_frames_covering,
    video_span,
)
from df_core.flow import (
    add_noise,
    eps_from_velocity,
    euler_update,
    expand_sigma,
    frame_mse,
    reduce_frame_loss,
    velocity_target,
    x0_from_velocity,
)
from df_core.kv_cache import KVCache, StreamSpec
from df_core.masks import (
    EMPTY_FRAME,
    NO_WINDOW,
    SINK_FRAME,
    FrameMask,
    block_causal_mask,
    bridge_mask,
    same_frame_mask,
    token_frames,
)
from df_core.noise import (
    clean_prefix_lengths,
    sample_base_sigmas,
    sample_dual_sigmas,
    sample_frame_sigmas,
)
from df_core.rope import (
    apply_rope,
    frame_positions,
    grid_positions,
    is_sink,
    rope_cos_sin,
    slot_positions,
    split_head_dim,
)
from df_core.schedules import flow_sigmas, shift_sigma, struct_sigmas, unshift_sigma
from df_core.scheduling import chunk_steps

__all__ = [
    "AUDIO_FEATURES_PER_VIDEO_FRAME",
    "AUDIO_SAMPLE_RATE",
    "BACKENDS",
    "EMPTY_FRAME",
    "FPS",
    "NO_WINDOW",
    "SIGMA_S_MAX",
    "SINK_FRAME",
    "FrameMask",
    "KVCache",
    "StreamSpec",
    "add_noise",
    "apply_rope",
    "attention",
    "block_causal_mask",
    "bridge_mask",
    "chunk_steps",
    "clean_prefix_lengths",
    "eps_from_velocity",
    "euler_update",
    "expand_sigma",
    "flow_sigmas",
    "frame_mse",
    "frame_positions",
    "grid_positions",
    "group_first_frame",
    "is_sink",
    "latent_frames_covering",
    "reduce_frame_loss",
    "resolve_backend",
    "rope_cos_sin",
    "same_frame_mask",
    "sample_base_sigmas",
    "sample_dual_sigmas",
    "sample_frame_sigmas",
    "shift_sigma",
    "slot_positions",
    "split_head_dim",
    "struct_sigmas",
    "token_frames",
    "unshift_sigma",
    "velocity_target",
    "video_span",
    "x0_from_velocity",
    "xformers_available",
]
