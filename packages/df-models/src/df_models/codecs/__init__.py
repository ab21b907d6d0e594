"""Latent codecs: video frames in [-1, 1] <-> normalised latents ``z_BTCHW``.

``LatentCodec`` is the interface; ``TinyAutoencoder`` is the embedded default (trained by
df-train), ``TemporalTinyAutoencoder`` its causal variant with 4 video frames per latent frame; ``DiffusersVAECodec`` wraps pretrained diffusers VAEs (optional extra
``df-models[diffusers]``, imported only when used). ``load_codec`` loads either from its
directory; ``codec_identity`` / ``weights_hash`` say which codec (and weights) it is.
"""

from df_models.codecs.base import LatentCodec
from df_models.codecs.diffusers_vae import SUPPORTED_KINDS, DiffusersVAECodec
from df_models.codecs.loading import codec_identity, load_codec, weights_hash
from df_models.codecs.temporal_ae import (
    TemporalAutoencoderConfig,
    TemporalTinyAutoencoder,
    temporal_autoencoder_debug,
)
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
    "TemporalAutoencoderConfig",
    "TemporalTinyAutoencoder",
    "TinyAutoencoder",
    "TinyAutoencoderConfig",
    "codec_identity",
    "load_codec",
    "temporal_autoencoder_debug",
    "tiny_autoencoder_base",
    "tiny_autoencoder_debug",
    "weights_hash",
]
