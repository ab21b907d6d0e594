"""One rank of the torchrun NCCL test (test_nccl.py): the Trainer over NCCL with FSDP2 on the
GPUs torchrun gives it, run "a" for all steps, run "b" for half then resumed by a fresh trainer
from the sharded checkpoint; rank 0 writes both runs' losses.

    python -m torch.distributed.run --nproc-per-node G tests/nccl_worker.py STORE ROOT BATCH
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from df_train.config import apply_overrides
from df_train.parallel import destroy_distributed, init_distributed
from df_train.recipes import get_recipe
from df_train.trainer import Trainer

STEPS = 6
SETS = [
    "noise.clean_prefix_prob=0.0",  # every frame counts: rank means average to the global mean
    "loss.lambda_aux=0.3",
    "grad_accum=2",
    "data.num_workers=1",
    "device=cuda",
    "precision=bf16",
    "parallel.fsdp=true",
    f"steps={STEPS}",
    "ckpt_every=3",
    "optim.warmup_steps=1",
]


def config(store: str, out: Path, batch_size: int, fsdp: bool = True):
    sets = [f"data.store={store}", f"out_dir={out}", f"batch_size={batch_size}", *SETS]
    return apply_overrides(get_recipe("synthtalk_tiny"), [*sets, f"parallel.fsdp={fsdp}".lower()])


def main(store: str, root: str, batch: int) -> None:
    root_dir = Path(root)
    rank, world, _, device = init_distributed(backend="nccl")
    try:
        kw = dict(rank=rank, world_size=world, device=str(device))
        full = Trainer(config(store, root_dir / "a", batch), **kw)
        losses_a = [m.loss for m in full.fit(progress=False)]
        full.export_ema(root_dir / "a" / "ema")
        del full
        first = Trainer(config(store, root_dir / "b", batch), **kw)
        losses_b = [m.loss for m in first.fit(max_steps=STEPS // 2, progress=False)]
        del first
        second = Trainer(config(store, root_dir / "b", batch), **kw)
        assert second.resume() and second.step == STEPS // 2
        losses_b += [m.loss for m in second.fit(progress=False)]
        second.export_ema(root_dir / "b" / "ema")
        if rank == 0:
            result = {"a": losses_a, "b": losses_b, "world": world, "device": str(device)}
            (root_dir / "losses.json").write_text(json.dumps(result))
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
