"""``dualforce demo``: stage records and resumption (fast), and the smoke run end to end (slow:
it is what CI runs, a few minutes on two cores)."""

from __future__ import annotations

import json
from dataclasses import replace

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
    for link in ("plots/sync.png", "plots/train_loss.png"):
        assert link in report and (out / link).is_file()
    # A rerun finds every stage done and changes nothing.
    before = {s: stage_record(out, s) for s in STAGES}
    assert demo.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    assert {s: stage_record(out, s) for s in STAGES} == before


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
