"""Export of a trained run as an inference bundle (``df_models.bundle``).

The bundle holds the EMA model, the codec the store's latents were made with, and
``inference.json``: the store's audio encoder identity (and reference encoder's, for a model
with reference tokens), the frame size, the struct names and
normalisation statistics, the training noise settings the sampler starts from, the sampler
settings the bundle recommends (``export_bundle(..., sampler=...)``), and provenance (recipe,
step, store, codec identity, the training config) in ``extra``.

The codec directory is ``DataConfig.codec_dir`` when set, else the one extraction recorded in
the store's ``store.json``; either way its weights must hash to the identity the store's clips
record, so a bundle never pairs a model with a codec it was not trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from df_core import FPS
from df_data.store import read_metadata, read_store_info
from df_models.bundle import InferenceMeta, save_bundle
from df_models.codecs import codec_identity, load_codec
from df_train.collectives import barrier

if TYPE_CHECKING:
    from df_train.config import TrainConfig
    from df_train.trainer import Trainer


def store_clip_metadata(trainer: Trainer) -> dict[str, Any]:
    """The metadata of the first training clip (every clip of a store shares the codec, the
    audio encoder and, for training, the frame size)."""
    entries = getattr(trainer.dataset, "entries", None)
    if not entries:
        raise ValueError(
            "export_bundle needs a clip store (DataConfig.store): this trainer's data has no "
            "store metadata (synthetic data?); use export_ema for the model alone"
        )
    return read_metadata(trainer.dataset.store_dir, entries[0]["clip_id"])


def find_codec_dir(trainer: Trainer, clip_meta: dict[str, Any]) -> Path:
    """The codec directory of the run's store, checked against the store's codec identity."""
    return codec_dir_for(trainer.config, clip_meta)


def codec_dir_for(c: TrainConfig, clip_meta: dict[str, Any]) -> Path:
    """:func:`find_codec_dir` from the config alone (no model built): for checks before a
    job is submitted."""
    store = Path(c.data.store)
    if c.data.codec_dir:
        path, origin = Path(c.data.codec_dir), "DataConfig.codec_dir"
    else:
        recorded = read_store_info(store).get("codec_dir")
        if not recorded:
            raise ValueError(
                f"cannot find the codec for the bundle: {store / 'store.json'} records no "
                "codec_dir (a store extracted before it was recorded, or from a codec object); "
                "pass --set data.codec_dir=DIR"
            )
        path, origin = Path(recorded), f"{store / 'store.json'} codec_dir"
    if not path.is_dir():
        raise ValueError(f"codec directory {str(path)!r} (from {origin}) does not exist")
    found = codec_identity(load_codec(path))
    expected = clip_meta.get("codec")
    if expected is not None and found != expected:
        raise ValueError(
            f"codec directory {str(path)!r} (from {origin}) is {found}, but the store's latents "
            f"were made with {expected}: pass the right one with --set data.codec_dir=DIR"
        )
    return path


def inference_meta(
    trainer: Trainer,
    clip_meta: dict[str, Any],
    codec: Path,
    sampler: Mapping[str, Any] | None = None,
) -> InferenceMeta:
    """The bundle's ``inference.json``; ``sampler`` is the recommended sampler (SamplerConfig
    fields by name, or a SamplerConfig: the fields it leaves None are not recorded)."""
    c = trainer.config
    for key in ("height", "width", "audio_encoder"):
        if key not in clip_meta:
            raise ValueError(
                f"clip {clip_meta.get('clip_id')!r} of store {c.data.store} has no metadata "
                f"{key!r}, which the inference bundle needs (re-extract the store)"
            )
    stats = trainer.struct_stats
    return InferenceMeta(
        audio_encoder=clip_meta["audio_encoder"],
        image_size=(int(clip_meta["height"]), int(clip_meta["width"])),
        fps=int(clip_meta.get("fps", FPS)),
        struct_names=tuple(clip_meta.get("struct_names", ())),
        struct_mean=stats.mean if stats is not None else None,
        struct_std=stats.std if stats is not None else None,
        noise_shift=c.noise.shift,
        sigma_s_max=c.noise.sigma_s_max,
        sigma_ctx=c.noise.sigma_ctx,
        sampler=_sampler_fields(sampler),
        ref_encoder=_ref_encoder(trainer, clip_meta),
        extra={
            "recipe": c.name,
            "step": trainer.step,
            "store": str(c.data.store),
            "codec_dir": str(codec),
            "codec": clip_meta.get("codec"),
            "train_config": c.to_dict(),
        },
    )


def _ref_encoder(trainer: Trainer, clip_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The store's reference encoder for a model with reference tokens (the trainer checked
    the store has them)."""
    if not trainer.config.model.ref_tokens_enabled:
        return None
    return clip_meta.get("ref_encoder")


def _sampler_fields(sampler) -> dict[str, Any]:
    if sampler is None:
        return {}
    if is_dataclass(sampler):
        return {k: v for k, v in asdict(sampler).items() if v is not None}
    return dict(sampler)


def export_bundle(
    trainer: Trainer, directory: str | Path, *, sampler: Mapping[str, Any] | None = None
) -> Path:
    """Writes the bundle of ``trainer``'s EMA weights to ``directory`` (every rank calls it:
    the EMA is gathered from the shards; rank 0 writes). ``sampler``: the sampler settings
    the bundle recommends (what it was evaluated with), as SamplerConfig fields by name;
    ``dualforce generate`` uses them unless a flag overrides them. ValueError naming what is
    missing (store metadata, codec directory) before anything is written."""
    clip_meta = store_clip_metadata(trainer)
    codec = find_codec_dir(trainer, clip_meta)
    meta = inference_meta(trainer, clip_meta, codec, sampler)
    model = trainer.ema_model()
    if model is not None:
        save_bundle(directory, model, codec, meta)
    barrier(trainer.world_size)
    return Path(directory)
