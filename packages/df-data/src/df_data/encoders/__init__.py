"""Pretrained frozen encoders through transformers: speech (HuBERT, wav2vec2, Whisper's
encoder) as ``df_data.features.AudioEncoder``s, and the reference image's global tokens
(DINOv2, CLIP). Parts: ``hub`` (loading by hub id or folder, weights identity), ``layers``
(the layer choice), ``windows`` (fixed windows: offline == streaming), ``speech``, ``image``,
``spec`` (the encoders a recipe or the CLI names).

Rebuilding a recorded encoder (the store's and the bundle's ``audio_encoder`` /
``ref_encoder``) goes through :func:`audio_encoder_from_identity` and
:func:`df_data.encoders.image.ref_encoder_from_identity`, which refuse an encoder whose
weights or settings differ from the record.
"""

from __future__ import annotations

from typing import Any

import torch

from df_data.features import AudioEncoder, build_audio_encoder


def audio_encoder_from_identity(
    identity: dict[str, Any], *, model: str | None = None, device: str | torch.device = "cpu"
) -> AudioEncoder:
    """The audio encoder an ``identity()`` record describes, checked against its
    ``config_hash``. ``model`` overrides where a pretrained encoder's files are (a folder that
    moved, a mirror of the hub id): the weights must still be the recorded ones."""
    if not isinstance(identity, dict) or "name" not in identity:
        raise ValueError(f"audio_encoder must be a dict with a 'name', got {identity!r}")
    name = identity["name"]
    kwargs = dict(identity.get("kwargs", {}))
    pretrained = "weights_sha256" in identity
    if model is not None:
        if not pretrained:
            raise ValueError(f"audio encoder {name!r} has no weights: a model path does not apply")
        kwargs["model"], kwargs["revision"] = model, None
    if pretrained:
        kwargs["device"] = device
    encoder = build_audio_encoder(name, **kwargs)
    expected = identity.get("config_hash")
    if expected is not None and encoder.config_hash != expected:
        where = getattr(getattr(encoder, "source", None), "describe", lambda: "its kwargs")()
        raise ValueError(
            f"audio encoder {name!r} built from {where} has config_hash "
            f"{encoder.config_hash[:12]} ({encoder.config()}), but the record says "
            f"{expected[:12]} (weights {str(identity.get('weights_sha256'))[:12]}, layer "
            f"{identity.get('layer')}): use the encoder the features were made with"
        )
    return encoder


def same_encoder(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two identity records describe the same features (name and config hash; the source
    path may differ)."""
    if a is None or b is None:
        return a is b
    return a.get("name") == b.get("name") and a.get("config_hash") == b.get("config_hash")
