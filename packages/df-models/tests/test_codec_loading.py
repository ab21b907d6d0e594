"""Codec loading and identity (``df_models.codecs.loading``): a saved codec comes back as the
same codec, and its identity (recorded in every clip store and bundle) is stable."""

from __future__ import annotations

import json

import pytest
import torch

from df_models.codecs import (
    TinyAutoencoder,
    codec_identity,
    load_codec,
    tiny_autoencoder_debug,
    weights_hash,
)
from df_models.io import config_hash

# Pinned: stores and bundles written earlier record these hashes, so the hashing must not
# change (a change would make every existing store "another codec").
LINEAR_WEIGHTS_HASH = "6567a46c185d0de4db7eca21650cc58991512fc578e121c462b1c0b3adeab2f5"
CONFIG_HASH = "253252306831c7a53e616d2fac19ec1f21555d2c739d3366d5fa6399d3cce7be"
DEBUG_CODEC_CONFIG_HASH = "24c46e92fc375c008f5f109ee51b7035b09f6faa5674bf5f431b75b2e70ae797"


def _linear() -> torch.nn.Linear:
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6.0).reshape(3, 2))
        lin.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    return lin


def _codec(seed: int = 0) -> TinyAutoencoder:
    torch.manual_seed(seed)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.set_normalization([0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 1.5])
    return codec.eval()


def test_hashes_are_pinned():
    assert weights_hash(_linear()) == LINEAR_WEIGHTS_HASH
    assert config_hash({"b": [1.5, "x"], "a": 1}) == CONFIG_HASH  # key order does not matter
    assert codec_identity(_codec())["config_hash"] == DEBUG_CODEC_CONFIG_HASH


def test_weights_hash_sees_every_byte_dtype_and_name():
    base = weights_hash(_linear())
    changed = _linear()
    with torch.no_grad():
        changed.bias[1] = torch.finfo(torch.float32).tiny  # one value, one bit pattern
    assert weights_hash(changed) != base
    assert weights_hash(_linear().half()) != base
    renamed = torch.nn.Sequential(_linear())  # same tensors under "0.weight", "0.bias"
    assert weights_hash(renamed) != base


def test_saved_codec_reloads_as_the_same_codec(tmp_path):
    codec = _codec(seed=3)
    codec.save_pretrained(tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    assert isinstance(loaded, TinyAutoencoder) and not loaded.training
    assert codec_identity(loaded) == codec_identity(codec)
    x = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codec.encode(x))
    assert load_codec(codec) is codec  # an object is used as is


def test_identity_tells_codecs_apart(tmp_path):
    a, b = codec_identity(_codec(seed=0)), codec_identity(_codec(seed=1))
    assert a["name"] == b["name"] == "TinyAutoencoder"
    assert a["config_hash"] == b["config_hash"] and a["weights_hash"] != b["weights_hash"]
    renormed = _codec(seed=0)
    renormed.set_normalization([0.0] * 4, [1.0] * 4)  # same weights, other latent statistics
    assert codec_identity(renormed)["weights_hash"] != a["weights_hash"]


def test_load_codec_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_codec(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kind": "Mystery"}))
    with pytest.raises(ValueError, match="cannot tell which codec"):
        load_codec(tmp_path)
