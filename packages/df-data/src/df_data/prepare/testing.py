"""Generated media for the prepare tests: a real photo composited on a moving background, with
speech, silence, a second face and blur where asked, at any frame rate, size and rotation.

Legend: ``T`` frames, ``H W`` pixels, ``N`` audio samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from df_core.conventions import AUDIO_SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    seconds: float
    speech: bool = True
    second_face: bool = False  # a smaller copy of the face beside the speaker
    blur: float = 0.0  # Gaussian sigma in pixels over the whole frame


def speech_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech ``[N]`` at 16 kHz: espeak-ng where libespeak-ng loads, else SynthTalk's formant
    synthesiser (silero-vad detects both as speech)."""
    from df_data.synthtalk import espeak_available, sample_identity
    from df_data.synthtalk.espeak import espeak_script
    from df_data.synthtalk.speech import make_script
    from df_data.synthtalk.vocoder import synthesize

    n = round(seconds * AUDIO_SAMPLE_RATE)
    identity = sample_identity(seed)
    rng = np.random.default_rng(seed)
    if espeak_available():
        return espeak_script(identity, n, rng)[0]
    return synthesize(make_script(identity, seconds, rng), identity, n, rng)


def background(height: int, width: int, t: float, velocity: tuple[float, float]) -> np.ndarray:
    """A smooth coloured pattern seen through a window moving at ``velocity`` pixels per
    second (known motion; up to ``_ROOM`` pixels in all)."""
    ox, oy = round(velocity[0] * t), round(velocity[1] * t)
    if not (0 <= ox < _ROOM and 0 <= oy < _ROOM):
        raise ValueError(f"background offset {(ox, oy)} outside [0, {_ROOM})")
    return _texture(height, width)[oy : oy + height, ox : ox + width].copy()


_ROOM = 1024


@lru_cache(maxsize=4)
def _texture(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0 : height + _ROOM, 0 : width + _ROOM].astype(np.float32)
    r = 127 + 60 * np.sin(x / 97.0) + 30 * np.cos(y / 53.0)
    g = 127 + 60 * np.cos(x / 71.0 + y / 131.0)
    b = 127 + 50 * np.sin(y / 41.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def face_path(t: float) -> tuple[float, float]:
    """The face's displacement ``(dx, dy)`` in pixels at time ``t`` (seconds)."""
    return 16.0 * np.sin(2 * np.pi * t / 4.0), 10.0 * np.sin(2 * np.pi * t / 3.0)


def paste(frame: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    H, W = frame.shape[:2]
    h, w = patch.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]


def composite_frames(
    patch: np.ndarray,
    patch_centre: tuple[float, float],
    segments: list[Segment],
    *,
    fps: float,
    width: int,
    height: int,
    face_at: tuple[float, float],
    velocity: tuple[float, float] = (40.0, 15.0),
):
    """Yields ``(t, frame, (x, y))``: frames at ``fps`` with ``patch`` placed so that its point
    ``patch_centre`` is at ``face_at + face_path(t)``; the third item is that point."""
    bounds = np.cumsum([0.0] + [s.seconds for s in segments])
    second = cv2.resize(patch, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    for i in range(round(bounds[-1] * fps)):
        t = i / fps
        seg = segments[min(int(np.searchsorted(bounds, t, side="right")) - 1, len(segments) - 1)]
        frame = background(height, width, t, velocity)
        dx, dy = face_path(t)
        x, y = face_at[0] + dx, face_at[1] + dy
        if seg.second_face:
            paste(frame, second, int(width * 0.72), int(height * 0.2))
        paste(frame, patch, round(x - patch_centre[0]), round(y - patch_centre[1]))
        if seg.blur > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), seg.blur)
        yield t, frame, (x, y)


def segment_audio(segments: list[Segment], seed: int = 0) -> np.ndarray:
    """Speech or near-silence per segment, concatenated ``[N]``."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, seg in enumerate(segments):
        n = round(seg.seconds * AUDIO_SAMPLE_RATE)
        if seg.speech:
            parts.append(speech_audio(seg.seconds, seed + i))
        else:
            parts.append((1e-4 * rng.standard_normal(n)).astype(np.float32))
    return np.concatenate(parts)


def encode(
    path: str | Path,
    frames,
    *,
    fps: float | None = None,
    pts_s: list[float] | None = None,
    audio_N: np.ndarray | None = None,
    rotation: int = 0,
    crf: int = 23,
) -> Path:
    """Writes H.264 frames (an iterable of uint8 ``[H, W, 3]``) at a constant ``fps`` or at the
    given presentation times ``pts_s`` (variable frame rate), with an optional display rotation
    (counter-clockwise degrees) and optional AAC audio; with no frames, an audio-only file."""
    import av

    path = Path(path)
    tb = Fraction(1, 1000) if pts_s is not None else Fraction(1, round(fps or 25))
    with av.open(str(path), "w") as container:
        video = None
        astream = None
        if audio_N is not None:
            astream = container.add_stream("aac", rate=AUDIO_SAMPLE_RATE)
            astream.layout = "mono"
        for i, frame in enumerate(frames):
            if video is None:
                video = container.add_stream("libx264", rate=round(fps or 25))
                video.height, video.width = frame.shape[:2]
                video.pix_fmt = "yuv420p"
                video.time_base = tb
                video.codec_context.time_base = tb
                video.options = {"crf": str(crf), "preset": "ultrafast", "bframes": "0"}
                if rotation:
                    video.set_display_rotation(rotation)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = round(pts_s[i] * 1000) if pts_s is not None else i
            vf.time_base = tb
            for packet in video.encode(vf):
                container.mux(packet)
        if video is not None:
            for packet in video.encode():
                container.mux(packet)
        if astream is not None:
            samples = np.clip(audio_N, -1, 1).astype(np.float32)
            for at in range(0, samples.shape[0], 1024):  # the AAC encoder's frame size
                aframe = av.AudioFrame.from_ndarray(
                    samples[None, at : at + 1024], format="flt", layout="mono"
                )
                aframe.sample_rate = AUDIO_SAMPLE_RATE
                aframe.pts = at
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path
