"""Latent codecs: video frames in [-1, 1] <-> normalised latents ``z_BTCHW``.

``LatentCodec`` is the interface; ``TinyAutoencoder`` is the embedded default (trained by
df-train); ``DiffusersVAECodec`` wraps pretrained diffusers VAEs (optional extra
``df-models[diffusers]``, imported only when used).
"""

from df_models.codecs.base import LatentCodec
from df_models.codecs.diffusers_vae import SUPPORTED_KINDS, DiffusersVAECodec
from df_models.codecs.tiny_ae import (
    TinyAutoencoder,
    TinyAutoencoderConfig,
    tiny_autoencoder_base,
    tiny_autoencoder_debug,
)

__all__ = [
    "SUPPORTED_KINDS",
    "DiffusersVAECodec",
    "LatentCodec",
    "TinyAutoencoder",
    "TinyAutoencoderConfig",
    "tiny_autoencoder_base",
    "tiny_autoencoder_debug",
]
