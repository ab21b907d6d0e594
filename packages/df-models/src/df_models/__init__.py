"""df-models: the DualForce causal dual-stream DiT, its latent codecs, configs and save/load."""

from df_models.codecs import DiffusersVAECodec, LatentCodec, TinyAutoencoder, TinyAutoencoderConfig
from df_models.config import PRESETS, DualForceConfig, base, base_t4, synthtalk_small, tiny
from df_models.dit import DualForceDiT, Modulations
from df_models.layers import gather_audio_windows

__all__ = [
    "PRESETS",
    "DiffusersVAECodec",
    "DualForceConfig",
    "DualForceDiT",
    "LatentCodec",
    "Modulations",
    "TinyAutoencoder",
    "TinyAutoencoderConfig",
    "base",
    "base_t4",
    "gather_audio_windows",
    "synthtalk_small",
    "tiny",
]
