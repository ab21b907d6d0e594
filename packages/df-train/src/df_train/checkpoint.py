"""Checkpoints with ``torch.distributed.checkpoint`` (DCP), written atomically, last k kept.

A checkpoint is the directory ``<out>/checkpoints/step_<N>``. It is written under a temporary
name and renamed only when complete, so a run killed mid-write leaves the previous checkpoint
as the newest usable one. DCP shards model and optimiser state across ranks (FSDP2) and
reshards on load; it also works in a single process.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

log = logging.getLogger(__name__)
PREFIX = "step_"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / ".metadata").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(state: dict, out_dir: str | Path, step: int, *, keep_last: int) -> Path:
    """Saves ``state`` (a DCP state dict) as checkpoint ``step``; prunes to ``keep_last``."""
    root = checkpoint_root(out_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", final)
    _barrier()
    return final


def load_checkpoint(state: dict, path: str | Path) -> None:
    """Loads checkpoint ``path`` into ``state`` in place (tensors are filled, others replaced)."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no .metadata)")
    dcp.load(state, checkpoint_id=str(path))
