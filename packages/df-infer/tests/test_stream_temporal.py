"""Streaming with a codec that compresses time (4 video frames per latent frame, the 1 + 4n
layout): the frames ``StreamingGenerator`` hands out are the full-sequence sampler's latents of
the whole clip, decoded whole and cut at the audio's end; every video frame is there once, in
order, each with its own structure (a latent frame carries its group's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from df_core import latent_frames_covering
from df_data.features import features_for_frames
from df_infer.pipeline import StreamingGenerator, frame_structs
from df_infer.sampler import sample_full
from df_infer.testing import tiny_bundle
from df_models.layers import gather_audio_windows


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    path = tiny_bundle(tmp_path_factory.mktemp("b") / "t4", seed=5, frames_per_latent=4)
    return StreamingGenerator.from_bundle(path, device="cpu")


@pytest.fixture(scope="module")
def ref():
    return np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)


def _full(gen, ref, audio, cfg):
    """The whole clip at once: the full-sequence sampler over every latent frame's window,
    decoded in one call, cut to the clip's frames, with the per-frame structure."""
    T = -(-len(audio) // 640)
    n = latent_frames_covering(T, 4)
    feats = features_for_frames(gen.encoder, audio, T)
    c = gen.model.config
    windows = gather_audio_windows(feats[None], n, frames_per_latent=4, context=c.audio_context)
    z, s = sample_full(gen.model, gen.encode_reference(ref), windows, cfg)
    video = gen.codec.decode(z)[0, :T]
    images = video.permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().numpy()
    structs = gen._struct_raw(frame_structs(s, True, 4))[0, :T].numpy()
    return images, structs


@settings(deadline=None, max_examples=8)
@given(
    samples=st.integers(1, 640 * 14),
    chunk=st.integers(1, 3),
    steps=st.integers(1, 2),
    live=st.booleans(),
    seed=st.integers(0, 100),
)
def test_streamed_frames_equal_the_whole_clip_decoded(gen, ref, samples, chunk, steps, live, seed):
    audio = np.random.default_rng(seed).normal(0, 0.1, samples).astype(np.float32)
    cfg = gen.default_sampler(steps=steps, chunk=chunk, seed=seed, cfg_audio=1.0)
    source = (audio[i : i + 500] for i in range(0, samples, 500)) if live else audio
    frames = list(gen.frames(ref, source, cfg))
    T = -(-samples // 640)
    assert [f.index for f in frames] == list(range(T))
    images, structs = _full(gen, ref, audio, cfg)
    got = np.stack([f.image for f in frames])
    assert np.abs(got.astype(int) - images.astype(int)).max() <= 1  # float rounding at .5
    np.testing.assert_allclose(np.stack([f.struct for f in frames]), structs, atol=1e-4)


def test_max_frames_counts_video_frames(gen, ref):
    audio = np.zeros(640 * 20, np.float32)
    cfg = gen.default_sampler(steps=1, seed=0)
    assert [f.index for f in gen.frames(ref, audio, cfg, max_frames=6)] == list(range(6))
    batch = list(gen.frames_batch([ref, ref], [audio, audio[: 640 * 3]], cfg, max_frames=7))
    assert len(batch) == 7 and [f is None for f in batch[-1]] == [False, True]


def test_frame_structs_unpacks_each_group():
    # Latent frames 0, 1, 2 of 2 dims: slot j of latent frame t is video frame (t - 1) 4 + 1 + j.
    s = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(1, 3, 8)
    got = frame_structs(s, True, 4)
    assert got.shape == (1, 9, 2)
    assert got[0, 0].tolist() == s[0, 0, 6:].tolist()  # frame 0: the last of its equal slots
    assert got[0, 1:].reshape(-1).tolist() == s[0, 1:].reshape(-1).tolist()
    later = frame_structs(s[:, 1:], False, 4)
    assert later.shape == (1, 8, 2) and later.reshape(-1).tolist() == s[0, 1:].reshape(-1).tolist()
    assert frame_structs(s, True, 1) is s


def test_a_codec_and_model_that_disagree_are_named(tmp_path):
    from df_models import DualForceDiT
    from df_models.bundle import read_bundle
    from df_models.codecs import load_codec

    model_dir, _, meta = read_bundle(tiny_bundle(tmp_path / "a", frames_per_latent=1))
    _, temporal_dir, _ = read_bundle(tiny_bundle(tmp_path / "b", frames_per_latent=4))
    with pytest.raises(ValueError, match="frames_per_latent=1"):
        StreamingGenerator(
            DualForceDiT.from_pretrained(model_dir), load_codec(temporal_dir), meta, device="cpu"
        )
