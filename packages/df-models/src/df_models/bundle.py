"""The inference bundle: everything ``dualforce generate`` needs, in one directory.

    DIR/
      model/           DualForceDiT.save_pretrained (config.json + model.safetensors)
      codec/           the latent codec (TinyAutoencoder.save_pretrained, or a diffusers VAE dir)
      inference.json   InferenceMeta: audio encoder, frame size, struct normalisation, the
                       training noise settings the sampler defaults to, and the sampler
                       settings the bundle recommends (optional)

Training writes it (df-train exports the EMA weights beside the store's codec), inference
reads it (df-infer). Each piece is written atomically; ``inference.json`` is written last, so
a directory with it is complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from df_core import FPS, SIGMA_S_MAX
from df_core.checks import positive_float, positive_int, unit_float
from df_models.io import read_json_object, write_json_atomic

META_NAME = "inference.json"
MODEL_DIR = "model"
CODEC_DIR = "codec"
BUNDLE_VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class InferenceMeta:
    # {"name", "config_hash"} as the clip store records it; pretrained encoders add "model"
    # (hub id or folder), "revision", "weights_sha256", "layer", "layers", "dim" and "kwargs"
    audio_encoder: dict[str, Any]
    image_size: tuple[int, int]  # (H, W) of the frames the codec decodes
    fps: int = FPS  # video frames per second
    struct_names: tuple[str, ...] = ()  # names of the Ds structure dimensions
    struct_mean: tuple[float, ...] | None = None  # model space = (raw - mean) / std
    struct_std: tuple[float, ...] | None = None
    noise_shift: float = 1.0  # the training shift of sigma_v: the sampler's default shift
    sigma_s_max: float = SIGMA_S_MAX  # structure trained up to this level: sampling starts there
    sigma_ctx: float = 0.0  # context noise level training used for clean frames
    # The sampler the bundle recommends (was evaluated with): df_infer.SamplerConfig fields by
    # name, e.g. {"steps": 4, "cfg_audio": 2.0}; df-infer checks the names and values.
    sampler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (recipe, step)
    # The global reference tokens' encoder as the clip store records it (None: the model has
    # no reference tokens): "name", "config_hash", "model", "weights_sha256", "tokens", "dim".
    ref_encoder: dict[str, Any] | None = None
    version: int = BUNDLE_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.audio_encoder, dict) or "name" not in self.audio_encoder:
            raise ValueError(
                f"InferenceMeta.audio_encoder must be a dict with a 'name', got {self.audio_encoder!r}"
            )
        if self.ref_encoder is not None and (
            not isinstance(self.ref_encoder, dict) or "name" not in self.ref_encoder
        ):
            raise ValueError(
                f"InferenceMeta.ref_encoder must be None or a dict with a 'name', got {self.ref_encoder!r}"
            )
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(
                f"InferenceMeta.image_size must be two positive ints (H, W), got {self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)
        positive_int("InferenceMeta.fps", self.fps)
        object.__setattr__(self, "struct_names", tuple(self.struct_names))
        for name in ("struct_mean", "struct_std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if (self.struct_mean is None) != (self.struct_std is None):
            raise ValueError("InferenceMeta.struct_mean and struct_std must be given together")
        if self.struct_std is not None:
            if len(self.struct_std) != len(self.struct_mean):
                raise ValueError("InferenceMeta.struct_mean and struct_std differ in length")
            if not all(v > 0 for v in self.struct_std):
                raise ValueError("InferenceMeta.struct_std must be positive")
        positive_float("InferenceMeta.noise_shift", self.noise_shift)
        unit_float("InferenceMeta.sigma_s_max", self.sigma_s_max)
        unit_float("InferenceMeta.sigma_ctx", self.sigma_ctx)
        scalar = (bool, int, float, str, type(None))
        if not isinstance(self.sampler, dict) or not all(
            isinstance(k, str) and isinstance(v, scalar) for k, v in self.sampler.items()
        ):
            raise ValueError(
                "InferenceMeta.sampler must map SamplerConfig field names to numbers, strings "
                f"or null, got {self.sampler!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = META_NAME) -> InferenceMeta:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{source}: {e}") from e


def save_bundle(directory: str | Path, model, codec, meta: InferenceMeta) -> Path:
    """Writes ``model`` (a DualForceDiT), ``codec`` (a module with ``save_pretrained`` or a
    directory to copy) and ``meta`` into ``directory``; ``inference.json`` last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory / MODEL_DIR)
    if isinstance(codec, str | Path):
        src = Path(codec)
        if not src.is_dir():
            raise ValueError(f"codec directory {str(src)!r} does not exist")
        tmp = directory / f".{CODEC_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(directory / CODEC_DIR, ignore_errors=True)
        os.replace(tmp, directory / CODEC_DIR)
    else:
        codec.save_pretrained(directory / CODEC_DIR)
    write_json_atomic(directory / META_NAME, meta.to_dict())
    return directory


def read_bundle(directory: str | Path) -> tuple[Path, Path, InferenceMeta]:
    """``(model_dir, codec_dir, meta)`` of a bundle; ValueError naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"checkpoint directory {str(directory)!r} does not exist")
    meta_path = directory / META_NAME
    if not meta_path.is_file():
        raise ValueError(
            f"{meta_path} does not exist: {str(directory)!r} is not an inference bundle "
            f"(expected {MODEL_DIR}/, {CODEC_DIR}/ and {META_NAME}; `dualforce train` exports one)"
        )
    meta = InferenceMeta.from_dict(read_json_object(meta_path), source=str(meta_path))
    for sub in (MODEL_DIR, CODEC_DIR):
        if (
            not (directory / sub / "config.json").is_file()
            and not (directory / sub / "vae" / "config.json").is_file()
        ):
            raise ValueError(f"{directory / sub} has no config.json: the bundle is incomplete")
    return directory / MODEL_DIR, directory / CODEC_DIR, meta
