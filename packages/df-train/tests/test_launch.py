"""submitit launching: a preempted job checkpoints at a step boundary and its requeued
submission resumes from that checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from df_train.config import apply_overrides
from df_train.launch import TrainJob, make_executor, signals_deferred
from df_train.recipes import get_recipe
from df_train.trainer import Trainer


def test_checkpoint_then_requeued_submission_resumes(tiny_store, tmp_path):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"),
        [f"data.store={tiny_store}", f"out_dir={tmp_path}", "steps=10", "ckpt_every=1000"],
    )
    job = TrainJob(config)
    job.trainer = Trainer(config)
    job.trainer.fit(max_steps=4, progress=False)  # preempted after 4 steps
    delayed = job.checkpoint()  # what submitit calls on the preemption signal
    assert (tmp_path / "checkpoints" / "step_00000004").is_dir()
    result = delayed.function(*delayed.args, **delayed.kwargs)  # the requeued run
    assert result["resumed"] and result["start_step"] == 4 and result["step"] == 10
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 11))
    assert (tmp_path / "bundle" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "bundle" / "inference.json").is_file()


def test_preemption_signal_waits_for_the_step_boundary():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda *_: seen.append("handled"))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGUSR2)
            seen.append("step finished")
        assert seen == ["step finished", "handled"]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_executors(tmp_path):
    with pytest.raises(ValueError, match="partition"):
        make_executor(tmp_path, local=False)
    with pytest.raises(ValueError, match="HH:MM:SS"):
        make_executor(tmp_path, local=True, time="soon")
    local = make_executor(tmp_path, local=True, time="00:30:00")
    assert local.parameters["timeout_min"] == 30


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _metric_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_local_submitit_job_is_preempted_requeued_and_resumes(tiny_store, tmp_path):
    """A real submitit local job: SIGUSR2 (the preemption signal) to the running task makes
    submitit call TrainJob.checkpoint (a checkpoint at a step boundary) and exit for requeue; the
    local controller starts the requeued submission, which resumes from that step."""
    steps = 12
    sets = [f"data.store={tiny_store}", f"out_dir={tmp_path / 'run'}", f"steps={steps}"]
    config = apply_overrides(get_recipe("synthtalk_tiny"), [*sets, "ckpt_every=1000"])
    executor = make_executor(tmp_path / "submitit", local=True, time="00:10:00")
    job = executor.submit(TrainJob(config))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        # Step 1: wait until the task trains, then preempt it (the controller forwards only
        # SIGTERM and its own timeout signal, so the signal goes to the task process).
        while _metric_lines(metrics) < 2:
            assert time.monotonic() < deadline, "the local job did not start training"
            assert not job.done(), job.stderr()
            time.sleep(0.2)
        (task,) = _children(job._process.pid)
        os.kill(task, signal.SIGUSR2)
        # Step 2: the requeued run finishes.
        while not job.done():
            assert time.monotonic() < deadline, "the requeued job did not finish"
            time.sleep(0.5)
        result = job.result()
    finally:
        if not job.done():
            job.cancel()
    preempted_at = result["start_step"]
    assert result["resumed"] and 2 <= preempted_at < steps and result["step"] == steps
    assert (tmp_path / "run" / "checkpoints" / f"step_{preempted_at:08d}").is_dir()
    # The preempted run logged no step past its checkpoint: no step is lost or run twice.
    lines = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert lines == list(range(1, steps + 1))
    assert (tmp_path / "run" / "bundle" / "inference.json").is_file()
    logs = (job.stderr() or "") + (job.stdout() or "")
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
