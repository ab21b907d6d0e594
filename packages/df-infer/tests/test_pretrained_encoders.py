"""Streaming features of the pretrained (windowed) speech encoders equal the whole clip's, with
a bounded look-ahead and memory; ``dualforce generate`` uses the bundle's encoders and refuses
others."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from df_data.encoders.image import build_ref_encoder
from df_data.encoders.testing import tiny_image_folder, tiny_speech_folder
from df_data.features import build_audio_encoder, features_for_frames
from df_data.media import probe_video
from df_infer.audio import StreamingFeatures, iter_chunks
from df_infer.cli import main
from df_infer.pipeline import StreamingGenerator
from df_infer.testing import tiny_bundle
from df_models.layers import gather_audio_windows

SMALL = {"context": 4, "hop": 3, "lookahead": 2}
TOL = {"atol": 1e-4, "rtol": 1e-4}  # float32, a window alone or in a batch


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return {
        "hubert": tiny_speech_folder(root / "hubert"),
        "whisper": tiny_speech_folder(root / "whisper", "whisper"),
        "hubert_other": tiny_speech_folder(root / "hubert_other", seed=5),
        "dinov2": tiny_image_folder(root / "dinov2"),
    }


@pytest.fixture(scope="module")
def encoders(folders):
    return {
        "hubert": build_audio_encoder("hubert", model=str(folders["hubert"]), layer="all", **SMALL),
        "whisper": build_audio_encoder("whisper", model=str(folders["whisper"]), **SMALL),
    }


def _offline(encoder, audio, context):
    T = -(-len(audio) // 640)
    return gather_audio_windows(features_for_frames(encoder, audio, T)[None], T, context=context)[0]


def _stream(encoder, audio, chunk, context):
    sf_ = StreamingFeatures(encoder, iter_chunks(audio, chunk), context=context)
    t, got, held = 0, [], []
    while True:
        if sf_.ensure(t + 1) <= t:
            break
        got.append(sf_.windows(t, 1))
        sf_.release(t)
        held.append(sf_._audio.numel())
        t += 1
    return torch.cat(got), sf_, held


@settings(deadline=None, max_examples=10)
@given(
    samples=st.integers(1, 640 * 14 + 321),
    chunk=st.integers(50, 3000),
    context=st.integers(0, 2),
    kind=st.sampled_from(["hubert", "whisper"]),
)
def test_streaming_features_equal_the_whole_clips(encoders, samples, chunk, context, kind):
    enc = encoders[kind]
    audio = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
    got, stream, _ = _stream(enc, audio, chunk, context)
    ref = _offline(enc, audio, context)
    assert stream.ended and got.shape == ref.shape
    torch.testing.assert_close(got, ref, **TOL)


def test_lookahead_and_bounded_memory(encoders):
    """Frame t's window is ready once audio reaches the end of the window emitting frame
    t + context: at most hop - 1 + lookahead + context frames (+40 samples) past frame t."""
    enc = encoders["hubert"]
    g = enc.geometry
    sf_ = StreamingFeatures(enc, context=1)
    # Frame 0 needs features of frames 0..1: window 0 (frames 0..2) reads up to 640 * 5 + 40.
    sf_.push(np.zeros(g.end_sample(0) - 1, np.float32))
    assert not sf_.ready(1)
    sf_.push(np.zeros(1, np.float32))
    assert sf_.ready(1) and sf_.ready(2) and not sf_.ready(3)
    audio = np.random.default_rng(0).normal(0, 0.1, 640 * 300).astype(np.float32)
    _, _, held = _stream(enc, audio, 640, context=2)
    assert max(held) <= g.samples + 640  # one window plus a chunk, over 12 s of audio


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, encoders, folders):
    ref = build_ref_encoder("dinov2", model=str(folders["dinov2"]))
    path = tmp_path_factory.mktemp("bundle") / "b"
    return tiny_bundle(path, seed=2, audio_encoder=encoders["hubert"], ref_encoder=ref)


@pytest.fixture
def files(tmp_path):
    ref = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
        ref
    )
    wav = tmp_path / "speech.wav"
    sf.write(wav, (0.1 * np.random.default_rng(1).standard_normal(9600)).astype(np.float32), 16000)
    return ref, wav


def _argv(bundle, ref, wav, out, *extra):
    return [
        "--checkpoint",
        str(bundle),
        "--ref",
        str(ref),
        "--audio",
        str(wav),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--no-face-crop",
        "--steps",
        "1",
        *extra,
    ]


def test_generate_uses_the_bundles_encoders(bundle, files, tmp_path, encoders):
    ref, wav = files
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    assert gen.encoder.config_hash == encoders["hubert"].config_hash and gen.encoder.layers == 3
    assert gen.ref_encoder is not None and gen.model.config.ref_tokens_enabled
    tokens = gen.reference_tokens(ref)
    assert tokens.shape == (1, 5, 32)
    out = tmp_path / "v.mp4"
    assert main(_argv(bundle, ref, wav, out)) == 0
    info = probe_video(out)
    assert info.frames == 15 and info.has_audio


def test_generate_refuses_other_encoder_weights(bundle, files, tmp_path, folders, capsys):
    ref, wav = files
    out = tmp_path / "v.mp4"
    argv = _argv(bundle, ref, wav, out, "--audio-model", str(folders["hubert_other"]))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config_hash" in err and "use the encoder the features were made with" in err
    assert not out.exists()
    # A moved copy of the same weights is accepted.
    moved = shutil.copytree(folders["hubert"], tmp_path / "moved")
    assert main(_argv(bundle, ref, wav, out, "--audio-model", str(moved))) == 0


def test_a_bundle_whose_encoder_folder_is_gone_names_it(bundle, files, tmp_path, capsys):
    ref, wav = files
    copy = shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((copy / "inference.json").read_text())
    meta["audio_encoder"]["kwargs"]["model"] = str(tmp_path / "gone")
    (copy / "inference.json").write_text(json.dumps(meta))
    assert main(_argv(copy, ref, wav, tmp_path / "v.mp4")) == 2
    assert "gone' does not exist" in capsys.readouterr().err


def test_one_long_chunk_is_encoded_in_bounded_batches(encoders, monkeypatch):
    enc = encoders["hubert"]
    monkeypatch.setattr(enc, "batch_windows", 4)
    calls = []
    encode = enc.encode_windows
    monkeypatch.setattr(enc, "encode_windows", lambda w: calls.append(w.shape[0]) or encode(w))
    audio = np.random.default_rng(2).normal(0, 0.1, 640 * 40 + 5).astype(np.float32)
    sf_ = StreamingFeatures(enc, context=2)
    sf_.push(audio)
    sf_.end()
    assert max(calls) <= 4
    got = sf_.windows(0, sf_.num_frames)
    torch.testing.assert_close(got, _offline(enc, audio, 2), **TOL)


def test_a_bundle_without_a_reference_encoder_needs_given_tokens(tmp_path, files):
    ref, _ = files
    path = tiny_bundle(tmp_path / "b", ref_tokens_enabled=True, ref_feature_dim=8)
    gen = StreamingGenerator.from_bundle(path, device="cpu")
    audio = np.zeros(640 * 3, np.float32)
    with pytest.raises(ValueError, match="records no ref_encoder"):
        next(gen.frames(ref, audio, gen.default_sampler(steps=1)))
    tokens = torch.randn(1, 3, 8)
    frames = list(gen.frames(ref, audio, gen.default_sampler(steps=1), ref_feats_BRD=tokens))
    assert len(frames) == 3
