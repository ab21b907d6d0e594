"""A tiny random inference bundle for tests here and downstream (df-eval)."""

from __future__ import annotations

from pathlib import Path

from df_data.features import LogMelEncoder
from df_models import tiny
from df_models.bundle import InferenceMeta, save_bundle
from df_models.codecs import (
    TemporalAutoencoderConfig,
    TemporalTinyAutoencoder,
    TinyAutoencoder,
    tiny_autoencoder_debug,
)
from df_models.testing import random_model


def tiny_bundle(
    directory: str | Path,
    *,
    seed: int = 0,
    window: int | None = 8,
    sampler: dict | None = None,
    audio_encoder=None,
    ref_encoder=None,
    frames_per_latent: int = 1,
    **model,
) -> Path:
    """A random tiny model (4x4x4 latents, 80-bin log-mel audio, 11 structure dims) with the
    debug TinyAutoencoder (16x16 frames) and a matching ``inference.json`` (``sampler``: the
    recommended sampler settings it records). ``audio_encoder`` (an ``AudioEncoder``) replaces
    log-mel, ``ref_encoder`` (a ``RefEncoder``) adds reference tokens: the model's audio and
    reference widths follow them and ``inference.json`` records them. ``frames_per_latent=k``
    (> 1) takes the debug TemporalTinyAutoencoder with k frames per latent frame instead."""
    audio = audio_encoder if audio_encoder is not None else LogMelEncoder()
    if ref_encoder is not None:
        model = {**model, "ref_tokens_enabled": True, "ref_feature_dim": ref_encoder.dim}
    config = tiny(
        audio_dim=audio.dim,
        audio_layers=audio.layers,
        struct_raw_dim=11 * frames_per_latent,  # each latent frame: its group's frames
        window=window,
        frames_per_latent=frames_per_latent,
        **model,
    )
    if frames_per_latent == 1:
        codec = TinyAutoencoder(tiny_autoencoder_debug())
    else:
        codec = TemporalTinyAutoencoder(
            TemporalAutoencoderConfig(
                spatial=tiny_autoencoder_debug(), frames_per_latent=frames_per_latent
            )
        )
    codec.init_weights()
    f = codec.spatial_factor
    meta = InferenceMeta(
        audio_encoder=audio.identity(),
        ref_encoder=ref_encoder.identity() if ref_encoder is not None else None,
        image_size=(config.latent_height * f, config.latent_width * f),
        struct_names=tuple(f"s{i}" for i in range(11)),
        struct_mean=tuple(float(i) for i in range(11)),
        struct_std=tuple(1.0 + i for i in range(11)),
        noise_shift=2.0,
        sampler=dict(sampler or {}),
        extra={"recipe": "random"},
    )
    return save_bundle(directory, random_model(config, seed), codec, meta)
