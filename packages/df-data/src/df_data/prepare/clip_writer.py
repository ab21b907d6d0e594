"""Writing one prepared source clip, atomically: a folder built under a hidden temporary name
(``discover_sources`` skips hidden paths) and renamed into place when complete.

Layout of ``<out>/<split>/<name>/`` (what ``df_data.sources.read_source`` reads):

- ``video.mp4``: the crops, H.264 at 25 fps, ``size x size``, with the clip's audio as AAC;
- ``audio.wav``: the clip's audio, 16 kHz mono 16-bit, exactly 640 samples per frame;
- ``landmarks.safetensors``: per frame, in the crop's pixels: ``points`` float32 ``[T, 5, 2]``
  (left eye, right eye, nose, left and right mouth corner), ``boxes`` float32 ``[T, 4]`` (the
  detector's face box), ``mouth_box`` float32 ``[T, 4]`` (``crop.MOUTH_BOX_RULE``), ``detected``
  bool ``[T]`` (False: interpolated over a gap);
- ``metadata.json``: ``fps``, ``frames``, ``split``, ``struct_names`` (empty: the structure
  comes from an extractor at ``extract`` time), provenance (source file, time range, crop box,
  detector, VAD, measured filter values, the configuration).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from df_data.media import VideoWriter, write_wav
from df_models.io import fsync_path, write_json_atomic

LANDMARKS_FILE = "landmarks.safetensors"


def tmp_dir(final: Path) -> Path:
    return final.with_name(f".tmp-{final.name}@{socket.gethostname()}@{os.getpid()}")


class ClipWriter:
    """Frames in with ``write``; ``finish`` writes the other files and renames the folder;
    ``abort`` removes the temporary folder."""

    def __init__(self, final: Path, *, crf: int) -> None:
        self.final = final
        self.tmp = tmp_dir(final)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._video = VideoWriter(self.tmp / "video.mp4", crf=crf)
        self._video.__enter__()
        self._open = True

    def write(self, frame_HW3: np.ndarray) -> None:
        self._video.write(frame_HW3)

    def finish(
        self, audio_N: np.ndarray, landmarks: dict[str, np.ndarray], metadata: dict[str, Any]
    ) -> Path:
        self._video.set_audio(audio_N)
        self._open = False
        self._video.__exit__(None, None, None)
        write_wav(self.tmp / "audio.wav", audio_N)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in landmarks.items()}
        save_file(tensors, str(self.tmp / LANDMARKS_FILE))
        fsync_path(self.tmp / LANDMARKS_FILE)
        write_json_atomic(self.tmp / "metadata.json", metadata)
        fsync_path(self.tmp)
        os.rename(self.tmp, self.final)
        fsync_path(self.final.parent)
        return self.final

    def abort(self, exc: BaseException | None = None) -> None:
        if self._open:
            self._open = False
            exc_type = type(exc) if exc is not None else RuntimeError
            exc = exc if exc is not None else RuntimeError("aborted")
            with contextlib.suppress(Exception):  # the folder goes anyway
                self._video.__exit__(exc_type, exc, exc.__traceback__)
        shutil.rmtree(self.tmp, ignore_errors=True)
