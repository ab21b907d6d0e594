"""Loading a frozen pretrained encoder with transformers: from a hub id (optionally at a
revision) or a local folder, and the identity of the weights it loaded.

A *folder* (an existing directory, or anything that looks like a path) is loaded with
``local_files_only=True``; a hub id is too when ``HF_HUB_OFFLINE`` is set, so nothing here
downloads in an offline environment. Every failure is a ValueError naming the source and the
file (``config.json``, ``preprocessor_config.json``, the weights) or the field
(``model_type``) that is wrong.

The weights' identity is :func:`weights_sha256`, a sha256 over the loaded state dict (names,
dtypes, shapes, bytes). It does not depend on the file format (``model.safetensors`` or
``pytorch_model.bin``), on sharding or on where the files lie, so a store extracted from a hub
id and a bundle generating from a copy of the same weights in a folder agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True, slots=True)
class Source:
    """Where an encoder's files come from: ``model`` a hub id or a folder, ``revision`` (hub
    ids only: a branch, tag or commit)."""

    model: str
    revision: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"the encoder's model must be a hub id or a folder, got {self.model!r}"
            )
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"revision must be a non-empty string or None, got {self.revision!r}")
        if self.is_folder and self.revision is not None:
            raise ValueError(
                f"revision {self.revision!r} was given for the folder {self.model!r}: a "
                "revision selects a hub version; a folder holds one"
            )

    @property
    def is_folder(self) -> bool:
        # Hub ids are "name" or "org/name"; anything else path-like is a folder.
        m = self.model
        return Path(m).expanduser().is_dir() or m.startswith((".", "/", "~")) or m.count("/") > 1

    def kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments (besides the path)."""
        offline = self.is_folder or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        out: dict[str, Any] = {"local_files_only": offline}
        if self.revision is not None:
            out["revision"] = self.revision
        return out

    def describe(self) -> str:
        if self.is_folder:
            return f"folder {self.model!r}"
        at = f" at revision {self.revision!r}" if self.revision else ""
        return f"hub id {self.model!r}{at}"

    def path(self) -> str:
        return str(Path(self.model).expanduser()) if self.is_folder else self.model


def check_folder(source: Source, *, preprocessor: bool) -> None:
    """For a folder: it exists and holds ``config.json``, weights and (if asked) the
    preprocessor config; ValueError naming the missing file."""
    if not source.is_folder:
        return
    folder = Path(source.path())
    if not folder.is_dir():
        raise ValueError(f"encoder folder {str(folder)!r} does not exist")
    needed = [CONFIG_NAME] + ([PREPROCESSOR_NAME] if preprocessor else [])
    for name in needed:
        if not (folder / name).is_file():
            raise ValueError(
                f"encoder folder {str(folder)!r} has no {name} (a transformers folder written "
                "by save_pretrained holds config.json, the weights and preprocessor_config.json)"
            )
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        raise ValueError(f"encoder folder {str(folder)!r} has no weights (one of {WEIGHT_NAMES})")


def load_config(source: Source, allowed: dict[str, str]) -> Any:
    """The model's transformers config, checked: ``config.json``'s ``model_type`` must be one
    of ``allowed`` (model_type -> what it is, for the message)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path(), **source.kwargs())
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {CONFIG_NAME} of {source.describe()}: {e}") from e
    model_type = getattr(config, "model_type", None)
    if model_type not in allowed:
        raise ValueError(
            f"{CONFIG_NAME} of {source.describe()} has model_type {model_type!r}; expected one "
            f"of {sorted(allowed)} ({', '.join(sorted(set(allowed.values())))})"
        )
    return config


def load_pretrained(cls: Any, source: Source, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` in eval mode with gradients off; ValueError naming the
    source when its files cannot be read."""
    try:
        model = cls.from_pretrained(source.path(), **source.kwargs(), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"cannot load {cls.__name__} weights of {source.describe()}: {type(e).__name__}: {e}"
        ) from e
    model.eval().requires_grad_(False)
    return model


def load_processor(cls: Any, source: Source) -> Any:
    """The preprocessor (feature extractor / image processor) of ``source``."""
    try:
        return cls.from_pretrained(source.path(), **source.kwargs())
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(
            f"cannot read {PREPROCESSOR_NAME} of {source.describe()} as a {cls.__name__}: {e}"
        ) from e


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
