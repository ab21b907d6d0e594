"""`dualforce train --slurm/--local` checks the run before submitting it, and says in one line
when the machine has no SLURM."""

from __future__ import annotations

import pytest

from df_train.cli import main
from df_train.config import apply_overrides
from df_train.preflight import check_run
from df_train.recipes import get_recipe


def _train(*args):
    return main(["--recipe", "synthtalk_tiny", *args])


def test_a_missing_store_is_named_before_anything_is_submitted(tmp_path, capsys):
    rc = _train("--set", "data.store=/missing", "--out", str(tmp_path / "run"), "--slurm")
    err = capsys.readouterr().err
    assert rc == 2
    assert "data.store='/missing' does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no submitit folder, nothing queued


def test_off_a_cluster_slurm_is_one_line_pointing_at_local(
    tiny_store, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    rc = _train("--set", f"data.store={tiny_store}", "--out", str(tmp_path / "run"), "--slurm")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "no SLURM on this machine" in err[0] and "--local" in err[0]


def test_both_executors_are_refused(tiny_store, tmp_path, capsys):
    rc = _train("--set", f"data.store={tiny_store}", "--slurm", "--local")
    assert rc == 2 and "choose one" in capsys.readouterr().err


def test_the_check_finds_the_store_clips_and_codec(tiny_store, tmp_path):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={tiny_store}", f"out_dir={tmp_path}/r"]
    )
    found = check_run(config)
    assert found["clips"] > 0
    with pytest.raises(ValueError, match=r"model\.struct_raw_dim"):
        check_run(apply_overrides(config, ["model.struct_raw_dim=3"]))
    wrong = apply_overrides(config, [f"data.codec_dir={tmp_path}/nowhere"])
    with pytest.raises(ValueError, match="does not exist"):
        check_run(wrong)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="manifest"):
        check_run(apply_overrides(config, [f"data.store={empty}"]))
