"""SynthTalk: deterministic identities, renders and clips; geometry-true pose; mouth follows
the audio at the designed lag; clips round-trip through mp4/wav; the corpus resumes."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from df_data.media import probe_video, read_video, read_wav
from df_data.synthtalk import (
    CAMERA,
    DEFAULT_AV_LAG_FRAMES,
    IDENTITY_DIM,
    LANDMARK_NAMES,
    STRUCT_NAMES,
    espeak_available,
    generate_corpus,
    identity_seed,
    identity_split,
    make_struct,
    mouth_box,
    project_landmarks,
    render_frame,
    sample_identity,
    synthesize_clip,
    write_clip,
)
from df_data.synthtalk import generate as generate_module
from df_data.synthtalk.espeak import map_phoneme
from df_data.synthtalk.face3d import landmarks_3d
from df_data.synthtalk.motion import energy_envelope

SIZE = 64


@pytest.fixture(scope="module")
def ident():
    """A fixed identity with well separated colours (skin, black hair, blue background)."""
    return dataclasses.replace(
        sample_identity(identity_seed("train", 3)),
        skin_rgb=(0.90, 0.70, 0.55),
        hair_rgb=(0.08, 0.08, 0.08),
        bg_top_rgb=(0.20, 0.30, 0.80),
        bg_bottom_rgb=(0.10, 0.15, 0.50),
        shirt_rgb=(0.20, 0.60, 0.20),
    )


@pytest.fixture(scope="module")
def clip(ident):
    return synthesize_clip(identity=ident, seconds=4.0, size=32, seed=11)


def test_struct_names_are_the_public_contract():
    assert STRUCT_NAMES == (
        "yaw",
        "pitch",
        "roll",
        "tx",
        "ty",
        "scale",
        "jaw",
        "lip_spread",
        "lip_round",
        "blink",
        "brow",
    )


def test_identity_is_deterministic_and_varies():
    a, b, c = sample_identity(5), sample_identity(5), sample_identity(6)
    assert a == b and np.array_equal(a.vector(), b.vector())
    assert a != c and not np.allclose(a.vector(), c.vector())
    v = a.vector()
    assert v.dtype == np.float32 and v.shape == (IDENTITY_DIM,)
    assert v.min() >= 0.0 and v.max() <= 1.0


def test_identity_validation_names_the_field():
    with pytest.raises(ValueError, match="head_width"):
        dataclasses.replace(sample_identity(1), head_width=5.0)
    with pytest.raises(ValueError, match="skin_rgb"):
        dataclasses.replace(sample_identity(1), skin_rgb=(1.5, 0.0, 0.0))


def test_train_and_test_identity_seeds_are_disjoint():
    train = {identity_seed("train", i) for i in range(2000)}
    test = {identity_seed("test", i) for i in range(2000)}
    assert len(train) == len(test) == 2000 and not train & test
    assert {identity_split(s) for s in train} == {"train"} and {
        identity_split(s) for s in test
    } == {"test"}
    with pytest.raises(ValueError, match="split"):
        identity_seed("val", 0)
    with pytest.raises(ValueError, match="index"):
        identity_seed("train", -1)


def test_render_is_deterministic(ident):
    s = make_struct(yaw=0.1, jaw=0.4, blink=0.3)
    a, b = render_frame(ident, s, SIZE), render_frame(ident, s, SIZE)
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE, 3)
    assert np.array_equal(a, b)
    other = render_frame(sample_identity(identity_seed("train", 4)), s, SIZE)
    assert np.abs(other.astype(int) - a).mean() > 5


def test_render_rejects_bad_arguments(ident):
    with pytest.raises(ValueError, match="size"):
        render_frame(ident, make_struct(), 63)
    with pytest.raises(ValueError, match="shape"):
        render_frame(ident, np.zeros(10), SIZE)


@settings(max_examples=25, deadline=None)
@given(
    yaw=st.floats(-0.5, 0.5),
    pitch=st.floats(-0.3, 0.3),
    roll=st.floats(-0.2, 0.2),
    tx=st.floats(-0.1, 0.1),
    scale=st.floats(0.9, 1.1),
)
def test_landmarks_follow_the_documented_camera(yaw, pitch, roll, tx, scale):
    ident = sample_identity(2)
    s = make_struct(yaw=yaw, pitch=pitch, roll=roll, tx=tx, scale=scale)
    p = landmarks_3d(ident, s)["nose_tip"]
    # Rotate yaw (about y), pitch (about x), roll (about z) by hand, then the pinhole.
    x, y, z = p
    x, z = x * np.cos(yaw) + z * np.sin(yaw), -x * np.sin(yaw) + z * np.cos(yaw)
    y, z = y * np.cos(pitch) + z * np.sin(pitch), -y * np.sin(pitch) + z * np.cos(pitch)
    x, y = x * np.cos(roll) - y * np.sin(roll), x * np.sin(roll) + y * np.cos(roll)
    X, Y, Z = scale * x + tx * CAMERA.distance / CAMERA.focal, scale * y, scale * z
    depth = CAMERA.distance - Z
    expected = SIZE * np.array(
        [CAMERA.centre_x + CAMERA.focal * X / depth, CAMERA.centre_y - CAMERA.focal * Y / depth]
    )
    np.testing.assert_allclose(project_landmarks(ident, s, SIZE)["nose_tip"], expected, atol=1e-6)


def test_yaw_turns_the_face_the_way_geometry_says(ident):
    rest, yaw = make_struct(), 0.3
    lm0 = project_landmarks(ident, rest, SIZE)
    z = landmarks_3d(ident, rest)["nose_tip"][2]  # the nose tip has x = 0
    for sign in (1.0, -1.0):
        lm = project_landmarks(ident, make_struct(yaw=sign * yaw), SIZE)
        dx = lm["nose_tip"][0] - lm0["nose_tip"][0]
        # Yaw moves the tip to X = z sin(yaw), Z = z cos(yaw): x = size * focal * X / (distance - Z).
        expected = (
            SIZE * CAMERA.focal * z * np.sin(sign * yaw) / (CAMERA.distance - z * np.cos(yaw))
        )
        assert dx == pytest.approx(expected, rel=1e-6) and sign * dx > 5.0
        assert abs(lm["nose_tip"][1] - lm0["nose_tip"][1]) < 0.1 * abs(dx)

    # The rendered face moves the same way: the dark, open mouth shifts with the projected
    # mouth centre (a little less: its far half foreshortens as the head turns).
    def mouth_x(yaw_: float) -> tuple[float, float]:
        s = make_struct(yaw=yaw_, jaw=1.0)
        lm = project_landmarks(ident, s, SIZE)
        x0, y0, x1, y1 = mouth_box(ident, s, SIZE).round().astype(int)
        _, xs = np.nonzero(render_frame(ident, s, SIZE)[y0:y1, x0:x1].max(-1) < 45)
        assert len(xs) >= 25
        return 0.5 * (lm["mouth_top"][0] + lm["mouth_bottom"][0]), x0 + xs.mean()

    geo0, img0 = mouth_x(0.0)
    for sign in (1.0, -1.0):
        geo, img = mouth_x(sign * yaw)
        assert sign * (geo - geo0) > 4.0
        assert 0.6 < (img - img0) / (geo - geo0) < 1.1


def test_pitch_roll_and_translation_signs(ident):
    lm0 = project_landmarks(ident, make_struct(), SIZE)
    up = project_landmarks(ident, make_struct(pitch=0.2), SIZE)
    assert up["nose_tip"][1] < lm0["nose_tip"][1] - 1.0  # face tilts up: nose moves up
    ccw = project_landmarks(ident, make_struct(roll=0.2), SIZE)
    assert ccw["eye_right"][1] < ccw["eye_left"][1] - 1.0  # counter-clockwise in the image
    moved = project_landmarks(ident, make_struct(tx=0.05, ty=0.05), SIZE)
    np.testing.assert_allclose(
        moved["head_centre"] - lm0["head_centre"], [0.05 * SIZE, 0.05 * SIZE], atol=1e-6
    )
    big = project_landmarks(ident, make_struct(scale=1.1), SIZE)
    gap = lambda lm: lm["eye_right"][0] - lm["eye_left"][0]  # noqa: E731
    assert gap(big) == pytest.approx(1.1 * gap(lm0), rel=0.02)


def test_jaw_opening_grows_the_dark_mouth_interior(ident):
    def dark_area(jaw: float) -> int:
        s = make_struct(jaw=jaw)
        x0, y0, x1, y1 = mouth_box(ident, make_struct(jaw=1.0), SIZE).round().astype(int)
        img = render_frame(ident, s, SIZE)[y0:y1, x0:x1].astype(int)
        return int((img.max(-1) < 45).sum())

    areas = [dark_area(j) for j in (0.0, 0.5, 1.0)]
    assert areas[0] < areas[1] < areas[2]
    assert areas[2] >= 25  # an open mouth is many pixels at 64 x 64


def test_blink_closes_the_eyes_and_nothing_else(ident):
    opened = render_frame(ident, make_struct(blink=0.0), SIZE).astype(int)
    closed = render_frame(ident, make_struct(blink=1.0), SIZE).astype(int)
    white = lambda img: int((img.min(-1) > 170).sum())  # noqa: E731 - eye-white pixels
    assert white(opened) >= 6 and white(closed) == 0
    ys, xs = np.nonzero(np.abs(opened - closed).max(-1) > 10)
    lm = project_landmarks(ident, make_struct(), SIZE)
    assert np.all(np.abs(ys - lm["eye_left"][1]) < 5)
    assert np.all((xs > lm["eye_left"][0] - 6) & (xs < lm["eye_right"][0] + 6))


def test_mouth_follows_the_audio_envelope_at_the_designed_lag(clip):
    T = clip.struct.shape[0]
    rms = energy_envelope(clip.audio, T)
    top, bottom = LANDMARK_NAMES.index("mouth_top"), LANDMARK_NAMES.index("mouth_bottom")
    tracks = {
        "jaw": clip.struct[:, STRUCT_NAMES.index("jaw")],
        "opening": clip.landmarks[:, bottom, 1] - clip.landmarks[:, top, 1],
    }
    for name, track in tracks.items():
        lags = np.arange(-6, 7)
        corr = [
            np.corrcoef(track[max(k, 0) : T + min(k, 0)], rms[max(-k, 0) : T - max(k, 0)])[0, 1]
            for k in lags
        ]
        best = int(lags[int(np.argmax(corr))])
        assert abs(best - DEFAULT_AV_LAG_FRAMES) <= 1, (name, best, np.round(corr, 2))
        assert max(corr) > 0.5, (name, np.round(corr, 2))


def test_clip_is_deterministic_and_consistent(ident, clip):
    again = synthesize_clip(identity=ident, seconds=4.0, size=32, seed=11)
    for key in ("frames", "audio", "struct", "identity", "landmarks", "mouth_box"):
        assert np.array_equal(getattr(clip, key), getattr(again, key)), key
    assert clip.phonemes == again.phonemes
    other = synthesize_clip(identity=ident, seconds=1.0, size=32, seed=12)
    assert not np.array_equal(other.audio, clip.audio[: len(other.audio)])
    T = 100
    assert clip.frames.shape == (T, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (round(T / 25 * 16000),) and clip.audio.dtype == np.float32
    assert clip.struct.shape == (T, len(STRUCT_NAMES)) and clip.struct.dtype == np.float32
    assert clip.landmarks.shape == (T, len(LANDMARK_NAMES), 2)
    assert np.abs(clip.audio).max() <= 1.0 and clip.audio.std() > 0.01
    starts = [p[0] for p in clip.phonemes]
    assert starts == sorted(starts) and clip.phonemes[-1][1] <= 4.0 + 1e-6
    m = clip.metadata
    assert (m["fps"], m["frames"], m["sample_rate"], m["size"]) == (25.0, T, 16000, 32)
    assert m["av_lag_frames"] == DEFAULT_AV_LAG_FRAMES and m["struct_names"] == list(STRUCT_NAMES)
    assert (m["seed"], m["split"], m["identity_seed"]) == (11, "train", ident.seed)


def test_write_clip_round_trips_through_mp4_and_wav(clip, tmp_path):
    out = write_clip(clip, tmp_path / "clip")
    assert sorted(p.name for p in out.iterdir()) == [
        "audio.wav",
        "gt.safetensors",
        "metadata.json",
        "video.mp4",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]  # no temporary directory left
    T = clip.frames.shape[0]
    info = probe_video(out / "video.mp4")
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (
        T,
        25.0,
        32,
        32,
        True,
    )
    frames, fps = read_video(out / "video.mp4")
    assert frames.shape == clip.frames.shape and fps == 25.0
    assert np.abs(frames.astype(int) - clip.frames).mean() < 8  # lossy, but the same pictures
    audio = read_wav(out / "audio.wav")
    assert len(audio) == len(clip.audio)
    assert abs(len(audio) / 16000 - info.duration) < 0.04
    np.testing.assert_allclose(audio, clip.audio, atol=1e-3)
    gt = load_file(str(out / "gt.safetensors"))
    assert np.array_equal(gt["struct"], clip.struct) and np.array_equal(
        gt["identity"], clip.identity
    )
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["frames"] == T and meta["av_lag_frames"] == DEFAULT_AV_LAG_FRAMES
    assert meta["phonemes"][0][2] == "sil"
    write_clip(clip, out)  # writing again replaces the clip in place
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]
    assert probe_video(out / "video.mp4").frames == T


def test_write_clip_leaves_nothing_when_interrupted(clip, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "write_wav", broken)
    with pytest.raises(KeyboardInterrupt):
        write_clip(clip, tmp_path / "clip")
    assert list(tmp_path.iterdir()) == []


def test_generate_corpus_resumes_and_splits_identities(tmp_path):
    kwargs = dict(clips=2, seconds=0.4, size=32, test_clips=2, seed=1, progress=False)
    dirs = generate_corpus(tmp_path, **kwargs)
    assert [d.relative_to(tmp_path).as_posix() for d in dirs] == [
        "train/clip_00000",
        "train/clip_00001",
        "test/clip_00000",
        "test/clip_00001",
    ]
    mtimes = {d: os.stat(d / "video.mp4").st_mtime_ns for d in dirs}
    meta = {d: json.loads((d / "metadata.json").read_text()) for d in dirs}
    train_ids = {meta[d]["identity_seed"] for d in dirs[:2]}
    test_ids = {meta[d]["identity_seed"] for d in dirs[2:]}
    assert not train_ids & test_ids
    assert {identity_split(s) for s in train_ids} == {"train"} and {
        identity_split(s) for s in test_ids
    } == {"test"}
    # Second run: nothing is rewritten; a deleted clip is the only one made again.
    for f in dirs[1].iterdir():
        f.unlink()
    dirs[1].rmdir()
    assert generate_corpus(tmp_path, **kwargs) == dirs
    for d in (dirs[0], dirs[2], dirs[3]):
        assert os.stat(d / "video.mp4").st_mtime_ns == mtimes[d]
    assert (dirs[1] / "metadata.json").is_file()
    with pytest.raises(ValueError, match="size"):
        generate_corpus(tmp_path, **{**kwargs, "size": 48})


@pytest.mark.multiprocess
def test_generate_corpus_in_parallel_matches_serial(tmp_path):
    kwargs = dict(clips=2, seconds=0.4, size=32, test_clips=1, seed=4, progress=False)
    serial = generate_corpus(tmp_path / "a", **kwargs)
    parallel = generate_corpus(tmp_path / "b", workers=2, **kwargs)
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(read_wav(a / "audio.wav"), read_wav(b / "audio.wav"))
        assert np.array_equal(
            load_file(str(a / "gt.safetensors"))["struct"],
            load_file(str(b / "gt.safetensors"))["struct"],
        )


def test_espeak_mnemonics_map_onto_the_inventory():
    assert [map_phoneme(m) for m in ("aI", "a#", "i:", "oU", "u:", "tS", "p", "m", "_:", "??")] == [
        "a", "@", "i", "o", "u", "S", "p", "m", "sil", "@"
    ]  # fmt: skip


@pytest.mark.skipif(
    not espeak_available(), reason="libespeak-ng (Debian espeak-ng) is not installed"
)
def test_espeak_speech_drives_the_mouth(ident):
    clip = synthesize_clip(identity=ident, seconds=3.0, size=32, seed=5, use_espeak=True)
    assert clip.metadata["audio_source"] == "espeak-ng"
    assert len(clip.audio) == 48000 and clip.audio.std() > 0.01
    assert sum(label != "sil" for _, _, label in clip.phonemes) > 10
    T = clip.struct.shape[0]
    jaw, rms = clip.struct[:, STRUCT_NAMES.index("jaw")], energy_envelope(clip.audio, T)
    lag = DEFAULT_AV_LAG_FRAMES
    assert np.corrcoef(jaw[lag:], rms[: T - lag])[0, 1] > 0.3
