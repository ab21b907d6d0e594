"""Loading a codec from its directory, and the identity the clip store and bundles record.

``load_codec`` tells the codec's class from its ``config.json``; ``codec_identity`` is
``{name, config_hash, weights_hash}``, what extraction writes into every clip's metadata and
export compares with the codec it ships, so a store's latents are never decoded by another codec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from df_models.codecs.base import LatentCodec
from df_models.codecs.diffusers_vae import SUPPORTED_KINDS, DiffusersVAECodec, is_hub_id
from df_models.codecs.temporal_ae import KIND as TEMPORAL_KIND
from df_models.codecs.temporal_ae import TemporalTinyAutoencoder
from df_models.codecs.tiny_ae import KIND as TINY_KIND
from df_models.codecs.tiny_ae import TinyAutoencoder
from df_models.io import config_hash


def load_codec(
    codec: LatentCodec | str | Path,
    device: torch.device | str | None = None,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
) -> LatentCodec:
    """A codec object as is, or one loaded from a directory by its ``config.json``:
    ``"kind": "TinyAutoencoder"`` -> ``TinyAutoencoder.from_pretrained`` (``"TemporalTiny
    Autoencoder"``: its causal 4-frame variant); ``"_class_name"`` in
    ``SUPPORTED_KINDS`` -> ``DiffusersVAECodec.from_pretrained`` (also from a pipeline
    directory with the VAE in ``vae/``). A hub id ``"org/name"`` (not an existing path) loads a
    diffusers VAE from the hub at ``revision`` (``subfolder``, e.g. ``"vae"`` for a pipeline
    repository such as ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``)."""
    if isinstance(codec, str) and is_hub_id(codec):
        codec = DiffusersVAECodec.from_pretrained(codec, subfolder=subfolder, revision=revision)
    elif revision is not None:
        raise ValueError(f"revision={revision!r} applies to hub ids, got codec {codec!r}")
    if not isinstance(codec, LatentCodec):
        path = Path(codec)
        if (
            subfolder is None
            and not (path / "config.json").is_file()
            and (path / "vae" / "config.json").is_file()
        ):
            subfolder = "vae"
        config_path = path / (subfolder or "") / "config.json"
        if not config_path.is_file():
            raise ValueError(f"codec path {str(path)!r} has no config.json (nor vae/config.json)")
        config = json.loads(config_path.read_text())
        if config.get("kind") == TINY_KIND:
            codec = TinyAutoencoder.from_pretrained(path)
        elif config.get("kind") == TEMPORAL_KIND:
            codec = TemporalTinyAutoencoder.from_pretrained(path)
        elif config.get("_class_name") in SUPPORTED_KINDS:
            codec = DiffusersVAECodec.from_pretrained(path, subfolder=subfolder)
        else:
            raise ValueError(
                f"{config_path}: neither kind {TINY_KIND!r} / {TEMPORAL_KIND!r} nor _class_name in "
                f"{SUPPORTED_KINDS}; cannot tell which codec it is"
            )
    return codec if device is None else codec.to(device)


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def codec_identity(codec: LatentCodec) -> dict[str, str]:
    """``{name, config_hash, weights_hash}``: the config hash covers the codec's config and its
    shape parameters; the weights hash its state dict (weights and normalisation)."""
    if isinstance(codec, TinyAutoencoder):
        name, config = TINY_KIND, dataclasses.asdict(codec.config)
    elif isinstance(codec, TemporalTinyAutoencoder):
        name, config = TEMPORAL_KIND, codec.config.to_dict()
    elif isinstance(codec, DiffusersVAECodec):
        # Keys starting with "_" (path, library version) do not change the latents.
        name = f"diffusers.{codec.kind}"
        config = {k: v for k, v in dict(codec.vae.config).items() if not k.startswith("_")}
    else:
        name, config = type(codec).__name__, {}
    config = {
        **config,
        "latent_channels": codec.latent_channels,
        "spatial_factor": codec.spatial_factor,
        "frames_per_latent": codec.frames_per_latent,
    }
    return {"name": name, "config_hash": config_hash(config), "weights_hash": weights_hash(codec)}
