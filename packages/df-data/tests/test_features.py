"""Audio features: exactly 2 frames per video frame, streaming-consistent, stable config hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_data.features import (
    AUDIO_ENCODERS,
    LOG_MEL_FLOOR,
    LOG_MEL_OFFSET,
    LOG_MEL_SCALE,
    SAMPLES_PER_VIDEO_FRAME,
    AudioEncoder,
    LogMelEncoder,
    build_audio_encoder,
    features_for_frames,
    register_audio_encoder,
)

ENCODER = LogMelEncoder()


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    """Noise under a slowly varying envelope plus a tone: not stationary, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    return (0.05 * envelope * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * 220 * t)).astype(
        np.float32
    )


def test_logmel_rate_and_shape():
    feats = ENCODER.encode(speechlike(16000))
    assert feats.shape == (1 + 16000 // 320, 80) and feats.dtype == torch.float32
    assert ENCODER.rate == 50 and ENCODER.dim == 80
    assert bool(torch.isfinite(feats).all())


def test_fixed_normalisation_of_silence():
    # No per-utterance statistics: silence maps to the fixed floor value, whatever else is there.
    silence = ENCODER.encode(np.zeros(6400, np.float32))
    floor = (np.log(LOG_MEL_FLOOR) + LOG_MEL_OFFSET) / LOG_MEL_SCALE
    torch.testing.assert_close(silence, torch.full_like(silence, floor))


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 40), offset=st.integers(-640, 640))
def test_exactly_two_features_per_video_frame(frames, offset):
    n = max(1, frames * SAMPLES_PER_VIDEO_FRAME + offset)  # audio up to 40 ms short or long
    feats = features_for_frames(ENCODER, speechlike(n), frames)
    assert feats.shape == (2 * frames, 80)
    assert bool(torch.isfinite(feats).all())


@settings(max_examples=20, deadline=None)
@given(total=st.integers(2, 30), data=st.data())
def test_prefix_features_equal_whole_clip_features(total, data):
    """Streaming: the features of the first ``k`` video frames do not depend on later audio."""
    prefix = data.draw(st.integers(1, total - 1))
    audio = speechlike(total * SAMPLES_PER_VIDEO_FRAME, seed=total)
    whole = features_for_frames(ENCODER, audio, total)
    part = features_for_frames(ENCODER, audio[: prefix * SAMPLES_PER_VIDEO_FRAME], prefix)
    torch.testing.assert_close(part, whole[: 2 * prefix], rtol=0, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(201, 8000), extra=st.integers(1, 4000))
def test_encoder_is_causal_up_to_half_a_window(n, extra):
    """Feature ``i`` reads samples ``[320 i - 200, 320 i + 200)``: those fully inside a prefix of
    any length match the whole signal's, whatever follows (a loud tail included)."""
    head = speechlike(n, seed=1)
    loud_tail = np.random.default_rng(2).uniform(-1, 1, extra).astype(np.float32)
    whole = ENCODER.encode(np.concatenate([head, loud_tail]))
    part = ENCODER.encode(head)
    k = (n - 200) // 320 + 1
    torch.testing.assert_close(part[:k], whole[:k], rtol=0, atol=1e-6)


def test_pad_and_trim():
    frames = 10
    exact = speechlike(frames * SAMPLES_PER_VIDEO_FRAME)
    long = np.concatenate([exact, speechlike(5000, seed=3)])
    # Extra audio beyond the video is cut before encoding: identical features.
    torch.testing.assert_close(
        features_for_frames(ENCODER, long, frames), features_for_frames(ENCODER, exact, frames)
    )
    # Audio 30 ms short is zero-padded: the early features are unaffected.
    short = exact[:-480]
    torch.testing.assert_close(
        features_for_frames(ENCODER, short, frames)[:16],
        features_for_frames(ENCODER, exact, frames)[:16],
    )


def test_numpy_and_torch_inputs_agree():
    audio = speechlike(3200)
    torch.testing.assert_close(ENCODER.encode(audio), ENCODER.encode(torch.from_numpy(audio)))


def test_input_validation():
    with pytest.raises(ValueError, match="mono"):
        ENCODER.encode(np.zeros((2, 800), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ENCODER.encode(np.full(800, np.nan, np.float32))
    with pytest.raises(ValueError, match="more than 200 samples"):
        ENCODER.encode(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        features_for_frames(ENCODER, speechlike(800), 0)
    with pytest.raises(ValueError, match="n_mels"):
        LogMelEncoder(n_mels=0)


def test_config_hash_is_stable():
    assert LogMelEncoder().config_hash == ENCODER.config_hash
    assert len(ENCODER.config_hash) == 64
    assert LogMelEncoder(n_mels=40).config_hash != ENCODER.config_hash
    assert ENCODER.identity() == {"name": "logmel", "config_hash": ENCODER.config_hash}


class ConstantEncoder(AudioEncoder):
    """A stand-in for a pretrained encoder with its own frame count (one frame short)."""

    name = "constant"

    def __init__(self, dim: int = 3) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def config(self):
        return {"dim": self._dim}

    def encode(self, audio_N):
        n = len(audio_N) // 320 - 1
        return torch.arange(n, dtype=torch.float32)[:, None].expand(n, self._dim)


def test_registry_plug_point(monkeypatch):
    monkeypatch.setitem(AUDIO_ENCODERS, "constant", ConstantEncoder)
    encoder = build_audio_encoder("constant", dim=5)
    feats = features_for_frames(encoder, speechlike(4 * 640), 4)
    assert feats.shape == (8, 5)
    assert feats[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 6]  # the last row repeats to fill
    assert build_audio_encoder("logmel", n_mels=40).dim == 40
    with pytest.raises(ValueError, match="unknown audio encoder 'nope'"):
        build_audio_encoder("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_audio_encoder("logmel", ConstantEncoder)
