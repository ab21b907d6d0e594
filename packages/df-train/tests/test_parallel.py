"""Tests of df_train.parallel: checkpointing and compile change nothing numerically and keep the
state-dict keys; FSDP2 over two CPU processes (gloo, loopback) trains exactly like one process
on the whole batch; the process-group helpers behave without a launcher."""

from __future__ import annotations

import copy
import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.tensor import DTensor

import df_models
from df_models import DualForceDiT
from df_models.testing import random_inputs, random_model
from df_train.parallel import (
    ParallelConfig,
    apply_ac,
    apply_compile,
    apply_fsdp,
    destroy_distributed,
    init_distributed,
    parallelize,
)

CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."  # what CheckpointWrapper adds to param names

LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _loss(model, inputs, targets) -> torch.Tensor:
    v, s = model(**inputs)
    return ((v - targets["v"]) ** 2).mean() + ((s - targets["s"]) ** 2).mean()


def _batch(config, batch: int, seed: int):
    inputs = random_inputs(config, batch=batch, frames=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    targets = {
        "v": torch.randn(inputs["z_BTCHW"].shape, generator=g),
        "s": torch.randn(inputs["s_BTDs"].shape, generator=g),
    }
    return inputs, targets


def _plain_name(name: str) -> str:
    return name.replace(CHECKPOINT_PREFIX, "")


def _grads(model) -> dict[str, torch.Tensor]:
    return {_plain_name(n): p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


# ParallelConfig -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activation_checkpointing", "selective"),
        ("param_dtype", "fp16"),
        ("reduce_dtype", "bfloat16"),
        ("compile", "yes"),
        ("fsdp", 1),
        ("reshard_after_forward", None),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ParallelConfig(**{field: value})


def test_config_defaults_are_valid():
    c = ParallelConfig()
    assert (c.activation_checkpointing, c.compile, c.fsdp) == ("none", False, False)
    assert (c.param_dtype, c.reduce_dtype, c.reshard_after_forward) == ("bf16", "fp32", True)


# Activation checkpointing ---------------------------------------------------------------------


def test_apply_ac_keeps_outputs_gradients_and_keys(tmp_path):
    config = df_models.tiny()
    plain = random_model(config, seed=3).train()
    wrapped = apply_ac(copy.deepcopy(plain), "full")
    assert all(CHECKPOINT_PREFIX in n for n, _ in wrapped.blocks.named_parameters())
    inputs, targets = _batch(config, batch=2, seed=5)

    loss_plain = _loss(plain, inputs, targets)
    loss_plain.backward()
    loss_wrapped = _loss(wrapped, inputs, targets)
    loss_wrapped.backward()

    torch.testing.assert_close(loss_wrapped, loss_plain, rtol=0, atol=0)
    g_plain, g_wrapped = _grads(plain), _grads(wrapped)
    assert g_plain.keys() == g_wrapped.keys()
    for name, g in g_plain.items():
        torch.testing.assert_close(g_wrapped[name], g, rtol=0, atol=0, msg=name)
    # named_parameters carry the wrapper prefix, and only it.
    assert [_plain_name(n) for n, _ in wrapped.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]
    # state_dict keys are unchanged, so checkpoints load both ways.
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    fresh = random_model(config, seed=9)
    fresh.load_state_dict(wrapped.state_dict(), strict=True)
    apply_ac(fresh, "full").load_state_dict(plain.state_dict(), strict=True)
    # and the save_pretrained convention round-trips from a wrapped model.
    wrapped.save_pretrained(tmp_path / "m")
    loaded = DualForceDiT.from_pretrained(tmp_path / "m")
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_apply_ac_none_is_a_no_op_and_bad_mode_raises():
    model = random_model(df_models.tiny(), seed=0)
    blocks = list(model.blocks)
    assert apply_ac(model, "none") is model
    assert list(model.blocks) == blocks
    with pytest.raises(ValueError, match="activation checkpointing"):
        apply_ac(model, "partial")
    apply_ac(model, "full")
    wrapped = list(model.blocks)
    apply_ac(model, "full")  # idempotent: no double wrapping
    assert list(model.blocks) == wrapped


# torch.compile --------------------------------------------------------------------------------


def test_apply_compile_keeps_outputs_and_names():
    torch._dynamo.reset()
    config = df_models.tiny()
    plain = random_model(config, seed=4)
    compiled = apply_compile(apply_ac(copy.deepcopy(plain), "full"), backend="eager")
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert [_plain_name(n) for n, _ in compiled.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]
    inputs, targets = _batch(config, batch=2, seed=6)
    loss_plain = _loss(plain, inputs, targets)
    loss_plain.backward()
    loss_compiled = _loss(compiled, inputs, targets)
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss_plain, rtol=1e-6, atol=1e-6)
    g_plain, g_compiled = _grads(plain), _grads(compiled)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_compiled[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_parallelize_without_fsdp_single_process():
    config = df_models.tiny()
    model = random_model(config, seed=1)
    out = parallelize(
        model, ParallelConfig(activation_checkpointing="full", fsdp=False), world_size=1
    )
    assert out is model
    assert all(isinstance(b, CheckpointWrapper) for b in model.blocks)
    assert next(model.parameters()).dtype == torch.float32  # no FSDP: dtypes untouched
    with pytest.raises(ValueError, match="world_size"):
        parallelize(model, ParallelConfig(), world_size=0)


# Process group helpers ------------------------------------------------------------------------


def test_init_distributed_single_process(no_launcher):
    rank, world, local, device = init_distributed()
    assert (rank, world, local) == (0, 1, 0)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not dist.is_initialized()
    destroy_distributed()  # no group: a no-op


def test_init_distributed_one_task_slurm_job_is_single_process(no_launcher, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert init_distributed(backend="gloo")[:3] == (0, 1, 0)
    assert not dist.is_initialized()


def test_init_distributed_slurm_needs_master_addr(no_launcher, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed(backend="gloo")


def test_apply_fsdp_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    model = random_model(df_models.tiny(), seed=0)
    with pytest.raises(RuntimeError, match="process group"):
        apply_fsdp(model)
    with pytest.raises(RuntimeError, match="process group"):
        parallelize(model, ParallelConfig(fsdp=False), world_size=2)


# FSDP2 over two CPU processes -----------------------------------------------------------------

WORLD = 2
BATCH = 4
STEPS = 2
TIMEOUT_S = 120


def _train(model, inputs, targets, steps: int) -> list[torch.Tensor]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        loss = _loss(model, inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if dist.is_initialized():  # the workers: the global mean (gloo has no ReduceOp.AVG)
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        losses.append(mean)
    return losses


def _full_state(model) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    """One rank: half of the batch, FSDP2 (+ checkpointing) in fp32, AdamW steps; rank 0 saves
    the gathered parameters and the global losses. Then a bf16 smoke step."""
    try:
        torch.set_num_threads(1)
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        r, world, local, device = init_distributed(backend="gloo")
        assert (r, world, local, device.type) == (rank, WORLD, rank, "cpu")
        config = df_models.tiny()
        inputs, targets = _batch(config, batch=BATCH, seed=11)
        half = BATCH // WORLD
        mine = slice(rank * half, (rank + 1) * half)
        inputs = {k: v[mine] for k, v in inputs.items() if v is not None}
        targets = {k: v[mine] for k, v in targets.items()}

        model = random_model(config, seed=2).train()
        pc = ParallelConfig(activation_checkpointing="full", fsdp=True, param_dtype="fp32")
        parallelize(model, pc, world_size=world)
        assert isinstance(model.blocks[0].video.attn.q.weight, DTensor)
        losses = _train(model, inputs, targets, STEPS)
        state = _full_state(model)

        # bf16 blocks: every block sees the same AttentionSites object (no per-block copies),
        # the output is fp32, and a step runs.
        model16 = random_model(config, seed=2).train()
        apply_fsdp(model16, param_dtype="bf16", reduce_dtype="fp32")
        seen = []
        for block in model16.blocks:
            block.register_forward_pre_hook(
                lambda m, a, kw: seen.append(
                    ({a[0].dtype, kw["video_cond_BFD"].dtype}, kw["sites"])
                ),
                with_kwargs=True,
            )
        v16, _ = model16(**inputs)
        assert v16.dtype == torch.float32
        assert all(dtypes == {torch.bfloat16} for dtypes, _ in seen)
        assert all(sites is seen[0][1] for _, sites in seen)
        loss16 = _train(model16, inputs, targets, 1)[0]
        assert torch.isfinite(loss16)
        if rank == 0:
            save_file({"losses": torch.stack(losses), **state}, out)
        dist.barrier()
    except Exception:
        Path(f"{out}.rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        destroy_distributed()


@pytest.mark.multiprocess
def test_fsdp_two_processes_match_single_process(tmp_path, run_workers):
    out = str(tmp_path / "rank0.safetensors")
    run_workers(_fsdp_worker, (out,), WORLD, TIMEOUT_S)

    config = df_models.tiny()
    model = random_model(config, seed=2).train()
    inputs, targets = _batch(config, batch=BATCH, seed=11)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    losses = torch.stack(_train(model, inputs, targets, STEPS))
    got = load_file(out)

    torch.testing.assert_close(got.pop("losses"), losses, rtol=0, atol=1e-5)
    assert got.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=k)
