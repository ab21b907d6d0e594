"""Scoring on known inputs: ground truth is perfect, shuffling destroys sync, a frozen frame
has no motion; ``dualforce eval`` writes its outputs and names bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from df_data.media import write_video
from df_eval import metrics as M
from df_eval.cli import main
from df_eval.corpus import clip_dirs, load_ground_truth
from df_eval.evaluate import JAW, POSE_DIMS, evaluate_frames
from df_eval.metric_names import METRICS
from df_eval.report import PLOTS


@pytest.fixture(scope="module")
def gt_frames(corpus):
    return {c: load_ground_truth(d).video() for c, d in clip_dirs(corpus, "test").items()}


@pytest.fixture(scope="module")
def gt_result(corpus, probe, gt_frames):
    return evaluate_frames(gt_frames, corpus, probe=probe, progress=False)


def test_ground_truth_scored_against_itself_is_perfect(corpus, probe, gt_frames, gt_result):
    agg = gt_result["aggregate"]
    assert agg["psnr"] == M.PSNR_CAP_DB
    assert agg["ssim"] == pytest.approx(1.0)
    assert agg["fd"] == pytest.approx(0.0, abs=1e-6)
    assert agg["sync_offset"] == 0
    assert agg["clips"] == len(gt_frames) == 8
    for clip_id, scores in gt_result["clips"].items():
        gt = load_ground_truth(clip_dirs(corpus, "test")[clip_id])
        read = probe.predict(gt_frames[clip_id])
        # The lip-sync correlation is the probe's own accuracy on this clip.
        assert scores["sync_corr"] == pytest.approx(
            M.pearson(read.struct[:, JAW], gt.struct[:, JAW])
        )
        scale = probe.struct_std[POSE_DIMS]
        assert scores["pose_err"] == pytest.approx(
            M.pose_error(read.struct[:, POSE_DIMS], gt.struct[:, POSE_DIMS], scale), rel=1e-6
        )
    assert agg["sync_corr"] > 0.7
    # Pose error of the ground truth is the probe's held-out pose error (same frames, mean of
    # per-clip RMSEs vs one pooled RMSE).
    held = probe.info["heldout"]["struct"]
    pooled = np.mean(
        [
            held[n]["rmse"] / s
            for n, s in zip(
                ("yaw", "pitch", "roll", "tx", "ty", "scale"),
                probe.struct_std[POSE_DIMS],
                strict=True,
            )
        ]
    )
    assert agg["pose_err"] == pytest.approx(pooled, rel=0.3)
    assert len(gt_result["curves"]["id_drift"]) == 25
    assert len(gt_result["curves"]["sync"]) == 11


def test_pose_and_jitter_curves_are_per_frame(corpus, probe, gt_frames, gt_result):
    """Against frame index: the pose error is each frame's RMS over the pose dimensions of the
    normalised error; the jitter curve (value i at frame i + 1) averages to the clip's jitter."""
    rng = np.random.default_rng(1)
    clip = sorted(gt_frames)[0]
    frames = gt_frames[clip][rng.permutation(len(gt_frames[clip]))]
    r = evaluate_frames({clip: frames}, corpus, probe=probe, progress=False)
    jit = r["curves"]["jitter"]
    assert len(jit) == 23 and np.mean(jit) == pytest.approx(r["clips"][clip]["jitter"])
    gt = load_ground_truth(clip_dirs(corpus, "test")[clip])
    read = probe.predict(frames)
    err = (read.struct[:, POSE_DIMS] - gt.struct[:, POSE_DIMS]) / probe.struct_std[POSE_DIMS]
    expected = np.sqrt(np.mean(err.astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(r["curves"]["pose_err"], expected, rtol=1e-5, atol=1e-6)
    assert len(gt_result["curves"]["pose_err"]) == 25
    assert np.mean(jit) > 2 * np.mean(gt_result["curves"]["jitter"])  # shuffled frames jump


def test_time_permuted_video_destroys_lip_sync(corpus, probe, gt_frames, gt_result):
    rng = np.random.default_rng(0)
    shuffled = {c: f[rng.permutation(len(f))] for c, f in gt_frames.items()}
    agg = evaluate_frames(shuffled, corpus, probe=probe, progress=False)["aggregate"]
    truth = gt_result["aggregate"]
    assert abs(agg["sync_corr"]) < 0.3 < truth["sync_corr"] - 0.4
    assert agg["sync_rmse"] > truth["sync_rmse"]
    assert agg["jitter"] > 2 * truth["jitter"]  # shuffled frames jump about


def test_frozen_reference_frame_has_no_motion(corpus, probe, gt_frames, gt_result):
    still = {c: np.repeat(f[:1], len(f), axis=0) for c, f in gt_frames.items()}
    result = evaluate_frames(still, corpus, probe=probe, progress=False)
    agg = result["aggregate"]
    assert agg["pose_div"] == pytest.approx(0.0, abs=1e-5)
    assert agg["jitter"] == pytest.approx(0.0, abs=1e-5)
    assert agg["sync_corr"] == pytest.approx(0.0, abs=1e-6)
    assert agg["id_dist"] == pytest.approx(0.0, abs=1e-5)  # it is the reference itself
    assert agg["psnr"] < gt_result["aggregate"]["psnr"]
    assert agg["fd"] > 0.0


def test_evaluate_frames_rejects_unknown_clips_and_sizes(corpus, probe, gt_frames):
    clip_id = next(iter(gt_frames))
    with pytest.raises(ValueError, match="clip_99999"):
        evaluate_frames({"clip_99999": gt_frames[clip_id]}, corpus, probe=probe, progress=False)
    small = gt_frames[clip_id][:, :32, :32]
    with pytest.raises(ValueError, match="frame size 32x32"):
        evaluate_frames({clip_id: small}, corpus, probe=probe, progress=False)


def _pred_dir(tmp_path, corpus, clip_ids):
    pred = tmp_path / "pred"
    pred.mkdir(parents=True)
    test = clip_dirs(corpus, "test")
    for c in clip_ids:
        shutil.copy(test[c] / "video.mp4", pred / f"{c}.mp4")
    return pred


def test_cli_writes_metrics_report_and_plots(tmp_path, corpus, probe, capsys):
    clip_ids = list(clip_dirs(corpus, "test"))[:3]
    pred = _pred_dir(tmp_path, corpus, clip_ids)
    (pred / f".{clip_ids[0]}.tmp-123.mp4").write_bytes(b"partial")  # an interrupted writer's
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "\n".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3}) for s in range(1, 30))
        + '\n{"event": "checkpoint"}\n'
    )
    out = tmp_path / "eval"
    argv = ["--pred", str(pred), "--data", str(corpus), "--out", str(out)]
    argv += ["--train-log", str(log), "--probe", str(probe.directory), "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN
    assert set(doc["systems"]) == {"pred", "ground_truth"}
    assert set(doc["systems"]["pred"]["clips"]) == set(clip_ids)
    assert doc["systems"]["pred"]["aggregate"]["ssim"] == pytest.approx(1.0)
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for key, _, _ in METRICS:
        assert key in report
    for name in PLOTS.values():
        assert f"]({name})" in report
    assert "report.md" in capsys.readouterr().out


def test_cli_names_bad_inputs(tmp_path, corpus, probe, capsys):
    base = ["--data", str(corpus), "--probe", str(probe.directory), "--no-progress"]

    def fails(pred, *extra):
        assert main(["--pred", str(pred), *base, *extra]) == 2
        return capsys.readouterr().err

    assert "does not exist" in fails(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no <clip_id>.mp4" in fails(empty)
    clip_id = next(iter(clip_dirs(corpus, "test")))
    for case in ("unknown", "garbage", "small"):
        pred = tmp_path / case
        pred.mkdir()
        if case == "unknown":
            bad = pred / "clip_99999.mp4"
            shutil.copy(clip_dirs(corpus, "test")[clip_id] / "video.mp4", bad)
            err = fails(pred)
            assert str(bad) in err and "not in the test split" in err
        elif case == "garbage":
            bad = pred / f"{clip_id}.mp4"
            bad.write_bytes(b"not a video")
            assert str(bad) in fails(pred)
        else:
            bad = write_video(pred / f"{clip_id}.mp4", np.zeros((5, 32, 32, 3), np.uint8))
            err = fails(pred)
            assert str(bad) in err and "frame size 32x32" in err
    pred = _pred_dir(tmp_path / "p", corpus, [clip_id])
    assert "training log does not exist" in fails(pred, "--train-log", str(tmp_path / "no.jsonl"))
