"""``dualforce data prepare`` end to end on generated media: skimage's astronaut (a real photo)
composited on a moving background with speech (espeak-ng where it loads, SynthTalk's formant
voice otherwise), a second face, blur and silence; bad inputs; resuming; sharding; ``extract``
reading the result."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import submitit
import torch
from safetensors.torch import load_file

from df_data.cli import main as data_main
from df_data.extract import extract_store
from df_data.media import read_video, read_wav
from df_data.prepare import PrepareConfig, prepare_corpus
from df_data.prepare.crop import to_crop
from df_data.prepare.run import RECORDS_DIR
from df_data.prepare.shards import submit_shards, wait_and_summarise
from df_data.prepare.testing import Segment, composite_frames, encode, segment_audio
from df_data.store import load_failures, read_clip
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug

pytestmark = pytest.mark.slow

# The astronaut's face in skimage's 512x512 photo (RetinaFace): five-point centre and box.
FACE_CENTRE = (224.5, 122.4)
FACE_BOX = (178.0, 57.0, 273.0, 177.0)
PATCH = (100, 0, 350, 260)  # x0, y0, x1, y1 of the part of the photo that is pasted


def astronaut_patch(scale: float) -> tuple[np.ndarray, tuple[float, float], float]:
    """The pasted patch, the face centre inside it, and the face size (box's longer side)."""
    x0, y0, x1, y1 = PATCH
    patch = cv2.resize(skimage.data.astronaut()[y0:y1, x0:x1], None, fx=scale, fy=scale)
    centre = ((FACE_CENTRE[0] - x0) * scale, (FACE_CENTRE[1] - y0) * scale)
    return patch, centre, (FACE_BOX[3] - FACE_BOX[1]) * scale


SEGMENTS = [
    Segment(3.5),  # kept
    Segment(1.2, speech=False),
    Segment(3.5, second_face=True),
    Segment(1.2, speech=False),
    Segment(3.5, blur=5.0),
    Segment(3.0, speech=False),
]
FACE_AT = (640.0, 400.0)


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> tuple[Path, np.ndarray, list[tuple[float, float]]]:
    """A 1280x720, 30 fps, 15.9 s video with its audio and the face's path per frame."""
    src = tmp_path_factory.mktemp("talk_src")
    patch, centre, _ = astronaut_patch(2.4)
    frames, path = [], []
    for _, frame, xy in composite_frames(
        patch, centre, SEGMENTS, fps=30, width=1280, height=720, face_at=FACE_AT
    ):
        frames.append(frame)
        path.append(xy)
    audio = segment_audio(SEGMENTS)
    encode(src / "talk.mp4", frames, fps=30, audio_N=audio)
    return src, audio, path


@pytest.fixture(scope="module")
def prepared(talk, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("talk_out")
    prepare_corpus(talk[0], out, PrepareConfig(size=64, det_size=320), progress=False)
    return out


def failure_at(out: Path, t: float) -> dict:
    lines = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    (hit,) = [f for f in lines if f["clip"] and f["start_s"] <= t < f["end_s"]]
    return hit


def test_segments_kept_and_dropped_with_their_reasons(prepared):
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["inputs"] == 1 and summary["clips_kept"] == 1
    assert failure_at(prepared, 6.4)["reason"] == "second_face"
    blur = failure_at(prepared, 11.2)
    assert blur["reason"] == "blur" and blur["value"] < 40 and blur["field"] == "sharpness"
    assert blur["measured"]["speech_ratio"] > 0.5  # it is dropped for blur alone
    assert failure_at(prepared, 14.5)["reason"] == "low_speech"
    assert failure_at(prepared, 14.5)["value"] == 0.0
    assert failure_at(prepared, 4.1)["reason"] == "too_short"  # the silence between
    (clip,) = [p for p in (prepared / "train").iterdir()]
    meta = json.loads((clip / "metadata.json").read_text())
    assert meta["source"]["start_s"] == 0.0 and 3.5 <= meta["source"]["end_s"] <= 3.9
    assert meta["filters"]["sharpness"] > 100 and meta["filters"]["second_face_fraction"] == 0.0
    assert meta["filters"]["face_px"] >= 256 and meta["detector"].startswith("retinaface")


def test_kept_clip_frames_audio_and_crop(prepared, talk):
    _, audio, path = talk
    (clip,) = [p for p in (prepared / "train").iterdir()]
    meta = json.loads((clip / "metadata.json").read_text())
    frames, fps = read_video(clip / "video.mp4")
    wav = read_wav(clip / "audio.wav")
    seconds = meta["source"]["end_s"] - meta["source"]["start_s"]
    assert fps == 25 and frames.shape == (round(25 * seconds), 64, 64, 3) == (
        meta["frames"],
        64,
        64,
        3,
    )
    assert wav.shape == (640 * meta["frames"],)
    # the audio is the source's, sample for sample (16-bit and AAC rounding aside)
    src = audio[: wav.shape[0]]
    lags = {lag: float(np.dot(np.roll(wav, lag)[100:-100], src[100:-100])) for lag in range(-3, 4)}
    assert max(lags, key=lags.get) == 0
    assert np.abs(wav - src).max() < 0.05
    # one box, containing the face on every frame; landmarks follow the known path
    x0, y0, x1, y1 = meta["crop"]["box"]
    _, _, face_px = astronaut_patch(2.4)
    lm = load_file(str(clip / "landmarks.safetensors"))
    assert lm["points"].shape == (meta["frames"], 5, 2) and lm["detected"].all()
    for k in range(meta["frames"]):
        cx, cy = path[int(np.floor((k / 25 + 0.02) * 30))]
        assert x0 < cx - face_px / 2 and cx + face_px / 2 < x1
        assert y0 < cy - face_px / 2 and cy + face_px / 2 < y1
        truth = to_crop(np.array([[cx, cy]]), _box(meta), 64)[0]
        assert np.abs(lm["points"][k].numpy().mean(0) - truth).max() < 1.5  # crop pixels
    assert meta["crop"]["side"] == pytest.approx(2.3 * face_px * 0.8, rel=0.08)
    mouth = lm["mouth_box"].numpy()
    assert (mouth[:, 0] >= 0).all() and (mouth[:, 3] <= 64).all()
    assert (mouth[:, 1] > lm["points"][:, 2, 1].numpy()).all()  # below the nose


def _box(meta):
    from df_data.prepare.crop import CropBox

    x0, y0, x1, _ = meta["crop"]["box"]
    return CropBox(x0, y0, x1 - x0)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and RECORDS_DIR not in p.parts
    }


def test_rerun_is_idempotent(prepared, talk):
    before = snapshot(prepared)
    summary = prepare_corpus(
        talk[0], prepared, PrepareConfig(size=64, det_size=320), progress=False
    )
    assert summary["processed"] == 0 and summary["skipped"] == 1
    assert snapshot(prepared) == before
    with pytest.raises(ValueError, match="use a new --out or the same settings"):
        prepare_corpus(talk[0], prepared, PrepareConfig(size=128), progress=False)


class MeanColour:
    """A stand-in structure extractor for the plumbing test: per-frame mean RGB."""

    name = "mean-colour (test)"
    names = ("r", "g", "b")

    def __call__(self, frames_THWC):
        return torch.from_numpy(frames_THWC.reshape(frames_THWC.shape[0], -1, 3).mean(1) / 255.0)


def test_extract_reads_prepared_clips(prepared, tmp_path):
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    store = tmp_path / "store"
    summary = extract_store(prepared, store, codec=codec, progress=False)
    assert summary["failures"] == {"no_structure": 1}
    (failure,) = load_failures(store)
    assert "gt.safetensors" in failure["reason"] and "structure extractor" in failure["reason"]
    summary = extract_store(
        prepared,
        store,
        codec=codec,
        progress=False,
        struct_extractor=MeanColour(),
        retry_failed=True,
    )
    assert summary["written"] == 1
    (clip,) = [p.name for p in (prepared / "train").iterdir()]
    record = read_clip(store, f"train-{clip}")
    assert record.struct.shape[1] == 3 and record.mouth_box is not None
    assert record.metadata["source_metadata"]["struct_extractor"] == "mean-colour (test)"


# Bad and unusual inputs -------------------------------------------------------------------------


def speaking(path: Path, *, width: int, height: int, scale: float, face_at, seconds=2.5, **kw):
    patch, centre, _ = astronaut_patch(scale)
    seg = [Segment(seconds)]
    frames = [
        f
        for _, f, _ in composite_frames(
            patch, centre, seg, fps=25, width=width, height=height, face_at=face_at
        )
    ]
    if kw.pop("rotate_stored", False):  # the camera stores it sideways; metadata turns it back
        frames = [np.ascontiguousarray(np.rot90(f, 1)) for f in frames]
    audio = kw.pop("audio", True)
    return encode(path, frames, fps=25, audio_N=segment_audio(seg) if audio else None, **kw)


@pytest.fixture(scope="module")
def bad_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("bad_src")
    speaking(src / "noaudio.mp4", width=640, height=360, scale=1.2, face_at=(320, 200), audio=False)
    encode(src / "audioonly.mp4", [], audio_N=segment_audio([Segment(1.0)]))
    good = speaking(src / "good.mp4", width=640, height=360, scale=1.2, face_at=(320, 200))
    (src / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (src / "empty.mp4").write_bytes(b"")
    speaking(src / "border.mp4", width=640, height=360, scale=1.2, face_at=(60, 200))
    # Upright 360x640 portrait, stored as 640x360 landscape plus "rotate 90" (display -90).
    speaking(
        src / "phone.mov", width=360, height=640, scale=1.2, face_at=(180, 360),
        rotate_stored=True, rotation=-90,
    )  # fmt: skip
    speaking(src / "uhd.mkv", width=3840, height=2160, scale=4.0, face_at=(1900, 1150), seconds=2.0)
    return src


EXPECTED = {
    "noaudio.mp4": "no_audio",
    "audioonly.mp4": "no_video",
    "empty.mp4": "empty_file",
    "border.mp4": "crop_outside",
}


def test_bad_inputs_are_named_failures_and_the_run_goes_on(bad_src, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare", "--src", str(bad_src), "--out", str(out), "--size", "64"]
    args += ["--min-face", "100", "--min-seconds", "1.5", "--det-size", "320", "--workers", "2"]
    assert data_main([*args, "--no-progress"]) == 0
    fails = {
        Path(f["source"]).name: f
        for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())
    }
    for name, reason in EXPECTED.items():
        assert fails[name]["reason"] == reason, fails[name]
    assert fails["truncated.mp4"]["reason"] in {"unreadable", "decode_error"}
    assert fails["border.mp4"]["value"] > 0.05 and fails["border.mp4"]["field"] == "crop_outside"
    assert fails["noaudio.mp4"]["field"] == "audio_streams" and fails["noaudio.mp4"]["clip"] is None
    kept = {
        json.loads((d / "metadata.json").read_text())["source"]["path"]: d
        for d in (out / "train").iterdir()
    }
    assert {Path(p).name for p in kept} == {"good.mp4", "phone.mov", "uhd.mkv"}
    for path, clip in kept.items():
        lm = load_file(str(clip / "landmarks.safetensors"))["points"].numpy()
        assert (lm[:, :2, 1].max(1) < lm[:, 3:, 1].min(1)).all(), path  # upright: eyes above mouth
        frames, _ = read_video(clip / "video.mp4")
        meta = json.loads((clip / "metadata.json").read_text())
        assert (
            frames.shape[0]
            == meta["frames"]
            == round(25 * (meta["source"]["end_s"] - meta["source"]["start_s"]))
        )
    phone = json.loads((kept[str(bad_src / "phone.mov")] / "metadata.json").read_text())
    assert phone["source"]["media"]["rotation"] == 270
    assert (phone["source"]["media"]["width"], phone["source"]["media"]["height"]) == (360, 640)
    uhd = json.loads((kept[str(bad_src / "uhd.mkv")] / "metadata.json").read_text())
    assert uhd["filters"]["face_px"] > 400
    capsys.readouterr()
    assert data_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kept: 3 clips" in text and "failed inputs no_audio: 1" in text
    assert "dropped crop_outside: 1 clips" in text


def test_shards_over_a_job_array_are_disjoint_and_complete(bad_src, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("noaudio.mp4", "audioonly.mp4", "empty.mp4", "good.mp4"):
        (src / name).write_bytes((bad_src / name).read_bytes())
    out = tmp_path / "out"
    cfg = PrepareConfig(size=64, min_face_px=100, min_seconds=1.5, det_size=320)
    executor = submitit.DebugExecutor(folder=str(tmp_path / "submitit"))
    jobs = submit_shards(src, out, cfg, 3, executor)
    summary = wait_and_summarise(jobs, out)
    records = [json.loads(p.read_text()) for p in (out / RECORDS_DIR).glob("*.json")]
    assert sorted(Path(r["source"]).name for r in records) == sorted(p.name for p in src.iterdir())
    assert summary["inputs"] == 4 and summary["clips_kept"] == 1
    assert summary["inputs_failed"] == {"no_audio": 1, "no_video": 1, "empty_file": 1}
