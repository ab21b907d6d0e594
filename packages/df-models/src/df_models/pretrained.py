"""The diffusers-style save/load convention: ``config.json`` + ``model.safetensors`` in a directory.

``save_pretrained(module, config, dir)`` writes both files atomically (temporary names, then
rename), so an interrupted save never leaves a half-written model where a good one was.
``load_pretrained_state(module, dir)`` loads the weights strictly: missing or unexpected keys
and shape mismatches are errors that name the keys and the file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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
    check_state_dict(module.state_dict(), state, str(path))
    module.load_state_dict(state, strict=True, assign=True)
    return module


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    optional: Collection[str] = (),
    error: type[Exception] = ValueError,
) -> None:
    """Strict loading's check, for every weights file we read: ``state`` holds every key of
    ``expected`` (but those in ``optional``), no other key, each with the model's shape; else
    ``error`` naming ``source`` (the file) and the first offending keys."""
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise error(
            f"{source}: missing keys {missing[:8]} ({len(missing)} in all), unexpected keys "
            f"{unexpected[:8]} ({len(unexpected)} in all)"
        )
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise error(f"{source}: shape mismatches {bad[:8]} ({len(bad)} in all)")
