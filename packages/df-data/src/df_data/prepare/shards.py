"""``--slurm --array N``: the inputs split over a submitit job array, one shard per task.

Task ``i`` of ``N`` prepares inputs ``i, i + N, ...`` (``prepare_corpus(shard=(i, N))``) into
the same output folder: clip folders and input records are disjoint between shards, and
``failures.jsonl``/``summary.json`` are rebuilt from all records present by every task at its
end (the last task to finish sees them all; ``summarise`` rebuilds them at any time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from df_core.checks import positive_int
from df_data.prepare.config import PrepareConfig
from df_data.prepare.run import prepare_corpus, summarise


def _task(src: str, out: str, cfg: PrepareConfig, index: int, count: int) -> dict[str, Any]:
    return prepare_corpus(src, out, cfg, shard=(index, count), progress=False)


def slurm_executor(
    folder: str | Path,
    *,
    partition: str | None,
    array_parallelism: int,
    time_min: int = 24 * 60,
    cpus_per_task: int = 4,
    account: str | None = None,
    gpus_per_task: int = 0,
    name: str = "dualforce-prepare",
) -> submitit.Executor:
    """A submitit SLURM executor (logs under ``folder``): CPU tasks, or ``gpus_per_task`` GPUs
    each (extraction, ``df_data.extract_run``)."""
    if not partition:
        raise ValueError("--partition is required with --slurm")
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    extra = {"account": account} if account else {}
    if gpus_per_task:
        extra["gpus_per_task"] = gpus_per_task
    executor.update_parameters(
        slurm_partition=partition,
        slurm_array_parallelism=array_parallelism,
        timeout_min=time_min,
        cpus_per_task=cpus_per_task,
        tasks_per_node=1,
        nodes=1,
        slurm_additional_parameters=extra,
        name=name,
    )
    return executor


def submit_shards(
    src: str | Path,
    out: str | Path,
    cfg: PrepareConfig,
    array: int,
    executor: submitit.Executor,
) -> list[submitit.Job]:
    """Submits ``array`` tasks (module doc); returns their jobs."""
    positive_int("array", array)
    Path(out).mkdir(parents=True, exist_ok=True)
    n = range(array)
    return executor.map_array(
        _task, [str(src)] * array, [str(out)] * array, [cfg] * array, list(n), [array] * array
    )


def wait_and_summarise(jobs: list[submitit.Job], out: str | Path) -> dict[str, Any]:
    """Waits for every task (raising the first task's error) and rebuilds the summary."""
    for job in jobs:
        job.result()
    return summarise(out)
