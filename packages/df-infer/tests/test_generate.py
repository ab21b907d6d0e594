"""``dualforce generate`` end to end on a tiny random bundle: the mp4's frame count, fps and
duration match the audio within one frame and the audio track is there; bad input gets a
clear error naming it (a bad output before the model loads); Ctrl-C leaves no file; silence is
valid input; the bundle's sampler settings are the defaults."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import df_infer.generate
from df_data.media import probe_video, read_video
from df_infer.cli import main
from df_infer.pipeline import StreamingGenerator, load_image
from df_infer.sampler import SamplerConfig
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
    return [*flags, "--device", "cpu", "--quiet", "--no-face-crop", *extra]


def test_cli_reference_without_a_face_is_a_clear_error(bundle, ref_png, tmp_path, capsys):
    """Without --no-face-crop the reference is cut around its face; noise has none."""
    audio = _wav(tmp_path / "speech.wav", 0.5)
    out = tmp_path / "out.mp4"
    argv = [a for a in _argv(bundle, ref_png, audio, out) if a != "--no-face-crop"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no face found in the reference image" in err and str(ref_png) in err
    assert not out.exists()


def test_cli_fp8_off_a_capable_gpu_is_a_clear_error(bundle, ref_png, tmp_path, capsys):
    audio = _wav(tmp_path / "speech.wav", 0.5)
    out = tmp_path / "out.mp4"
    assert main(_argv(bundle, ref_png, audio, out, "--fp8")) == 2
    assert "FP8 linears need the model on a CUDA device" in capsys.readouterr().err
    assert not out.exists()


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
    # Live input: chunks as an iterator give the same frames, to float rounding: incremental
    # audio features equal the whole clip's within 1e-5 (test_audio.py), and a uint8 pixel
    # near a rounding edge may then land one level off (bit equality here failed ~1 run in 4).
    chunks = (audio[i : i + 333] for i in range(0, len(audio), 333))
    c = list(gen.frames(ref_png, chunks, cfg))
    for x, y in zip(a, c, strict=True):
        assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1
        np.testing.assert_allclose(x.struct, y.struct, atol=1e-4, rtol=0)
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
    assert rc == 2 and "--fuse-clean needs --clean-pass='exact'" in capsys.readouterr().err
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


# --- the output path, checked before the model loads ---------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(StreamingGenerator, "from_bundle", refuse)


def _one_line_error(capsys, path) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err
    return err


@pytest.mark.parametrize(
    ("make", "out", "says"),
    [
        (lambda d: (d / "file").write_text("x"), "file/video.mp4", "is a file"),
        (lambda d: (d / "file").write_text("x"), "file/sub/video.mp4", "is a file"),
        (lambda d: (d / "dir.mp4").mkdir(), "dir.mp4", "existing directory"),
    ],
)
def test_bad_output_is_named_before_the_model_loads(
    bundle, ref_png, tmp_path, capsys, no_model, make, out, says
):
    audio = _wav(tmp_path / "a.wav", 0.3)
    make(tmp_path)
    rc = main(_argv(bundle, ref_png, audio, tmp_path / out))
    assert rc == 2
    assert says in _one_line_error(capsys, tmp_path / out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_named(bundle, ref_png, tmp_path, capsys, no_model):
    audio = _wav(tmp_path / "a.wav", 0.3)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc = main(_argv(bundle, ref_png, audio, locked / "video.mp4"))
    finally:
        locked.chmod(0o700)
    assert rc == 2 and "cannot write" in _one_line_error(capsys, locked / "video.mp4")


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs a folder nobody may write (/sys)")
def test_folder_nobody_may_write_is_named(bundle, ref_png, tmp_path, capsys, no_model):
    audio = _wav(tmp_path / "a.wav", 0.3)
    rc = main(_argv(bundle, ref_png, audio, "/sys/dualforce-test/video.mp4"))
    assert rc == 2 and "cannot write in '/sys'" in _one_line_error(
        capsys, "/sys/dualforce-test/video.mp4"
    )


def test_ctrl_c_exits_130_quietly_and_leaves_no_file(
    bundle, ref_png, tmp_path, capsys, monkeypatch
):
    frames = StreamingGenerator.frames

    def interrupted(self, *args, **kwargs):
        for i, frame in enumerate(frames(self, *args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(StreamingGenerator, "frames", interrupted)
    out = tmp_path / "out" / "video.mp4"
    rc = main(_argv(bundle, ref_png, _wav(tmp_path / "a.wav", 0.5), out, "--steps", "1"))
    assert rc == 130
    assert capsys.readouterr().err == ""
    assert not out.exists() and not list(out.parent.iterdir())  # no partial or temp file


# --- sampler settings: the bundle's, flags by name -------------------------------------------


RECOMMENDED = {"steps": 3, "cfg_audio": 2.0, "cfg_struct": 1.5, "seed": 7}


@pytest.fixture(scope="module")
def recommending_bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("rec") / "b", seed=3, sampler=RECOMMENDED)


def _sampler_used(monkeypatch, capsys, argv) -> SamplerConfig:
    used = []

    def capture(gen, reference, audio, out, sampler, **kwargs):
        used.append(sampler)
        raise KeyboardInterrupt  # stop here: the settings are what is tested

    monkeypatch.setattr(df_infer.generate, "generate_video", capture)
    assert main(argv) == 130
    return used[0]


def test_generate_uses_the_bundles_sampler_unless_a_flag_overrides(
    recommending_bundle, ref_png, tmp_path, capsys, monkeypatch
):
    audio = _wav(tmp_path / "a.wav", 0.3)
    base = _argv(recommending_bundle, ref_png, audio, tmp_path / "o.mp4")
    cfg = _sampler_used(monkeypatch, capsys, base)
    for field, value in RECOMMENDED.items():
        assert getattr(cfg, field) == value
    # The training values of the bundle fill what the recommendation leaves open.
    assert (cfg.shift, cfg.sigma_s_start, cfg.sigma_ctx) == (2.0, 0.7, 0.0)
    cfg = _sampler_used(monkeypatch, capsys, [*base, "--cfg", "1.25", "--steps", "2"])
    assert (cfg.cfg_audio, cfg.steps, cfg.cfg_struct, cfg.seed) == (1.25, 2, 1.5, 7)
    cfg = _sampler_used(monkeypatch, capsys, [*base, "--shift", "5"])
    assert cfg.shift == 5.0
    cfg = _sampler_used(monkeypatch, capsys, [*base, "--noise-share", "0.25"])
    assert cfg.noise_share == 0.25


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--stagger", "9"], "--stagger must be in [1, steps=4]"),
        (["--cfg", "-1"], "--cfg must be"),
        (["--seed", "-3"], "--seed must be"),
        (["--struct-finish-step", "0"], "--struct-finish-step must be"),
        (["--noise-share", "1.5"], "--noise-share must be"),
    ],
)
def test_sampler_errors_name_the_flag(bundle, ref_png, tmp_path, capsys, no_model, flags, named):
    audio = _wav(tmp_path / "a.wav", 0.3)
    rc = main([*_argv(bundle, ref_png, audio, tmp_path / "o.mp4"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and "SamplerConfig" not in err


def test_a_bad_recommended_sampler_names_the_bundle(tmp_path, ref_png, capsys):
    bad = tiny_bundle(tmp_path / "bad", sampler={"steps": 0})
    audio = _wav(tmp_path / "a.wav", 0.3)
    assert main(_argv(bad, ref_png, audio, tmp_path / "o.mp4")) == 2
    assert "SamplerConfig.steps (the bundle's inference.json sampler)" in capsys.readouterr().err
    unknown = tiny_bundle(tmp_path / "unknown", sampler={"stepz": 2})
    with pytest.raises(ValueError, match=r"inference.json sampler: unknown .*\['stepz'\]"):
        StreamingGenerator.from_bundle(unknown, device="cpu")


def test_a_hand_built_sampler_inherits_the_bundles_training_values(bundle, ref_png):
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    audio = np.random.default_rng(5).normal(0, 0.1, 3200).astype(np.float32)
    by_hand = [f.image for f in gen.frames(ref_png, audio, SamplerConfig(steps=2))]
    from_bundle = [f.image for f in gen.frames(ref_png, audio, gen.default_sampler(steps=2))]
    assert gen.default_sampler(steps=2).shift == 2.0  # the tiny bundle's training shift
    assert all(np.array_equal(a, b) for a, b in zip(by_hand, from_bundle, strict=True))
    # Set by name, a value is kept: shift 1 gives other frames.
    unshifted = [f.image for f in gen.frames(ref_png, audio, SamplerConfig(steps=2, shift=1.0))]
    assert not all(np.array_equal(a, b) for a, b in zip(by_hand, unshifted, strict=True))


@pytest.mark.parametrize("cfg_audio", [1.0, 3.0])
def test_clips_generated_together_equal_each_alone(bundle, ref_png, tmp_path, cfg_audio):
    """frames_batch / generate_videos: each clip of a batch (of different lengths, references
    and seeds; guided or not) is the clip generated alone, to float rounding; a clip's frames
    stop at its own audio's end."""
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    rng = np.random.default_rng(5)
    audios = [rng.normal(0, 0.1, n).astype(np.float32) for n in (9600, 16000, 9600)]
    other = tmp_path / "other.png"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(other)
    refs, seeds = [ref_png, other, ref_png], [4, 4, 9]
    cfg = gen.default_sampler(steps=2, cfg_audio=cfg_audio)
    alone = [
        list(gen.frames(r, a, gen.default_sampler(steps=2, cfg_audio=cfg_audio, seed=s)))
        for r, a, s in zip(refs, audios, seeds, strict=True)
    ]
    together = list(gen.frames_batch(refs, audios, cfg, seeds=seeds))
    assert len(together) == 25 and [len(a) for a in alone] == [15, 25, 15]
    for b, frames in enumerate(alone):
        assert all(row[b] is None for row in together[len(frames) :])
        for t, x in enumerate(frames):
            y = together[t][b]
            assert y.index == x.index == t
            assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1
            np.testing.assert_allclose(x.struct, y.struct, atol=1e-4, rtol=0)
    # Clip 2 differs from clip 0 only in its seed: the noise is per clip, not per batch row.
    assert not np.array_equal(together[5][0].image, together[5][2].image)
    # The mp4s: each clip's own length, its frames those of the batch.
    wavs = [tmp_path / f"a{b}.wav" for b in range(3)]
    for wav, a in zip(wavs, audios, strict=True):
        sf.write(wav, a, 16000, subtype="FLOAT")  # the same samples as the arrays
    outs = [tmp_path / f"out{b}.mp4" for b in range(3)]
    summaries = df_infer.generate.generate_videos(
        gen, refs, wavs, outs, cfg, seeds=seeds, progress=False
    )
    assert [s.frames for s in summaries] == [15, 25, 15]
    assert [probe_video(o).frames for o in outs] == [15, 25, 15]
    assert summaries[1].structs.shape == (25, 11)
    np.testing.assert_allclose(summaries[1].structs[-1], alone[1][-1].struct, atol=1e-4, rtol=0)


def test_frames_batch_errors_name_the_argument(bundle, ref_png):
    gen = StreamingGenerator.from_bundle(bundle, device="cpu")
    audio = np.zeros(6400, np.float32)
    with pytest.raises(ValueError, match="2 references for 1 audio"):
        next(gen.frames_batch([ref_png, ref_png], [audio]))
    with pytest.raises(ValueError, match="1 seeds for a batch of 2"):
        next(gen.frames_batch([ref_png, ref_png], [audio, audio], seeds=[1]))
    with pytest.raises(ValueError, match="2 references, 1 audio files and 1 outputs"):
        df_infer.generate.generate_videos(gen, [ref_png, ref_png], ["a.wav"], ["o.mp4"])
