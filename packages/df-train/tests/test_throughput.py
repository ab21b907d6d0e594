"""FLOP counting for MFU (attention counted over the pairs its mask allows), MFU in the
trainer's metrics, and ``dualforce bench train`` on the tiny preset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from df_models.config import tiny
from df_models.testing import random_inputs, random_model
from df_train.throughput import count_flops, count_model_step_flops, mask_density


def test_attention_is_counted_over_allowed_pairs_only():
    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    causal = torch.ones(64, 64, dtype=torch.bool).tril()

    def step(mask):
        return lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward()

    full, masked = count_flops(step(None)), count_flops(step(causal))
    # forward 4 * B * H * L * S * Dh, backward 2.5x that (torch's SDPA formulas)
    assert full == round(3.5 * 4 * 2 * 64 * 64 * 16)
    assert masked == pytest.approx(full * mask_density(causal), rel=1e-6)
    assert mask_density(causal) == pytest.approx((64 * 65 / 2) / 64**2)
    bias = torch.zeros(64, 64).masked_fill(~causal, float("-inf"))
    assert mask_density(bias) == mask_density(causal)


def test_model_step_flops_exceed_the_parameter_matmuls_and_leave_no_grads():
    config = tiny()
    model = random_model(config, seed=0).train()
    inputs = {k: v for k, v in random_inputs(config, batch=2, frames=3, seed=1).items()}
    flops = count_model_step_flops(model, inputs, precision="fp32")
    tokens = 2 * 3 * (config.video_tokens + config.struct_tokens)
    params = sum(p.numel() for p in model.blocks.parameters())
    assert flops > 6 * params * tokens * 0.5  # the blocks' matmuls alone are most of it
    assert all(p.grad is None for p in model.parameters())
    assert model.attn_backend == "auto"  # restored after the dense counting pass


def test_trainer_reports_mfu_when_asked(tiny_store, tmp_path):
    from df_train.config import apply_overrides
    from df_train.recipes import get_recipe
    from df_train.trainer import Trainer

    config = apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={tiny_store}", f"out_dir={tmp_path}"]
    )
    config = dataclasses.replace(config, steps=2, mfu="on", peak_tflops=0.5)
    trainer = Trainer(config)
    assert trainer.step_flops > 0 and trainer.peak_tflops == 0.5
    # A step of two micro-batches is twice the work of one.
    accum = Trainer(dataclasses.replace(config, grad_accum=2, out_dir=str(tmp_path / "accum")))
    assert accum.step_flops == 2 * trainer.step_flops
    trainer.fit(progress=False)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    # FLOP/s and tokens/s are two counts over the same step time: their ratio is FLOPs per
    # token, known without the clock.
    tokens_per_step = config.batch_size * (config.data.frames + 1)
    tokens_per_step *= config.model.video_tokens + config.model.struct_tokens
    flops_per_token = record["tflops"] * 1e12 / record["tokens_per_s"]
    assert flops_per_token == pytest.approx(trainer.step_flops / tokens_per_step, rel=1e-6)
    assert record["mfu"] > 0 and record["mfu"] * 0.5 == pytest.approx(record["tflops"])
    off = Trainer(dataclasses.replace(config, mfu="off", out_dir=str(tmp_path / "off")))
    assert off.step_flops is None


@pytest.mark.slow
def test_bench_train_prints_a_markdown_row(capsys, tmp_path):
    from df_train.bench_train import main

    out = tmp_path / "r.json"
    argv = ["--preset", "tiny", "--frames", "3", "--precision", "fp32", "--device", "cpu"]
    assert main([*argv, "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| preset |") and lines[2].startswith("| tiny |")
    result = json.loads(out.read_text())
    assert len(result["step_ms_all"]) == 2 and result["tokens_per_s"] > 0
    assert result["mfu"] == pytest.approx(result["tflops"] / 771.0)
    assert result["tokens_per_step"] == 4 * (tiny().video_tokens + tiny().struct_tokens)
