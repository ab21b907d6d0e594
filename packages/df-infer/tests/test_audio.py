"""Incremental audio features equal the whole clip's, whatever the chunking, with bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_core import latent_frames_covering
from df_data.features import LogMelEncoder, features_for_frames
from df_infer.audio import StreamingFeatures, iter_chunks
from df_models.layers import gather_audio_windows


def _reference(audio, context, k=1):
    T = -(-len(audio) // 640)
    feats = features_for_frames(LogMelEncoder(), audio, T)
    n = latent_frames_covering(T, k)
    return gather_audio_windows(feats[None], n, context=context, frames_per_latent=k)[0]


@settings(deadline=None, max_examples=60)
@given(
    samples=st.integers(1, 640 * 9 + 333),
    chunk=st.integers(1, 2000),
    context=st.integers(0, 3),
    k=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 100),
)
def test_streaming_windows_equal_whole_clip(samples, chunk, context, k, seed):
    """Latent frame by latent frame, whatever the chunking, the windows training gathers from
    the whole clip (for k = 4, each group's audio; the last group may run past the clip)."""
    audio = np.random.default_rng(seed).normal(0, 0.1, samples).astype(np.float32)
    ref = _reference(audio, context, k)
    sf = StreamingFeatures(
        LogMelEncoder(), iter_chunks(audio, chunk), context=context, frames_per_latent=k
    )
    t, got = 0, []
    while True:
        ready = sf.ensure(t + 1)
        if ready <= t:
            break
        got.append(sf.windows(t, 1))
        sf.release(t)
        t += 1
    assert sf.ended and t == ref.shape[0] == sf.num_latent_frames
    assert sf.num_frames == -(-samples // 640)
    torch.testing.assert_close(torch.cat(got), ref, atol=1e-5, rtol=1e-5)


def test_a_group_waits_for_its_last_frame_and_the_context():
    """k = 4, context 2: latent frame 1 (video frames 1 .. 4) is ready once audio reaches 80 ms
    past frame 4's end, not before."""
    sf = StreamingFeatures(LogMelEncoder(), context=2, frames_per_latent=4)
    # It needs features < 2 (5 + 2) = 14; feature i reads samples up to 320 i + 200.
    sf.push(np.zeros(320 * 13 + 200 - 1, np.float32))
    assert sf.ready(1) and not sf.ready(2)
    sf.push(np.zeros(1, np.float32))
    assert sf.ready(2) and not sf.ready(3)
    assert sf.windows(0, 2).shape == (2, 16, LogMelEncoder().dim)


def test_live_input_waits_only_for_the_lookahead():
    """Frame t is ready once audio reaches 80 ms past its end (context 2), before the end."""
    enc = LogMelEncoder()
    sf = StreamingFeatures(enc, context=2)
    sf.push(np.zeros(640 * 3 + 400, np.float32))  # features up to index 2*3+1 = 7 need 320*7+200
    assert sf.ready(1) and not sf.ready(2)
    sf.push(np.zeros(640, np.float32))
    assert sf.ready(2)
    assert sf.num_frames is None


def test_memory_is_bounded():
    audio = np.random.default_rng(0).normal(0, 0.1, 640 * 400).astype(np.float32)
    sf = StreamingFeatures(LogMelEncoder(), iter_chunks(audio, 640), context=2)
    held = []
    for t in range(400):
        sf.ensure(t + 1)
        sf.windows(t, 1)
        sf.release(t)
        held.append(sf._feats.shape[0] + sf._audio.numel())
    assert max(held[50:]) <= max(held[:50]) + 640
    with pytest.raises(ValueError, match="released"):
        sf.windows(0, 1)


def test_bad_streams():
    sf = StreamingFeatures(LogMelEncoder())
    with pytest.raises(ValueError, match="empty"):
        sf.end()
    sf = StreamingFeatures(LogMelEncoder(), iter([]))
    with pytest.raises(ValueError, match="empty"):
        sf.ensure(1)
    sf = StreamingFeatures(LogMelEncoder())
    sf.push(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="not ended"):
        sf.ensure(1)
    with pytest.raises(ValueError, match="finite"):
        sf.push(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="context"):
        StreamingFeatures(LogMelEncoder(), context=-1)
    with pytest.raises(ValueError, match="frames_per_latent"):
        StreamingFeatures(LogMelEncoder(), frames_per_latent=0)
