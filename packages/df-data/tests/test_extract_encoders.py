"""Extraction with pretrained encoders (tiny HF folders): stacked-layer audio features and
reference tokens in the store, the encoders recorded, resumable, the CLI flags, and training
windows carrying the reference frame's tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from df_data.cli import main as data_main
from df_data.dataset import WindowConfig, WindowDataset
from df_data.encoders.image import build_ref_encoder
from df_data.encoders.testing import tiny_image_folder, tiny_speech_folder
from df_data.extract import extract_store
from df_data.features import build_audio_encoder, features_for_frames
from df_data.media import read_wav, write_video, write_wav
from df_data.record import ref_token_frames
from df_data.store import (
    ClipRecord,
    StoreError,
    read_clip,
    read_store_info,
    write_clip_record,
)
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug

SMALL = {"context": 4, "hop": 3, "lookahead": 2}


def _source(root, name, frames, seed):
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    video = rng.integers(0, 256, (frames, 32, 32, 3)).astype(np.uint8)
    write_video(d / "video.mp4", video, fps=25)
    write_wav(d / "audio.wav", 0.1 * rng.standard_normal(frames * 640))
    save_file({"struct": torch.randn(frames, 3)}, d / "gt.safetensors")
    meta = {"fps": 25, "frames": frames, "sample_rate": 16000, "split": "train"}
    (d / "metadata.json").write_text(json.dumps({**meta, "struct_names": ["yaw", "pitch", "roll"]}))
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_enc")
    src = root / "src"
    _source(src, "a", 24, 1)
    _source(src, "b", 13, 2)
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    codec.save_pretrained(root / "codec")
    return {
        "root": root,
        "src": src,
        "codec": root / "codec",
        "hubert": tiny_speech_folder(root / "hubert"),
        "dinov2": tiny_image_folder(root / "dinov2"),
    }


@pytest.fixture(scope="module")
def store(setup):
    audio = build_audio_encoder("hubert", model=str(setup["hubert"]), layer="all", **SMALL)
    ref = build_ref_encoder("dinov2", model=str(setup["dinov2"]))
    out = setup["root"] / "store"
    summary = extract_store(
        setup["src"],
        out,
        codec=setup["codec"],
        encoder=audio,
        ref_encoder=ref,
        ref_frames=4,
        progress=False,
    )
    assert summary["written"] == 2 and summary["failed"] == 0
    return out, audio, ref


def test_store_holds_stacked_layers_and_reference_tokens(setup, store):
    out, audio, ref = store
    record = read_clip(out, "train-a")
    assert record.audio_features.shape == (48, 3, 32)  # 2 per frame, embeddings + 2 layers
    wav = read_wav(setup["src"] / "a" / "audio.wav")
    torch.testing.assert_close(
        record.audio_features.float(), features_for_frames(audio, wav, 24), atol=2e-3, rtol=2e-3
    )
    assert record.ref_token_frames.tolist() == [0, 8, 15, 23]
    assert record.ref_tokens.shape == (4, 5, 32) and record.ref_tokens.dtype == torch.float16
    frames = (record.ref_image.permute(1, 2, 0).numpy())[None]
    torch.testing.assert_close(
        record.ref_tokens[0].float(), ref.encode(frames)[0], atol=2e-3, rtol=2e-3
    )
    meta = record.metadata
    for key in ("model", "weights_sha256", "layer", "layers", "dim", "kwargs"):
        assert meta["audio_encoder"][key] == json.loads(json.dumps(audio.identity()))[key]
    assert meta["audio_encoder"]["layer"] == "all" and meta["audio_feature_dim"] == 32
    assert meta["ref_encoder"]["tokens"] == 5 and meta["ref_encoder"]["model"] == str(
        setup["dinov2"]
    )
    info = read_store_info(out)
    assert info["audio_encoder"]["config_hash"] == audio.config_hash
    assert info["ref_encoder"]["weights_sha256"] == ref.weights_sha256


def test_rerun_resumes_and_other_encoders_are_refused(setup, store):
    out, audio, ref = store
    again = extract_store(
        setup["src"], out, codec=setup["codec"], encoder=audio, ref_encoder=ref, progress=False
    )
    assert again["written"] == 0 and again["skipped_finished"] == 2
    last = build_audio_encoder("hubert", model=str(setup["hubert"]), layer="last", **SMALL)
    with pytest.raises(ValueError, match="use a new output directory"):
        extract_store(setup["src"], out, codec=setup["codec"], encoder=last, ref_encoder=ref)
    with pytest.raises(ValueError, match="reference encoder"):
        extract_store(setup["src"], out, codec=setup["codec"], encoder=audio)


def test_training_windows_carry_the_reference_frames_tokens(store):
    out, _, _ = store
    config = WindowConfig(frames=4, audio_context=1, ref_tokens=True, ref_other_prob=0.7)
    ds = WindowDataset(out, config, seed=3)
    seen = set()
    for i in range(40):
        s = ds[i]
        record = read_clip(out, s["clip_id"])
        assert s["audio"].shape == (4, 6, 3, 32)  # La = (1 + 2 * 1) * 2 feature frames
        k = record.ref_token_frames.tolist().index(s["ref_index"])
        torch.testing.assert_close(s["ref_tokens"], record.ref_tokens[k].float())
        if s["ref_index"]:
            assert not s["start"] <= s["ref_index"] < s["start"] + 4  # outside the window
            torch.testing.assert_close(s["ref_latent"], record.latents[s["ref_index"]].float())
        seen.add(s["ref_index"])
    assert 0 in seen and len(seen) > 2  # the first frame and other stored frames
    with pytest.raises(ValueError, match="hflip_prob"):
        WindowConfig(ref_tokens=True, hflip_prob=0.5)


def test_ref_token_frames_and_their_validation(store, tmp_path):
    assert ref_token_frames(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert ref_token_frames(3, 8).tolist() == [0, 1, 2]
    out, _, _ = store
    record = read_clip(out, "train-b")
    write_clip_record(tmp_path, record)
    back = read_clip(tmp_path, "train-b")
    assert torch.equal(back.ref_tokens, record.ref_tokens)
    assert torch.equal(back.audio_features, record.audio_features)
    assert back.metadata["audio_encoder"] == record.metadata["audio_encoder"]
    bad = ClipRecord(
        **{**record.__dict__, "clip_id": "train-x", "ref_token_frames": torch.tensor([1, 5, 9, 12])}
    )
    bad.metadata = {**record.metadata, "clip_id": "train-x"}
    with pytest.raises(StoreError, match="ref_token_frames must increase from 0"):
        write_clip_record(tmp_path, bad)


def test_cli_extract_with_encoder_flags(setup, tmp_path, capsys):
    out = tmp_path / "store"

    def extract(*flags: str) -> int:
        paths = ["--src", str(setup["src"]), "--out", str(out), "--codec", str(setup["codec"])]
        return data_main(["extract", *paths, *flags])

    hubert = str(setup["hubert"])
    code = extract("--audio-encoder", "wav2vec2", "--audio-model", hubert)
    assert code == 2 and "model_type 'hubert'" in capsys.readouterr().err  # not a wav2vec2 folder
    code = extract(
        *("--audio-encoder", "hubert", "--audio-model", hubert, "--audio-layer", "1"),
        *("--ref-encoder", "dinov2", "--ref-model", str(setup["dinov2"])),
        *("--ref-frames", "2", "--ref-pool", "1"),
    )
    assert code == 0
    record = read_clip(out, "train-a")
    assert record.audio_features.shape == (48, 32) and record.ref_tokens.shape == (2, 2, 32)
    assert record.metadata["audio_encoder"]["layer"] == "1"
