"""The diffusers-style save/load convention: ``config.json`` + ``model.safetensors`` in a directory.

``save_pretrained(module, config, dir)`` writes both files atomically (temporary names, then
rename), so an interrupted save never leaves a half-written model where a good one was.
``load_pretrained_state(module, dir)`` loads the weights strictly: missing or unexpected keys
and shape mismatches are errors that name the keys and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_pretrained(
    module: torch.nn.Module, config: Mapping[str, Any], directory: str | Path
) -> Path:
    """Writes ``config.json`` (with a ``"kind"`` naming the class) and ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    _atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    text = json.dumps(dict(config), indent=2, sort_keys=True)
    _atomic_write_bytes(directory / CONFIG_NAME, lambda p: p.write_text(text))
    return directory


def read_json_object(path: str | Path, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """A JSON file holding an object; ``error`` (a ValueError) names the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
