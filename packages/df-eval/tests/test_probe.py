"""The probe: held-out accuracy within the stated bound, cache reuse, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from df_data.synthtalk import STRUCT_NAMES
from df_eval.corpus import clip_dirs, load_ground_truth
from df_eval.probe import CACHE_DIR, Probe, ProbeConfig, probe_key, train_probe

# The stated bound for the tests' budget (300 steps on 20 training speakers, 1 s clips): on
# held-out speakers the jaw opening is read with R² > 0.6 and RMSE < 0.15 (jaw units [0, 1]),
# the horizontal head position with R² > 0.3, and two frames of different speakers are on
# average more than twice as far apart in identity space as two frames of one speaker.
JAW_R2, JAW_RMSE, TX_R2, SEPARATION = 0.6, 0.15, 0.3, 2.0


def test_heldout_error_within_bound(probe):
    held = probe.info["heldout"]
    assert set(held["struct"]) == set(STRUCT_NAMES)
    assert held["struct"]["jaw"]["r2"] > JAW_R2
    assert held["struct"]["jaw"]["rmse"] < JAW_RMSE
    assert held["struct"]["tx"]["r2"] > TX_R2
    assert held["identity"]["separation"] > SEPARATION
    assert held["frames"] == 8 * 25


def test_probe_is_cached_beside_the_corpus_and_reused(corpus, probe, probe_config):
    key = probe_key(corpus, probe_config)
    directory = corpus / CACHE_DIR / key
    assert probe.directory == directory
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
    config = json.loads((directory / "config.json").read_text())
    assert config["kind"] == "SynthTalkProbe" and config["config"]["steps"] == probe_config.steps
    again = Probe.from_pretrained(directory)
    frames = load_ground_truth(next(iter(clip_dirs(corpus, "test").values()))).video()
    a, b = probe.predict(frames), again.predict(frames)
    np.testing.assert_array_equal(a.struct, b.struct)
    np.testing.assert_array_equal(a.features, b.features)
    assert again.info["heldout"]["struct"]["jaw"] == probe.info["heldout"]["struct"]["jaw"]
    # Another config or another corpus gets another key.
    assert probe_key(corpus, ProbeConfig(steps=301)) != key


def test_training_is_deterministic(corpus):
    config = ProbeConfig(steps=3, batch_size=8, max_train_frames=64, augment=True)
    a, b = (train_probe(corpus, config, progress=False) for _ in range(2))
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    c = train_probe(
        corpus, ProbeConfig(steps=3, batch_size=8, max_train_frames=64, seed=1), progress=False
    )
    assert not torch.equal(a.net.feature.weight, c.net.feature.weight)


def test_bad_inputs_are_named(tmp_path, probe):
    with pytest.raises(ValueError, match="uint8"):
        probe.predict(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="does not exist"):
        clip_dirs(tmp_path / "nowhere", "test")
    with pytest.raises(ValueError, match=r"config\.json"):
        Probe.from_pretrained(tmp_path)
