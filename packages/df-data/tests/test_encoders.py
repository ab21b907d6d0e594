"""Pretrained encoders on tiny random models of the real transformers classes, saved as HF
folders and reloaded through df_data's loaders: equal outputs, the layer semantics, the frame
arithmetic, the errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from df_data.encoders import audio_encoder_from_identity, same_encoder
from df_data.encoders.image import build_ref_encoder, ref_encoder_from_identity
from df_data.encoders.layers import parse_layer_spec
from df_data.encoders.spec import EncoderSpec
from df_data.encoders.speech import zero_mean_unit_var
from df_data.encoders.testing import tiny_image_folder, tiny_speech_folder
from df_data.encoders.windows import WindowGeometry
from df_data.features import build_audio_encoder, features_for_frames

SMALL = {"context": 4, "hop": 3, "lookahead": 2}  # fast windows for tests


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    out = {
        kind: tiny_speech_folder(root / kind, kind) for kind in ("hubert", "wav2vec2", "whisper")
    }
    out["hubert_base"] = tiny_speech_folder(root / "hubert_base", stable_layer_norm=False)
    out["hubert_other"] = tiny_speech_folder(root / "hubert_other", seed=1)
    out["dinov2"] = tiny_image_folder(root / "dinov2", "dinov2")
    out["dinov2_other"] = tiny_image_folder(root / "dinov2_other", "dinov2", seed=1)
    out["clip"] = tiny_image_folder(root / "clip", "clip")
    return out


def _audio(samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, samples).astype(np.float32)


# Loading equals transformers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "whisper"])
def test_speech_encoder_equals_the_transformers_model(folders, kind):
    enc = build_audio_encoder(kind, model=str(folders[kind]), **SMALL)
    g = enc.geometry
    windows = torch.from_numpy(_audio(3 * g.samples)).reshape(3, g.samples)
    if kind == "whisper":
        ref_model = transformers.WhisperModel.from_pretrained(folders[kind]).encoder.eval()
        fe = transformers.WhisperFeatureExtractor.from_pretrained(folders[kind])
        mel = fe(list(windows.numpy()), sampling_rate=16000, return_tensors="pt").input_features
        expected = ref_model(mel).last_hidden_state
    else:
        cls = transformers.HubertModel if kind == "hubert" else transformers.Wav2Vec2Model
        ref_model = cls.from_pretrained(folders[kind]).eval()
        fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folders[kind])
        # The feature extractor's per-input normalisation, one window at a time.
        x = torch.stack(
            [torch.from_numpy(fe(w.numpy(), sampling_rate=16000).input_values[0]) for w in windows]
        )
        expected = ref_model(x).last_hidden_state
    got = enc.encode_windows(windows)
    assert got.shape == (3, 2 * g.hop, 32)
    torch.testing.assert_close(got, expected[:, g.kept()].detach(), atol=1e-5, rtol=1e-5)
    assert enc.rate == 50 and enc.sample_rate == 16000 and enc.dim == 32


def test_per_window_normalisation_is_the_feature_extractors():
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    w = _audio(6480) * 3 + 0.2
    expected = torch.from_numpy(fe(w, sampling_rate=16000).input_values[0])
    torch.testing.assert_close(zero_mean_unit_var(torch.from_numpy(w)[None])[0], expected)


# Layer semantics (transformers 5.x, pinned in df-data's pyproject) ------------------------------


def test_last_is_the_final_layer_norm_of_a_stable_layer_norm_model(folders):
    """hubert-large layout: ``last`` = last_hidden_state = final LayerNorm(hidden_states[2]);
    layer 2 (and -1) is the pre-LayerNorm output; ``all`` stacks embeddings + 2 layers."""
    d = str(folders["hubert"])
    audio = _audio(640 * 9)
    last = build_audio_encoder("hubert", model=d, layer="last", **SMALL)
    top = build_audio_encoder("hubert", model=d, layer="2", **SMALL)
    every = build_audio_encoder("hubert", model=d, layer="all", **SMALL)
    assert last.stable_layer_norm and every.layers == 3 and last.layers == top.layers == 1
    f_last, f_top, f_all = last.encode(audio), top.encode(audio), every.encode(audio)
    assert f_all.shape == (18, 3, 32)
    torch.testing.assert_close(f_all[:, 2], f_top)
    torch.testing.assert_close(
        build_audio_encoder("hubert", model=d, layer=-1, **SMALL).encode(audio), f_top
    )
    norm = last.model.encoder.layer_norm
    torch.testing.assert_close(norm(f_top), f_last, atol=1e-5, rtol=1e-5)
    assert (f_last - f_top).abs().max() > 0.1  # not the same tensor (transformers 4.x: equal)
    assert last.config_hash != top.config_hash != every.config_hash


def test_last_is_the_top_layer_of_a_group_norm_model(folders):
    d = str(folders["hubert_base"])
    audio = _audio(640 * 6)
    last = build_audio_encoder("hubert", model=d, layer="last", **SMALL).encode(audio)
    top = build_audio_encoder("hubert", model=d, layer="2", **SMALL).encode(audio)
    torch.testing.assert_close(last, top)


def test_layer_specs():
    assert parse_layer_spec(" ALL ") == "all" and parse_layer_spec(3) == "3"
    assert parse_layer_spec("0, 2") == "0,2"
    for bad in ("", "first", "1,1", "1.5"):
        with pytest.raises(ValueError, match="audio layer"):
            parse_layer_spec(bad)


def test_a_layer_list_stacks_those_layers(folders):
    d = str(folders["wav2vec2"])
    audio = _audio(640 * 5)
    both = build_audio_encoder("wav2vec2", model=d, layer="0,2", **SMALL).encode(audio)
    every = build_audio_encoder("wav2vec2", model=d, layer="all", **SMALL).encode(audio)
    torch.testing.assert_close(both, every[:, [0, 2]])


# Frame arithmetic -------------------------------------------------------------------------------


def test_the_plus_80_rule_gives_exactly_two_frames_per_video_frame(folders):
    model = transformers.HubertModel.from_pretrained(folders["hubert"])
    for k in range(1, 400):
        n = torch.tensor(640 * k + 80)
        assert int(model._get_feat_extract_output_lengths(n)) == 2 * k
        assert int(model._get_feat_extract_output_lengths(n - 1)) == 2 * k - 1
    g = WindowGeometry(**SMALL)
    assert g.samples == 640 * g.frames + 80


@pytest.fixture(scope="module")
def hubert_small(folders):
    return build_audio_encoder("hubert", model=str(folders["hubert"]), **SMALL)


@settings(deadline=None, max_examples=12)
@given(samples=st.integers(1, 640 * 12 + 500))
def test_features_are_exactly_two_per_video_frame(hubert_small, samples):
    enc = hubert_small
    audio = _audio(samples)
    frames = -(-samples // 640)
    assert enc.encode(audio).shape == (2 * frames, 32)
    assert features_for_frames(enc, audio, max(1, frames - 1)).shape == (2 * max(1, frames - 1), 32)


def test_whisper_features_are_exactly_two_per_video_frame(folders):
    enc = build_audio_encoder("whisper", model=str(folders["whisper"]), **SMALL)
    for samples in (1, 639, 640, 641, 640 * 7 + 13):
        assert enc.encode(_audio(samples)).shape == (2 * -(-samples // 640), 32)


def test_batching_windows_does_not_change_the_features(folders):
    d = str(folders["hubert"])
    audio = _audio(640 * 20 + 7)
    one = build_audio_encoder("hubert", model=d, batch_windows=1, **SMALL).encode(audio)
    many = build_audio_encoder("hubert", model=d, batch_windows=5, **SMALL).encode(audio)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


# Reference image encoders ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_ref_encoder_equals_the_transformers_model(folders, kind):
    enc = build_ref_encoder(kind, model=str(folders[kind]), pool=2)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    tokens = enc.encode(images)
    assert tokens.shape == (3, 5, 32) and enc.tokens == 5 and enc.dim == 32
    cls = transformers.Dinov2Model if kind == "dinov2" else transformers.CLIPVisionModel
    model = cls.from_pretrained(folders[kind]).eval()
    pixels = transformers.AutoImageProcessor.from_pretrained(folders[kind])(
        images=list(images), return_tensors="pt"
    )["pixel_values"]
    out = model(pixel_values=pixels)
    torch.testing.assert_close(tokens[:, 0], out.pooler_output.detach(), atol=1e-5, rtol=1e-5)
    mean = build_ref_encoder(kind, model=str(folders[kind]), pool=1).encode(images)
    torch.testing.assert_close(mean[:, 1], tokens[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    only_cls = build_ref_encoder(kind, model=str(folders[kind]), pool=0).encode(images)
    assert only_cls.shape == (3, 1, 32)


# Identity: the record rebuilds the encoder, and refuses other weights ---------------------------


def test_identity_rebuilds_the_encoder_and_refuses_other_weights(folders, tmp_path):
    enc = build_audio_encoder("hubert", model=str(folders["hubert"]), layer="all", **SMALL)
    ident = json.loads(json.dumps(enc.identity()))  # as the store and the bundle keep it
    assert ident["model"] == str(folders["hubert"]) and ident["layer"] == "all"
    assert ident["layers"] == 3 and ident["dim"] == 32 and len(ident["weights_sha256"]) == 64
    again = audio_encoder_from_identity(ident)
    audio = _audio(640 * 4)
    torch.testing.assert_close(again.encode(audio), enc.encode(audio))
    moved = shutil.copytree(folders["hubert"], tmp_path / "moved")
    assert same_encoder(audio_encoder_from_identity(ident, model=str(moved)).identity(), ident)
    with pytest.raises(ValueError, match="config_hash"):
        audio_encoder_from_identity(ident, model=str(folders["hubert_other"]))
    ref = build_ref_encoder("dinov2", model=str(folders["dinov2"]))
    assert ref_encoder_from_identity(ref.identity()).config_hash == ref.config_hash
    with pytest.raises(ValueError, match="trained with config_hash"):
        ref_encoder_from_identity(ref.identity(), model=str(folders["dinov2_other"]))


# Errors name the file and the field ------------------------------------------------------------


def test_errors_name_the_file_and_the_field(folders, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_audio_encoder("hubert", model=str(tmp_path / "nothing"))
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        broken = shutil.copytree(folders["hubert"], tmp_path / f"no-{name}")
        (broken / name).unlink()
        expected = "no weights" if name.endswith("safetensors") else f"has no {re.escape(name)}"
        with pytest.raises(ValueError, match=expected):
            build_audio_encoder("hubert", model=str(broken))
    with pytest.raises(ValueError, match=r"config.json.*model_type 'dinov2'"):
        build_audio_encoder("hubert", model=str(folders["dinov2"]))
    with pytest.raises(ValueError, match=r"config.json.*model_type 'hubert'"):
        build_ref_encoder("clip", model=str(folders["hubert"]))
    bad_json = shutil.copytree(folders["hubert"], tmp_path / "bad-json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json"):
        build_audio_encoder("hubert", model=str(bad_json))
    rate = shutil.copytree(folders["hubert"], tmp_path / "rate")
    pre = json.loads((rate / "preprocessor_config.json").read_text())
    (rate / "preprocessor_config.json").write_text(json.dumps({**pre, "sampling_rate": 8000}))
    with pytest.raises(ValueError, match=r"preprocessor_config.json.*sampling_rate 8000"):
        build_audio_encoder("hubert", model=str(rate))
    with pytest.raises(ValueError, match="audio layer 3 does not exist"):
        build_audio_encoder("hubert", model=str(folders["hubert"]), layer=3)
    with pytest.raises(ValueError, match="revision"):
        build_audio_encoder("hubert", model=str(folders["hubert"]), revision="main")
    with pytest.raises(ValueError, match="chunk_length"):
        build_audio_encoder("whisper", model=str(folders["whisper"]), context=70, hop=5)
    with pytest.raises(ValueError, match="registers"):
        build_ref_encoder("dinov2", model=str(folders["dinov2"]), registers=True)


def test_a_hub_id_offline_is_an_error_naming_it():
    """No hub here (HF_HUB_OFFLINE=1): the default model is not downloaded but named."""
    with pytest.raises(ValueError, match="facebook/hubert-large-ls960-ft"):
        build_audio_encoder("hubert")


def test_encoder_spec_validates_and_names_the_cli_flags(folders):
    spec = EncoderSpec(
        audio_encoder="hubert",
        audio_model=str(folders["hubert"]),
        audio_layer="ALL",
        ref_encoder="dinov2",
        ref_model=str(folders["dinov2"]),
    )
    assert spec.audio_layer == "all"
    args = spec.cli_args()
    assert args[:2] == ["--audio-encoder", "hubert"] and "--ref-frames" in args
    assert spec.build_audio().layers == 3 and spec.build_ref().tokens == 5
    with pytest.raises(ValueError, match="audio_encoder"):
        EncoderSpec(audio_encoder="mfcc")
    with pytest.raises(ValueError, match="not logmel"):
        EncoderSpec(audio_layer="all")
    with pytest.raises(ValueError, match="ref_frames"):
        EncoderSpec(ref_frames=0)
