"""The clip store: one directory of safetensors + metadata.json per clip, and a manifest.

Legend: ``T`` video frames, ``T_lat`` latent frames, ``C`` latent channels, ``h w`` latent size,
``H W`` frame size, ``Ds`` structure dimension, ``L`` audio feature frames (``L = 2 * T``: 50 Hz
features at 25 fps), ``Da`` audio feature dimension.

Layout (binding; df-train's loader reads exactly this)::

    <store>/clips/<clip_id>/video_latents.safetensors  {"latents": float16 [T_lat, C, h, w]}
                            struct.safetensors         {"struct": float32 [T_lat, Ds]}
                            audio_features.safetensors {"features": float16 [L, Da]}, L == 2 * T
                            ref.safetensors            {"image": uint8 [3, H, W],
                                                        "latent": float16 [C, h, w]}
                            mouth_box.safetensors      optional {"mouth_box": float32 [T_lat, 4]}
                            metadata.json
    <store>/manifest.jsonl   one object per finished clip: clip_id, path, split, latent_frames, frames
    <store>/failures.jsonl   one object per failed source: source, clip_id, kind, reason, time
    <store>/store.json       optional: what extraction knows of the store as a whole (the codec
                             directory it was loaded from, the codec and audio encoder identity)
    <store>/struct_stats.json  per-dimension mean/std of the train split's structure
                             (``struct_stats``: computed on first use, rewritten when stale)

Mouth boxes (optional: real data may have none) are pixel boxes ``(x0, y0, x1, y1)`` in the
stored frames (``metadata["height"]``, ``metadata["width"]``), one per latent frame: the union of
the boxes of the video frames that latent frame covers.

Atomicity: a clip directory is built under ``clips/.tmp-<clip_id>@<host>@<pid>``, fsynced and
renamed to ``clips/<clip_id>``; its manifest line is appended (under an exclusive ``flock``,
flushed and fsynced) only after the rename. A clip is *finished* when it is listed in the
manifest and its directory exists. ``repair_store`` fixes what a crash can leave behind: a stale
temporary directory is removed, a renamed directory whose manifest line was never written is
re-listed (not recomputed). The manifest may hold a clip more than once (two processes re-listing
the same directory, a clip re-extracted after its directory was deleted): readers keep the last
line per clip; a line cut short by a crash is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from df_models.pretrained import read_json_object

logger = logging.getLogger(__name__)

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
STORE_INFO_NAME = "store.json"
STRUCT_STATS_NAME = "struct_stats.json"
STRUCT_STD_FLOOR = 1e-6  # a dimension with a smaller std (constant in the data) is left unscaled
CLIP_FILES = (LATENTS_FILE, STRUCT_FILE, AUDIO_FILE, REF_FILE, METADATA_FILE)
AUDIO_FRAMES_PER_VIDEO_FRAME = 2  # 50 Hz features at 25 fps (DESIGN.md, Corrections 1)
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600  # another host's temporary directory is stale after this long
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
        struct: float32 ``[T_lat, Ds]``, structure per latent frame.
        audio_features: float16 ``[L, Da]`` with ``L == 2 * metadata["frames"]``.
        ref_image: uint8 ``[3, H, W]``, the first video frame.
        ref_latent: float16 ``[C, h, w]``, its latent (encoded as a 1-frame clip).
        metadata: the contents of ``metadata.json`` (``REQUIRED_METADATA`` at least).
        mouth_box: optional float32 ``[T_lat, 4]`` pixel boxes ``(x0, y0, x1, y1)`` of the mouth
            in the stored frames (module doc).
    """

    clip_id: str
    latents: torch.Tensor
    struct: torch.Tensor
    audio_features: torch.Tensor
    ref_image: torch.Tensor
    ref_latent: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    mouth_box: torch.Tensor | None = None


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


def _expect(clip_id: str, ok: bool, problem: str) -> None:
    if not ok:
        raise StoreError(f"clip {clip_id!r}: {problem}")


def _check_tensor(
    clip_id: str, name: str, value: Any, dtype: torch.dtype, ndim: int, *, finite: bool
) -> None:
    _expect(clip_id, isinstance(value, torch.Tensor), f"{name} is not a tensor")
    _expect(
        clip_id,
        value.dtype == dtype and value.ndim == ndim,
        f"{name} must be {dtype} with {ndim} dims, got {value.dtype} {tuple(value.shape)}",
    )
    _expect(clip_id, value.numel() > 0, f"{name} is empty, shape {tuple(value.shape)}")
    if finite:
        bad = int((~torch.isfinite(value)).sum())
        _expect(clip_id, bad == 0, f"{name} has {bad} NaN/inf values")


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
    _expect(cid, isinstance(meta, dict), "metadata is not a dict")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    _expect(cid, not missing, f"metadata lacks keys {missing}")
    _expect(cid, meta["clip_id"] == cid, f"metadata clip_id is {meta['clip_id']!r}")
    version = meta["store_version"]
    _expect(
        cid,
        isinstance(version, int) and version <= STORE_VERSION,
        f"store_version {version!r} is newer than this reader's {STORE_VERSION}",
    )
    _check_tensor(cid, "latents", record.latents, torch.float16, 4, finite=True)
    _check_tensor(cid, "struct", record.struct, torch.float32, 2, finite=True)
    _check_tensor(cid, "audio features", record.audio_features, torch.float16, 2, finite=True)
    _check_tensor(cid, "ref image", record.ref_image, torch.uint8, 3, finite=False)
    _check_tensor(cid, "ref latent", record.ref_latent, torch.float16, 3, finite=True)

    t_lat, c, h, w = record.latents.shape
    frames, fpl = meta["frames"], meta["frames_per_latent"]
    for key in ("frames", "frames_per_latent", "latent_frames", "audio_feature_dim"):
        value = meta[key]
        _expect(
            cid,
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"metadata {key} must be a positive integer, got {value!r}",
        )
    _expect(
        cid,
        meta["latent_frames"] == t_lat,
        f"metadata latent_frames is {meta['latent_frames']} but latents have {t_lat}",
    )
    _expect(
        cid,
        expected_latent_frames(frames, fpl) == t_lat,
        f"{frames} video frames at frames_per_latent={fpl} do not give {t_lat} latent frames",
    )
    _expect(
        cid,
        record.struct.shape[0] == t_lat,
        f"struct has {record.struct.shape[0]} frames, latents have {t_lat}",
    )
    names = meta["struct_names"]
    _expect(cid, isinstance(names, list), f"metadata struct_names is not a list: {names!r}")
    _expect(
        cid,
        len(names) == record.struct.shape[1],
        f"struct has dim {record.struct.shape[1]} but metadata has {len(names)} struct_names",
    )
    length, dim = record.audio_features.shape
    _expect(
        cid,
        length == AUDIO_FRAMES_PER_VIDEO_FRAME * frames,
        f"audio features have L={length} frames, expected 2 * frames = {2 * frames}",
    )
    _expect(
        cid,
        meta["audio_feature_dim"] == dim,
        f"audio features have dim {dim}, metadata audio_feature_dim is {meta['audio_feature_dim']}",
    )
    _expect(
        cid,
        meta["audio_rate"] == AUDIO_FRAMES_PER_VIDEO_FRAME * meta["fps"],
        f"audio_rate {meta['audio_rate']} is not 2 * fps ({meta['fps']})",
    )
    _expect(
        cid,
        record.ref_image.shape[0] == 3,
        f"ref image must be [3, H, W], got {tuple(record.ref_image.shape)}",
    )
    _expect(
        cid,
        tuple(record.ref_latent.shape) == (c, h, w),
        f"ref latent has shape {tuple(record.ref_latent.shape)}, latent frames are {(c, h, w)}",
    )
    if record.mouth_box is not None:
        _validate_mouth_box(record, t_lat)


def _validate_mouth_box(record: ClipRecord, t_lat: int) -> None:
    cid, box = record.clip_id, record.mouth_box
    _check_tensor(cid, "mouth_box", box, torch.float32, 2, finite=True)
    _expect(
        cid,
        tuple(box.shape) == (t_lat, 4),
        f"mouth_box must be [{t_lat}, 4] (one box per latent frame), got {tuple(box.shape)}",
    )
    x0, y0, x1, y1 = box.unbind(-1)
    _expect(
        cid,
        bool((x0 <= x1).all() and (y0 <= y1).all() and (box >= 0).all()),
        "mouth_box must hold boxes (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1",
    )
    height, width = record.metadata.get("height"), record.metadata.get("width")
    _expect(
        cid,
        isinstance(height, int) and isinstance(width, int),
        "a clip with mouth_box needs metadata height and width (the frame size of its pixels)",
    )
    _expect(
        cid,
        bool((x1 <= width).all() and (y1 <= height).all()),
        f"mouth_box reaches outside the {height}x{width} frame",
    )


# Writing ----------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(clip_id: str) -> str:
    return f"{TMP_PREFIX}{clip_id}@{socket.gethostname()}@{os.getpid()}"


def _tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    _fsync_path(path)


def manifest_entry(metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of a clip, from its metadata."""
    return {
        "clip_id": metadata["clip_id"],
        "path": f"{CLIPS_DIR}/{metadata['clip_id']}",
        "split": metadata["split"],
        "latent_frames": metadata["latent_frames"],
        "frames": metadata["frames"],
    }


def write_clip_record(
    store_dir: str | Path, record: ClipRecord, *, manifest: bool = True, overwrite: bool = False
) -> Path:
    """Writes ``record`` atomically to ``<store>/clips/<clip_id>`` and returns that directory.

    ``clip_id``, ``latent_frames``, ``audio_feature_dim`` and ``store_version`` are filled into
    the metadata when absent; everything is validated first (StoreError). The directory is
    built under a temporary name, fsynced and renamed; then, with ``manifest``, the manifest
    line is appended. An existing clip is a StoreError unless ``overwrite``.
    """
    check_clip_id(record.clip_id)
    meta = dict(record.metadata)
    meta.setdefault("clip_id", record.clip_id)
    meta.setdefault("latent_frames", int(record.latents.shape[0]) if record.latents.ndim else 0)
    if record.audio_features.ndim == 2:
        meta.setdefault("audio_feature_dim", int(record.audio_features.shape[1]))
    meta.setdefault("store_version", STORE_VERSION)
    record = ClipRecord(**{**record.__dict__, "metadata": meta})
    validate_record(record)

    clips = Path(store_dir) / CLIPS_DIR
    clips.mkdir(parents=True, exist_ok=True)
    final = clips / record.clip_id
    if final.exists() and not overwrite:
        raise ClipExistsError(f"clip {record.clip_id!r}: {final} already exists")
    tmp = clips / _tmp_name(record.clip_id)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _tensor_file(tmp / LATENTS_FILE, {"latents": record.latents})
        _tensor_file(tmp / STRUCT_FILE, {"struct": record.struct})
        _tensor_file(tmp / AUDIO_FILE, {"features": record.audio_features})
        _tensor_file(tmp / REF_FILE, {"image": record.ref_image, "latent": record.ref_latent})
        if record.mouth_box is not None:
            _tensor_file(tmp / MOUTH_BOX_FILE, {"mouth_box": record.mouth_box})
        with open(tmp / METADATA_FILE, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():  # overwrite: move the old clip aside so the swap is two renames
            old = clips / f"{_tmp_name(record.clip_id)}-old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync_path(clips)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if manifest:
        append_manifest(store_dir, manifest_entry(meta))
    return final


def _append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Appends one JSON line under an exclusive lock, then flushes and fsyncs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, sort_keys=True) + "\n"
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a crash mid-line must not swallow this line
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def append_manifest(store_dir: str | Path, entry: dict[str, Any]) -> None:
    """Appends a finished clip (``manifest_entry``) to ``manifest.jsonl``."""
    missing = [k for k in ("clip_id", "path", "split", "latent_frames", "frames") if k not in entry]
    if missing:
        raise StoreError(f"manifest entry {entry} lacks keys {missing}")
    _append_jsonl(Path(store_dir) / MANIFEST_NAME, entry)


def append_failure(
    store_dir: str | Path,
    source: str | Path,
    reason: str,
    *,
    kind: str = "error",
    clip_id: str | None = None,
) -> None:
    """Appends a failed source to ``failures.jsonl``: source, clip_id, kind, reason, time."""
    entry = {
        "source": str(source),
        "clip_id": clip_id,
        "kind": kind,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _append_jsonl(Path(store_dir) / FAILURES_NAME, entry)


# Reading ----------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: skipping a line that is not JSON (cut by a crash?)", path, n)
            continue
        if isinstance(obj, dict):
            out.append(obj)
        else:
            logger.warning("%s:%d: skipping a line that is not a JSON object", path, n)
    return out


def load_manifest(store_dir: str | Path) -> list[dict[str, Any]]:
    """The manifest entries, one per clip id (the last line wins), in first-listed order."""
    entries: dict[str, dict[str, Any]] = {}
    for obj in _read_jsonl(Path(store_dir) / MANIFEST_NAME):
        if "clip_id" in obj:
            entries[obj["clip_id"]] = obj
    return list(entries.values())


def load_failures(store_dir: str | Path) -> list[dict[str, Any]]:
    """All lines of ``failures.jsonl`` (a source failing on several runs appears several times)."""
    return _read_jsonl(Path(store_dir) / FAILURES_NAME)


def finished_clip_ids(store_dir: str | Path) -> set[str]:
    """Clip ids listed in the manifest whose directory exists."""
    store = Path(store_dir)
    return {e["clip_id"] for e in load_manifest(store) if (store / e.get("path", "")).is_dir()}


def read_metadata(store_dir: str | Path, clip_id: str) -> dict[str, Any]:
    """The clip's ``metadata.json``; StoreError if missing or not a JSON object."""
    path = clip_dir(store_dir, clip_id) / METADATA_FILE
    _expect(clip_id, path.is_file(), f"missing file {METADATA_FILE} ({path})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"clip {clip_id!r}: {METADATA_FILE} is not valid JSON ({e})") from e
    _expect(clip_id, isinstance(meta, dict), f"{METADATA_FILE} is not a JSON object")
    return meta


def _load_tensors(
    directory: Path, clip_id: str, name: str, keys: tuple[str, ...]
) -> list[torch.Tensor]:
    path = directory / name
    _expect(clip_id, path.is_file(), f"missing file {name} ({path})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(
            f"clip {clip_id!r}: {name} is not a readable safetensors file ({e})"
        ) from e
    missing = [k for k in keys if k not in tensors]
    _expect(clip_id, not missing, f"{name} lacks tensors {missing}")
    return [tensors[k] for k in keys]


def read_clip(store_dir: str | Path, clip_id: str, *, validate: bool = True) -> ClipRecord:
    """Loads a clip; with ``validate`` (default) checks it like ``validate_record``.

    Raises:
        StoreError: naming the clip and the problem (missing file, wrong dtype or shape,
            NaN/inf values, ``L != 2 * frames``, inconsistent metadata).
    """
    directory = clip_dir(store_dir, clip_id)
    _expect(clip_id, directory.is_dir(), f"no clip directory {directory}")
    meta = read_metadata(store_dir, clip_id)
    (latents,) = _load_tensors(directory, clip_id, LATENTS_FILE, ("latents",))
    (struct,) = _load_tensors(directory, clip_id, STRUCT_FILE, ("struct",))
    (features,) = _load_tensors(directory, clip_id, AUDIO_FILE, ("features",))
    image, latent = _load_tensors(directory, clip_id, REF_FILE, ("image", "latent"))
    box = None
    if (directory / MOUTH_BOX_FILE).is_file():
        (box,) = _load_tensors(directory, clip_id, MOUTH_BOX_FILE, ("mouth_box",))
    record = ClipRecord(clip_id, latents, struct, features, image, latent, meta, box)
    if validate:
        validate_record(record)
    return record


# Recovery ---------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_is_stale(path: Path, now: float) -> bool:
    """Written on this host by a process that is gone, or older than ``STALE_TMP_SECONDS``
    (another host's, whose process cannot be checked from here)."""
    parts = path.name[len(TMP_PREFIX) :].rsplit("@", 2)
    pid = parts[-1].removesuffix("-old") if len(parts) == 3 else ""
    if pid.isdigit() and parts[1] == socket.gethostname() and not _pid_alive(int(pid)):
        return True
    with contextlib.suppress(FileNotFoundError):
        return now - path.stat().st_mtime > STALE_TMP_SECONDS
    return False


def repair_store(store_dir: str | Path) -> dict[str, list[str]]:
    """Cleans up after a crash; safe to run while other processes write to the store.

    Removes stale temporary directories (``removed_tmp``), re-lists complete clip directories
    missing from the manifest (``relisted``: a crash between rename and append) and removes
    clip directories that are incomplete (``removed_incomplete``: cannot come from
    ``write_clip_record``, whose rename is atomic; they are recomputed by the next extraction).
    """
    store = Path(store_dir)
    clips = store / CLIPS_DIR
    report: dict[str, list[str]] = {"removed_tmp": [], "relisted": [], "removed_incomplete": []}
    if not clips.is_dir():
        return report
    listed = {e["clip_id"] for e in load_manifest(store)}
    now = time.time()
    for path in sorted(clips.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(TMP_PREFIX):
            if _tmp_is_stale(path, now):
                shutil.rmtree(path, ignore_errors=True)
                report["removed_tmp"].append(path.name)
                logger.warning("removed stale temporary clip directory %s", path)
            continue
        if path.name in listed or path.name.startswith("."):
            continue
        try:
            missing = [n for n in CLIP_FILES if not (path / n).is_file()]
            _expect(path.name, not missing, f"missing files {missing}")
            meta = read_metadata(store, path.name)
            _expect(path.name, meta.get("clip_id") == path.name, "metadata clip_id differs")
            entry = manifest_entry(meta)
        except (StoreError, KeyError) as e:
            logger.warning("removing incomplete clip directory %s: %s", path, e)
            shutil.rmtree(path, ignore_errors=True)
            report["removed_incomplete"].append(path.name)
            continue
        append_manifest(store, entry)
        report["relisted"].append(path.name)
        logger.info("re-listed clip %s (its manifest line was missing)", path.name)
    return report


# Store-level files -----------------------------------------------------------------------------


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory, fsynced and
    renamed: readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_store_info(store_dir: str | Path) -> dict[str, Any]:
    """``store.json`` (written by extraction), or ``{}`` for a store without one."""
    path = Path(store_dir) / STORE_INFO_NAME
    if not path.is_file():
        return {}
    return read_json_object(path, StoreError)


def update_store_info(store_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merges ``fields`` into ``store.json`` (atomically; not rewritten when nothing changes)
    and returns the result."""
    old = read_store_info(store_dir)
    info = {**old, **fields}
    if info != old or not (Path(store_dir) / STORE_INFO_NAME).is_file():
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(store_dir) / STORE_INFO_NAME, info)
    return info


@dataclass(frozen=True)
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
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

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
    """Mean and std (population, float64) of every structure dimension over all latent frames
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
        (struct,) = _load_tensors(clip_dir(store, clip_id), clip_id, STRUCT_FILE, ("struct",))
        clip_names = tuple(meta.get("struct_names", ()))
        if names is None:
            names = clip_names
        _expect(
            clip_id,
            clip_names == names,
            f"struct_names {list(clip_names)} differ from the store's {list(names)}",
        )
        x = struct.double()
        _expect(clip_id, bool(torch.isfinite(x).all()), "struct has NaN/inf values")
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
