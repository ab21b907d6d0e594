"""The diffusers-style save/load convention: ``config.json`` + ``model.safetensors`` in a directory.

``save_pretrained(module, config, dir)`` writes both files atomically (temporary names, then
rename), so an interrupted save never leaves a half-written model where a good one was.
``load_pretrained_state(module, dir)`` loads the weights strictly: missing or unexpected keys
and shape mismatches are errors that name the keys and the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from df_models.io import atomic_path, read_json_object, write_json_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(
    module: torch.nn.Module, config: Mapping[str, Any], directory: str | Path
) -> Path:
    """Writes ``config.json`` (with a ``"kind"`` naming the class) and ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(directory / CONFIG_NAME, dict(config))
    return directory


def read_config(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Reads ``config.json``; with ``kind``, checks it was written for that class."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist: not a directory written by save_pretrained")
    config = read_json_object(path)
    if kind is not None and config.get("kind") != kind:
        raise ValueError(f"{path} field 'kind' is {config.get('kind')!r}, expected {kind!r}")
    return config


def load_pretrained_state(
    module: torch.nn.Module, directory: str | Path, *, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """Loads ``model.safetensors`` into ``module`` (which may live on the meta device) strictly."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    state = load_file(str(path), device=str(device))
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise ValueError(f"{path}: shape mismatches: {bad[:10]}")
    module.load_state_dict(state, strict=True, assign=True)
    return module
