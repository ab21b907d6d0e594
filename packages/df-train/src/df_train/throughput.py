"""Throughput accounting: the FLOPs of one training step, and the peak they are measured against.

Model FLOPs utilisation is ``FLOPs per step / step time / peak``. The FLOPs are counted once,
with :class:`torch.utils.flop_counter.FlopCounterMode`, over one forward + backward of the
model on a batch of the training shapes. FlexAttention cannot run under a dispatch mode (its
higher-order op has no rule for one), so the counting pass uses the dense-mask SDPA backend and
scales each attention op by the density of its mask: only the (query, key) pairs the mask
allows are counted, which is what the block-sparse FlexAttention kernel computes. Without
activation checkpointing the count is the model's FLOPs (MFU, not hardware FLOPs): the
counting pass runs before :func:`df_train.parallel.parallelize`.

The peak is a configured number (``TrainConfig.peak_tflops``; the default is the measured
H100 bf16 dense matmul rate of DESIGN.md, 771 TFLOP/s) or measured here with a short matmul
benchmark (:func:`measure_peak_tflops`).
"""

from __future__ import annotations

import logging
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

aten = torch.ops.aten
log = logging.getLogger(__name__)

# Where each SDPA op takes its mask (an additive float bias with -inf, or a bool mask): a
# position, a keyword, or None for kernels that take none.
_MASK_ARG = {
    aten._scaled_dot_product_flash_attention_for_cpu: (sdpa_flop, "attn_mask"),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (sdpa_backward_flop, "attn_mask"),
    aten._scaled_dot_product_efficient_attention: (sdpa_flop, 3),
    aten._scaled_dot_product_cudnn_attention: (sdpa_flop, 3),
    aten._scaled_dot_product_flash_attention: (sdpa_flop, None),  # takes no mask
    aten._scaled_dot_product_efficient_attention_backward: (sdpa_backward_flop, 4),
    aten._scaled_dot_product_cudnn_attention_backward: (sdpa_backward_flop, 8),
    aten._scaled_dot_product_flash_attention_backward: (sdpa_backward_flop, None),
}


def mask_density(mask: torch.Tensor | None) -> float:
    """The fraction of (query, key) pairs a bool mask or an additive bias allows."""
    if not isinstance(mask, torch.Tensor):
        return 1.0
    allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
    return float(allowed.float().mean())


def _masked(formula, where: int | str | None):
    def count(*args, out_val=None, **kwargs) -> int:
        flops = formula(*args, out_val=out_val, **kwargs)  # torch's formula, shape-wrapped
        if isinstance(where, str):
            mask = kwargs.get(where)
        else:
            mask = args[where] if where is not None and len(args) > where else None
        return round(flops * mask_density(mask))

    count._get_raw = True  # FlopCounterMode hands this formula the tensors, not their shapes
    return count


def masked_attention_mapping() -> dict:
    """A ``FlopCounterMode(custom_mapping=...)`` that counts SDPA over allowed pairs only."""
    return {op: _masked(formula, pos) for op, (formula, pos) in _MASK_ARG.items()}


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (forward and whatever backward it runs), attention masks respected."""
    with FlopCounterMode(display=False, custom_mapping=masked_attention_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def count_model_step_flops(model: torch.nn.Module, inputs: dict, *, precision: str) -> int:
    """FLOPs of one training forward + backward of a DualForce model on ``inputs`` (the
    model's keyword arguments). Runs with the dense attention backend (module doc) and leaves
    no gradients behind."""
    device = next(model.parameters()).device
    backend = getattr(model, "attn_backend", None)
    if backend is not None:
        model.attn_backend = "dense"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            v, s = model(**inputs)
            loss = v.float().square().mean()
            if s is not None:
                loss = loss + s.float().square().mean()
        loss.backward()

    try:
        return count_flops(step)
    finally:
        if backend is not None:
            model.attn_backend = backend
        model.zero_grad(set_to_none=True)


def measure_peak_tflops(
    device: torch.device | str, dtype: torch.dtype = torch.bfloat16, *, size: int = 8192
) -> float:
    """Dense matmul TFLOP/s of ``device`` in ``dtype``: the best of a few ``size x size``
    matmuls after a warmup (on a CPU use a smaller ``size``)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


def train_step_flops(
    model: torch.nn.Module,
    batch: dict,
    *,
    struct_enabled: bool,
    grad_accum: int,
    precision: str,
    device: torch.device,
) -> int:
    """FLOPs of one optimiser step on one rank: forward + backward of ``grad_accum``
    micro-batches shaped like ``batch`` (a collated batch of training windows)."""
    B, T = batch["latents"].shape[:2]
    inputs = {
        "z_BTCHW": batch["latents"].to(device),
        "sigma_v_BT": torch.full((B, T), 0.5, device=device),
        "audio_BTLDa": batch["audio"].to(device),
        "ref_latent_BCHW": batch["ref_latent"].to(device),
        "s_BTDs": batch["struct"].to(device) if struct_enabled else None,
        "sigma_s_BT": torch.full((B, T), 0.5, device=device) if struct_enabled else None,
    }
    if "ref_tokens" in batch:
        inputs["ref_feats_BRD"] = batch["ref_tokens"].to(device)
    return grad_accum * count_model_step_flops(model, inputs, precision=precision)


def peak_tflops(configured: float, precision: str, device: torch.device) -> float:
    """The MFU's peak: ``configured`` (TFLOP/s) when positive, else measured on ``device``."""
    if configured > 0:
        return configured
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 8192 if device.type == "cuda" else 1024
    peak = measure_peak_tflops(device, dtype, size=size)
    log.info("measured peak: %.1f TFLOP/s (%s matmul on %s)", peak, dtype, device)
    return peak
