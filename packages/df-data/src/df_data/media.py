"""Media IO: mp4 video (PyAV writes H.264 + AAC and decodes) and wav audio (soundfile).

Every writer is atomic: it writes a temporary file beside the target and renames it, so an
interrupted run never leaves a truncated file under the final name. Every reader raises a
``MediaError`` (a ``ValueError``) naming the file and what is wrong with it.

Legend: T frames, H W pixels, N audio samples.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000  # the audio rate of the whole pipeline
FPS = 25.0  # video frames per second


class MediaError(ValueError):
    """A media file is missing, unreadable or not what the pipeline expects."""


@contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside ``path``; renames it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds, frames / fps
    has_audio: bool


def write_video(
    path: str | Path,
    frames_THWC: np.ndarray,
    *,
    fps: float = FPS,
    audio_N: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> Path:
    """Writes uint8 RGB frames ``[T, H, W, 3]`` as H.264 (yuv420p, even H and W) with the
    optional mono float audio ``[N]`` in [-1, 1] muxed in as AAC."""
    import av

    frames_THWC = np.asarray(frames_THWC)
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.dtype != np.uint8:
        raise MediaError(
            f"{path}: frames must be uint8 [T, H, W, 3], got {frames_THWC.dtype} {frames_THWC.shape}"
        )
    T, H, W, _ = frames_THWC.shape
    if T == 0 or H % 2 or W % 2:
        raise MediaError(
            f"{path}: need at least one frame of even height and width, got {frames_THWC.shape}"
        )
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=round(fps))
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast"}
        audio_stream = None
        if audio_N is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono"
        for frame in frames_THWC:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None:
            samples = np.clip(np.asarray(audio_N, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            for packet in audio_stream.encode(frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return Path(path)


def _open(path: Path):
    import av

    if not path.is_file():
        raise MediaError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(f"{path}: not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: has no video stream")
    return container


def _decode(container, path: Path) -> list[np.ndarray]:
    import av

    try:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(f"{path}: decoding failed ({e}); the file may be truncated") from e


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps, size and audio presence of an mp4 (frames counted by decoding when
    the container does not record them)."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        has_audio = bool(container.streams.audio)
        frames = stream.frames or len(_decode(container, path))
        w, h = stream.codec_context.width, stream.codec_context.height
    return VideoInfo(frames, fps, w, h, frames / fps if fps else 0.0, has_audio)


def read_video(path: str | Path, indices: list[int] | None = None) -> tuple[np.ndarray, float]:
    """Decodes RGB frames ``[T, H, W, 3]`` uint8 (all, or the given indices) and the fps.

    PyAV rather than decord: decord 0.6 fails on widths that are not multiples of 32, which
    real videos often have.
    """
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        frames = _decode(container, path)
    if not frames:
        raise MediaError(f"{path}: contains no frames")
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(frames)]
        if bad:
            raise MediaError(f"{path}: frame indices {bad[:5]} outside [0, {len(frames)})")
        frames = [frames[i] for i in indices]
    return np.stack(frames), fps


def write_wav(path: str | Path, audio_N: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Writes mono float audio in [-1, 1] as 16-bit PCM wav."""
    audio_N = np.asarray(audio_N, dtype=np.float32)
    if audio_N.ndim != 1:
        raise MediaError(f"{path}: audio must be mono [N], got shape {audio_N.shape}")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio_N, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return Path(path)


def read_wav(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads any soundfile-readable audio, downmixes to mono and resamples to ``sample_rate``.

    Returns:
        float32 ``[N]`` in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such audio file")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError(f"{path}: not a readable audio file ({e})") from e
    if audio.shape[0] == 0:
        raise MediaError(f"{path}: contains no audio samples")
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return mono.astype(np.float32)
