"""Audio features at 50 Hz: 2 feature frames per 25 fps video frame (DESIGN.md, Corrections 1).

Legend: ``N`` audio samples at 16 kHz, ``L`` feature frames, ``Da`` feature dimension,
``T`` video frames.

An encoder is an ``AudioEncoder``: ``name``, ``dim``, ``rate`` (50), ``sample_rate`` (16 kHz),
``config()`` and its stable ``config_hash``, ``layers`` (``K``, 1 by default), and
``encode(audio_N) -> [L, Da]`` (``[L, K, Da]`` for ``K > 1`` stacked layers). Encoders are
built by name from ``AUDIO_ENCODERS`` (``register_audio_encoder`` adds one): ``logmel`` here,
and the pretrained ``hubert``, ``wav2vec2`` and ``whisper`` of :mod:`df_data.encoders.speech`
(imported, with transformers, only when one is built).
``features_for_frames`` fixes the length to exactly ``2 * T`` whatever the encoder's own frame
convention is.

``LogMelEncoder`` (the default, no weights): an 80-band mel spectrogram with a 25 ms window
(400 samples) and a 20 ms hop (320 samples, exactly 50 Hz), ``center=True``; then
``(ln(max(mel, floor)) + offset) / scale`` with *fixed* constants. No per-utterance mean/variance:
streaming inference computes features incrementally and must get the same numbers as training.
Feature ``i`` is centred on sample ``320 i`` and reads samples ``[320 i - 200, 320 i + 200)``
(reflection-padded at the start), so the two features of video frame ``t`` read audio up to
``640 (t + 1) - 120`` only: the features of any prefix of whole video frames equal the leading
features of the whole clip.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchaudio

from df_core.conventions import AUDIO_FEATURES_PER_VIDEO_FRAME, AUDIO_SAMPLE_RATE, FPS
from df_models.io import config_hash

FEATURE_RATE = AUDIO_FEATURES_PER_VIDEO_FRAME * FPS  # 50 Hz
SAMPLES_PER_VIDEO_FRAME = AUDIO_SAMPLE_RATE // FPS  # 640 = 16 kHz / 25 fps
HOP = AUDIO_SAMPLE_RATE // FEATURE_RATE  # 320 samples = 20 ms
WINDOW = 400  # samples = 25 ms
# Fixed log-mel normalisation, set once from the levels of noise shaped like speech: at about
# -26 dBFS features have mean near 0 and lie in about [-2.7, 1.2], full-scale noise reaches +2,
# digital silence (and 16-bit quantisation noise) sits at the floor, (ln(1e-8) + 5) / 5 = -2.7.
LOG_MEL_FLOOR = 1e-8
LOG_MEL_OFFSET = 5.0
LOG_MEL_SCALE = 5.0

assert AUDIO_SAMPLE_RATE == SAMPLES_PER_VIDEO_FRAME * FPS
assert AUDIO_SAMPLE_RATE % FEATURE_RATE == 0


def as_audio_tensor(audio_N: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mono float audio ``[N]`` as a float32 tensor; ValueError if not 1-D or not finite."""
    audio = torch.as_tensor(np.asarray(audio_N) if not torch.is_tensor(audio_N) else audio_N)
    if audio.ndim != 1:
        raise ValueError(f"audio_N must be mono [N], got shape {tuple(audio.shape)}")
    audio = audio.float()
    if not bool(torch.isfinite(audio).all()):
        raise ValueError("audio_N has NaN or inf samples")
    return audio


class AudioEncoder(abc.ABC):
    """Audio at ``sample_rate`` -> features ``[L, Da]`` at ``rate`` Hz.

    Subclasses set ``name`` and implement ``dim``, ``config`` and ``encode``.
    """

    name: str = "audio"
    rate: int = FEATURE_RATE
    sample_rate: int = AUDIO_SAMPLE_RATE
    layers: int = 1  # K: 1 gives features [L, Da]; more, stacked layers [L, K, Da]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """``Da``."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the features (JSON-serialisable); hashed by ``config_hash``."""

    @abc.abstractmethod
    def encode(self, audio_N: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mono float32 audio ``[N]`` at ``sample_rate`` -> float32 features ``[L, Da]``
        (``[L, K, Da]`` when ``layers > 1``)."""

    @property
    def config_hash(self) -> str:
        return config_hash({"name": self.name, **self.config()})

    def identity(self) -> dict[str, Any]:
        """``{name, config_hash}`` (pretrained encoders add their source, layer, dim and build
        kwargs): what the clip store and the bundle record about the encoder."""
        return {"name": self.name, "config_hash": self.config_hash}


class LogMelEncoder(AudioEncoder):
    """Log-mel filterbank features at exactly 50 Hz with a fixed affine normalisation.

    Args:
        n_mels: ``Da``, mel bands.
        f_min, f_max: band edges in Hz.
    """

    name = "logmel"

    def __init__(self, n_mels: int = 80, f_min: float = 0.0, f_max: float = 8000.0) -> None:
        if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels < 1:
            raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
        if not 0.0 <= f_min < f_max <= AUDIO_SAMPLE_RATE / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= {AUDIO_SAMPLE_RATE / 2}, got f_min={f_min}, f_max={f_max}"
            )
        self.n_mels, self.f_min, self.f_max = n_mels, float(f_min), float(f_max)
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=AUDIO_SAMPLE_RATE,
            n_fft=WINDOW,
            win_length=WINDOW,
            hop_length=HOP,
            f_min=self.f_min,
            f_max=self.f_max,
            n_mels=n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
        )

    @property
    def dim(self) -> int:
        return self.n_mels

    def config(self) -> dict[str, Any]:
        return {
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "sample_rate": AUDIO_SAMPLE_RATE,
            "window": WINDOW,
            "hop": HOP,
            "center": True,
            "floor": LOG_MEL_FLOOR,
            "offset": LOG_MEL_OFFSET,
            "scale": LOG_MEL_SCALE,
        }

    @torch.no_grad()
    def encode(self, audio_N: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[N]`` -> ``[1 + N // 320, n_mels]`` float32 (on the audio's device).

        Audio shorter than the window's half (200 samples) cannot be reflection-padded and
        gives a ValueError.
        """
        audio = as_audio_tensor(audio_N)
        if audio.shape[0] <= WINDOW // 2:
            raise ValueError(f"audio_N needs more than {WINDOW // 2} samples, got {audio.shape[0]}")
        mel_DL = self._mel.to(audio.device)(audio)
        feats_DL = (mel_DL.clamp_min(LOG_MEL_FLOOR).log() + LOG_MEL_OFFSET) / LOG_MEL_SCALE
        return feats_DL.T.contiguous()


def features_for_frames(
    encoder: AudioEncoder, audio_N: np.ndarray | torch.Tensor, frames: int
) -> torch.Tensor:
    """Features of ``frames`` video frames: exactly ``[2 * frames, Da]`` float32.

    The waveform is first cut or zero-padded to ``640 * frames`` samples (the video's span, so
    every encoder sees the same audio), then the encoder output is cut or padded to
    ``2 * frames`` rows by repeating its last row (encoders differ by a frame or two in how they
    count frames at the edges, e.g. HuBERT gives ``(N - 400) // 320 + 1``).
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    if encoder.rate != FEATURE_RATE or encoder.sample_rate != AUDIO_SAMPLE_RATE:
        raise ValueError(
            f"encoder {encoder.name!r} must produce {FEATURE_RATE} Hz features from "
            f"{AUDIO_SAMPLE_RATE} Hz audio, got {encoder.rate} Hz from {encoder.sample_rate} Hz"
        )
    audio = as_audio_tensor(audio_N)
    n = SAMPLES_PER_VIDEO_FRAME * frames
    audio = (
        audio[:n]
        if audio.shape[0] >= n
        else torch.nn.functional.pad(audio, (0, n - audio.shape[0]))
    )
    feats_LD = encoder.encode(audio).float()
    expected = (encoder.layers, encoder.dim) if encoder.layers > 1 else (encoder.dim,)
    if feats_LD.shape[0] == 0 or tuple(feats_LD.shape[1:]) != expected:
        shape = "[L, " + ", ".join(map(str, expected)) + "]"
        raise ValueError(
            f"encoder {encoder.name!r} must return {shape}, got {tuple(feats_LD.shape)}"
        )
    length = AUDIO_FEATURES_PER_VIDEO_FRAME * frames
    if feats_LD.shape[0] < length:
        tail = feats_LD[-1:].expand(length - feats_LD.shape[0], *feats_LD.shape[1:])
        feats_LD = torch.cat([feats_LD, tail])
    return feats_LD[:length]


def _pretrained(kind: str) -> Callable[..., AudioEncoder]:
    """A factory importing transformers only when a pretrained encoder is built."""

    def build(**kwargs: Any) -> AudioEncoder:
        from df_data.encoders.speech import HFSpeechEncoder

        return HFSpeechEncoder(kind, **kwargs)

    build.__name__ = f"build_{kind}"
    return build


AUDIO_ENCODERS: dict[str, Callable[..., AudioEncoder]] = {
    "logmel": LogMelEncoder,
    **{kind: _pretrained(kind) for kind in ("hubert", "wav2vec2", "whisper")},
}


def register_audio_encoder(name: str, factory: Callable[..., AudioEncoder]) -> None:
    """Makes ``build_audio_encoder(name, **kwargs)`` call ``factory(**kwargs)``."""
    if name in AUDIO_ENCODERS and AUDIO_ENCODERS[name] is not factory:
        raise ValueError(f"audio encoder {name!r} is already registered")
    AUDIO_ENCODERS[name] = factory


def build_audio_encoder(name: str = "logmel", **kwargs: Any) -> AudioEncoder:
    """An encoder from the registry; ValueError listing the known names."""
    if name not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio encoder {name!r}; known: {sorted(AUDIO_ENCODERS)}")
    return AUDIO_ENCODERS[name](**kwargs)
