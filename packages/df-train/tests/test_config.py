"""df-train's configs: frozen, keyword-only, slotted dataclasses whose errors name the field;
``--set`` reaches every field of every recipe; knobs that would do nothing are refused."""

from __future__ import annotations

import dataclasses

import pytest

from df_train.config import (
    DataConfig,
    LossConfig,
    NoiseConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
)
from df_train.lipsync import LipSyncConfig
from df_train.parallel import ParallelConfig
from df_train.recipes import RECIPES, get_recipe

CONFIGS = (DataConfig, NoiseConfig, LossConfig, OptimConfig, TrainConfig, ParallelConfig)
CONFIGS += (LipSyncConfig,)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_configs_are_frozen_keyword_only_and_slotted(cls):
    config = cls()
    first = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))
    with pytest.raises(TypeError):  # no positional construction
        cls(getattr(config, first))
    assert not hasattr(config, "__dict__")  # slots: no stray attributes
    assert dataclasses.replace(config) == config


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (DataConfig, "frames", 0),
        (DataConfig, "num_workers", -1),
        (NoiseConfig, "sigma_s_max", 1.5),
        (NoiseConfig, "temporal", "reverse"),
        (LossConfig, "mouth_weight", 0.5),
        (LossConfig, "lambda_lip", float("inf")),
        (OptimConfig, "lr", 0.0),
        (TrainConfig, "grad_accum", 0),
        (TrainConfig, "precision", "fp16"),
        (ParallelConfig, "fsdp", 1),
        (LipSyncConfig, "temperature", 0.0),
        (LipSyncConfig, "audio_pool", "max"),
    ],
)
def test_replace_revalidates_and_names_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}"):
        dataclasses.replace(cls(), **{field: value})


def _leaves(config, prefix: str = ""):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_field_of_every_recipe_round_trips_through_set(name):
    """``--set key=value`` with each field's own value (printed as a user would type it)
    gives back the same config: every field, nested ones included, is reachable and parsed
    by its type."""
    config = RECIPES[name]()
    assert config.name == name
    sets = []
    for key, value in _leaves(config):
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        sets.append(f"{key}={text}")
    assert apply_overrides(config, sets) == config


def test_lip_sync_options_are_reachable_from_the_loss_config():
    config = apply_overrides(
        get_recipe("synthtalk_tiny"), ["loss.lip.embed_dim=32", "loss.lip.audio_pool=mean"]
    )
    assert (config.loss.lip.embed_dim, config.loss.lip.audio_pool) == (32, "mean")
    with pytest.raises(ValueError, match=r"LipSyncConfig\.min_shift"):
        apply_overrides(config, ["loss.lip.min_shift=0"])


def test_reference_dropout_without_reference_tokens_is_refused():
    config = get_recipe("synthtalk_tiny")
    assert not config.model.ref_tokens_enabled
    with pytest.raises(ValueError, match=r"ref_drop_prob.*ref_tokens_enabled=False"):
        apply_overrides(config, ["loss.ref_drop_prob=0.05"])


def test_sigma_s_max_defaults_to_the_convention():
    from df_core import SIGMA_S_MAX

    assert NoiseConfig().sigma_s_max == SIGMA_S_MAX
