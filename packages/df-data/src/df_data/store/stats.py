"""Per-dimension statistics of a store's structure (``struct_stats.json``): the model sees
``(raw - mean) / std``.

Legend: ``T`` video frames (the store keeps a structure per video frame), ``Ds`` structure dimension.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from df_data.store.format import (
    STRUCT_FILE,
    STRUCT_STATS_NAME,
    StoreError,
    clip_dir,
    expect,
    load_tensors,
    read_metadata,
)
from df_data.store.manifest import load_manifest
from df_models.io import write_json_atomic

logger = logging.getLogger(__name__)

STRUCT_STD_FLOOR = 1e-6  # a dimension with a smaller std (constant in the data) is left unscaled


@dataclass(frozen=True, kw_only=True, slots=True)
class StructStats:
    """Per-dimension statistics of the structure over a store's training clips.

    The model sees ``(raw - mean) / std`` (SynthTalk's parameters are in mixed units: radians,
    pixels, blend weights); inference maps its output back with ``raw = s * std + mean``.
    """

    names: tuple[str, ...]  # struct_names of the store
    mean: tuple[float, ...]
    std: tuple[float, ...]  # > 0; a constant dimension gets 1 (left unscaled)
    splits: tuple[str, ...] = ("train",)  # the splits the statistics are over
    clips: int = 0  # clips they are over
    frames: int = 0  # latent frames they are over
    clips_hash: str = ""  # sha256 of the sorted clip ids: tells when the store changed

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> StructStats:
        try:
            stats = cls(
                names=tuple(data["names"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                splits=tuple(data["splits"]),
                clips=int(data["clips"]),
                frames=int(data["frames"]),
                clips_hash=str(data["clips_hash"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{source}: not a struct statistics file ({e!r})") from e
        if not len(stats.names) == len(stats.mean) == len(stats.std) or not all(
            s > 0 for s in stats.std
        ):
            raise StoreError(f"{source}: names, mean and std differ in length or std is not > 0")
        return stats

    def normalize(self, struct_TDs: torch.Tensor) -> torch.Tensor:
        """``(raw - mean) / std`` in float32; ``struct_TDs`` is ``[..., Ds]``."""
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return (struct_TDs.float() - mean) / std

    def denormalize(self, struct_TDs: torch.Tensor) -> torch.Tensor:
        """``s * std + mean``: model space back to the raw parameters."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=struct_TDs.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=struct_TDs.device)
        return struct_TDs.float() * std + mean


def _clips_hash(clip_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(clip_ids)).encode()).hexdigest()


def compute_struct_stats(
    store_dir: str | Path, splits: tuple[str, ...] = ("train",)
) -> StructStats:
    """Mean and std (population, float64) of every structure dimension over all video frames
    of the finished clips of ``splits``. StoreError if there are none or their struct_names
    differ."""
    store = Path(store_dir)
    entries = [e for e in load_manifest(store) if e.get("split") in splits]
    ids = sorted(e["clip_id"] for e in entries if (store / e.get("path", "")).is_dir())
    if not ids:
        raise StoreError(f"{store}: no clips of splits {list(splits)} to compute struct stats over")
    total, total_sq, count, names = None, None, 0, None
    for clip_id in ids:
        meta = read_metadata(store, clip_id)
        (struct,) = load_tensors(clip_dir(store, clip_id), clip_id, STRUCT_FILE, ("struct",))
        clip_names = tuple(meta.get("struct_names", ()))
        if names is None:
            names = clip_names
        expect(
            clip_id,
            clip_names == names,
            f"struct_names {list(clip_names)} differ from the store's {list(names)}",
        )
        x = struct.double()
        expect(clip_id, bool(torch.isfinite(x).all()), "struct has NaN/inf values")
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
        count += x.shape[0]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)
    std = var.sqrt()
    std = torch.where(std > STRUCT_STD_FLOOR, std, torch.ones_like(std))
    return StructStats(
        names=names,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        splits=tuple(splits),
        clips=len(ids),
        frames=count,
        clips_hash=_clips_hash(ids),
    )


def struct_stats(store_dir: str | Path, splits: tuple[str, ...] = ("train",)) -> StructStats:
    """The store's ``struct_stats.json``, computed and written (atomically) when it is missing,
    unreadable, of other splits, or stale (the finished clips of ``splits`` changed since)."""
    store = Path(store_dir)
    path = store / STRUCT_STATS_NAME
    ids = [
        e["clip_id"]
        for e in load_manifest(store)
        if e.get("split") in splits and (store / e.get("path", "")).is_dir()
    ]
    if path.is_file():
        try:
            stats = StructStats.from_dict(json.loads(path.read_text()), source=str(path))
        except (StoreError, json.JSONDecodeError) as e:
            logger.warning("recomputing %s: %s", path, e)
        else:
            if stats.splits == tuple(splits) and stats.clips_hash == _clips_hash(ids):
                return stats
            logger.info("recomputing %s: the store's %s clips changed", path, list(splits))
    stats = compute_struct_stats(store, splits)
    write_json_atomic(path, stats.to_dict())
    return stats
