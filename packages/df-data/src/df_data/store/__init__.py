"""The clip store: one directory of safetensors + metadata.json per clip, and a manifest.

This module is the store's public face; its parts: ``format`` (file names, ``ClipRecord``,
validation, reading a clip), ``writes`` (a clip, ``store.json``), ``manifest`` (the line files
and crash repair), ``stats`` (structure statistics).

Legend: ``T`` video frames, ``T_lat`` latent frames, ``C`` latent channels, ``h w`` latent size,
``H W`` frame size, ``Ds`` structure dimension, ``L`` audio feature frames (``L = 2 * T``: 50 Hz
features at 25 fps), ``Da`` audio feature dimension.

Layout (binding; df-train's loader reads exactly this)::

    <store>/clips/<clip_id>/video_latents.safetensors  {"latents": float16 [T_lat, C, h, w]}
                            struct.safetensors         {"struct": float32 [T_lat, Ds]}
                            audio_features.safetensors {"features": float16 [L, Da] or
                                                        [L, K, Da] (K layers)}, L == 2 * T
                            ref.safetensors            {"image": uint8 [3, H, W],
                                                        "latent": float16 [C, h, w]}
                            mouth_box.safetensors      optional {"mouth_box": float32 [T_lat, 4]}
                            ref_tokens.safetensors     optional {"tokens": float16 [F, R, Dr],
                                                        "frames": int64 [F]}
                            metadata.json
    <store>/manifest.jsonl   one object per finished clip: clip_id, path, split, latent_frames, frames
    <store>/failures.jsonl   one object per failed source: source, clip_id, kind, reason, time
    <store>/store.json       optional: what extraction knows of the store as a whole (the codec
                             directory it was loaded from, the codec, audio and reference encoder identity)
    <store>/struct_stats.json  per-dimension mean/std of the train split's structure
                             (``struct_stats``: computed on first use, rewritten when stale)

Mouth boxes (optional: real data may have none) are pixel boxes ``(x0, y0, x1, y1)`` in the
stored frames (``metadata["height"]``, ``metadata["width"]``), one per latent frame: the union of
the boxes of the video frames that latent frame covers.

Reference tokens (optional: extraction with a reference encoder) are the global tokens of
``F`` frames of the clip, evenly spaced from frame 0 (``ref_token_frames``), so that training
can take a random frame of the clip as the reference (the proposal's augmentation) at a few
tens of KB per clip instead of tokens for every frame; ``metadata["ref_encoder"]`` records
the encoder. The audio encoder identity (``metadata["audio_encoder"]``) of a pretrained encoder
holds its source (hub id or folder, revision), the sha256 of its weights, the layer choice, the
number of stacked layers ``K`` and the dimension.

Atomicity: a clip directory is built under ``clips/.tmp-<clip_id>@<host>@<pid>``, fsynced and
renamed to ``clips/<clip_id>``; its manifest line is appended (under an exclusive ``flock``,
flushed and fsynced) only after the rename. A clip is *finished* when it is listed in the
manifest and its directory exists. ``repair_store`` fixes what a crash can leave behind: a stale
temporary directory is removed, a renamed directory whose manifest line was never written is
re-listed (not recomputed). The manifest may hold a clip more than once (two processes re-listing
the same directory, a clip re-extracted after its directory was deleted): readers keep the last
line per clip; a line cut short by a crash is skipped with a warning.
"""

from df_data.store.format import (
    AUDIO_FILE,
    CLIP_FILES,
    CLIPS_DIR,
    FAILURES_NAME,
    LATENTS_FILE,
    MANIFEST_NAME,
    METADATA_FILE,
    MOUTH_BOX_FILE,
    REF_FILE,
    REF_TOKENS_FILE,
    REQUIRED_METADATA,
    STORE_INFO_NAME,
    STORE_VERSION,
    STRUCT_FILE,
    STRUCT_STATS_NAME,
    TMP_PREFIX,
    ClipExistsError,
    ClipRecord,
    StoreError,
    check_clip_id,
    clip_dir,
    expected_latent_frames,
    read_clip,
    read_metadata,
    validate_record,
)
from df_data.store.manifest import (
    append_failure,
    append_manifest,
    finished_clip_ids,
    load_failures,
    load_manifest,
    manifest_entry,
    repair_store,
)
from df_data.store.stats import StructStats, compute_struct_stats, struct_stats
from df_data.store.writes import read_store_info, update_store_info, write_clip_record

__all__ = [
    "AUDIO_FILE",
    "CLIPS_DIR",
    "CLIP_FILES",
    "FAILURES_NAME",
    "LATENTS_FILE",
    "MANIFEST_NAME",
    "METADATA_FILE",
    "MOUTH_BOX_FILE",
    "REF_FILE",
    "REF_TOKENS_FILE",
    "REQUIRED_METADATA",
    "STORE_INFO_NAME",
    "STORE_VERSION",
    "STRUCT_FILE",
    "STRUCT_STATS_NAME",
    "TMP_PREFIX",
    "ClipExistsError",
    "ClipRecord",
    "StoreError",
    "StructStats",
    "append_failure",
    "append_manifest",
    "check_clip_id",
    "clip_dir",
    "compute_struct_stats",
    "expected_latent_frames",
    "finished_clip_ids",
    "load_failures",
    "load_manifest",
    "manifest_entry",
    "read_clip",
    "read_metadata",
    "read_store_info",
    "repair_store",
    "struct_stats",
    "update_store_info",
    "validate_record",
    "write_clip_record",
]
