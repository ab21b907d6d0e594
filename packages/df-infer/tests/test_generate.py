"""``dualforce generate`` end to end on a tiny random bundle: the mp4's frame count, fps and
duration match the audio within one frame and the audio track is there; bad input gets a
clear error naming it; silence is valid input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from df_data.media import probe_video, read_video
from df_infer.cli import main
from df_infer.pipeline import StreamingGenerator, load_image
from df_infer.testing import tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=3)


@pytest.fixture
def ref_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "face.png"
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
    return path


def _wav(path, seconds, rate=22050, channels=2, silent=False):
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    data = np.zeros((n, channels)) if silent else np.stack([tone] * channels, 1)
    sf.write(path, data.astype(np.float32), rate)
    return path


def _argv(bundle, ref, audio, out, *extra):
    paths = {"--checkpoint": bundle, "--ref": ref, "--audio": audio, "--out": out}
    flags = [x for k, v in paths.items() for x in (k, str(v))]
    return [*flags, "--device", "cpu", "--quiet", *extra]


@pytest.mark.parametrize("silent", [False, True])
def test_cli_writes_matching_mp4(bundle, ref_png, tmp_path, capsys, silent):
    seconds = 1.37
    audio = _wav(tmp_path / "speech.wav", seconds, silent=silent)
    out = tmp_path / "out" / "video.mp4"
    rc = main(_argv(bundle, ref_png, audio, out, "--steps", "2", "--seed", "1"))
    assert rc == 0
    summary = capsys.readouterr().out
    assert "frames" in summary and "fps" in summary and "first frame" in summary
    info = probe_video(out)
    expected = seconds * 25
    assert abs(info.frames - expected) <= 1
    assert info.fps == 25
    assert abs(info.duration - seconds) <= 1 / 25
    assert info.has_audio
    assert (info.height, info.width) == (16, 16)
    frames, _ = read_video(out)
    assert frames.shape[0] == info.frames
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_generator_is_deterministic_and_streams(bundle, ref_png):
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    audio = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
    cfg = gen.default_sampler(steps=2, seed=4)
    a = list(gen.frames(ref_png, audio, cfg))
    b = list(gen.frames(ref_png, audio, cfg))  # the cache is reused and reset
    assert [f.index for f in a] == list(range(25))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert a[0].struct.shape == (11,)
    # Live input: chunks as an iterator give the same frames.
    chunks = (audio[i : i + 333] for i in range(0, len(audio), 333))
    c = list(gen.frames(ref_png, chunks, cfg))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    # Frames are yielded before the audio is exhausted: the first frame needs 3 frames of audio.
    pulled = []

    def live():
        for i in range(0, len(audio), 640):
            pulled.append(i)
            yield audio[i : i + 640]

    it = gen.frames(ref_png, live(), cfg)
    next(it)
    assert len(pulled) <= 5


def test_load_image_crops_and_resizes(ref_png):
    img = load_image(ref_png, (16, 16))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert load_image(np.ones((10, 20)), (8, 8)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="must be"):
        load_image(np.ones((10, 20, 5)), (8, 8))


def test_bad_input_is_named(bundle, ref_png, tmp_path, capsys):
    audio = _wav(tmp_path / "a.wav", 0.5)
    base = _argv(bundle, ref_png, audio, tmp_path / "o.mp4")

    def run(**change):
        args = list(base)
        for k, v in change.items():
            args[args.index(f"--{k}") + 1] = str(v)
        rc = main(args)
        return rc, capsys.readouterr().err

    rc, err = run(ref=tmp_path / "missing.png")
    assert rc == 2 and "missing.png" in err
    (tmp_path / "notimage.png").write_text("hello")
    rc, err = run(ref=tmp_path / "notimage.png")
    assert rc == 2 and "not a readable image" in err
    (tmp_path / "empty.wav").write_bytes(b"")
    rc, err = run(audio=tmp_path / "empty.wav")
    assert rc == 2 and "empty.wav" in err
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    rc, err = run(audio=tmp_path / "zero.wav")
    assert rc == 2 and "zero.wav" in err
    (tmp_path / "noconfig").mkdir()
    rc, err = run(checkpoint=tmp_path / "noconfig")
    assert rc == 2 and "inference.json" in err
    rc, err = run(out=tmp_path / "o.avi")
    assert rc == 2 and ".mp4" in err
    rc = main([*base, "--window", "3"])
    assert rc == 2 and "window" in capsys.readouterr().err
    rc = main([*base, "--clean-pass", "approx", "--fuse-clean"])
    assert rc == 2 and "fuse_clean" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_bundle_mismatch_is_named(bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "inference.json").read_text())
    meta["image_size"] = [32, 32]
    (broken / "inference.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="image_size"):
        StreamingGenerator.from_bundle(broken, device="cpu")


def test_interleaved_streams_do_not_share_a_cache(bundle, ref_png):
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    rng = np.random.default_rng(2)
    a_audio, b_audio = (rng.normal(0, 0.1, 6400).astype(np.float32) for _ in range(2))
    cfg = gen.default_sampler(steps=2)
    alone_a = [f.image for f in gen.frames(ref_png, a_audio, cfg)]
    alone_b = [f.image for f in gen.frames(ref_png, b_audio, cfg)]
    ia, ib = gen.frames(ref_png, a_audio, cfg), gen.frames(ref_png, b_audio, cfg)
    both = [(next(ia).image, next(ib).image) for _ in range(len(alone_a))]
    assert all(np.array_equal(x, a) for (x, _), a in zip(both, alone_a, strict=True))
    assert all(np.array_equal(y, b) for (_, y), b in zip(both, alone_b, strict=True))
