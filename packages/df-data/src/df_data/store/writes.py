"""Writing to the clip store: a clip directory built under a temporary name and renamed, then
listed in the manifest; ``store.json`` merged and replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from df_data.store.format import (
    AUDIO_FILE,
    CLIPS_DIR,
    LATENTS_FILE,
    METADATA_FILE,
    MOUTH_BOX_FILE,
    REF_FILE,
    REF_TOKENS_FILE,
    STORE_INFO_NAME,
    STORE_VERSION,
    STRUCT_FILE,
    TMP_PREFIX,
    ClipExistsError,
    ClipRecord,
    StoreError,
    check_clip_id,
    validate_record,
)
from df_data.store.manifest import append_manifest, manifest_entry
from df_models.io import fsync_path, read_json_object, write_json_atomic


def _tmp_name(clip_id: str) -> str:
    return f"{TMP_PREFIX}{clip_id}@{socket.gethostname()}@{os.getpid()}"


def _tensor_file(path: Path, tensors: dict[str, torch.Tensor], durable: bool) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    if durable:
        fsync_path(path)


def write_clip_record(
    store_dir: str | Path,
    record: ClipRecord,
    *,
    manifest: bool = True,
    overwrite: bool = False,
    durable: bool = True,
) -> Path:
    """Writes ``record`` atomically to ``<store>/clips/<clip_id>`` and returns that directory.

    ``clip_id``, ``latent_frames``, ``audio_feature_dim`` and ``store_version`` are filled into
    the metadata when absent; everything is validated first (StoreError). The directory is
    built under a temporary name, fsynced and renamed; then, with ``manifest``, the manifest
    line is appended. An existing clip is a StoreError unless ``overwrite``.

    ``durable=False`` skips the fsyncs (about half of a small clip's write time): the rename
    still makes the clip appear whole or not at all to any reader and after a crash of the
    process, but not after a power cut. For a writer that makes the whole store durable at once
    at its end (``os.sync()``), as the demo's store stage does.
    """
    check_clip_id(record.clip_id)
    meta = dict(record.metadata)
    meta.setdefault("clip_id", record.clip_id)
    meta.setdefault("latent_frames", int(record.latents.shape[0]) if record.latents.ndim else 0)
    if record.audio_features.ndim in (2, 3):
        meta.setdefault("audio_feature_dim", int(record.audio_features.shape[-1]))
    meta.setdefault("store_version", STORE_VERSION)
    record = dataclasses.replace(record, metadata=meta)
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
        _tensor_file(tmp / LATENTS_FILE, {"latents": record.latents}, durable)
        _tensor_file(tmp / STRUCT_FILE, {"struct": record.struct}, durable)
        _tensor_file(tmp / AUDIO_FILE, {"features": record.audio_features}, durable)
        _tensor_file(
            tmp / REF_FILE, {"image": record.ref_image, "latent": record.ref_latent}, durable
        )
        if record.mouth_box is not None:
            _tensor_file(tmp / MOUTH_BOX_FILE, {"mouth_box": record.mouth_box}, durable)
        if record.ref_tokens is not None:
            tokens = {"tokens": record.ref_tokens, "frames": record.ref_token_frames}
            _tensor_file(tmp / REF_TOKENS_FILE, tokens, durable)
        with open(tmp / METADATA_FILE, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if durable:
            fsync_path(tmp)
        if final.exists():  # overwrite: move the old clip aside so the swap is two renames
            old = clips / f"{_tmp_name(record.clip_id)}-old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        if durable:
            fsync_path(clips)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if manifest:
        append_manifest(store_dir, manifest_entry(meta), durable=durable)
    return final


# Store-level files -----------------------------------------------------------------------------


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
