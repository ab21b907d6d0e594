"""End to end with real structure from pixels: the astronaut composited into a talking video
-> ``dualforce data prepare`` -> ``dualforce data extract --struct mesh`` (MediaPipe's face
mesh from its wheel; mesh mouth boxes) -> ``dualforce train`` a few steps of a tiny model ->
``dualforce generate`` from the astronaut photo -> an mp4 with the audio's frame count and an
audio track. Twice: with log-mel audio and horizontal flips, and with tiny random HuBERT (all
layers) and DINOv2 (reference tokens) folders of the real transformers classes in place of
the pretrained ones, as a user with hub access would run it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
import soundfile as sf

from df_core.cli import main as dualforce
from df_data.encoders.testing import tiny_image_folder, tiny_speech_folder
from df_data.media import probe_video
from df_data.prepare.testing import Segment, composite_frames, encode, segment_audio
from df_data.store import load_manifest, read_clip
from df_data.structure.mesh_geometry import MESH_STRUCT_NAMES
from df_models.codecs import TinyAutoencoder, TinyAutoencoderConfig

pytestmark = pytest.mark.slow

PATCH = (100, 0, 350, 260)  # the head and shoulders in skimage's astronaut photo
FACE_CENTRE = (224.5, 122.4)  # its face centre (RetinaFace)


@pytest.mark.parametrize("encoders", ["logmel", "hubert+dinov2"])
def test_prepare_extract_mesh_train_generate(tmp_path, encoders):
    # Step 1: a 3.2 s, 25 fps talking video: the astronaut on a moving background, speech.
    scale = 1.2
    x0, y0, x1, y1 = PATCH
    patch = cv2.resize(skimage.data.astronaut()[y0:y1, x0:x1], None, fx=scale, fy=scale)
    centre = ((FACE_CENTRE[0] - x0) * scale, (FACE_CENTRE[1] - y0) * scale)
    segments = [Segment(3.2)]
    frames = [
        f
        for _, f, _ in composite_frames(
            patch, centre, segments, fps=25, width=640, height=400, face_at=(320.0, 200.0)
        )
    ]
    (tmp_path / "raw").mkdir()
    encode(tmp_path / "raw" / "talk.mp4", frames, fps=25, audio_N=segment_audio(segments))

    # Step 2: prepare (128 px crops) and extract with the face mesh and a tiny codec.
    prepared, store = tmp_path / "prepared", tmp_path / "store"
    prep = ["data", "prepare", "--src", str(tmp_path / "raw"), "--out", str(prepared)]
    assert dualforce([*prep, "--size", "128", "--min-face", "64", "--det-size", "320"]) == 0
    codec = TinyAutoencoder(
        TinyAutoencoderConfig(
            latent_channels=4, base_channels=8, max_channels=16, num_down=4, norm_groups=4
        )
    )
    codec.init_weights()
    codec.save_pretrained(tmp_path / "codec")
    extract = ["data", "extract", "--src", str(prepared), "--out", str(store)]
    pretrained = encoders == "hubert+dinov2"
    if pretrained:
        hubert = tiny_speech_folder(tmp_path / "hubert")  # 32 wide, 2 layers
        dinov2 = tiny_image_folder(tmp_path / "dinov2")  # 32 wide
        extract += ["--audio-encoder", "hubert", "--audio-model", str(hubert)]
        extract += ["--audio-layer", "all", "--ref-encoder", "dinov2", "--ref-model", str(dinov2)]
    assert dualforce([*extract, "--codec", str(tmp_path / "codec"), "--struct", "mesh"]) == 0
    (entry,) = load_manifest(store)
    record = read_clip(store, entry["clip_id"])
    meta = record.metadata
    assert meta["struct_names"] == list(MESH_STRUCT_NAMES) and meta["struct_extractor"] == "mesh"
    assert meta["struct_mirror"]["known"] and "yaw" in meta["struct_mirror"]["negate"]
    assert meta["mouth_box_source"] == "structure extractor mesh"
    pose = record.struct[:, :3]
    assert float(pose.abs().max()) < 25.0  # a near-frontal face, degrees
    width = float(record.mouth_box[:, 2].sub(record.mouth_box[:, 0]).median())
    assert 10.0 < width < 80.0  # lips of a face about 128 / 2.3 px wide
    assert json.loads((store / "store.json").read_text())["struct_extractor"]["name"] == "mesh"
    if pretrained:
        assert meta["audio_encoder"]["name"] == "hubert" and meta["ref_encoder"]["name"] == "dinov2"
        assert tuple(record.audio_features.shape[1:]) == (3, 32)  # embeddings + 2 layers
        assert record.ref_tokens is not None and record.ref_tokens.shape[-1] == 32

    # Step 3: a few training steps of a tiny model on it; with log-mel audio also flips (the
    # mesh has a mirror; reference tokens have none).
    out = tmp_path / "run"
    sets = [
        f"data.store={store}",
        "data.struct=mesh",
        f"model.struct_raw_dim={len(MESH_STRUCT_NAMES)}",
        "steps=3",
        "log_every=1",
    ]
    if pretrained:
        sets += ["model.audio_dim=32", "model.audio_layers=3", "model.ref_tokens_enabled=true"]
        sets += ["model.ref_feature_dim=32", "data.encoders.audio_encoder=hubert"]
        sets += ["data.encoders.audio_layer=all", "data.encoders.ref_encoder=dinov2"]
    else:
        sets += ["data.hflip_prob=0.5"]
    argv = ["train", "--recipe", "synthtalk_tiny", "--out", str(out), "--no-progress"]
    assert dualforce([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    assert (out / "bundle" / "inference.json").is_file()

    # Step 4: generate from the astronaut photo (cut around its face) and the clip's speech.
    ref = tmp_path / "astronaut.png"
    cv2.imwrite(str(ref), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    speech = tmp_path / "speech.wav"
    seconds = 1.2
    sf.write(speech, segment_audio([Segment(seconds)], seed=3), 16000)
    video = tmp_path / "out.mp4"
    gen = ["generate", "--checkpoint", str(out / "bundle"), "--ref", str(ref)]
    gen += ["--audio", str(speech), "--out", str(video), "--device", "cpu", "--quiet"]
    assert dualforce([*gen, "--steps", "2", "--seed", "0"]) == 0
    info = probe_video(video)
    assert abs(info.frames - seconds * 25) <= 1 and info.fps == 25 and info.has_audio
    assert (info.height, info.width) == (128, 128)
    assert np.isfinite(info.duration)
