"""The bundle records the sampler it recommends (``export_bundle(..., sampler=...)``), and a
bundle exported without one recommends nothing."""

from __future__ import annotations

import dataclasses

from df_models.bundle import read_bundle
from df_train.config import apply_overrides
from df_train.export import export_bundle
from df_train.recipes import get_recipe
from df_train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class _Sampler:  # any dataclass of sampler fields (df_infer.SamplerConfig in practice)
    steps: int = 4
    cfg_audio: float = 2.0
    shift: float | None = None  # left to the bundle: not recorded


def test_export_bundle_records_the_recommended_sampler(tiny_store, tmp_path):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={tiny_store}", f"out_dir={tmp_path}"]
    )
    trainer = Trainer(dataclasses.replace(config, steps=1))
    recommended = {"steps": 3, "cfg_audio": 2.5, "cfg_struct": 1.0}
    meta = read_bundle(export_bundle(trainer, tmp_path / "b1", sampler=recommended))[2]
    assert meta.sampler == recommended
    meta = read_bundle(export_bundle(trainer, tmp_path / "b2", sampler=_Sampler()))[2]
    assert meta.sampler == {"steps": 4, "cfg_audio": 2.0}
    assert read_bundle(export_bundle(trainer, tmp_path / "b3"))[2].sampler == {}
