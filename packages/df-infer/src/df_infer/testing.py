"""A tiny random inference bundle for tests here and downstream (df-eval)."""

from __future__ import annotations

from pathlib import Path

from df_data.features import LogMelEncoder
from df_models import tiny
from df_models.bundle import InferenceMeta, save_bundle
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug
from df_models.testing import random_model


def tiny_bundle(
    directory: str | Path,
    *,
    seed: int = 0,
    window: int | None = 8,
    sampler: dict | None = None,
    **model,
) -> Path:
    """A random tiny model (4x4x4 latents, 80-bin log-mel audio, 11 structure dims) with the
    debug TinyAutoencoder (16x16 frames) and a matching ``inference.json`` (``sampler``: the
    recommended sampler settings it records)."""
    config = tiny(audio_dim=80, struct_raw_dim=11, window=window, **model)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    f = codec.spatial_factor
    meta = InferenceMeta(
        audio_encoder=LogMelEncoder().identity(),
        image_size=(config.latent_height * f, config.latent_width * f),
        struct_names=tuple(f"s{i}" for i in range(11)),
        struct_mean=tuple(float(i) for i in range(11)),
        struct_std=tuple(1.0 + i for i in range(11)),
        noise_shift=2.0,
        sampler=dict(sampler or {}),
        extra={"recipe": "random"},
    )
    return save_bundle(directory, random_model(config, seed), codec, meta)
