"""The inference bundle round-trips and rejects incomplete or malformed directories by name."""

import json

import pytest
import torch

from df_core import FPS, SIGMA_S_MAX
from df_models.bundle import InferenceMeta, read_bundle, save_bundle
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug
from df_models.config import tiny
from df_models.dit import DualForceDiT
from df_models.testing import random_model


def _meta(**kw):
    base = dict(
        audio_encoder={"name": "logmel", "config_hash": "abc"},
        image_size=(32, 32),
        struct_names=("a", "b"),
        struct_mean=(0.0, 1.0),
        struct_std=(1.0, 2.0),
        noise_shift=2.0,
    )
    return InferenceMeta(**{**base, **kw})


def test_round_trip(tmp_path):
    model = random_model(tiny(), seed=3)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    meta = _meta(extra={"recipe": "x", "step": 7})
    save_bundle(tmp_path / "b", model, codec, meta)
    model_dir, codec_dir, meta2 = read_bundle(tmp_path / "b")
    assert meta2 == meta
    loaded = DualForceDiT.from_pretrained(model_dir)
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    assert TinyAutoencoder.from_pretrained(codec_dir).config == codec.config
    # A codec given as a directory is copied.
    save_bundle(tmp_path / "c", model, codec_dir, meta)
    assert read_bundle(tmp_path / "c")[2] == meta


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_bundle(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match=r"inference\.json"):
        read_bundle(tmp_path / "d")
    (tmp_path / "d" / "inference.json").write_text(json.dumps(_meta().to_dict()))
    with pytest.raises(ValueError, match=r"model has no config\.json"):
        read_bundle(tmp_path / "d")
    (tmp_path / "d" / "inference.json").write_text(
        json.dumps({"audio_encoder": {"name": "x"}, "image_size": [8, 8], "bogus": 1})
    )
    with pytest.raises(ValueError, match="unknown fields \\['bogus'\\]"):
        read_bundle(tmp_path / "d")
    with pytest.raises(ValueError, match="image_size"):
        _meta(image_size=(0, 3))
    with pytest.raises(ValueError, match="struct_std"):
        _meta(struct_std=(1.0, -1.0))
    with pytest.raises(ValueError, match="together"):
        _meta(struct_std=None)


def test_recommended_sampler_round_trips_and_old_bundles_load(tmp_path):
    model = random_model(tiny(), seed=3)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    meta = _meta(sampler={"steps": 4, "cfg_audio": 2.0, "cfg_struct": None, "clean_pass": "exact"})
    save_bundle(tmp_path / "b", model, codec, meta)
    assert read_bundle(tmp_path / "b")[2].sampler == meta.sampler
    # A bundle written before inference.json had a sampler: no recommendation, same settings.
    path = tmp_path / "b" / "inference.json"
    old = json.loads(path.read_text())
    del old["sampler"]
    path.write_text(json.dumps(old))
    loaded = read_bundle(tmp_path / "b")[2]
    assert loaded.sampler == {} and loaded.noise_shift == 2.0
    # Defaults: the project's conventions.
    bare = InferenceMeta(audio_encoder={"name": "x"}, image_size=(8, 8))
    assert (bare.fps, bare.sigma_s_max) == (FPS, SIGMA_S_MAX)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"sampler": ["steps", 4]}, "InferenceMeta.sampler"),
        ({"sampler": {"steps": [4]}}, "InferenceMeta.sampler"),
        ({"sampler": {4: "steps"}}, "InferenceMeta.sampler"),
        ({"noise_shift": 0.0}, "InferenceMeta.noise_shift"),
        ({"sigma_s_max": 1.5}, "InferenceMeta.sigma_s_max"),
        ({"sigma_ctx": -0.1}, "InferenceMeta.sigma_ctx"),
        ({"fps": 0}, "InferenceMeta.fps"),
    ],
)
def test_bad_fields_are_named(kw, field):
    with pytest.raises(ValueError, match=field):
        _meta(**kw)
