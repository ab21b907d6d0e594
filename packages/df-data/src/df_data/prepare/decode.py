"""Decoding real videos at exactly 25 fps, by timestamps, with 16 kHz mono audio on the same clock.

Legend: ``T`` output frames (25 fps), ``H W`` pixels after rotation, ``N`` audio samples (16 kHz).

The clock: time 0 is the video stream's start time (``stream.start_time``, the first frame's
presentation time for almost every file); a manifest's ``start`` and ``end`` are seconds on it.
Output frame ``k`` covers ``[start + k/25, start + (k+1)/25)`` and is the source frame on screen
at the middle of that interval (the last one whose presentation time is at or before it, as
ffmpeg's ``fps`` filter with its default rounding picks), so any frame rate, variable ones
included, maps to 25 fps by timestamps, never by counting frames. Audio sample ``i`` of a clip
is at ``start + i/16000`` on the same clock: audio that starts after the video gets leading
silence, audio that starts before it is cut; the audio of output frame ``k`` is samples
``640 k .. 640 (k+1)`` exactly. The display matrix (phone videos' rotation) is applied to every
frame, as ffmpeg's autorotation does.

Frames are streamed (``iter_frames``), never all held, so a 4K hour decodes in constant memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from df_core.conventions import AUDIO_SAMPLE_RATE, FPS

logger = logging.getLogger(__name__)

SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // FPS  # 640: audio samples of one 25 fps frame
SEEK_MARGIN_S = 2.0  # seek this far before a range's start, then decode forward to it
TIE_S = 1e-6  # a frame presented this close to an interval's middle counts as on screen there


class PrepareError(ValueError):
    """An input (or a clip of it) is unusable: ``kind`` names why, ``field`` what was measured,
    ``value`` the measured value and ``expected`` the bound it broke (JSON-serialisable)."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        expected: object = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.field, self.value, self.expected = kind, field, value, expected

    def record(self) -> dict[str, object]:
        """The failure record's fields (without the source and clip names)."""
        return {
            "reason": self.kind,
            "field": self.field,
            "value": self.value,
            "expected": self.expected,
            "message": str(self),
        }


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` finds in a file (sizes after rotation)."""

    path: str
    width: int
    height: int
    rotation: int  # counter-clockwise degrees applied to every frame (0, 90, 180, -90)
    fps: float  # the stream's average rate (informative; resampling uses timestamps)
    duration: float  # seconds of video, from the container (0.0 when it records none)
    codec: str
    has_audio: bool
    audio_rate: int
    audio_channels: int


def _open(path: Path):
    import av

    if not path.is_file():
        raise PrepareError("missing_file", f"{path}: no such file", field="path")
    if path.stat().st_size == 0:
        raise PrepareError(
            "empty_file", f"{path}: the file is empty (0 bytes)", field="size", value=0
        )
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise PrepareError(
            "unreadable", f"{path}: not a readable media file ({e}); truncated or not a video"
        ) from e


def _rotation(frame) -> int:
    """The frame's display rotation (counter-clockwise degrees) snapped to a quarter turn."""
    try:
        angle = frame.rotation
    except (AttributeError, ValueError):
        return 0
    if angle is None or not np.isfinite(angle):
        return 0
    return round(angle / 90.0) % 4 * 90


def upright(frame_HWC: np.ndarray, rotation: int) -> np.ndarray:
    """Applies a display rotation (counter-clockwise degrees, a multiple of 90)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame_HWC, k)) if k else frame_HWC


def probe(path: str | Path) -> MediaInfo:
    """Streams, sizes (rotation applied), rate and audio of a media file; PrepareError (kind
    ``no_video``, ``unreadable``, ``empty_file``, ``decode_error``) when it cannot be used."""
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise PrepareError(
                "no_video",
                f"{path}: has no video stream (audio-only?)",
                field="video_streams",
                value=0,
                expected=">= 1",
            )
        stream = container.streams.video[0]
        try:
            first = next(container.decode(video=0), None)
        except (av.error.FFmpegError, OSError) as e:
            raise PrepareError("decode_error", f"{path}: the first frame fails ({e})") from e
        if first is None:
            raise PrepareError(
                "no_frames", f"{path}: the video stream decodes no frame", field="frames", value=0
            )
        rotation = _rotation(first)
        w, h = first.width, first.height
        if rotation % 180:
            w, h = h, w
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        audio = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            path=str(path),
            width=w,
            height=h,
            rotation=rotation,
            fps=float(stream.average_rate or stream.guessed_rate or 0.0),
            duration=duration,
            codec=stream.codec_context.name,
            has_audio=audio is not None,
            audio_rate=int(audio.rate) if audio is not None else 0,
            audio_channels=int(audio.channels) if audio is not None else 0,
        )


def _origin(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def iter_frames(
    path: str | Path, *, start: float = 0.0, end: float | None = None
) -> Iterator[np.ndarray]:
    """Yields uint8 RGB frames ``[H, W, 3]`` at exactly 25 fps from ``start`` (seconds on the
    video clock) until ``end`` or the end of the video (module doc: which source frame each
    output frame is). Output frame ``k`` exists when the middle of its interval lies before both.
    """
    import av
    from av.video.reformatter import VideoReformatter

    path = Path(path)
    half = 0.5 / FPS
    with _open(path) as container:
        if not container.streams.video:
            raise PrepareError("no_video", f"{path}: has no video stream", field="video_streams")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        origin, tb = _origin(stream), stream.time_base
        if start > SEEK_MARGIN_S and tb is not None:
            container.seek(int((origin + start - SEEK_MARGIN_S) / tb), stream=stream, backward=True)
        k = 0  # next output frame
        held: np.ndarray | None = None  # the frame on screen
        held_end = -np.inf  # when it stops being on screen, when no later frame says
        step = 1.0 / float(stream.average_rate or stream.guessed_rate or FPS)
        rgb = VideoReformatter()  # one swscale context for the stream, not one per frame
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * tb) - origin if frame.pts is not None else held_end
                image = upright(rgb.reformat(frame, format="rgb24").to_ndarray(), _rotation(frame))
                # Step 1: every output frame whose middle falls before this frame shows the
                # held one (the first frame also stands for any before it, keeping frame k at
                # its time).
                if held is None and start + half < t - TIE_S:
                    held = image
                while held is not None and start + k / FPS + half < t - TIE_S:
                    if end is not None and start + k / FPS + half >= end:
                        return
                    yield held
                    k += 1
                if end is not None and t > end:
                    return
                # Step 2: this frame is on screen from t on.
                held = image
                dur = float(frame.duration * tb) if frame.duration else step
                held_end = t + dur
        except (av.error.FFmpegError, OSError) as e:
            raise PrepareError(
                "decode_error",
                f"{path}: decoding failed after {k} output frames ({e}); the file may be truncated",
                field="frames",
                value=k,
            ) from e
        # Step 3: the last frame stays on screen for its duration.
        stop = held_end if end is None else min(held_end, end)
        while held is not None and start + k / FPS + half < stop:
            yield held
            k += 1


def read_audio(path: str | Path, *, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The audio track, mono float32 ``[N]`` at 16 kHz in [-1, 1], sample 0 at ``start`` on the
    video clock (module doc); ``end`` cuts it. PrepareError ``no_audio`` when there is none.

    The decoded audio is taken as contiguous from its first timestamp on (gaps inside an audio
    stream are rare; a shift by one would show as an offset that ``av_offset`` tests catch).
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise PrepareError(
                "no_audio",
                f"{path}: has no audio track",
                field="audio_streams",
                value=0,
                expected=">= 1",
            )
        origin = _origin(container.streams.video[0]) if container.streams.video else 0.0
        stream = container.streams.audio[0]
        tb = stream.time_base
        if start > SEEK_MARGIN_S and tb is not None:
            container.seek(int((origin + start - SEEK_MARGIN_S) / tb), stream=stream, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        try:
            for frame in container.decode(stream):
                if first_t is None and frame.pts is not None:
                    first_t = float(frame.pts * tb) - origin
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                if end is not None and first_t is not None:
                    got = sum(c.shape[0] for c in chunks) / AUDIO_SAMPLE_RATE
                    if first_t + got > end + 1.0:
                        break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, OSError) as e:
            raise PrepareError(
                "decode_error", f"{path}: audio decoding failed ({e}); truncated?"
            ) from e
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.shape[0] == 0:
        raise PrepareError(
            "no_audio", f"{path}: the audio track decodes no sample", field="audio_samples", value=0
        )
    # Place the decoded samples on the clip's clock: sample 0 at ``start``.
    offset = round(((first_t or 0.0) - start) * AUDIO_SAMPLE_RATE)
    audio = np.concatenate([np.zeros(offset, np.float32), audio]) if offset > 0 else audio[-offset:]
    if end is not None:
        audio = audio[: max(0, round((end - start) * AUDIO_SAMPLE_RATE))]
    return np.clip(audio, -1.0, 1.0)
