"""Fixed windows over the audio: how a whole-clip encoder gives the same features offline and
streaming, with bounded memory.

Legend: ``N`` samples at 16 kHz, ``T`` video frames (640 samples each), ``W`` window frames.

A transformer encoder sees its whole input, so its features of a frame depend on everything it
was given. Features are therefore *defined* window by window: window ``w`` emits the features of
video frames ``[s, s + hop)`` with ``s = w * hop``, and reads frames ``[s - context,
s + hop + lookahead)`` of the clip (``W = context + hop + lookahead``), zeros outside
``[0, 640 T)``, widened by ``pad`` samples on each side. Normalisation (zero mean, unit
variance where the model's preprocessor asks for it; Whisper's log-mel range) is per window.
Offline extraction and streaming cut exactly these windows, so they compute the same numbers.

The padding rule (HuBERT / wav2vec2, whose CNN gives ``floor((n - 400) / 320) + 1`` frames of
``n`` samples): ``pad = 40`` on each side makes a window ``640 W + 80`` samples, which gives
exactly ``2 W`` frames, and feature ``j`` of the clip reads samples ``[320 j - 40,
320 j + 360)``: its own 20 ms slot ``[320 j, 320 j + 320)`` plus 2.5 ms either side (Ditto's
``+80``-sample rule, research/real_media.md §2). Whisper pads every input to its 30 s frame
itself and gives one feature per 320 samples from the start, so it uses ``pad = 0`` and keeps
the first ``2 W`` outputs.

Live input: the features of frame ``t`` exist once the audio of its window's last frame has
arrived, at most ``hop - 1 + lookahead`` frames after frame ``t`` (at least ``lookahead``),
plus ``pad`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from df_core.checks import non_negative_int, positive_int
from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME
from df_data.features import SAMPLES_PER_VIDEO_FRAME

R = AUDIO_FEATURES_PER_VIDEO_FRAME


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowGeometry:
    context: int = 25  # video frames of left context (1 s)
    hop: int = 5  # video frames emitted per window (200 ms)
    lookahead: int = 3  # video frames of right context (120 ms): live input waits for them
    pad: int = 40  # samples added on each side (the +80-sample rule)

    def __post_init__(self) -> None:
        non_negative_int("WindowGeometry.context", self.context)
        positive_int("WindowGeometry.hop", self.hop)
        non_negative_int("WindowGeometry.lookahead", self.lookahead)
        non_negative_int("WindowGeometry.pad", self.pad)

    @property
    def frames(self) -> int:
        """``W``: video frames a window reads."""
        return self.context + self.hop + self.lookahead

    @property
    def samples(self) -> int:
        """Samples of one window: ``640 W + 2 pad``."""
        return SAMPLES_PER_VIDEO_FRAME * self.frames + 2 * self.pad

    def start_sample(self, window: int) -> int:
        """Absolute first sample of window ``window`` (negative before the clip)."""
        return SAMPLES_PER_VIDEO_FRAME * (window * self.hop - self.context) - self.pad

    def end_sample(self, window: int) -> int:
        """One past the last sample window ``window`` reads."""
        return self.start_sample(window) + self.samples

    def num_windows(self, frames: int) -> int:
        """Windows covering ``frames`` video frames."""
        return -(-frames // self.hop)

    def kept(self) -> slice:
        """Which of a window's ``2 W`` feature frames it emits."""
        return slice(R * self.context, R * (self.context + self.hop))

    def to_dict(self) -> dict[str, int]:
        return {
            "context": self.context,
            "hop": self.hop,
            "lookahead": self.lookahead,
            "pad": self.pad,
        }


def cut_windows(
    audio_N: torch.Tensor, offset: int, geometry: WindowGeometry, first: int, count: int
) -> torch.Tensor:
    """Windows ``first .. first + count - 1`` as ``[count, samples]``: ``audio_N`` holds the
    clip's samples from absolute index ``offset``; samples outside it are zeros (before the
    clip, after its end, or not kept any more: callers keep every sample a window needs)."""
    n = geometry.samples
    out = torch.zeros(count, n, dtype=audio_N.dtype, device=audio_N.device)
    for k in range(count):
        a = geometry.start_sample(first + k) - offset
        lo, hi = max(a, 0), min(a + n, audio_N.shape[0])
        if hi > lo:
            out[k, lo - a : hi - a] = audio_N[lo:hi]
    return out
