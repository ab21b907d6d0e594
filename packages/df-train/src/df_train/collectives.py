"""The few collectives the training loop needs, each a no-op in a single process.

Under FSDP the model's gradients are reduced by FSDP itself; what is left to the loop is the
agreement on skipping a step, the gradients of the small modules FSDP does not manage (learned
loss weights, lip-sync heads), the global gradient norm over the shards, and the loss terms
averaged for logging.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def distributed(world_size: int) -> bool:
    """Whether there is a process group of more than one process to talk to."""
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def barrier(world_size: int) -> None:
    if distributed(world_size):
        dist.barrier()


def all_finite(loss: torch.Tensor, world_size: int) -> bool:
    """Whether the loss is finite on every rank (all ranks skip a step together: one rank
    going on alone would wait forever in FSDP's collectives)."""
    finite = torch.isfinite(loss.detach())
    if distributed(world_size):
        flag = finite.float().reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)
    return bool(finite)


def average_gradients(modules: Iterable[nn.Module | None], world_size: int) -> None:
    """Averages the gradients of parameters FSDP does not manage over the ranks, in place; a
    rank without a gradient contributes zeros."""
    if not distributed(world_size):
        return
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


def clip_gradients(model: nn.Module, max_norm: float, *, sharded: bool) -> torch.Tensor:
    """Clips the model's gradients to ``max_norm`` (0 = no clipping) by their global norm,
    which it returns; ``sharded``: the parameters are FSDP shards (the norm is reduced)."""
    max_norm = max_norm if max_norm > 0 else float("inf")
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):  # a partial norm of the local shards: reduce it
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def mean_over_ranks(values: dict[str, float], world_size: int, device: torch.device) -> dict:
    """The rank mean of each value (float64, one collective), for logging."""
    if not distributed(world_size) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / world_size).tolist(), strict=True))
