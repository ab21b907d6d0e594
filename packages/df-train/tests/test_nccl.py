"""The Trainer over NCCL on real GPUs, launched by torchrun as a user would: FSDP2 on every GPU
the machine has (one is enough: the same NCCL, FSDP2 and sharded-checkpoint code path), against
one plain process with the same global batch; the sharded checkpoint resumes exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from df_train.trainer import Trainer

WORKER = Path(__file__).with_name("nccl_worker.py")
# NVLink multicast (NVLS) off, as on every lent machine; the rest of NCCL as it comes.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "NCCL_CUMEM_ENABLE": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
@pytest.mark.multiprocess
@pytest.mark.slow
def test_torchrun_nccl_fsdp_matches_one_process_and_resumes_exactly(tiny_store, tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    import nccl_worker

    gpus = torch.cuda.device_count()
    per_rank = 4 // gpus if 4 % gpus == 0 else 1
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={gpus}",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(WORKER),
        tiny_store,
        str(tmp_path),
        str(per_rank),
    ]
    env = {**os.environ, **NCCL_ENV}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    got = json.loads((tmp_path / "losses.json").read_text())
    assert got["world"] == gpus and got["device"].startswith("cuda")

    single = Trainer(nccl_worker.config(tiny_store, tmp_path / "single", per_rank * gpus, False))
    losses = [m.loss for m in single.fit(progress=False)]
    single.export_ema(tmp_path / "single" / "ema")
    # Resume from the sharded checkpoint is exact, EMA included.
    assert got["b"] == got["a"]
    assert len(set(losses)) == nccl_worker.STEPS  # the steps differ: a real comparison
    # NCCL + FSDP2 against one plain process: the same global batch and noise, bf16 compute.
    torch.testing.assert_close(torch.tensor(got["a"]), torch.tensor(losses), rtol=2e-2, atol=1e-3)
    ema = {run: load_file(tmp_path / run / "ema" / "model.safetensors") for run in "ab"}
    ema_single = load_file(tmp_path / "single" / "ema" / "model.safetensors")
    assert ema["a"].keys() == ema["b"].keys() == ema_single.keys()
    for k, v in ema["a"].items():
        assert torch.equal(ema["b"][k], v), k
        torch.testing.assert_close(v, ema_single[k], rtol=2e-2, atol=2e-3, msg=k)
