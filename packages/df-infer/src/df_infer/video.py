"""An mp4 writer that takes frames one at a time (H.264, yuv420p) and muxes the audio (AAC) at
the end, so memory does not grow with the video's length. Atomic: the file appears under its
name only when complete; an interrupted run leaves no partial mp4 behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from df_data.media import SAMPLE_RATE, MediaError


class StreamingVideoWriter:
    """``with StreamingVideoWriter(path, fps=25) as w: w.write(frame_HW3); w.set_audio(a_N)``."""

    def __init__(self, path: str | Path, *, fps: int = 25, crf: int = 18) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output {str(self.path)!r} must end in .mp4")
        self.fps, self.crf = fps, crf
        self.frames = 0
        self._audio: np.ndarray | None = None
        self._container = self._video = self._tmp = None

    def __enter__(self) -> StreamingVideoWriter:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}.mp4")
        self._container = av.open(str(self._tmp), "w", format="mp4")
        return self

    def write(self, frame_HW3: np.ndarray) -> None:
        """Encodes one uint8 RGB frame ``[H, W, 3]`` (even H and W)."""
        import av

        frame = np.asarray(frame_HW3)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise MediaError(
                f"{self.path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}"
            )
        if self._video is None:
            H, W = frame.shape[:2]
            if H % 2 or W % 2:
                raise MediaError(f"{self.path}: H.264 needs even height and width, got {H}x{W}")
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height, self._video.pix_fmt = W, H, "yuv420p"
            self._video.options = {"crf": str(self.crf), "preset": "veryfast"}
            # The audio stream must exist before the first packet is muxed.
            self._astream = self._container.add_stream("aac", rate=SAMPLE_RATE)
            self._astream.layout = "mono"
        elif frame.shape[:2] != (self._video.height, self._video.width):
            raise MediaError(f"{self.path}: frame size changed to {frame.shape[:2]}")
        for packet in self._video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def set_audio(self, audio_N: np.ndarray) -> None:
        """The mono float audio ``[N]`` at 16 kHz to mux (cut or padded to the video's length)."""
        self._audio = np.asarray(audio_N, dtype=np.float32).reshape(-1)

    def __exit__(self, exc_type, exc, tb) -> None:
        import av

        try:
            if exc_type is None:
                if self.frames == 0:
                    raise MediaError(f"{self.path}: no frames were written")
                for packet in self._video.encode():
                    self._container.mux(packet)
                n = round(self.frames * SAMPLE_RATE / self.fps)
                audio = np.zeros(n, np.float32) if self._audio is None else self._audio[:n]
                audio = np.pad(audio, (0, n - audio.shape[0]))
                samples = np.clip(audio, -1.0, 1.0).reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                aframe.sample_rate = SAMPLE_RATE
                for packet in self._astream.encode(aframe):
                    self._container.mux(packet)
                for packet in self._astream.encode():
                    self._container.mux(packet)
            self._container.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
