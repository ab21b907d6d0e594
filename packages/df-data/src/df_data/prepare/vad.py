"""Speech per video frame with silero-vad, whose TorchScript model ships inside its wheel.

``SileroVad()(audio_N, frames) -> bool [frames]`` has the signature of ``df_data.record.Vad``,
so ``extract`` can take it too. A frame (640 samples at 16 kHz) is speech when at least half of
it lies inside a segment that ``silero_vad.get_speech_timestamps`` returns.
"""

from __future__ import annotations

import numpy as np
import torch

from df_core.checks import unit_float
from df_core.conventions import AUDIO_SAMPLE_RATE
from df_data.prepare.decode import SAMPLES_PER_FRAME


def _load_model():
    threads = torch.get_num_threads()
    try:
        # silero_vad.model sets torch's intra-op threads to 1 when it is imported; undo that.
        from silero_vad import load_silero_vad

        return load_silero_vad()
    finally:
        torch.set_num_threads(threads)


class SileroVad:
    """Speech mask per 25 fps frame (module doc); ``threshold`` is silero's speech probability."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = unit_float("threshold", threshold)
        self.name = f"silero-vad (threshold {threshold:g})"
        self._model = _load_model()

    def segments(self, audio_N: np.ndarray) -> list[tuple[int, int]]:
        """Speech segments ``[(start, end)]`` in samples."""
        from silero_vad import get_speech_timestamps

        audio = torch.from_numpy(np.ascontiguousarray(audio_N, dtype=np.float32))
        with torch.no_grad():
            stamps = get_speech_timestamps(
                audio, self._model, threshold=self.threshold, sampling_rate=AUDIO_SAMPLE_RATE
            )
        return [(int(s["start"]), int(s["end"])) for s in stamps]

    def __call__(self, audio_N: np.ndarray, frames: int) -> np.ndarray:
        covered = np.zeros(frames * SAMPLES_PER_FRAME, np.int8)
        for s, e in self.segments(np.asarray(audio_N)[: covered.shape[0]]):
            covered[s:e] = 1
        per_frame = covered.reshape(frames, SAMPLES_PER_FRAME).sum(1)
        return per_frame * 2 >= SAMPLES_PER_FRAME
