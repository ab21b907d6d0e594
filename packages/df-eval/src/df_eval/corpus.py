"""Reading a SynthTalk corpus for evaluation: clip ids, ground truth, frames, a manifest hash.

A clip id is the name of the clip's directory inside its split, e.g. ``clip_00003`` for
``<corpus>/test/clip_00003/``; a generated video for that clip is ``<pred>/clip_00003.mp4``.

Legend: T frames, H W pixels, Ds structure dimension (11), Di identity dimension.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from df_data.media import read_video
from df_data.synthtalk import IDENTITY_DIM, STRUCT_DIM
from df_data.synthtalk.generate import is_complete

SPLITS = ("train", "test")


@dataclass(frozen=True)
class GroundTruth:
    """One SynthTalk clip's ground truth (what generated frames are scored against)."""

    clip_id: str  # directory name, e.g. "clip_00003"
    directory: Path
    struct: np.ndarray  # float32 [T, Ds], names in STRUCT_NAMES
    identity: np.ndarray  # float32 [Di], Identity.vector()
    identity_seed: int
    size: int  # frame height and width in pixels

    @property
    def frames_count(self) -> int:
        return int(self.struct.shape[0])

    def video(self) -> np.ndarray:
        """The clip's decoded video: uint8 ``[T, H, W, 3]``."""
        frames, _ = read_video(self.directory / "video.mp4")
        return frames


def clip_dirs(corpus_dir: str | Path, split: str) -> dict[str, Path]:
    """Complete clip directories of ``split`` keyed by clip id (sorted)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(corpus_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: SynthTalk corpus directory does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(
            f"{split_dir}: the corpus has no {split!r} split (not a SynthTalk corpus?)"
        )
    dirs = {d.name: d for d in sorted(split_dir.iterdir()) if d.is_dir() and is_complete(d)}
    if not dirs:
        raise ValueError(f"{split_dir}: holds no complete SynthTalk clips")
    return dirs


def load_ground_truth(directory: str | Path) -> GroundTruth:
    """Reads ``gt.safetensors`` and ``metadata.json`` of one clip directory."""
    directory = Path(directory)
    path = directory / "gt.safetensors"
    if not path.is_file():
        raise ValueError(f"{path}: missing (not a SynthTalk clip directory)")
    tensors = load_file(str(path))
    for key, dim in (("struct", STRUCT_DIM), ("identity", IDENTITY_DIM)):
        if key not in tensors:
            raise ValueError(f"{path}: has no tensor {key!r}")
        if tensors[key].shape[-1] != dim:
            raise ValueError(
                f"{path}: {key!r} has shape {tensors[key].shape}, last dim must be {dim}"
            )
    meta = json.loads((directory / "metadata.json").read_text())
    return GroundTruth(
        clip_id=directory.name,
        directory=directory,
        struct=tensors["struct"].astype(np.float32),
        identity=tensors["identity"].astype(np.float32),
        identity_seed=int(meta["identity_seed"]),
        size=int(meta["size"]),
    )


def manifest_hash(corpus_dir: str | Path) -> str:
    """A short hash of the corpus contents: every clip's relative path, ``metadata.json`` and
    ``gt.safetensors`` bytes (the generator is deterministic in the metadata, so this identifies
    the frames without hashing every mp4)."""
    root = Path(corpus_dir)
    h = hashlib.sha256()
    for split in SPLITS:
        for clip_id, d in clip_dirs(root, split).items():
            h.update(f"{split}/{clip_id}\n".encode())
            h.update((d / "metadata.json").read_bytes())
            h.update(hashlib.sha256((d / "gt.safetensors").read_bytes()).digest())
    return h.hexdigest()[:16]
