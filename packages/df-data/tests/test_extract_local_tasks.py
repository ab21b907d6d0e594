"""`dualforce data extract --local-tasks N`: the sources of one host sharded over N processes
(submitit's local executor), the same store as one process; task i on GPU i."""

from __future__ import annotations

import pytest
import torch

from df_core.cli import main as dualforce
from df_data.extract_run import ExtractConfig, run_extract, task_device
from df_data.store import load_manifest, read_clip
from df_data.synthtalk import generate_corpus
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug


def test_task_i_runs_on_gpu_i_where_the_host_has_several(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [task_device("cuda", i) for i in range(5)] == [f"cuda:{i}" for i in (0, 1, 2, 3, 0)]
    assert task_device("cuda:2", 0) == "cuda:2" and task_device("cpu", 3) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a SLURM task's own GPU
    assert task_device("cuda", 3) == "cuda"


@pytest.mark.multiprocess
def test_local_tasks_fill_the_same_store_as_one_process(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, clips=3, seconds=0.4, size=32, test_clips=1, seed=1, progress=False)
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    codec.save_pretrained(tmp_path / "codec")
    argv = ["data", "extract", "--src", str(corpus), "--codec", str(tmp_path / "codec")]
    assert dualforce([*argv, "--out", str(tmp_path / "two"), "--local-tasks", "2"]) == 0
    assert '"tasks": 2' in capsys.readouterr().out
    run_extract(corpus, tmp_path / "one", ExtractConfig(codec=str(tmp_path / "codec")))
    ids = {e["clip_id"] for e in load_manifest(tmp_path / "one")}
    assert len(ids) == 4 and {e["clip_id"] for e in load_manifest(tmp_path / "two")} == ids
    for cid in ids:
        a, b = read_clip(tmp_path / "two", cid), read_clip(tmp_path / "one", cid)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.audio_features, b.audio_features)
    # The tasks' logs are kept; a re-run skips every finished clip.
    assert any((tmp_path / "two" / ".submitit").iterdir())
    assert dualforce([*argv, "--out", str(tmp_path / "two"), "--local-tasks", "2"]) == 0
    assert '"skipped_finished": 4' in capsys.readouterr().out


def test_more_tasks_than_gpus_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    argv = ["data", "extract", "--src", str(tmp_path), "--out", str(tmp_path / "s")]
    rc = dualforce([*argv, "--codec", str(tmp_path), "--device", "cuda", "--local-tasks", "2"])
    assert rc == 2 and "one task per GPU" in capsys.readouterr().err
    rc = dualforce([*argv, "--codec", str(tmp_path), "--local-tasks", "0"])
    assert rc == 2 and "--local-tasks must be a positive integer" in capsys.readouterr().err
    slurm = ["--slurm", "--partition", "gpu", "--local-tasks", "2"]
    assert dualforce([*argv, "--codec", str(tmp_path), *slurm]) == 2
    assert "choose one" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing submitted, nothing written


def test_slurm_flags_reach_the_job_array(tmp_path, capsys, monkeypatch):
    """`--slurm` of extract and prepare: the flags reach the executor (one GPU per extraction
    task), every shard is submitted, and the user is told where the logs are."""
    import submitit

    import df_data.prepare.shards as shards

    seen = []

    def executor(folder, **options):
        seen.append(options)
        return submitit.DebugExecutor(folder=str(folder))  # runs a task when its result is read

    monkeypatch.setattr(shards, "slurm_executor", executor)
    (tmp_path / "src").mkdir()
    slurm = ["--slurm", "--array", "3", "--partition", "gpu", "--account", "a"]
    out = tmp_path / "store"
    argv = ["data", "extract", "--src", str(tmp_path / "src"), "--out", str(out)]
    assert dualforce([*argv, "--codec", str(tmp_path), *slurm]) == 0
    assert "submitted 3 tasks" in capsys.readouterr().out
    argv = ["data", "prepare", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "p")]
    assert dualforce([*argv, *slurm]) == 0
    extract, prepare = seen
    assert extract["gpus_per_task"] == 1 and extract["name"] == "dualforce-extract"
    assert "gpus_per_task" not in prepare
    for options in seen:
        assert options["partition"] == "gpu" and options["array_parallelism"] == 3
        assert options["account"] == "a"
