"""Extraction: source clip directories -> the clip store (store.py describes the format).

Legend: ``B`` batch (1), ``T`` video frames, ``T_lat`` latent frames, ``C`` latent channels,
``H W`` frame size, ``h w`` latent size, ``Ds`` structure dimension, ``N`` audio samples,
``L`` audio feature frames, ``Da`` audio feature dimension.

A source is any directory under ``src_dir`` holding ``video.mp4`` (H.264, 25 fps),
``audio.wav`` (16 kHz mono), ``gt.safetensors`` (``struct`` float32 ``[T, Ds]``, ``identity``
float32 ``[Di]``, optionally ``mouth_box`` float32 ``[T, 4]`` pixel boxes ``(x0, y0, x1, y1)``)
and ``metadata.json`` (``fps``, ``frames``, ``split``, ``struct_names``, ...).
Its clip id is ``"<split>-<directory name>"``. Directories whose path below ``src_dir`` has a
component starting with a dot (a generator's temporary output) are ignored.

Per source (``# Step N`` in ``build_record``): validate it (``read_source``: files present,
metadata fps == 25, the mp4 decodes at 25 fps with the metadata's frame count, gt finite with
one structure row per frame, audio and video durations within 40 ms), convert frames to float
``[1, T, 3, H, W]`` in [-1, 1], apply ``frame_transform`` (face crop plugs in here; identity by
default), cut the clip to ``1 + k * frames_per_latent`` frames for temporally compressing codecs,
run ``vad`` (optional), encode latents in chunks, compute 50 Hz audio features (exactly 2 per
video frame), take the structure of the *last* video frame of each latent frame's group
(``struct[j * frames_per_latent]``: latent frame 0 covers frame 0 alone, latent frame ``j``
covers frames ``(j - 1) * k + 1 .. j * k``), take the union of the mouth boxes of each latent
frame's group when the source has them (dropped, with a warning, under a ``frame_transform``,
which moves the pixels they refer to), encode the first frame alone as the reference latent,
and write the clip atomically. The store's ``store.json`` records the codec directory (when
the codec was given as one) and the codec and audio encoder identity, so that training can
ship the codec with its weights. A failing source is recorded in ``failures.jsonl`` with a
``kind`` and a reason; the run goes on. On a re-run finished clips are skipped, and so are
sources whose earlier failure is a property of the data (every kind except ``"error"``,
an unexpected exception) unless ``retry_failed``.

Hooks, so face cropping, VAD and pretrained encoders plug in without a rewrite:

- ``frame_transform(video_BTCHW) -> video_BTCHW``: float in [-1, 1], same ``B`` and ``T``,
  any ``H W`` the codec accepts; its ``name`` attribute (or class name) goes into the metadata.
- ``vad(audio_N, frames) -> bool [frames]``: speech per video frame; the metadata records the
  speech ratio and the speech segments, and clips below ``min_speech_ratio`` are failures.
- ``encoder``: any ``features.AudioEncoder`` (registry ``features.AUDIO_ENCODERS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from df_data.features import (
    FEATURE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AudioEncoder,
    LogMelEncoder,
    build_audio_encoder,
    config_hash,
    features_for_frames,
)
from df_data.media import FPS, SAMPLE_RATE, MediaError, read_video, read_wav
from df_data.store import (
    STORE_VERSION,
    ClipExistsError,
    ClipRecord,
    StoreError,
    append_failure,
    check_clip_id,
    finished_clip_ids,
    load_failures,
    load_manifest,
    read_metadata,
    repair_store,
    update_store_info,
    write_clip_record,
)
from df_models.codecs import (
    SUPPORTED_KINDS,
    DiffusersVAECodec,
    LatentCodec,
    TinyAutoencoder,
)

logger = logging.getLogger(__name__)

VIDEO_FILE = "video.mp4"
AUDIO_FILE = "audio.wav"
GT_FILE = "gt.safetensors"
METADATA_FILE = "metadata.json"
SOURCE_FILES = (VIDEO_FILE, AUDIO_FILE, GT_FILE, METADATA_FILE)
SPLITS = ("train", "val", "test")
MAX_AV_OFFSET_S = 0.040  # audio and video durations may differ by one video frame at most
FPS_TOLERANCE = 1e-3
RETRYABLE_KINDS = frozenset({"error"})  # other failure kinds are properties of the source
STRUCT_FRAME_RULE = "last video frame of each latent frame's group: struct[j * frames_per_latent]"
MOUTH_BOX_RULE = "pixels of the stored frames; union of the boxes of each latent frame's group"

FrameTransform = Callable[[torch.Tensor], torch.Tensor]
Vad = Callable[[np.ndarray, int], np.ndarray]


class SourceError(ValueError):
    """A source clip is unusable; ``kind`` is a short machine-readable category."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SourceClip:
    """A validated source clip, decoded.

    Attributes:
        directory: the source directory.
        clip_id: ``"<split>-<directory name>"``.
        metadata: its ``metadata.json``.
        frames: uint8 RGB ``[T, H, W, 3]``.
        audio: float32 mono audio ``[N]`` at 16 kHz.
        struct: float32 ``[T, Ds]``.
        mouth_box: float32 ``[T, 4]`` pixel boxes, or None when the source has none.
        files: sha256 of each source file, by name.
    """

    directory: Path
    clip_id: str
    metadata: dict[str, Any]
    frames: np.ndarray
    audio: np.ndarray
    struct: torch.Tensor
    files: dict[str, str]
    mouth_box: torch.Tensor | None = None


# Sources ----------------------------------------------------------------------------------------


def discover_sources(src_dir: str | Path) -> list[Path]:
    """Directories under ``src_dir`` (itself included) holding ``video.mp4``, sorted."""
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"src_dir {str(src)!r} is not a directory")
    found = {
        p.parent
        for p in src.rglob(VIDEO_FILE)
        if not any(part.startswith(".") for part in p.relative_to(src).parts)
    }
    return sorted(found)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_source_metadata(directory: Path) -> tuple[dict[str, Any], str]:
    """``(metadata, clip_id)`` of a source; SourceError if metadata.json is unusable."""
    path = directory / METADATA_FILE
    if not path.is_file():
        raise SourceError("missing_file", f"{path}: missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError("bad_metadata", f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SourceError("bad_metadata", f"{path}: not a JSON object")
    missing = [k for k in ("fps", "frames", "split", "struct_names") if k not in meta]
    if missing:
        raise SourceError("bad_metadata", f"{path}: lacks keys {missing}")
    if meta["split"] not in SPLITS:
        raise SourceError("bad_metadata", f"{path}: split {meta['split']!r} not in {SPLITS}")
    if not isinstance(meta["frames"], int) or meta["frames"] < 1:
        raise SourceError("bad_metadata", f"{path}: frames must be a positive integer")
    if not isinstance(meta["struct_names"], list):
        raise SourceError("bad_metadata", f"{path}: struct_names must be a list")
    fps = meta["fps"]
    if not isinstance(fps, int | float) or abs(fps - FPS) > FPS_TOLERANCE:
        raise SourceError("bad_fps", f"{path}: fps is {fps}, the pipeline needs {FPS:g}")
    clip_id = f"{meta['split']}-{directory.name}"
    try:
        check_clip_id(clip_id)
    except StoreError as e:
        raise SourceError("bad_clip_id", f"{directory}: {e}") from e
    return meta, clip_id


def read_source(directory: Path) -> SourceClip:
    """Reads and validates a source clip; SourceError (with a ``kind``) says what is wrong."""
    # Step 1: files present, metadata usable.
    missing = [name for name in SOURCE_FILES if not (directory / name).is_file()]
    if missing:
        raise SourceError("missing_file", f"{directory}: missing {missing}")
    meta, clip_id = read_source_metadata(directory)

    # Step 2: ground truth finite, one structure row per metadata frame.
    try:
        gt = load_file(str(directory / GT_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError("bad_gt", f"{directory / GT_FILE}: unreadable ({e})") from e
    struct = gt.get("struct")
    if struct is None or struct.ndim != 2 or not struct.is_floating_point():
        shape = None if struct is None else tuple(struct.shape)
        raise SourceError(
            "bad_gt", f"{directory / GT_FILE}: struct must be float [T, Ds], got {shape}"
        )
    if struct.shape[1] != len(meta["struct_names"]):
        raise SourceError(
            "bad_gt",
            f"{directory / GT_FILE}: struct dim {struct.shape[1]} != "
            f"{len(meta['struct_names'])} struct_names",
        )
    for key, value in gt.items():
        bad = int((~torch.isfinite(value.float())).sum()) if value.is_floating_point() else 0
        if bad:
            raise SourceError("nan_gt", f"{directory / GT_FILE}: {key} has {bad} NaN/inf values")
    box = gt.get("mouth_box")
    if box is not None and (
        box.ndim != 2 or box.shape != (struct.shape[0], 4) or not box.is_floating_point()
    ):
        raise SourceError(
            "bad_gt",
            f"{directory / GT_FILE}: mouth_box must be float [T={struct.shape[0]}, 4], "
            f"got {box.dtype} {tuple(box.shape)}",
        )

    # Step 3: the video decodes at 25 fps with the metadata's frame count.
    try:
        frames_THWC, fps = read_video(directory / VIDEO_FILE)
    except MediaError as e:
        raise SourceError("decode_video", str(e)) from e
    if abs(fps - FPS) > FPS_TOLERANCE:
        raise SourceError(
            "bad_fps", f"{directory / VIDEO_FILE}: decodes at {fps:g} fps, need {FPS:g}"
        )
    frames = frames_THWC.shape[0]
    if frames != meta["frames"] or struct.shape[0] != frames:
        raise SourceError(
            "frame_count",
            f"{directory}: metadata says {meta['frames']} frames, the video decodes "
            f"{frames}, gt struct has {struct.shape[0]}",
        )

    # Step 4: the audio decodes and lasts as long as the video (within 40 ms).
    try:
        audio_N = read_wav(directory / AUDIO_FILE)
    except MediaError as e:
        raise SourceError("decode_audio", str(e)) from e
    audio_s, video_s = audio_N.shape[0] / SAMPLE_RATE, frames / FPS
    if abs(audio_s - video_s) > MAX_AV_OFFSET_S + 1e-9:
        raise SourceError(
            "av_duration",
            f"{directory}: audio lasts {audio_s:.3f} s, video {video_s:.3f} s "
            f"(more than {MAX_AV_OFFSET_S * 1000:.0f} ms apart)",
        )
    if not np.isfinite(audio_N).all():
        raise SourceError("decode_audio", f"{directory / AUDIO_FILE}: NaN or inf samples")

    files = {name: sha256_file(directory / name) for name in SOURCE_FILES}
    if box is not None:
        box = box.float()
    return SourceClip(directory, clip_id, meta, frames_THWC, audio_N, struct.float(), files, box)


# Codec ------------------------------------------------------------------------------------------


def load_codec(
    codec: LatentCodec | str | Path, device: torch.device | str | None = None
) -> LatentCodec:
    """A codec object as is, or one loaded from a directory by its ``config.json``:
    ``"kind": "TinyAutoencoder"`` -> ``TinyAutoencoder.from_pretrained``; ``"_class_name"`` in
    ``SUPPORTED_KINDS`` -> ``DiffusersVAECodec.from_pretrained`` (also from a pipeline
    directory with the VAE in ``vae/``)."""
    if not isinstance(codec, LatentCodec):
        path = Path(codec)
        subfolder = None
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            subfolder = "vae"
        config_path = path / (subfolder or "") / "config.json"
        if not config_path.is_file():
            raise ValueError(f"codec path {str(path)!r} has no config.json (nor vae/config.json)")
        config = json.loads(config_path.read_text())
        if config.get("kind") == "TinyAutoencoder":
            codec = TinyAutoencoder.from_pretrained(path)
        elif config.get("_class_name") in SUPPORTED_KINDS:
            codec = DiffusersVAECodec.from_pretrained(path, subfolder=subfolder)
        else:
            raise ValueError(
                f"{config_path}: neither kind 'TinyAutoencoder' nor _class_name in "
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
        name, config = "TinyAutoencoder", dataclasses.asdict(codec.config)
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


def _codec_device(codec: LatentCodec) -> torch.device:
    return codec.latent_mean.device


@torch.no_grad()
def encode_latents(
    codec: LatentCodec, video_BTCHW: torch.Tensor, batch_frames: int
) -> torch.Tensor:
    """Normalised latents ``[T_lat, C, h, w]`` float32 on the CPU of a ``[1, T, 3, H, W]`` clip.

    An image codec (``frames_per_latent == 1``) encodes ``batch_frames`` frames at a time; a
    causal video codec carries state across the clip, so it encodes the clip in one call.
    """
    device = _codec_device(codec)
    if codec.frames_per_latent == 1:
        chunks = video_BTCHW.split(batch_frames, dim=1)
    else:
        chunks = (video_BTCHW,)
    z = [codec.encode(chunk.to(device)).float().cpu() for chunk in chunks]
    return torch.cat(z, dim=1)[0]


def _to_float16(name: str, x: torch.Tensor) -> torch.Tensor:
    peak = float(x.abs().max())
    if not math.isfinite(peak) or peak > torch.finfo(torch.float16).max:
        raise SourceError(
            "nonfinite_output", f"{name} are not finite in float16 (max |x| = {peak})"
        )
    return x.to(torch.float16)


# One clip ---------------------------------------------------------------------------------------


def _segments(mask_T: np.ndarray) -> list[list[int]]:
    """Runs of True as ``[start, end)`` frame ranges."""
    edges = np.diff(np.concatenate([[0], mask_T.astype(np.int8), [0]]))
    return [
        [int(s), int(e)]
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]


def _hook_name(hook: Any) -> str | None:
    """A hook's ``name`` attribute, else its function or class name (for the metadata)."""
    if hook is None:
        return None
    return str(getattr(hook, "name", None) or getattr(hook, "__name__", type(hook).__name__))


def build_record(
    source: SourceClip,
    codec: LatentCodec,
    encoder: AudioEncoder,
    *,
    batch_frames: int = 16,
    frame_transform: FrameTransform | None = None,
    vad: Vad | None = None,
    min_speech_ratio: float = 0.0,
    codec_id: dict[str, str] | None = None,
) -> ClipRecord:
    """The store record of a validated source clip (module doc: the steps)."""
    # Step 1: uint8 [T, H, W, 3] -> float [1, T, 3, H, W] in [-1, 1]; the optional transform.
    video_BTCHW = torch.from_numpy(source.frames).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0
    source_frames = video_BTCHW.shape[1]
    if frame_transform is not None:
        video_BTCHW = frame_transform(video_BTCHW)
        if video_BTCHW.ndim != 5 or video_BTCHW.shape[:3] != (1, source_frames, 3):
            raise SourceError(
                "bad_transform",
                f"frame_transform must keep [1, {source_frames}, 3, H, W], got {tuple(video_BTCHW.shape)}",
            )

    # Step 2: keep 1 + k * frames_per_latent frames; check the codec accepts the frame size.
    fpl = codec.frames_per_latent
    frames = 1 + (source_frames - 1) // fpl * fpl if fpl > 1 else source_frames
    video_BTCHW = video_BTCHW[:, :frames]
    height, width = video_BTCHW.shape[-2:]
    try:
        t_lat, _, _, _ = codec.latent_shape(frames, height, width)
    except ValueError as e:
        raise SourceError("bad_size", f"{frames} frames of {height}x{width}: {e}") from None

    # Step 3: voice activity (before the expensive encoders, so silent clips are cheap).
    audio_N = source.audio[: frames * SAMPLES_PER_VIDEO_FRAME]
    vad_meta = None
    if vad is not None:
        speech_T = np.asarray(vad(audio_N, frames), dtype=bool)
        if speech_T.shape != (frames,):
            raise SourceError("bad_vad", f"vad must return bool [{frames}], got {speech_T.shape}")
        ratio = float(speech_T.mean())
        if ratio < min_speech_ratio:
            raise SourceError(
                "no_speech", f"speech in {ratio:.0%} of frames < {min_speech_ratio:.0%}"
            )
        vad_meta = {"name": _hook_name(vad), "speech_ratio": ratio, "segments": _segments(speech_T)}

    # Step 4: latents of the clip and of the first frame alone (the reference).
    latents = _to_float16("latents", encode_latents(codec, video_BTCHW, batch_frames))
    ref_latent = _to_float16("reference latent", encode_latents(codec, video_BTCHW[:, :1], 1)[0])
    ref_image = ((video_BTCHW[0, 0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)

    # Step 5: audio features, exactly 2 per video frame; structure per latent frame.
    features = _to_float16("audio features", features_for_frames(encoder, audio_N, frames))
    struct = source.struct[torch.arange(t_lat) * fpl].contiguous()
    mouth_box = None
    if source.mouth_box is not None and frame_transform is not None:
        logger.warning(
            "%s: mouth boxes dropped: frame_transform %s moves the pixels they refer to",
            source.clip_id,
            _hook_name(frame_transform),
        )
    elif source.mouth_box is not None:
        mouth_box = group_mouth_boxes(source.mouth_box[:frames], fpl)
        mouth_box = torch.minimum(
            mouth_box.clamp(min=0.0), torch.tensor([width, height, width, height]).float()
        )

    meta = {
        "clip_id": source.clip_id,
        "split": source.metadata["split"],
        "fps": FPS,
        "frames": frames,
        "source_frames": source_frames,
        "latent_frames": t_lat,
        "frames_per_latent": fpl,
        "height": int(height),
        "width": int(width),
        "audio_rate": FEATURE_RATE,
        "audio_feature_dim": int(features.shape[1]),
        "struct_names": list(source.metadata["struct_names"]),
        "struct_frame": STRUCT_FRAME_RULE,
        "mouth_box": MOUTH_BOX_RULE if mouth_box is not None else None,
        "codec": codec_id or codec_identity(codec),
        "audio_encoder": encoder.identity(),
        "frame_transform": _hook_name(frame_transform),
        "vad": vad_meta,
        "source": {"dir": str(source.directory.resolve()), "files": source.files},
        "source_metadata": source.metadata,
        "store_version": STORE_VERSION,
    }
    if "identity_seed" in source.metadata:
        meta["identity_seed"] = source.metadata["identity_seed"]
    return ClipRecord(
        source.clip_id, latents, struct, features, ref_image, ref_latent, meta, mouth_box
    )


def group_mouth_boxes(box_T4: torch.Tensor, frames_per_latent: int) -> torch.Tensor:
    """One box per latent frame ``[T_lat, 4]`` from per-video-frame boxes ``[T, 4]``: the union
    of the boxes of the frames each latent frame covers (latent frame 0 covers frame 0, frame
    ``j`` covers ``(j - 1) * k + 1 .. j * k``), so the mouth is inside it on every one of them."""
    if frames_per_latent == 1:
        return box_T4.float().contiguous()
    first, rest = box_T4[:1], box_T4[1:]
    groups = rest.reshape(-1, frames_per_latent, 4)
    lo = torch.cat([first[:, :2], groups[..., :2].amin(1)])
    hi = torch.cat([first[:, 2:], groups[..., 2:].amax(1)])
    return torch.cat([lo, hi], dim=1).float().contiguous()


# The store --------------------------------------------------------------------------------------


def _check_same_encoders(
    out_dir: Path, codec_id: dict[str, str], encoder_id: dict[str, str]
) -> None:
    """A store holds latents of one codec and features of one encoder: compare with a clip."""
    for entry in load_manifest(out_dir):
        try:
            meta = read_metadata(out_dir, entry["clip_id"])
        except StoreError:
            continue
        if meta.get("codec") != codec_id or meta.get("audio_encoder") != encoder_id:
            raise ValueError(
                f"{out_dir} was written with codec {meta.get('codec')} and audio encoder "
                f"{meta.get('audio_encoder')}; this run has {codec_id} and {encoder_id}: "
                "use a new output directory"
            )
        return


def extract_store(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    codec: LatentCodec | str | Path,
    encoder: AudioEncoder | None = None,
    batch_frames: int = 16,
    progress: bool = True,
    frame_transform: FrameTransform | None = None,
    vad: Vad | None = None,
    min_speech_ratio: float = 0.0,
    device: torch.device | str | None = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Extracts every source under ``src_dir`` into the store ``out_dir``; resumable.

    Args:
        src_dir: searched recursively for directories holding ``video.mp4``.
        out_dir: the clip store (created if needed).
        codec: a ``LatentCodec`` or a directory to load one from (``load_codec``); used in
            eval mode (its previous mode is restored at the end).
        encoder: the audio encoder; ``LogMelEncoder()`` by default.
        batch_frames: frames per codec call for image codecs.
        progress: show a tqdm bar.
        frame_transform, vad, min_speech_ratio: hooks (module doc).
        device: where to run the codec; None keeps the codec where it is (CPU when loaded).
        retry_failed: also retry sources whose earlier failure is a property of the data.

    Returns:
        A summary: ``sources``, ``written``, ``skipped_finished``, ``skipped_failed``,
        ``failed``, ``failures`` (count per kind, this run), ``relisted``, ``removed_tmp``,
        ``latent_frames_written``, ``seconds``.
    """
    if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or batch_frames < 1:
        raise ValueError(f"batch_frames must be a positive integer, got {batch_frames!r}")
    start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = discover_sources(src_dir)
    codec_arg = codec
    codec = load_codec(codec, device)
    encoder = encoder if encoder is not None else LogMelEncoder()
    codec_id = codec_identity(codec)
    _check_same_encoders(out, codec_id, encoder.identity())
    info = {"codec": codec_id, "audio_encoder": encoder.identity()}
    if isinstance(codec_arg, str | Path):
        info["codec_dir"] = str(Path(codec_arg).resolve())
    update_store_info(out, **info)

    repaired = repair_store(out)
    finished = finished_clip_ids(out)
    failed_before = (
        set()
        if retry_failed
        else {f.get("source") for f in load_failures(out) if f.get("kind") not in RETRYABLE_KINDS}
    )
    summary: dict[str, Any] = {
        "sources": len(sources),
        "written": 0,
        "skipped_finished": 0,
        "skipped_failed": 0,
        "failed": 0,
        "failures": Counter(),
        "relisted": len(repaired["relisted"]),
        "removed_tmp": len(repaired["removed_tmp"]),
        "latent_frames_written": 0,
    }
    ids = _source_ids(sources)
    build_kwargs = {
        "batch_frames": batch_frames,
        "frame_transform": frame_transform,
        "vad": vad,
        "min_speech_ratio": min_speech_ratio,
        "codec_id": codec_id,
    }
    was_training = codec.training
    codec.eval()
    try:
        with tqdm(sources, desc="extract", unit="clip", disable=not progress) as bar:
            for directory in bar:
                clip_id = ids[directory]
                if clip_id in finished:
                    summary["skipped_finished"] += 1
                elif str(directory.resolve()) in failed_before:
                    summary["skipped_failed"] += 1
                else:
                    _extract_one(directory, clip_id, out, codec, encoder, build_kwargs, summary)
                bar.set_postfix(written=summary["written"], failed=summary["failed"])
    finally:
        codec.train(was_training)
    summary["failures"] = dict(summary["failures"])
    summary["seconds"] = round(time.monotonic() - start, 3)
    logger.info("extraction into %s: %s", out, summary)
    return summary


def _extract_one(
    directory: Path,
    clip_id: str | SourceError,
    out: Path,
    codec: LatentCodec,
    encoder: AudioEncoder,
    build_kwargs: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """Extracts one source into the store, or records why not; updates ``summary``."""
    source = str(directory.resolve())
    cid = clip_id if isinstance(clip_id, str) else None
    try:
        if isinstance(clip_id, SourceError):
            raise clip_id
        record = build_record(read_source(directory), codec, encoder, **build_kwargs)
        write_clip_record(out, record)
    except ClipExistsError:  # a concurrent run wrote it first; it lists it (or repair does)
        logger.info("clip %s was written by another process meanwhile", cid)
        summary["skipped_finished"] += 1
    except (SourceError, MediaError, StoreError) as e:
        kind = getattr(e, "kind", "decode" if isinstance(e, MediaError) else "invalid_output")
        _record_failure(out, source, cid, kind, str(e), summary)
    except Exception as e:  # one bad clip must not stop a corpus-sized run
        logger.exception("extracting %s failed", directory)
        _record_failure(out, source, cid, "error", f"{type(e).__name__}: {e}", summary)
    else:
        summary["written"] += 1
        summary["latent_frames_written"] += record.latents.shape[0]


def _source_ids(sources: list[Path]) -> dict[Path, str | SourceError]:
    """Clip id of each source, or the SourceError saying why it has none. Sources sharing an id
    all get a ``duplicate_clip_id`` error, whatever their order, so none of them is written."""
    ids: dict[Path, str | SourceError] = {}
    for directory in sources:
        try:
            ids[directory] = read_source_metadata(directory)[1]
        except SourceError as e:
            ids[directory] = e
    owners: dict[str, list[Path]] = {}
    for directory, clip_id in ids.items():
        if isinstance(clip_id, str):
            owners.setdefault(clip_id, []).append(directory)
    for clip_id, dirs in owners.items():
        if len(dirs) > 1:
            for directory in dirs:
                others = [str(d) for d in dirs if d != directory]
                ids[directory] = SourceError(
                    "duplicate_clip_id",
                    f"{directory}: clip id {clip_id!r} is also that of {others}",
                )
    return ids


def _record_failure(
    out: Path, source: str, clip_id: str | None, kind: str, reason: str, summary: dict[str, Any]
) -> None:
    logger.warning("skipping %s (%s): %s", source, kind, reason)
    append_failure(out, source, reason, kind=kind, clip_id=clip_id)
    summary["failed"] += 1
    summary["failures"][kind] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m df_data.extract --src DIR --out STORE --codec DIR``; prints the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", required=True, help="directory searched for source clips")
    parser.add_argument("--out", required=True, help="the clip store")
    parser.add_argument("--codec", required=True, help="codec directory (config.json + weights)")
    parser.add_argument("--audio-encoder", default="logmel", help="name in AUDIO_ENCODERS")
    parser.add_argument("--batch-frames", type=int, default=16, help="frames per codec call")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: CPU")
    parser.add_argument("--retry-failed", action="store_true", help="retry failed sources")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = extract_store(
        args.src,
        args.out,
        codec=args.codec,
        encoder=build_audio_encoder(args.audio_encoder),
        batch_frames=args.batch_frames,
        progress=not args.no_progress,
        device=args.device,
        retry_failed=args.retry_failed,
    )
    print(json.dumps(summary, indent=2))  # the CLI's output, not library logging
    return 1 if summary["failed"] and not summary["written"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
