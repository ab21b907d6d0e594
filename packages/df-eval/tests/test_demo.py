"""``dualforce demo``: stage records and resumption (fast), and the smoke run end to end (slow:
it is what CI runs, a few minutes on two cores)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from df_eval import demo
from df_eval.demo import PRESETS, STAGES, Demo, apply_sets, stage_record

# A corpus of two tiny train clips and one test clip: synthesised in about a second.
TINY = replace(PRESETS["smoke"], train_clips=2, test_clips=1, seconds=0.4, eval_clips=1, workers=1)


def test_rerun_skips_finished_stages(tmp_path, monkeypatch):
    first = Demo(tmp_path, TINY, progress=False).run(until="corpus")
    record = stage_record(tmp_path, "corpus")
    assert record is not None and record == first["corpus"]
    assert record["summary"]["clips"] == 3
    assert stage_record(tmp_path, "codec") is None

    def must_not_run(self):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(Demo, "stage_corpus", must_not_run)
    again = Demo(tmp_path, TINY, progress=False).run(until="corpus")
    assert again["corpus"] == record  # the same record: skipped, not rewritten

    ran = []
    monkeypatch.setattr(Demo, "stage_codec", lambda self: ran.append("codec") or {"ok": 1})
    records = Demo(tmp_path, TINY, progress=False).run(until="codec")
    assert ran == ["codec"] and records["codec"]["summary"] == {"ok": 1}
    assert json.loads((tmp_path / "stages" / "codec.json").read_text())["summary"] == {"ok": 1}
    assert not list((tmp_path / "stages").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_run_dir_belongs_to_one_preset(tmp_path, monkeypatch):
    monkeypatch.setattr(Demo, "stage_corpus", lambda self: {})
    Demo(tmp_path, TINY, progress=False).run(until="corpus")
    with pytest.raises(ValueError, match=r"another preset.*train_steps"):
        Demo(tmp_path, replace(TINY, train_steps=99), progress=False).run(until="corpus")


def test_a_run_made_before_a_preset_field_existed_resumes(tmp_path, monkeypatch):
    """A field added to DemoPreset since a run was made counts as recorded at its default:
    the run resumes (with the new field at another value, or an old field gone, it does not)."""
    monkeypatch.setattr(Demo, "stage_corpus", lambda self: {})
    Demo(tmp_path, TINY, progress=False).run(until="corpus")
    record = json.loads((tmp_path / "demo.json").read_text())
    del record["preset"]["frames_per_latent"]  # as written before the field existed
    (tmp_path / "demo.json").write_text(json.dumps(record))
    Demo(tmp_path, TINY, progress=False).run(until="corpus")
    with pytest.raises(ValueError, match=r"fields differ: \['frames_per_latent'\]"):
        Demo(tmp_path, replace(TINY, frames_per_latent=4), progress=False).run(until="corpus")
    record["preset"]["retired_field"] = 1
    (tmp_path / "demo.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"fields differ: \['retired_field'\]"):
        Demo(tmp_path, TINY, progress=False).run(until="corpus")


def test_preset_overrides_and_errors():
    p = apply_sets(PRESETS["cpu"], ["train_steps=7", "device=auto", "seconds=2.5"])
    assert (p.train_steps, p.device, p.seconds) == (7, "auto", 2.5)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        apply_sets(PRESETS["cpu"], ["nope=1"])
    with pytest.raises(ValueError, match="cannot parse"):
        apply_sets(PRESETS["cpu"], ["train_steps=many"])
    with pytest.raises(ValueError, match="eval_clips"):
        replace(PRESETS["cpu"], eval_clips=99)
    assert apply_sets(PRESETS["cpu"], ["cfg_audio=2"]).cfg_audio == 2.0
    # overrides apply together: shrinking test_clips below the preset's eval_clips is fine
    # when eval_clips shrinks too, in either order; the combination is still validated
    for order in (["test_clips=2", "eval_clips=1"], ["eval_clips=1", "test_clips=2"]):
        assert apply_sets(PRESETS["gpu"], order).test_clips == 2
    with pytest.raises(ValueError, match="eval_clips"):
        apply_sets(PRESETS["gpu"], ["test_clips=2"])
    # what a user types reaches the preset's checks, which name the field
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match=r"DemoPreset\.cfg_struct must be a finite number"):
            apply_sets(PRESETS["cpu"], [f"cfg_struct={bad}"])
    assert demo.main(["--smoke", "--preset", "gpu", "--out", "unused"]) == 2


@pytest.mark.slow
def test_smoke_demo_end_to_end(tmp_path):
    from df_eval.metric_names import AGGREGATE_ONLY, METRICS

    out = tmp_path / "demo"
    assert demo.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    for stage in STAGES:
        assert stage_record(out, stage) is not None, stage
    report = (out / "report.md").read_text()
    for key, _, _ in (*METRICS, *AGGREGATE_ONLY):
        assert f"`{key}`" in report, key
    for label in ("DualForce (trained)", "untrained model (step 0)", "still reference frame"):
        assert label in report
    assert "struct_jaw_corr" in report and "beat" in report
    for variant in ("trained", "untrained", "still"):
        assert list((out / "pred" / variant).glob("clip_*.mp4"))
    generated = stage_record(out, "generate")["summary"]
    for variant in ("trained", "untrained"):  # one sampler for both, the preset's guidance
        assert generated[variant]["sampler"]["cfg_audio"] == PRESETS["smoke"].cfg_audio
        assert generated[variant]["sampler"]["cfg_struct"] == PRESETS["smoke"].cfg_struct
    # the bars, checked and tabulated, and a contact sheet per test clip
    assert "## Bars" in report and "codec held-out PSNR" in report
    assert "bars pass." in report and ("**pass**" in report or "**FAIL**" in report)
    clip = generated["clips"][0]
    sheet = out / "plots" / f"sheet_{clip}.png"
    assert f"plots/sheet_{clip}.png" in report and sheet.is_file()
    from PIL import Image

    with Image.open(sheet) as im:  # 5 rows (reference, truth, 3 variants) of 8 frames, 2x
        size = PRESETS["smoke"].size * 2
        assert im.size == (150 + 8 * size, 5 * size)
    for link in ("plots/sync.png", "plots/train_loss.png", f"plots/pose_{clip}.png"):
        assert link in report and (out / link).is_file()
    # A rerun finds every stage done and changes nothing.
    before = {s: stage_record(out, s) for s in STAGES}
    assert demo.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    assert {s: stage_record(out, s) for s in STAGES} == before


@pytest.mark.slow
def test_temporal_codec_demo_end_to_end(tmp_path):
    """frames_per_latent=4 (the cpu-t4 preset's path, at a tiny scale): the per-frame codec is
    trained, inflated into the temporal codec and trained on windows; the store has 1 + (T-1)/4
    latent frames; the model reads 4 frames' structure per latent frame; generation and the
    evaluation of every variant run; the videos have every frame of the audio."""
    preset = replace(
        TINY,
        name="smoke",
        seconds=1.6,
        frames_per_latent=4,
        codec_steps=5,
        temporal_codec_steps=5,
        train_steps=3,
    )
    records = Demo(tmp_path, preset, progress=False).run(until="evaluate")
    assert records["codec"]["summary"]["frames_per_latent"] == 4
    assert (tmp_path / "codec_frame" / "codec" / "config.json").is_file()
    train = Demo(tmp_path, preset).train_config()
    assert (train.model.frames_per_latent, train.model.struct_raw_dim) == (4, 44)
    from df_data.media import read_video

    clip = records["generate"]["summary"]["clips"][0]
    video, _ = read_video(tmp_path / "pred" / "trained" / f"{clip}.mp4")
    truth, _ = read_video(tmp_path / "corpus" / "test" / clip / "video.mp4")
    assert len(video) == len(truth) == 40
    assert np.isfinite(records["evaluate"]["summary"]["trained"]["metrics"]["sync_corr"])
    assert "cpu-t4" in PRESETS and PRESETS["cpu-t4"].frames_per_latent == 4


def test_bars_pass_and_fail_on_measured_targets():
    from df_eval.demo_bars import check_bars

    def records(id_dist, fd, jitter, sync, offset=0, psnr=28.5):
        metrics = {
            "id_dist": id_dist,
            "fd": fd,
            "jitter": jitter,
            "sync_corr": sync,
            "sync_offset": offset,
        }
        return {
            "codec": {"summary": {"heldout_psnr_db": psnr}},
            "evaluate": {
                "summary": {
                    "trained": {"metrics": metrics},
                    "ground_truth": {"metrics": {"id_dist": 0.05, "jitter": 0.5}},
                    "still": {"metrics": {"fd": 20.0}},
                }
            },
        }

    good = check_bars("cpu", records(0.07, 19.0, 1.4, 0.75))
    assert [r["passed"] for r in good] == [True] * 6
    assert good[1]["target"] == pytest.approx(0.075)  # 1.5x the ground truth's, measured
    bad = check_bars("cpu", records(0.08, 21.0, 1.6, 0.65, offset=-1, psnr=27.9))
    assert [r["passed"] for r in bad] == [False] * 6
    # the GPU bars are stricter: what passes on the CPU fails there
    assert [r["passed"] for r in check_bars("gpu", records(0.07, 19.0, 1.4, 0.75))][1:5] == [
        False,
        False,
        False,
        False,
    ]
    assert check_bars("smoke", records(0.07, 19.0, 1.4, 0.75)) == good
    missing = records(0.07, 19.0, 1.4, 0.75)
    del missing["evaluate"]["summary"]["ground_truth"]
    assert check_bars("cpu", missing)[1]["passed"] is None


def test_contact_sheet_lays_out_rows_of_frames(tmp_path):
    from PIL import Image

    from df_eval.report import contact_sheet

    video = np.zeros((20, 8, 8, 3), np.uint8)
    video[:, :, :, 0] = np.arange(20)[:, None, None] * 10  # red ramps with time
    path = contact_sheet({"a": video, "b": video[0]}, tmp_path / "s.png", frames=4, scale=1)
    with Image.open(path) as im:
        sheet = np.asarray(im.convert("RGB"))
    assert sheet.shape == (16, 150 + 32, 3)
    reds = sheet[4, 150 + 4 :: 8, 0]
    assert list(reds) == [0, 60, 130, 190]  # frames 0, 6, 13, 19
    assert (sheet[12, 150:, 0] == 0).all()  # the single image is repeated
    with pytest.raises(ValueError, match="frame size"):
        contact_sheet({"a": video, "b": np.zeros((4, 4, 3), np.uint8)}, tmp_path / "t.png")


def test_margins_say_how_much_of_the_gap_is_closed():
    from df_eval.demo_report import margins

    rows = [
        (
            "sync_corr",
            "",
            "higher",
            {"trained": 0.5, "still": 0.1, "untrained": 0.5, "ground_truth": 0.9},
        ),
        (
            "sync_rmse",
            "",
            "lower",
            {"trained": 0.3, "still": 0.2, "untrained": None, "ground_truth": 0.1},
        ),
    ]
    lines = margins(rows)
    assert "beats it by 0.4, 50% of the gap to the ground-truth video" in lines[0]
    assert lines[1].endswith("ties with it, 0% of the gap to the ground-truth video")
    assert "does NOT beat it by 0.1, -100% of the gap" in lines[2]
    assert len(lines) == 3
