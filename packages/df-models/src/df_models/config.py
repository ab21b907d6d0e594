"""DualForce model configuration: one frozen dataclass, presets as functions.

Every option an ablation of DESIGN.md needs is a field: struct stream on/off, bridge
direction and temporal form, ``n_fusion``, struct tokens per frame, audio into shallow or all
blocks, reference tokens on/off, sliding window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from df_core.checks import (
    boolean,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
)
from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME

BRIDGES = ("bidirectional", "struct_to_video", "off")
BRIDGE_TEMPORAL = ("same_frame", "causal")
BLOCK_SETS = ("shallow", "all")
VIDEO_PREDICTIONS = ("velocity", "clean", "clean_from_reference")
_POSITIVE_INTS = (
    "latent_channels",
    "latent_height",
    "latent_width",
    "patch_size",
    "frames_per_latent",
    "video_dim",
    "video_depth",
    "video_heads",
    "struct_raw_dim",
    "struct_tokens",
    "struct_dim",
    "struct_depth",
    "struct_heads",
    "audio_dim",
    "audio_layers",
    "audio_feats_per_frame",
    "noise_freq_dim",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DualForceConfig:
    # Latent geometry (one latent frame as the codec gives it).
    latent_channels: int = 16  # C
    latent_height: int = 64  # H of the latent grid
    latent_width: int = 64  # W of the latent grid
    patch_size: int = 2  # p: video tokens per frame N_v = (H / p) * (W / p)
    frames_per_latent: int = 1  # video frames per latent frame (4 for the Wan VAE)
    # Video stream.
    video_dim: int = 1536  # D_v
    video_depth: int = 20  # L_v blocks
    video_heads: int = 12  # attention heads (head dim D_v / heads)
    # Structure stream (LivePortrait-style: 21 keypoints x 3 + rotation 3 + translation 3 + scale 1).
    struct_enabled: bool = True  # False: the "no struct stream" ablation
    struct_raw_dim: int = 70  # Ds per latent frame: k x the store's dims at frames_per_latent k
    struct_tokens: int = 4  # N_s tokens per frame
    struct_dim: int = 512  # D_s
    struct_depth: int = 12  # L_s <= L_v
    struct_heads: int = 8
    # Fusion between the streams, in the first n_fusion ("shallow") blocks.
    n_fusion: int = 6  # shallow blocks, <= L_s
    bridge: str = "bidirectional"  # bidirectional | struct_to_video | off
    bridge_temporal: str = "same_frame"  # same_frame | causal (past frames in the window)
    # Audio condition (50 Hz features: 2 feature frames per video frame).
    audio_dim: int = 768  # Da (HuBERT-base)
    audio_layers: int = 1  # encoder layers given; > 1 learns a softmax-weighted sum over them
    audio_feats_per_frame: int = AUDIO_FEATURES_PER_VIDEO_FRAME  # feature frames per video frame
    audio_context: int = 2  # video frames of context on each side of a latent frame
    audio_into: str = "shallow"  # shallow | all video/struct blocks get audio cross-attention
    # Reference image condition (besides the sink frame).
    ref_tokens_enabled: bool = False  # global reference tokens (DINOv2/CLIP) by cross-attention
    # The reference latent also added to every frame's video tokens through its own patch
    # embedding (zero-initialised): channel concatenation, as image-to-video models condition
    # (SVD, Wan I2V), so each token sees the reference at its own position at no attention cost.
    ref_concat: bool = False
    ref_feature_dim: int = 1024  # width of the reference features
    ref_into: str = "shallow"  # shallow | all video blocks
    # Attention.
    window: int | None = None  # sliding window in latent frames (None: all past frames)
    mlp_ratio: float = 4.0
    noise_freq_dim: int = 256  # sinusoidal features of each frame's noise level
    rope_theta: float = 10000.0
    qk_norm: bool = True  # RMSNorm on queries and keys (stabilises bf16 training)
    norm_eps: float = 1e-6
    # What the video head predicts. The model always returns the velocity; with "clean" the head
    # predicts the clean latent x0 and the velocity is (z - x0_hat) / max(sigma, clean_sigma_min)
    # (x-prediction under the same velocity loss, as in Li & He, "Back to Basics: Let Denoising
    # Generative Models Denoise", 2025). A velocity head must reproduce the input's noise through
    # the patch embedding, the blocks and the head to cancel it; a small model does not, and its
    # samples keep part of their initial noise (issue 14: one-step predictions from pure noise
    # correlated 0.3 with that noise). A clean head's last step is its own clean prediction.
    # "clean_from_reference": the head predicts x0 - ref_latent, the frame's change from the
    # reference image, so that the untrained model already draws the reference (its prediction
    # from pure noise is the still frame, not a blur of the corpus), and training learns the
    # motion: the mouth, the pose, the expression.
    video_prediction: str = "velocity"
    clean_sigma_min: float = 0.05  # the clean head's velocity divides by at least this level

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            positive_int(f"DualForceConfig.{name}", getattr(self, name))
        for name in ("n_fusion", "audio_context"):
            non_negative_int(f"DualForceConfig.{name}", getattr(self, name))
        for name, allowed in (
            ("bridge", BRIDGES),
            ("bridge_temporal", BRIDGE_TEMPORAL),
            ("audio_into", BLOCK_SETS),
            ("ref_into", BLOCK_SETS),
            ("video_prediction", VIDEO_PREDICTIONS),
        ):
            one_of(f"DualForceConfig.{name}", getattr(self, name), allowed)
        for name in ("struct_enabled", "ref_tokens_enabled", "ref_concat", "qk_norm"):
            boolean(f"DualForceConfig.{name}", getattr(self, name))
        for name in ("mlp_ratio", "rope_theta", "norm_eps", "clean_sigma_min"):
            positive_float(f"DualForceConfig.{name}", getattr(self, name))
        if self.window is not None:
            positive_int("DualForceConfig.window (or None)", self.window)
        for dim, heads in (
            ("video_dim", "video_heads"),
            ("struct_dim", "struct_heads"),
        ):
            d, h = getattr(self, dim), getattr(self, heads)
            if d % h or (d // h) % 2:
                raise ValueError(
                    f"DualForceConfig.{dim}={d} must split into {heads}={h} heads of an even size (RoPE)"
                )
        for side in ("latent_height", "latent_width"):
            if getattr(self, side) % self.patch_size:
                raise ValueError(
                    f"DualForceConfig.{side}={getattr(self, side)} must be a multiple of patch_size={self.patch_size}"
                )
        token_values = self.patch_size**2 * self.latent_channels
        if self.video_dim < token_values:
            # The video head is a linear map video_dim -> token values: narrower, it can only
            # predict velocities in a subspace, and the noise outside it is never removed.
            raise ValueError(
                f"DualForceConfig.video_dim={self.video_dim} must be at least patch_size**2 * "
                f"latent_channels = {token_values} (the values of one video token)"
            )
        if self.struct_depth > self.video_depth:
            raise ValueError(
                f"DualForceConfig.struct_depth={self.struct_depth} must be <= video_depth={self.video_depth}"
            )
        depth = self.struct_depth if self.struct_enabled else self.video_depth
        if self.n_fusion > depth:
            raise ValueError(
                f"DualForceConfig.n_fusion={self.n_fusion} must be <= {depth} (the shallower stream)"
            )
        if self.n_fusion == 0 and self.audio_into == "shallow":
            raise ValueError(
                "DualForceConfig.n_fusion=0 with audio_into='shallow' lets audio reach no block"
            )
        if self.n_fusion == 0 and self.ref_tokens_enabled and self.ref_into == "shallow":
            raise ValueError(
                "DualForceConfig.n_fusion=0 with ref_into='shallow' lets reference tokens reach no block"
            )

    # Derived sizes -------------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the video token grid."""
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def video_tokens(self) -> int:
        """N_v."""
        h, w = self.grid
        return h * w

    @property
    def audio_window(self) -> int:
        """Audio feature frames per latent frame, context included: the audio tokens N_a."""
        return (self.frames_per_latent + 2 * self.audio_context) * self.audio_feats_per_frame

    @property
    def bridge_to_video(self) -> bool:
        return self.struct_enabled and self.bridge in ("bidirectional", "struct_to_video")

    @property
    def bridge_to_struct(self) -> bool:
        return self.struct_enabled and self.bridge == "bidirectional"

    def audio_in_block(self, index: int) -> bool:
        return self.audio_into == "all" or index < self.n_fusion

    def ref_in_block(self, index: int) -> bool:
        return self.ref_tokens_enabled and (self.ref_into == "all" or index < self.n_fusion)

    # Serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualForceConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"kind"})
        if unknown:
            raise ValueError(f"unknown DualForceConfig fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    def replace(self, **changes: Any) -> DualForceConfig:
        """A copy with fields changed (validated again); unknown fields are an error."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown DualForceConfig fields {unknown}")
        return dataclasses.replace(self, **changes)


def tiny(**overrides: Any) -> DualForceConfig:
    """For tests: a few thousand parameters, milliseconds on a CPU."""
    base = DualForceConfig(
        latent_channels=4,
        latent_height=4,
        latent_width=4,
        patch_size=2,
        video_dim=16,
        video_depth=3,
        video_heads=2,
        struct_raw_dim=6,
        struct_tokens=2,
        struct_dim=8,
        struct_depth=2,
        struct_heads=2,
        n_fusion=1,
        audio_dim=8,
        audio_context=1,
        ref_feature_dim=8,
        mlp_ratio=2.0,
        noise_freq_dim=8,
    )
    return base.replace(**overrides)


def synthtalk_small(**overrides: Any) -> DualForceConfig:
    """The CPU demo on 64x64 SynthTalk frames (TinyAutoencoder: 8x8x8 latents), a few million
    parameters. Structure is SynthTalk's 11 ground-truth parameters; audio is 80-bin log-mel."""
    base = DualForceConfig(
        latent_channels=8,
        latent_height=8,
        latent_width=8,
        patch_size=2,
        video_dim=192,
        video_depth=6,
        video_heads=4,
        struct_raw_dim=11,
        struct_tokens=4,
        struct_dim=96,
        struct_depth=4,
        struct_heads=2,
        n_fusion=2,
        audio_dim=80,
        audio_context=2,
        window=8,
    )
    return base.replace(**overrides)


def base(**overrides: Any) -> DualForceConfig:
    """The proposal's scale: 512x512 frames, an 8x 16-channel codec and patch 2 (1,024 video
    tokens per frame); video 1536 x 20 blocks, struct 512 x 12 blocks, n_fusion 6, a window of
    8 frames.

    Global reference tokens are off: no clip store holds reference features yet, so the trainer
    refuses them. Opt in with ``base(ref_tokens_enabled=True)`` (DINOv2-L features,
    ``ref_feature_dim=1024``, into the shallow blocks) once the features exist."""
    return DualForceConfig(window=8).replace(**overrides)


def base_t4(**overrides: Any) -> DualForceConfig:
    """``base`` over a codec that compresses time, 4 video frames per latent frame after the
    first (the Wan VAE's 1 + 4n layout, ``hdtf_base``'s): each latent frame reads its group's
    audio and carries the structure of its 4 frames (4 x 70 numbers)."""
    return base(frames_per_latent=4, struct_raw_dim=4 * 70).replace(**overrides)


PRESETS = {"tiny": tiny, "synthtalk_small": synthtalk_small, "base": base, "base_t4": base_t4}
