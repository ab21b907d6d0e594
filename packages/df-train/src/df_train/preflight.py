"""Checks before a training job is submitted: what the job would find at its start, found now.

A SLURM job may wait hours in the queue; a missing store or codec found only when it starts
wastes that wait. :func:`check_run` opens the store as the trainer would (manifest, windows,
structure statistics; latents, audio, encoders and reference tokens against the model), locates the codec the bundle will need and checks that the run
directory can be written, all without building the model. :func:`require_slurm` says in one
line when the machine has no SLURM to submit to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from df_data.store import read_metadata
from df_train.config import TrainConfig
from df_train.export import codec_dir_for
from df_train.trainer import check_store_matches_model, window_dataset


def check_run(config: TrainConfig) -> dict[str, Any]:
    """Raises ``ValueError`` naming the field and path for what a job of ``config`` would fail
    on at its start; returns what it found (training clips, codec directory)."""
    store = Path(config.data.store)
    if not config.data.store:
        raise ValueError("data.store is not set: pass --set data.store=DIR")
    if not store.is_dir():
        raise ValueError(
            f"data.store={str(store)!r} does not exist: expected a directory written by "
            "`dualforce data extract`"
        )
    dataset = window_dataset(config)
    check_store_matches_model(config, dataset)
    codec = codec_dir_for(config, read_metadata(store, dataset.entries[0]["clip_id"]))
    out = Path(config.out_dir).resolve()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir={str(out)!r}: {existing} is not a writable directory")
    return {"clips": len(dataset), "codec_dir": str(codec), "out_dir": str(out)}


def require_slurm() -> None:
    """``ValueError`` when this machine cannot submit SLURM jobs (no ``sbatch`` on PATH)."""
    if shutil.which("sbatch") is None:
        raise ValueError(
            "--slurm: no SLURM on this machine (sbatch is not on PATH); use --local for "
            "submitit's local executor, or neither flag to train in this process"
        )
