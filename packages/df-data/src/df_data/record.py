"""One clip's extraction: a validated source clip -> its store record (``build_record``).

Legend: ``B`` batch (1), ``T`` video frames, ``T_lat`` latent frames, ``C`` latent channels,
``H W`` frame size, ``h w`` latent size, ``Ds`` structure dimension, ``N`` audio samples,
``L`` audio feature frames, ``Da`` audio feature dimension.

The steps (``# Step N`` in ``build_record``): convert frames to float ``[1, T, 3, H, W]`` in
[-1, 1], apply ``frame_transform`` (face crop plugs in here; identity by default), cut the clip
to ``1 + k * frames_per_latent`` frames for temporally compressing codecs, run ``vad``
(optional), encode latents in chunks, compute 50 Hz audio features (exactly 2 per video frame),
keep the structure of every video frame (a temporally compressing codec's latent frame ``j``
covers frames ``(j - 1) * k + 1 .. j * k``, frame 0 alone for ``j = 0``; training windows group
the structure of each latent frame's frames, :mod:`df_data.dataset`), take the union of the mouth boxes of each latent
frame's group when the source has them (dropped, with a warning, under a ``frame_transform``,
which moves the pixels they refer to), and encode the first frame alone as the reference latent.

Hooks, so face cropping, VAD and pretrained encoders plug in without a rewrite:

- ``frame_transform(video_BTCHW) -> video_BTCHW``: float in [-1, 1], same ``B`` and ``T``,
  any ``H W`` the codec accepts; its ``name`` attribute (or class name) goes into the metadata.
- ``vad(audio_N, frames) -> bool [frames]``: speech per video frame; the metadata records the
  speech ratio and the speech segments, and clips below ``min_speech_ratio`` are failures.
- ``encoder``: any ``features.AudioEncoder`` (registry ``features.AUDIO_ENCODERS``).
- ``ref_encoder``: a ``df_data.encoders.image.RefEncoder`` (optional): global reference tokens
  of ``ref_frames`` evenly spaced frames (frame 0 first) of the stored (transformed) frames.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from df_core.conventions import FPS
from df_data.features import (
    FEATURE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    AudioEncoder,
    features_for_frames,
)
from df_data.sources import SourceClip, SourceError
from df_data.store import STORE_VERSION, ClipRecord
from df_models.codecs import LatentCodec, codec_identity

logger = logging.getLogger(__name__)

STRUCT_FRAME_RULE = "every video frame: struct[t], t < frames (latent frames group them)"
MOUTH_BOX_RULE = "pixels of the stored frames; union of the boxes of each latent frame's group"

# Copied from the source metadata (df_data.sources: the extractor's or the ground truth's).
STRUCTURE_KEYS = (
    "struct_mirror",
    "struct_extractor",
    "struct_extractor_identity",
    "struct_per_clip",
    "mouth_box_source",
)

FrameTransform = Callable[[torch.Tensor], torch.Tensor]
Vad = Callable[[np.ndarray, int], np.ndarray]


@torch.no_grad()
def encode_latents(
    codec: LatentCodec, video_BTCHW: torch.Tensor, batch_frames: int
) -> torch.Tensor:
    """Normalised latents ``[T_lat, C, h, w]`` float32 on the CPU of a ``[1, T, 3, H, W]`` clip,
    moved to the codec's device ``batch_frames`` video frames at a time
    (``LatentCodec.encode_chunked``: image codecs encode chunks independently, the Wan VAE
    carries its causal cache across them, so the chunk size never changes the latents)."""
    return codec.encode_chunked(video_BTCHW, batch_frames)[0]


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
    ref_encoder: Any = None,
    ref_frames: int = 8,
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

    # Step 5: audio features, exactly 2 per video frame; structure per video frame.
    features = _to_float16("audio features", features_for_frames(encoder, audio_N, frames))
    struct = source.struct[:frames].contiguous()
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

    ref_tokens = ref_at = None
    if ref_encoder is not None:
        ref_at, ref_tokens = reference_tokens(ref_encoder, video_BTCHW[0], ref_frames)

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
        "audio_feature_dim": int(features.shape[-1]),
        "struct_names": list(source.metadata["struct_names"]),
        "struct_frame": STRUCT_FRAME_RULE,
        "mouth_box": MOUTH_BOX_RULE if mouth_box is not None else None,
        "codec": codec_id or codec_identity(codec),
        "audio_encoder": encoder.identity(),
        "ref_encoder": ref_encoder.identity() if ref_encoder is not None else None,
        "frame_transform": _hook_name(frame_transform),
        "vad": vad_meta,
        "source": {"dir": str(source.directory.resolve()), "files": source.files},
        "source_metadata": source.metadata,
        "store_version": STORE_VERSION,
    }
    if "identity_seed" in source.metadata:
        meta["identity_seed"] = source.metadata["identity_seed"]
    for key in STRUCTURE_KEYS:  # what the structure is and how a flip acts on it
        if key in source.metadata:
            meta[key] = source.metadata[key]
    return ClipRecord(
        source.clip_id,
        latents,
        struct,
        features,
        ref_image,
        ref_latent,
        meta,
        mouth_box,
        ref_tokens,
        ref_at,
    )


def ref_token_frames(frames: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced video frames of a clip (int64, increasing, from 0; fewer when
    the clip is shorter)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"ref_frames must be a positive integer, got {count!r}")
    return torch.linspace(0, frames - 1, min(count, frames)).round().long().unique()


def reference_tokens(
    ref_encoder: Any, video_TCHW: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames [F], tokens float16 [F, R, Dr])`` of ``count`` frames of a clip in [-1, 1]."""
    at = ref_token_frames(video_TCHW.shape[0], count)
    images = ((video_TCHW[at] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    tokens = ref_encoder.encode(images.permute(0, 2, 3, 1).numpy())
    return at, _to_float16("reference tokens", tokens)


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
