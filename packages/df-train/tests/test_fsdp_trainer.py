"""The Trainer on two CPU processes (gloo, loopback, FSDP2): the same global batch and noise as
one process with twice the per-rank batch, so the losses and the EMA weights match; and a
sharded checkpoint resumes exactly (losses and EMA weights), with two micro-batches per step
and a DataLoader worker per rank."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from df_train.config import apply_overrides
from df_train.recipes import get_recipe
from df_train.trainer import Trainer

WORLD = 2
STEPS = 4
TIMEOUT_S = 240
SETS = [
    "noise.clean_prefix_prob=0.0",  # every frame counts: rank means average to the global mean
    "loss.lambda_aux=0.3",
    "loss.uncertainty_weighting=true",  # replicated parameters outside FSDP
    "parallel.param_dtype=fp32",
    "grad_accum=2",
    "data.num_workers=1",
    f"steps={STEPS}",
    "ckpt_every=2",
    "optim.warmup_steps=1",
]


def _config(store: str, out: Path, batch_size: int):
    sets = [f"data.store={store}", f"out_dir={out}", f"batch_size={batch_size}", *SETS]
    return apply_overrides(get_recipe("synthtalk_tiny"), sets)


def _worker(rank: int, port: int, store: str, root: str) -> None:
    from df_train.parallel import destroy_distributed, init_distributed

    root = Path(root)
    try:
        torch.set_num_threads(1)
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        r, world, _, _ = init_distributed(backend="gloo")
        # Run "a": all steps. Run "b": half, a fresh trainer resumes, the other half.
        full = Trainer(_config(store, root / "a", 2), rank=r, world_size=world, device="cpu")
        losses_a = [m.loss for m in full.fit(progress=False)]
        full.export_ema(root / "a" / "ema")
        first = Trainer(_config(store, root / "b", 2), rank=r, world_size=world, device="cpu")
        losses_b = [m.loss for m in first.fit(max_steps=STEPS // 2, progress=False)]
        del first
        second = Trainer(_config(store, root / "b", 2), rank=r, world_size=world, device="cpu")
        assert second.resume() and second.step == STEPS // 2
        losses_b += [m.loss for m in second.fit(progress=False)]
        second.export_ema(root / "b" / "ema")
        if rank == 0:
            (root / "losses.json").write_text(json.dumps({"a": losses_a, "b": losses_b}))
    except Exception:
        (root / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        destroy_distributed()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_fsdp_training_matches_one_process(tiny_store, tmp_path, run_workers):
    run_workers(_worker, (tiny_store, str(tmp_path)), WORLD, TIMEOUT_S)

    single = Trainer(_config(tiny_store, tmp_path / "single", 2 * 2))
    losses = [m.loss for m in single.fit(progress=False)]
    single.export_ema(tmp_path / "single" / "ema")
    got = json.loads((tmp_path / "losses.json").read_text())
    # Sharded resume is exact, EMA included; two processes match one within float reduction
    # order.
    assert got["b"] == got["a"]
    ema_resumed = load_file(tmp_path / "b" / "ema" / "model.safetensors")
    torch.testing.assert_close(torch.tensor(got["a"]), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert len(set(losses)) == STEPS  # the steps differ: a real comparison
    ema_multi = load_file(tmp_path / "a" / "ema" / "model.safetensors")
    ema_single = load_file(tmp_path / "single" / "ema" / "model.safetensors")
    assert ema_multi.keys() == ema_single.keys() == ema_resumed.keys()
    for k, v in ema_multi.items():
        assert torch.equal(ema_resumed[k], v), k
    for k, v in ema_single.items():
        torch.testing.assert_close(ema_multi[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # Only rank 0 logged: one line per step.
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
