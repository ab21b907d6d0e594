"""Launching training through submitit: SLURM (``--slurm``) or its local executor (``--local``).

The submitted callable is a :class:`TrainJob`. It reads its rank and world size from
submitit's job environment, initialises the process group (NCCL on GPUs), resumes from the
newest checkpoint of the run directory, and trains. On preemption or timeout, submitit calls
:meth:`TrainJob.checkpoint`, which saves a checkpoint and requeues the same job; the requeued
run resumes from it.

The checkpoint is consistent because the preemption signal is held back while an optimiser
step is in flight (:func:`signals_deferred`): its handler runs only between steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import submitit

from df_train.config import TrainConfig

log = logging.getLogger(__name__)
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred():
    """Holds back the preemption signals for the duration: their handlers run on exit.

    Blocking the signals with ``pthread_sigmask`` is not enough: it blocks them in this thread
    only, and the kernel hands a process-directed signal to any thread that does not block it
    (loader, TensorBoard and runtime threads), after which CPython runs the Python handler in
    the main thread at once. So the handlers are swapped for a recorder here, and each signal
    that arrived is raised again, to the original handler, on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set (and only run) in the main thread
        return
    arrived: list[int] = []
    old = {
        sig: signal.signal(sig, lambda signum, frame: arrived.append(signum))
        for sig in PREEMPT_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(arrived):
            signal.raise_signal(sig)


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.trainer = None

    def _set_distributed_env(self) -> None:
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # called outside a submitit job (tests, a plain python process)
            return
        if env.num_tasks > 1:
            os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
            os.environ.setdefault(
                "MASTER_PORT", str(20000 + int(str(env.job_id).split("_")[0]) % 20000)
            )
            os.environ.update(
                RANK=str(env.global_rank),
                WORLD_SIZE=str(env.num_tasks),
                LOCAL_RANK=str(env.local_rank),
            )

    def __call__(self) -> dict:
        from df_train.export import find_codec_dir, store_clip_metadata
        from df_train.parallel import init_distributed
        from df_train.trainer import Trainer

        self._set_distributed_env()
        rank, world, _, device = init_distributed()
        self.trainer = Trainer(self.config, rank=rank, world_size=world, device=str(device))
        find_codec_dir(self.trainer, store_clip_metadata(self.trainer))  # fail before training
        resumed = self.trainer.resume()
        start = self.trainer.step
        with_signals = self.trainer.fit(progress=False, step_guard=signals_deferred)
        path = self.trainer.export_bundle(Path(self.config.out_dir) / "bundle")
        return {
            "step": self.trainer.step,
            "resumed": resumed,
            "start_step": start,
            "steps_run": len(with_signals),
            "bundle": str(path),
        }

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        if self.trainer is not None and self.trainer.step > 0:
            self.trainer.save()
            log.info("preempted at step %d: checkpoint saved, requeueing", self.trainer.step)
        return submitit.helpers.DelayedSubmission(TrainJob(self.config))


def make_executor(
    folder: str | Path,
    *,
    local: bool,
    nodes: int = 1,
    gpus_per_node: int = 1,
    partition: str | None = None,
    time: str = "24:00:00",
    account: str | None = None,
    qos: str | None = None,
    cpus_per_task: int = 8,
    signal_delay_s: int = 120,
    max_num_timeout: int = 20,
) -> submitit.Executor:
    """A submitit executor: SLURM with one task per GPU, or the local executor. The job gets the
    preemption signal ``signal_delay_s`` before its time limit and is requeued (checkpoint,
    then resume) up to ``max_num_timeout`` times."""
    try:
        hours, minutes, seconds = (float(x) for x in time.split(":"))
    except ValueError as e:
        raise ValueError(f"--time must be HH:MM:SS, got {time!r}") from e
    timeout_min = hours * 60 + minutes + seconds / 60
    if local:
        executor = submitit.LocalExecutor(folder=str(folder), max_num_timeout=max_num_timeout)
        executor.update_parameters(timeout_min=timeout_min, signal_delay_s=signal_delay_s)
        return executor
    timeout_min = max(1, round(timeout_min))
    if not partition:
        raise ValueError("--partition is required with --slurm")
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster="slurm", slurm_max_num_timeout=max_num_timeout
    )
    extra = {k: v for k, v in (("account", account), ("qos", qos)) if v}
    executor.update_parameters(
        nodes=nodes,
        tasks_per_node=gpus_per_node,
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task,
        slurm_partition=partition,
        timeout_min=timeout_min,
        slurm_signal_delay_s=120,
        slurm_additional_parameters=extra,
        name="dualforce",
    )
    return executor


def submit(config: TrainConfig, executor: submitit.Executor) -> submitit.Job:
    return executor.submit(TrainJob(config))
