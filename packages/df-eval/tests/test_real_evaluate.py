"""``dualforce eval --real`` on folders of mp4s: per video and aggregate scores, recorded
skips for bad input, the report files, and the CLI (missing weights, the SynthTalk default)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from df_data.media import write_video
from df_eval.cli import main
from df_eval.real import arcface as A
from df_eval.real import lpips_metric as LP
from df_eval.real import syncnet as S
from df_eval.real.evaluate import (
    Networks,
    NoAudioError,
    RealEvalConfig,
    Video,
    evaluate_real,
    read_audio_track,
    score_pair,
)
from df_eval.real.faces import Face, FaceTrack, NoFaceError

SIZE = 96
# Landmarks of a face centred in a 96x96 frame (the ArcFace template scaled by 0.8, shifted).
POINTS = A.ARCFACE_TEMPLATE * 0.8 + [3.0, -2.0]
BOX = (18.0, 12.0, 78.0, 84.0)


class StubImageFeatures(nn.Module):
    """FID's call signature ([B, 3, H, W] in [0, 1] -> [B, F]) without Inception's cost."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class StubI3D(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool):
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1) / 255.0


def _frames(T: int, seed: int, noise: int = 8) -> np.ndarray:
    from skimage.data import astronaut
    from skimage.transform import resize

    face = (resize(astronaut()[40:250, 130:320], (SIZE, SIZE)) * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    jitter = rng.integers(-noise, noise + 1, size=(T, SIZE, SIZE, 3))
    return np.clip(face[None].astype(int) + jitter, 0, 255).astype(np.uint8)


def _audio(T: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T * 640) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (rng.random(len(t)) > 0.5)).astype(np.float32)


def _faces(T: int, missing: tuple[int, ...] = ()) -> FaceTrack:
    face = Face(BOX, tuple(map(tuple, POINTS)))
    return FaceTrack(tuple(None if t in missing else face for t in range(T)))


def _nets() -> Networks:
    torch.manual_seed(0)
    return Networks(
        inception=StubImageFeatures().eval(),
        i3d=StubI3D(),
        lpips=LP.build_lpips(),
        syncnet=S.SyncNet(),
        arcface=A.IResNet(layers=(1, 1, 1, 1)),
    )


def _video(name, T, seed, audio=True, faces=True, missing=(), noise=8):
    return Video(
        name,
        _frames(T, seed, noise),
        25.0,
        _audio(T, seed) if audio else None,
        _faces(T, missing) if faces else None,
    )


@pytest.mark.slow
def test_a_video_against_itself_is_perfect_and_windows_are_scored():
    nets = _nets()
    config = RealEvalConfig(windows=(8,), batch_size=8)
    v = _video("a", 24, 0, noise=0)  # a still face: every frame is the identity reference
    r = score_pair(v, v, nets, config)
    s = r["scores"]
    assert r["skips"] == []
    assert s["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert s["csim"] == pytest.approx(1.0, abs=1e-9)
    assert s["lse_c"] == pytest.approx(s["ref_lse_c"]) and s["lse_d"] == pytest.approx(
        s["ref_lse_d"]
    )
    assert s["fvd_clips"] == 1 and len(r["curves"]["sync_mdist"]) == 31
    a, b = r["features"]["fid"]
    assert np.array_equal(a, b) and a.shape == (24, 8)
    # 24 frames: three 8-frame CSIM windows; 19 SyncNet windows: two 8-window LSEs.
    assert r["curves"]["csim_8"] == pytest.approx([1.0, 1.0, 1.0])
    assert len(r["curves"]["lse_c_8"]) == 2


def test_bad_inputs_are_recorded_skips_never_averaged_in():
    nets = _nets()
    config = RealEvalConfig(metrics=("fvd", "lpips", "sync", "csim"), windows=(8,))
    ref = _video("r", 12, 0, audio=False)
    pred = _video("p", 10, 1, audio=False, missing=(2, 3))
    r = score_pair(pred, ref, nets, config)
    reasons = {s["metric"]: s["reason"] for s in r["skips"]}
    assert "shorter than one 16-frame FVD clip" in reasons["fvd"]
    assert "correspond" in reasons["lpips"]  # 10 vs 12 frames
    assert "no audio" in reasons["sync"] and "no audio" in reasons["sync_ref"]
    assert "2 frames without a face" in reasons["csim_frames"]
    assert {"fvd_clips", "lpips", "lse_c", "ref_lse_c"}.isdisjoint(r["scores"])
    assert r["scores"]["csim_frames"] == 8 and np.isnan(r["curves"]["csim_8"]).sum() == 0
    no_face = _video("n", 20, 2, faces=True, missing=tuple(range(20)))
    r = score_pair(no_face, ref, nets, RealEvalConfig(metrics=("csim",)))
    assert "no face found" in r["skips"][0]["reason"] and "csim" not in r["scores"]
    with pytest.raises(NoFaceError, match="consecutive"):
        _faces(60, missing=tuple(range(5, 40))).boxes()


def test_audio_track_is_read_and_its_absence_is_named(tmp_path):
    T = 10
    with_audio = write_video(tmp_path / "a.mp4", _frames(T, 0), audio_N=_audio(T, 0))
    audio = read_audio_track(with_audio)
    assert audio.dtype == np.float32 and abs(len(audio) - T * 640) < 2048
    silent = write_video(tmp_path / "b.mp4", _frames(T, 0))
    with pytest.raises(NoAudioError, match="no audio track"):
        read_audio_track(silent)


def _write_pair(root, name, T, seed, audio=True):
    for side, s in (("pred", seed), ("ref", 0)):
        d = root / side
        d.mkdir(exist_ok=True)
        write_video(d / f"{name}.mp4", _frames(T, s), audio_N=_audio(T, s) if audio else None)
        _faces(T).to_json(d / f"{name}.faces.json")


@pytest.mark.slow
def test_evaluate_real_writes_metrics_report_and_plots(tmp_path):
    _write_pair(tmp_path, "clip_a", 40, 1)
    _write_pair(tmp_path, "clip_b", 20, 2, audio=False)
    out = tmp_path / "eval"
    config = RealEvalConfig(windows=(16, 32), batch_size=8)
    doc = evaluate_real(
        tmp_path / "pred", tmp_path / "ref", out, networks=_nets(), config=config, progress=False
    )
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["aggregate"] == doc["aggregate"]
    agg = doc["aggregate"]
    assert agg["videos"] == 2 and agg["fid_samples"] == 60 and agg["fvd_samples"] == 3
    assert agg["fid"] > 0 and agg["lpips"] > 0 and agg["csim"] < 1
    assert agg["lse_c_videos"] == 1  # clip_b has no audio: a recorded skip, not a zero
    assert any(s["video"] == "clip_b" and s["metric"] == "sync" for s in doc["skips"])
    assert set(doc["plots"]) == {"long", "offset"}
    assert all((out / f).stat().st_size > 1000 for f in doc["plots"].values())
    report = (out / "report.md").read_text()
    assert "| fid ↓ |" in report and "clip_b / sync" in report and "Protocol" in report


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_real_mode(tmp_path, capsys):
    _write_pair(tmp_path, "clip_a", 34, 1)
    weights = tmp_path / "weights"
    weights.mkdir()
    base = ["--real", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]
    # Missing files: every one is named with where it is published, before any work.
    assert main([*base, "--weights", str(weights), "--no-progress"]) == 2
    err = capsys.readouterr().err
    for f in ("pt_inception-2015-12-05-6726825d.pth", "i3d_torchscript.pt", "syncnet_v2.model"):
        assert f in err
    assert "mseitzer/pytorch-fid" in err and "joonson/syncnet_python" in err
    assert main(["--real", "--pred", str(tmp_path / "pred"), "--weights", str(weights)]) == 2
    assert "--ref" in capsys.readouterr().err
    assert main([*base, "--weights", str(weights), "--metrics", "fid,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    # FVD alone, with a TorchScript detector of StyleGAN-V's signature.
    torch.jit.save(torch.jit.script(StubI3D()), str(weights / "i3d_torchscript.pt"))
    out = tmp_path / "out"
    args = [*base, "--weights", str(weights), "--metrics", "fvd", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "fvd" in capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["aggregate"]["fvd_samples"] == 2 and doc["aggregate"]["fvd"] >= 0
    assert doc["protocol"]["metrics"] == ["fvd"]
    # The SynthTalk probe stays the default mode, which needs --data.
    assert main(["--pred", str(tmp_path / "pred")]) == 2
    assert "--data" in capsys.readouterr().err


def test_faces_are_detected_where_no_faces_file_exists(tmp_path):
    """Without a faces file, the prepare stage's RetinaFace finds the astronaut's face on every
    frame, in insightface's point order; a faces file, where it exists, wins."""
    from df_eval.real.evaluate import read_input_video, retinaface_detector

    T = 4
    path = write_video(tmp_path / "a.mp4", _frames(T, 0, noise=0))
    video = read_input_video(path, detector=retinaface_detector())
    assert video.faces is not None and video.faces.found().all()
    for face in video.faces.faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= SIZE + 2 and 0 <= y0 < y1 <= SIZE + 2 and x1 - x0 > SIZE / 3
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.points
        assert lx < nx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
    assert read_input_video(path).faces is None  # no file, no detector: no faces
    _faces(T).to_json(tmp_path / "a.faces.json")
    assert read_input_video(path, detector=retinaface_detector()).faces.faces[0].box == BOX
