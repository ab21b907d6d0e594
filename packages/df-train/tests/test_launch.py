"""submitit launching: a preempted job checkpoints at a step boundary and its requeued
submission resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import signal

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
