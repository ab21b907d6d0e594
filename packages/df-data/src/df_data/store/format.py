"""The clip store's format (``df_data.store`` describes the layout): file names, the in-memory
``ClipRecord``, validation, and reading a clip.

Legend: ``T`` video frames, ``T_lat`` latent frames, ``C`` latent channels, ``h w`` latent size,
``H W`` frame size, ``Ds`` structure dimension, ``L`` audio feature frames, ``Da`` audio
feature dimension.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME

STORE_VERSION = 1
CLIPS_DIR = "clips"
MANIFEST_NAME = "manifest.jsonl"
FAILURES_NAME = "failures.jsonl"
LATENTS_FILE = "video_latents.safetensors"
STRUCT_FILE = "struct.safetensors"
AUDIO_FILE = "audio_features.safetensors"
REF_FILE = "ref.safetensors"
METADATA_FILE = "metadata.json"
MOUTH_BOX_FILE = "mouth_box.safetensors"
REF_TOKENS_FILE = "ref_tokens.safetensors"
STORE_INFO_NAME = "store.json"
STRUCT_STATS_NAME = "struct_stats.json"
CLIP_FILES = (LATENTS_FILE, STRUCT_FILE, AUDIO_FILE, REF_FILE, METADATA_FILE)
TMP_PREFIX = ".tmp-"
REQUIRED_METADATA = (
    "clip_id",
    "split",
    "fps",
    "frames",
    "latent_frames",
    "frames_per_latent",
    "audio_rate",
    "audio_feature_dim",
    "struct_names",
    "codec",
    "audio_encoder",
    "source",
    "store_version",
)
_CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class StoreError(ValueError):
    """A clip in the store is missing, malformed or inconsistent; the message names the clip."""


class ClipExistsError(StoreError):
    """``write_clip_record`` found the clip's directory already there (another writer's)."""


@dataclass
class ClipRecord:
    """One clip of the store, in memory.

    Attributes:
        clip_id: ``"<split>-<source dir name>"``.
        latents: float16 ``[T_lat, C, h, w]``, normalised codec latents.
        struct: float32 ``[T, Ds]``, structure per video frame (``T = metadata["frames"]``;
            ``= T_lat`` for image codecs).
        audio_features: float16 ``[L, Da]`` with ``L == 2 * metadata["frames"]``, or
            ``[L, K, Da]``: ``K`` stacked encoder layers (``metadata["audio_encoder"]["layers"]``).
        ref_image: uint8 ``[3, H, W]``, the first video frame.
        ref_latent: float16 ``[C, h, w]``, its latent (encoded as a 1-frame clip).
        metadata: the contents of ``metadata.json`` (``REQUIRED_METADATA`` at least).
        mouth_box: optional float32 ``[T_lat, 4]`` pixel boxes ``(x0, y0, x1, y1)`` of the mouth
            in the stored frames (module doc).
        ref_tokens: optional float16 ``[F, R, Dr]``, the global reference tokens (DINOv2 /
            CLIP, ``metadata["ref_encoder"]``) of ``F`` frames of the clip.
        ref_token_frames: int64 ``[F]``, the video frames they are of (increasing, first 0).
    """

    clip_id: str
    latents: torch.Tensor
    struct: torch.Tensor
    audio_features: torch.Tensor
    ref_image: torch.Tensor
    ref_latent: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    mouth_box: torch.Tensor | None = None
    ref_tokens: torch.Tensor | None = None
    ref_token_frames: torch.Tensor | None = None


def clip_dir(store_dir: str | Path, clip_id: str) -> Path:
    return Path(store_dir) / CLIPS_DIR / clip_id


def check_clip_id(clip_id: str) -> str:
    """A clip id is a safe directory name: ``[A-Za-z0-9][A-Za-z0-9._+-]*``."""
    if not isinstance(clip_id, str) or not _CLIP_ID.fullmatch(clip_id):
        raise StoreError(
            f"clip id {clip_id!r} is not a safe directory name (letters, digits, '._+-', "
            "not starting with a dot or dash)"
        )
    return clip_id


# Validation -------------------------------------------------------------------------------------


def expect(clip_id: str, ok: bool, problem: str) -> None:
    if not ok:
        raise StoreError(f"clip {clip_id!r}: {problem}")


def _check_tensor(
    clip_id: str, name: str, value: Any, dtype: torch.dtype, ndim: int, *, finite: bool
) -> None:
    expect(clip_id, isinstance(value, torch.Tensor), f"{name} is not a tensor")
    expect(
        clip_id,
        value.dtype == dtype and value.ndim == ndim,
        f"{name} must be {dtype} with {ndim} dims, got {value.dtype} {tuple(value.shape)}",
    )
    expect(clip_id, value.numel() > 0, f"{name} is empty, shape {tuple(value.shape)}")
    if finite:
        bad = int((~torch.isfinite(value)).sum())
        expect(clip_id, bad == 0, f"{name} has {bad} NaN/inf values")


def expected_latent_frames(frames: int, frames_per_latent: int) -> int | None:
    """``T_lat`` of ``frames`` video frames (``1 + k * fpl`` rule), None if not allowed."""
    if frames_per_latent == 1:
        return frames
    if frames < 1 or (frames - 1) % frames_per_latent:
        return None
    return 1 + (frames - 1) // frames_per_latent


def validate_record(record: ClipRecord) -> None:
    """Checks shapes, dtypes, finiteness and metadata consistency; StoreError names the problem."""
    cid = record.clip_id
    meta = record.metadata
    expect(cid, isinstance(meta, dict), "metadata is not a dict")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    expect(cid, not missing, f"metadata lacks keys {missing}")
    expect(cid, meta["clip_id"] == cid, f"metadata clip_id is {meta['clip_id']!r}")
    version = meta["store_version"]
    expect(
        cid,
        isinstance(version, int) and version <= STORE_VERSION,
        f"store_version {version!r} is newer than this reader's {STORE_VERSION}",
    )
    _check_tensor(cid, "latents", record.latents, torch.float16, 4, finite=True)
    _check_tensor(cid, "struct", record.struct, torch.float32, 2, finite=True)
    feats = record.audio_features
    _check_tensor(cid, "audio features", feats, torch.float16, max(feats.ndim, 2), finite=True)
    expect(
        cid,
        feats.ndim in (2, 3),
        f"audio features must be [L, Da] or [L, K, Da], got {tuple(feats.shape)}",
    )
    _check_tensor(cid, "ref image", record.ref_image, torch.uint8, 3, finite=False)
    _check_tensor(cid, "ref latent", record.ref_latent, torch.float16, 3, finite=True)

    t_lat, c, h, w = record.latents.shape
    frames, fpl = meta["frames"], meta["frames_per_latent"]
    for key in ("frames", "frames_per_latent", "latent_frames", "audio_feature_dim"):
        value = meta[key]
        expect(
            cid,
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"metadata {key} must be a positive integer, got {value!r}",
        )
    expect(
        cid,
        meta["latent_frames"] == t_lat,
        f"metadata latent_frames is {meta['latent_frames']} but latents have {t_lat}",
    )
    expect(
        cid,
        expected_latent_frames(frames, fpl) == t_lat,
        f"{frames} video frames at frames_per_latent={fpl} do not give {t_lat} latent frames",
    )
    expect(
        cid,
        record.struct.shape[0] == frames,
        f"struct has {record.struct.shape[0]} frames, the clip has {frames} video frames (one "
        "structure per video frame; a store written before that rule had one per latent frame "
        "and must be extracted again)",
    )
    names = meta["struct_names"]
    expect(cid, isinstance(names, list), f"metadata struct_names is not a list: {names!r}")
    expect(
        cid,
        len(names) == record.struct.shape[1],
        f"struct has dim {record.struct.shape[1]} but metadata has {len(names)} struct_names",
    )
    length, dim = record.audio_features.shape[0], record.audio_features.shape[-1]
    expect(
        cid,
        length == AUDIO_FEATURES_PER_VIDEO_FRAME * frames,
        f"audio features have L={length} frames, expected 2 * frames = {2 * frames}",
    )
    expect(
        cid,
        meta["audio_feature_dim"] == dim,
        f"audio features have dim {dim}, metadata audio_feature_dim is {meta['audio_feature_dim']}",
    )
    expect(
        cid,
        meta["audio_rate"] == AUDIO_FEATURES_PER_VIDEO_FRAME * meta["fps"],
        f"audio_rate {meta['audio_rate']} is not 2 * fps ({meta['fps']})",
    )
    expect(
        cid,
        record.ref_image.shape[0] == 3,
        f"ref image must be [3, H, W], got {tuple(record.ref_image.shape)}",
    )
    expect(
        cid,
        tuple(record.ref_latent.shape) == (c, h, w),
        f"ref latent has shape {tuple(record.ref_latent.shape)}, latent frames are {(c, h, w)}",
    )
    if record.mouth_box is not None:
        _validate_mouth_box(record, t_lat)
    if (record.ref_tokens is None) != (record.ref_token_frames is None):
        raise StoreError(f"clip {cid!r}: ref_tokens and ref_token_frames go together")
    if record.ref_tokens is not None:
        _validate_ref_tokens(record, frames)


def _validate_ref_tokens(record: ClipRecord, frames: int) -> None:
    cid, tokens, at = record.clip_id, record.ref_tokens, record.ref_token_frames
    _check_tensor(cid, "ref_tokens", tokens, torch.float16, 3, finite=True)
    _check_tensor(cid, "ref_token_frames", at, torch.int64, 1, finite=False)
    expect(
        cid,
        at.shape[0] == tokens.shape[0],
        f"ref_tokens has {tokens.shape[0]} frames, ref_token_frames {at.shape[0]}",
    )
    expect(
        cid,
        int(at[0]) == 0 and bool((at[1:] > at[:-1]).all()) and int(at[-1]) < frames,
        f"ref_token_frames must increase from 0 and stay below {frames} frames, got {at.tolist()}",
    )
    info = record.metadata.get("ref_encoder")
    expect(
        cid,
        isinstance(info, dict) and info.get("dim") == tokens.shape[2],
        f"ref_tokens have dim {tokens.shape[2]}, metadata ref_encoder is {info}",
    )


def _validate_mouth_box(record: ClipRecord, t_lat: int) -> None:
    cid, box = record.clip_id, record.mouth_box
    _check_tensor(cid, "mouth_box", box, torch.float32, 2, finite=True)
    expect(
        cid,
        tuple(box.shape) == (t_lat, 4),
        f"mouth_box must be [{t_lat}, 4] (one box per latent frame), got {tuple(box.shape)}",
    )
    x0, y0, x1, y1 = box.unbind(-1)
    expect(
        cid,
        bool((x0 <= x1).all() and (y0 <= y1).all() and (box >= 0).all()),
        "mouth_box must hold boxes (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1",
    )
    height, width = record.metadata.get("height"), record.metadata.get("width")
    expect(
        cid,
        isinstance(height, int) and isinstance(width, int),
        "a clip with mouth_box needs metadata height and width (the frame size of its pixels)",
    )
    expect(
        cid,
        bool((x1 <= width).all() and (y1 <= height).all()),
        f"mouth_box reaches outside the {height}x{width} frame",
    )


# Reading ----------------------------------------------------------------------------------------


def read_metadata(store_dir: str | Path, clip_id: str) -> dict[str, Any]:
    """The clip's ``metadata.json``; StoreError if missing or not a JSON object."""
    path = clip_dir(store_dir, clip_id) / METADATA_FILE
    expect(clip_id, path.is_file(), f"missing file {METADATA_FILE} ({path})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"clip {clip_id!r}: {METADATA_FILE} is not valid JSON ({e})") from e
    expect(clip_id, isinstance(meta, dict), f"{METADATA_FILE} is not a JSON object")
    return meta


def load_tensors(
    directory: Path, clip_id: str, name: str, keys: tuple[str, ...]
) -> list[torch.Tensor]:
    path = directory / name
    expect(clip_id, path.is_file(), f"missing file {name} ({path})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(
            f"clip {clip_id!r}: {name} is not a readable safetensors file ({e})"
        ) from e
    missing = [k for k in keys if k not in tensors]
    expect(clip_id, not missing, f"{name} lacks tensors {missing}")
    return [tensors[k] for k in keys]


def read_clip(store_dir: str | Path, clip_id: str, *, validate: bool = True) -> ClipRecord:
    """Loads a clip; with ``validate`` (default) checks it like ``validate_record``.

    Raises:
        StoreError: naming the clip and the problem (missing file, wrong dtype or shape,
            NaN/inf values, ``L != 2 * frames``, inconsistent metadata).
    """
    directory = clip_dir(store_dir, clip_id)
    expect(clip_id, directory.is_dir(), f"no clip directory {directory}")
    meta = read_metadata(store_dir, clip_id)
    (latents,) = load_tensors(directory, clip_id, LATENTS_FILE, ("latents",))
    (struct,) = load_tensors(directory, clip_id, STRUCT_FILE, ("struct",))
    (features,) = load_tensors(directory, clip_id, AUDIO_FILE, ("features",))
    image, latent = load_tensors(directory, clip_id, REF_FILE, ("image", "latent"))
    box = None
    if (directory / MOUTH_BOX_FILE).is_file():
        (box,) = load_tensors(directory, clip_id, MOUTH_BOX_FILE, ("mouth_box",))
    tokens = at = None
    if (directory / REF_TOKENS_FILE).is_file():
        tokens, at = load_tensors(directory, clip_id, REF_TOKENS_FILE, ("tokens", "frames"))
    record = ClipRecord(clip_id, latents, struct, features, image, latent, meta, box, tokens, at)
    if validate:
        validate_record(record)
    return record
