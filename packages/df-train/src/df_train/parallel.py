"""Parallelism applied to a model from outside (torchtitan style): activation checkpointing,
``torch.compile`` and FSDP2, each a free function that rewrites ``model.blocks`` in place, plus
the process-group setup for torchrun and SLURM launches.

Order matters and :func:`parallelize` fixes it: ``apply_ac`` -> ``apply_compile`` ->
``apply_fsdp``. Checkpointing wraps the bare block, compile compiles the wrapper, and FSDP
shards the compiled wrapper, so FSDP's all-gather/reshard hooks sit outside the checkpointed
region (backward recomputation finds the parameters already unsharded by FSDP's pre-backward
hook) and outside the compiled graph.

Parameter names: ``apply_compile`` keeps every name (``nn.Module.compile`` compiles in place,
no ``_orig_mod.``). ``apply_ac`` wraps each block in a ``CheckpointWrapper``, which keeps
``state_dict()`` keys unchanged (its hooks strip and re-add the prefix, so checkpoints load into
wrapped and plain models alike) but ``named_parameters()`` gain ``_checkpoint_wrapped_module.``
after ``blocks.<i>.``. DCP's ``get_model_state_dict`` strips the prefix too.

Mixed precision under FSDP (``apply_fsdp``): blocks keep ``param_dtype`` copies for compute and
reduce gradients in ``reduce_dtype``; the root's own parameters (patch/noise/audio embedders,
heads: a small share of the model) stay fp32. FSDP's root-level input cast would round the noise
levels ``sigma`` to bf16 before the sinusoidal embedding of ``1000 * sigma`` (bf16 keeps about
3 significant digits, so the high-frequency features would be noise); keeping the root fp32 avoids
that. Blocks cast their top-level tensor arguments themselves (:func:`_cast_block_inputs`) and
return fp32: FSDP's own ``cast_forward_inputs`` rebuilds every dataclass argument, which would
hand each block a private copy of the ``AttentionSites``/``AttnSite`` objects, so the FlexAttention
``BlockMask`` built lazily on the first layer would be rebuilt in every layer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from df_core.checks import boolean, one_of

logger = logging.getLogger(__name__)

AC_MODES = ("none", "full")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelConfig:
    activation_checkpointing: str = "none"  # none | full (recompute each block in backward)
    compile: bool = False  # torch.compile each block (fullgraph=False)
    fsdp: bool = False  # FSDP2 even with one process (with more, FSDP is always on)
    param_dtype: str = "bf16"  # bf16 | fp32: the blocks' compute dtype under FSDP
    reduce_dtype: str = "fp32"  # bf16 | fp32: gradient reduce-scatter dtype under FSDP
    reshard_after_forward: bool = True  # free gathered params after forward (ZeRO-3)

    def __post_init__(self) -> None:
        one_of("ParallelConfig.activation_checkpointing", self.activation_checkpointing, AC_MODES)
        for name in ("param_dtype", "reduce_dtype"):
            one_of(f"ParallelConfig.{name}", getattr(self, name), tuple(DTYPES))
        for name in ("compile", "fsdp", "reshard_after_forward"):
            boolean(f"ParallelConfig.{name}", getattr(self, name))


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList attribute 'blocks'")
    return blocks


def apply_ac(model: nn.Module, mode: str) -> nn.Module:
    """Activation checkpointing per block, in place: ``full`` keeps only each block's inputs and
    recomputes the block in backward (non-reentrant ``torch.utils.checkpoint``).

    Not for passes that write a KV cache with gradients on (self-forcing rollouts): the
    recomputation in backward would write the cache again and read what later frames left in it.
    """
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing mode must be one of {AC_MODES}, got {mode!r}")
    if mode == "none":
        return model
    blocks = _blocks(model)
    for i, block in enumerate(blocks):
        if not isinstance(block, CheckpointWrapper):
            blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return model


def apply_compile(model: nn.Module, *, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` each block in place (``nn.Module.compile``: names unchanged). Blocks are
    compiled one by one, so a graph break or recompilation stays local to one block."""
    for block in _blocks(model):
        block.compile(backend=backend, fullgraph=False)
    return model


def _cast_block_inputs(dtype: torch.dtype):
    """A forward pre-hook casting the floating tensors among a block's top-level arguments to
    ``dtype``; containers (``AttentionSites``) pass through untouched so every block shares them."""

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(dtype)
        return x

    def hook(module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def apply_fsdp(
    model: nn.Module,
    *,
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | str = torch.bfloat16,
    reduce_dtype: torch.dtype | str = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2 (``fully_shard``) on each block, then on the root, in place; parameters become
    ``DTensor`` shards over ``mesh`` (by default a 1-D mesh over all ranks).

    Needs an initialised process group (see :func:`init_distributed`). Mixed precision: blocks
    compute in ``param_dtype`` and return fp32; the root's own parameters stay fp32 (see the
    module docstring); gradients are reduced in ``reduce_dtype``. Load or initialise the weights
    before calling this: ``fully_shard`` shards the values already there.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "apply_fsdp needs an initialised process group: call init_distributed() under "
            "torchrun/srun first"
        )
    param_dtype = DTYPES[param_dtype] if isinstance(param_dtype, str) else param_dtype
    reduce_dtype = DTYPES[reduce_dtype] if isinstance(reduce_dtype, str) else reduce_dtype
    if mesh is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    low = param_dtype != torch.float32
    block_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype,
        reduce_dtype=reduce_dtype,
        output_dtype=torch.float32 if low else None,
        cast_forward_inputs=False,
    )
    blocks = _blocks(model)
    for i, block in enumerate(blocks):
        if low:
            block.register_forward_pre_hook(_cast_block_inputs(param_dtype), with_kwargs=True)
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(
            block,
            mesh=mesh,
            mp_policy=block_policy,
            reshard_after_forward=reshard_after_forward and i < len(blocks) - 1,
        )
    fully_shard(
        model,
        mesh=mesh,
        mp_policy=MixedPrecisionPolicy(param_dtype=None, reduce_dtype=reduce_dtype),
        reshard_after_forward=reshard_after_forward,
    )
    return model


def parallelize(
    model: nn.Module,
    config: ParallelConfig,
    *,
    world_size: int,
    mesh: DeviceMesh | None = None,
    compile_backend: str = "inductor",
) -> nn.Module:
    """``apply_ac`` -> ``apply_compile`` -> ``apply_fsdp`` as ``config`` says; FSDP whenever
    ``world_size > 1`` or ``config.fsdp``. Returns the same (rewritten) module.

    Without FSDP, ``param_dtype``/``reduce_dtype`` do nothing: parameters stay as they are and
    mixed precision is the trainer's ``torch.autocast``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    apply_ac(model, config.activation_checkpointing)
    if config.compile:
        apply_compile(model, backend=compile_backend)
    if world_size > 1 or config.fsdp:
        apply_fsdp(
            model,
            mesh=mesh,
            param_dtype=config.param_dtype,
            reduce_dtype=config.reduce_dtype,
            reshard_after_forward=config.reshard_after_forward,
        )
    logger.info(
        "parallelize: ac=%s compile=%s fsdp=%s world_size=%d",
        config.activation_checkpointing,
        config.compile,
        world_size > 1 or config.fsdp,
        world_size,
    )
    return model


# Process group ---------------------------------------------------------------------------------


def _launch_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's or SLURM's variables, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in env:
                raise ValueError(
                    f"SLURM launch with SLURM_NTASKS={env['SLURM_NTASKS']} needs {name} in the "
                    "environment (MASTER_ADDR: the first host of $SLURM_JOB_NODELIST; "
                    "MASTER_PORT: a free port)"
                )
        return (
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", "0")),
        )
    return None


def init_distributed(backend: str | None = None) -> tuple[int, int, int, torch.device]:
    """Joins the process group of a torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or SLURM
    (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` + ``MASTER_ADDR``/``MASTER_PORT``)
    launch and returns ``(rank, world_size, local_rank, device)``.

    The backend is nccl with CUDA, gloo without; a gloo group runs on the CPU. With CUDA the
    device is ``cuda:local_rank`` (``cuda:0`` when the launcher gave each task one visible GPU),
    made current. Without launcher variables (plain ``python``, or a one-task SLURM job) no group
    is made and the result is ``(0, 1, 0, device)``. Under torchrun a group is made even for one
    process, so that ``fsdp=True`` works on one GPU. Calling it again returns the same values.
    """
    launch = _launch_env()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    use_cuda = "nccl" in backend
    local_rank = launch[2] if launch is not None else 0
    if use_cuda:
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"backend {backend!r} needs CUDA, but no GPU is visible")
        index = 0 if count == 1 else local_rank
        if index >= count:
            raise ValueError(f"LOCAL_RANK={local_rank} but only {count} GPUs are visible")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if launch is None:
        return 0, 1, 0, device
    rank, world_size, local_rank = launch
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
        )
        logger.info("joined process group: rank %d/%d, %s, %s", rank, world_size, backend, device)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def destroy_distributed() -> None:
    """Leaves the process group, if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
