"""``dualforce ablate`` at the smoke scale: the table, the reading and the plots exist; a
finished variant is not trained again; every variant's config differs from the full model's
only where it says; a variant equal to another is trained once; bad names are clear errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from df_eval import ablate
from df_eval.ablate import PRESETS, Ablation, config_diff, main


def test_variant_configs_differ_from_full_only_where_named(tmp_path):
    ab = Ablation(tmp_path / "a", PRESETS["cpu"])
    full = ab.variant_config(ablate.variants(ab.full_config)["full"], 0)
    assert full.loss.lambda_lip == 0.05 and full.loss.lambda_aux == 0.1  # both losses on
    names = set()
    for v in ab.variants:
        diff = config_diff(full, ab.variant_config(v, 0))
        named = {s.split("=", 1)[0] for s in v.sets}
        # A change to the value the full model already has is no change.
        assert set(diff) <= named, (v.name, diff)
        names.add(v.name)
        assert (
            set(diff) == named
            or v.name in ("full", "sigma_s_0.7", "struct_tokens_4")
            or (v.name.startswith("fusion_"))
        ), (v.name, diff)
    assert {"no_struct", "struct_to_video", "no_bridge", "no_lip", "no_aux"} <= names
    assert config_diff(full, ab.variant_config(ab.variants[0], 1)) == {"seed": (0, 1)}
    # The demo's 4-block video stream (2 structure blocks): fusion at 1/5, 2/5, 3/5 of the depth.
    assert [ablate.fusion_blocks(full, k) for k in (1, 2, 3)] == [1, 2, 2]


def test_bad_variant_names_and_seeds_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['no_such'\]; known: \['full'"):
        Ablation(tmp_path, PRESETS["smoke"], variant_names=["no_struct", "no_such"])
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--variants", "nope"]) == 2
    assert "unknown variant(s) ['nope']" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(ValueError, match="long_frames"):
        ablate.AblatePreset(
            name="x", demo="smoke", train_steps=1, eval_clips=1, long_clips=1, long_frames=(2,)
        )


def test_smoke_table_reading_plots_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "ab"
    names = ["no_struct", "struct_tokens_4"]  # struct_tokens_4 is the full model's own config
    # Two trainings (full, no_struct) at once, each in its own process.
    path = Ablation(out, PRESETS["smoke"], variant_names=names, progress=False).run(jobs=2)
    text = path.read_text()
    assert "| full | (none) |" in text and "| no_struct | `model.struct_enabled=false` |" in text
    assert "(= `full`)" in text  # trained once
    assert (out / "plots" / "drift.png").stat().st_size > 0
    assert (out / "plots" / "lengths.png").stat().st_size > 0
    table = json.loads((out / "ablation.json").read_text())["table"]
    assert set(table) == {"full", "no_struct", "struct_tokens_4"}
    row = table["no_struct"]
    assert set(row["reading"]) == {"sync_corr", "id_dist", "fd", "jitter", "pose_err", "id_dist@16"}
    for key in ("id_dist@8", "id_dist@16", "jitter@16", "pose_err@8", "sync_corr"):
        assert {"mean", "spread", "over"} <= set(row[key])
    assert not (out / "variants" / "struct_tokens_4").exists()
    assert "reading" not in table["struct_tokens_4"]  # it is the full model: nothing to compare
    # A rerun trains, generates and scores nothing again.
    for stage in ("_train", "_generate", "_evaluate"):
        monkeypatch.setattr(Ablation, stage, lambda *a, **k: pytest.fail("ran again"))
    before = (out / "variants" / "full" / "stages" / "train.json").read_text()
    Ablation(out, PRESETS["smoke"], variant_names=names, progress=False).run()
    assert (out / "variants" / "full" / "stages" / "train.json").read_text() == before
    # More seeds train only the new seed's runs; the table then spreads over seeds.
    monkeypatch.undo()
    trained = []
    original = Ablation._train

    def counting(self, out, config):
        trained.append((out.name, config.seed))
        return original(self, out, config)

    monkeypatch.setattr(Ablation, "_train", counting)
    two = replace(PRESETS["smoke"], seeds=(0, 1))
    Ablation(out, two, variant_names=["no_struct"], progress=False).run()
    assert sorted(trained) == [("full__seed1", 1), ("no_struct__seed1", 1)]
    assert (out / "variants" / "full" / "stages" / "train.json").read_text() == before
    table = json.loads((out / "ablation.json").read_text())["table"]
    assert table["no_struct"]["sync_corr"]["over"] == "seeds"
    # The directory belongs to its preset.
    with pytest.raises(ValueError, match="another ablation preset"):
        Ablation(out, PRESETS["cpu"], variant_names=["no_struct"], progress=False).prepare()
