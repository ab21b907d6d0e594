"""The DualForce trainer: multi-modal Diffusion Forcing on a clip store.

One loop for a CPU, one GPU, and many GPUs (``torchrun``/SLURM): the model is built on the
meta device, materialised, initialised, then parallelised from outside. Each optimiser step:

1. draws per-frame noise levels for video and structure (df-core), sharing one clean-context
   prefix between the modalities, and noises both;
2. runs the training forward (whole clip, block-causal) with audio/reference dropout for CFG;
3. computes the velocity losses per frame (context frames excluded) and their weighted sum;
4. skips the step if the loss is not finite on any rank (counted; too many abort), else clips
   gradients, steps AdamW and the warmup-cosine schedule, and updates the EMA weights.

Exact resume: the sample position is ``step * batch * grad_accum`` (the dataset is a pure
function of the sample index) and every RNG the loop draws from is in the checkpoint, so N
steps, stop, resume, N steps equals 2N steps.

Several processes (``torchrun``/SLURM, :func:`df_train.parallel.init_distributed`): the model
is sharded with FSDP2 (:func:`df_train.parallel.parallelize`), each rank takes every
``world``-th sample of the global sample sequence, so a micro-batch of ``batch_size`` per rank is
the global batch of ``batch_size * world`` clips a single process would see, and the noise is
drawn for that global batch from a generator every rank holds in the same state, each rank
keeping its own rows. A run on W processes therefore sees the same clips and the same noise as
one process with ``batch_size * W`` (up to float reduction order), and one process is exactly
the old single-device loop. Model and optimiser state go through DCP's
``get_state_dict``/``set_state_dict`` (sharded DTensors), the EMA is kept sharded like the
parameters and gathered only for export, the loss terms are all-reduced for logging, and only
rank 0 writes logs.

Structure is trained in normalised units (``DataConfig.normalize_struct``: ``(raw - mean) /
std`` of the store's train split, see :func:`df_data.store.struct_stats`); ``L_aux`` compares
the struct stream's clean estimate with labels in the same units (the batch's structure). The
statistics a run starts with are kept in ``<out>/struct_stats.json`` and reused on resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from df_core import (
    add_noise,
    clean_prefix_lengths,
    frame_mse,
    reduce_frame_loss,
    sample_dual_sigmas,
)
from df_data.dataset import ResumableSampler, WindowConfig, WindowDataset, collate_windows
from df_data.store import STRUCT_STATS_NAME, StructStats
from df_models import DualForceDiT
from df_models.io import write_json_atomic
from df_train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from df_train.config import TrainConfig
from df_train.losses import (
    LipSyncLoss,
    UncertaintyWeighting,
    aux_struct_loss,
    aux_weight,
    mouth_box_to_latent,
    mouth_weight_map,
    weighted_frame_mse,
)
from df_train.parallel import parallelize
from df_train.throughput import count_model_step_flops, measure_peak_tflops

log = logging.getLogger(__name__)


class TrainingAbortedError(RuntimeError):
    """Too many non-finite losses."""


def lr_lambda(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, gates, null tokens or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(
            k in name for k in ("norm", "null", "sink", "position", "alpha", "logits")
        )
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class StepMetrics:
    loss: float
    loss_video: float
    loss_struct: float
    grad_norm: float
    lr: float
    skipped: bool
    loss_aux: float = 0.0
    loss_lip: float = 0.0  # the generator's L_lip (unweighted)
    loss_lip_heads: float = 0.0  # the lip heads' InfoNCE on ground-truth latents


class Trainables(nn.Module):
    """Everything the optimiser updates, under one root, so that DCP's ``get_state_dict`` can
    name every parameter of the optimiser: the model, and optionally the learned loss weights
    and the lip-sync heads."""

    def __init__(
        self,
        model: nn.Module,
        weighting: UncertaintyWeighting | None,
        lip: LipSyncLoss | None,
    ) -> None:
        super().__init__()
        self.model = model
        if weighting is not None:
            self.weighting = weighting
        if lip is not None:
            self.lip = lip


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def _barrier(world_size: int) -> None:
    if _distributed(world_size):
        dist.barrier()


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        """``dataset`` replaces the store's windows (benchmarks use synthetic ones); it must
        return what :class:`df_data.dataset.WindowDataset` returns."""
        self.config = c = config
        if c.model.ref_tokens_enabled:
            raise ValueError(
                "TrainConfig.model.ref_tokens_enabled is True, but clip stores hold no global "
                "reference features to train them on; set ref_tokens_enabled=False"
            )
        self.rank, self.world_size = rank, world_size
        if world_size > 1 and not _distributed(world_size):
            raise ValueError(
                f"world_size={world_size} needs an initialised process group "
                "(df_train.parallel.init_distributed under torchrun/srun)"
            )
        dev = device or c.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.out_dir = Path(c.out_dir)
        self.dataset = dataset if dataset is not None else self._window_dataset()
        self._check_store_matches_model()
        torch.manual_seed(c.seed)
        with torch.device("meta"):
            model = DualForceDiT(c.model)
        model.to_empty(device=self.device)
        model.init_weights()
        # Counted before parallelize: no checkpointing recomputation, no compiled graphs.
        self.step_flops = self._count_flops(model) if self._mfu_enabled() else None
        self.peak_tflops = self._peak_tflops() if self.step_flops is not None else None
        self.model = parallelize(model, c.parallel, world_size=world_size)
        self._fsdp = world_size > 1 or c.parallel.fsdp
        # EMA in fp32, sharded like the parameters (DTensors under FSDP).
        self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()}
        # Learned loss weights (Kendall et al. 2018), when asked for instead of fixed weights.
        self.weighting = None
        groups = param_groups(self.model, c.optim.weight_decay)
        if c.loss.uncertainty_weighting:
            names = ["loss_video"] + (["loss_struct"] if c.model.struct_enabled else [])
            names += ["loss_aux"] if c.loss.lambda_aux > 0 and c.model.struct_enabled else []
            self.weighting = UncertaintyWeighting(names).to(self.device)
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        # L_lip's heads: trained on ground-truth latents, read by the generator's term.
        self.lip = None
        if c.loss.lambda_lip > 0:
            m = c.model
            self.lip = LipSyncLoss(m.latent_channels, m.audio_dim, m.audio_window).to(self.device)
            groups += param_groups(self.lip, c.optim.weight_decay)
        self.trainables = Trainables(self.model, self.weighting, self.lip)
        self.optimizer = torch.optim.AdamW(groups, lr=c.optim.lr, betas=c.optim.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(
                s, warmup=c.optim.warmup_steps, total=c.steps, min_ratio=c.optim.min_lr_ratio
            ),
        )
        # The same state on every rank: each draws the global batch's noise and keeps its rows.
        self.noise_gen = torch.Generator().manual_seed(c.seed * 1000)
        self.step = 0
        self.nan_skips = 0

    def _window_dataset(self) -> WindowDataset:
        c = self.config
        return WindowDataset(
            c.data.store,
            WindowConfig(
                frames=c.data.frames,
                audio_context=c.data.audio_context,
                ref_other_prob=c.data.ref_other_prob,
                hflip_prob=c.data.hflip_prob,
                normalize_struct=c.data.normalize_struct and c.model.struct_enabled,
            ),
            seed=c.seed,
        )

    @property
    def struct_stats(self) -> StructStats | None:
        return getattr(self.dataset, "struct_stats", None)

    # Throughput --------------------------------------------------------------------------------

    def _mfu_enabled(self) -> bool:
        mode = self.config.mfu
        return mode == "on" or (mode == "auto" and self.device.type == "cuda")

    def _count_flops(self, model: DualForceDiT) -> int:
        """FLOPs of one optimiser step on this rank (forward + backward of every micro-batch)."""
        c = self.config
        batch = collate_windows([self.dataset[0]] * c.batch_size)
        dev = self.device
        B, T = batch["latents"].shape[:2]
        inputs = {
            "z_BTCHW": batch["latents"].to(dev),
            "sigma_v_BT": torch.full((B, T), 0.5, device=dev),
            "audio_BTLDa": batch["audio"].to(dev),
            "ref_latent_BCHW": batch["ref_latent"].to(dev),
            "s_BTDs": batch["struct"].to(dev) if c.model.struct_enabled else None,
            "sigma_s_BT": torch.full((B, T), 0.5, device=dev) if c.model.struct_enabled else None,
        }
        return c.grad_accum * count_model_step_flops(model, inputs, precision=c.precision)

    def _peak_tflops(self) -> float:
        c = self.config
        if c.peak_tflops > 0:
            return c.peak_tflops
        dtype = torch.bfloat16 if c.precision == "bf16" else torch.float32
        size = 8192 if self.device.type == "cuda" else 1024
        peak = measure_peak_tflops(self.device, dtype, size=size)
        log.info("measured peak: %.1f TFLOP/s (%s matmul on %s)", peak, dtype, self.device)
        return peak

    # Checks ------------------------------------------------------------------------------------

    def _check_store_matches_model(self) -> None:
        sample = self.dataset[0]
        m = self.config.model
        expected = (m.latent_channels, m.latent_height, m.latent_width)
        got = tuple(sample["latents"].shape[1:])
        store = self.config.data.store
        if got != expected:
            raise ValueError(
                f"store {store}: latents are {got} per frame but the model expects {expected} "
                "(model.latent_channels/latent_height/latent_width)"
            )
        if m.struct_enabled and sample["struct"].shape[-1] != m.struct_raw_dim:
            raise ValueError(
                f"store {store}: structure has {sample['struct'].shape[-1]} dims, "
                f"model.struct_raw_dim is {m.struct_raw_dim}"
            )
        if sample["audio"].shape[-1] != m.audio_dim or sample["audio"].shape[1] != m.audio_window:
            raise ValueError(
                f"store {store}: audio windows are {tuple(sample['audio'].shape[1:])}, the model "
                f"expects ({m.audio_window}, {m.audio_dim}) (model.audio_dim, audio_context)"
            )

    # State -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The DCP state: model (with the loss weights and lip heads) and optimiser as
        ``get_state_dict`` gives them (sharded under FSDP; it also creates AdamW's state before
        the first step, so that a checkpoint can be loaded into a fresh trainer), the EMA, and
        the counters and RNG states."""
        model_state, optim_state = get_state_dict(self.trainables, self.optimizer)
        return {
            "model": model_state,
            "optimizer": optim_state,
            "ema": self.ema,
            "trainer": {
                "step": torch.tensor(self.step),
                "nan_skips": torch.tensor(self.nan_skips),
                "scheduler_epoch": torch.tensor(self.scheduler.last_epoch),
                "noise_rng": self.noise_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(
            self.trainables,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        for k, v in state["ema"].items():
            self.ema[k].copy_(v)
        t = state["trainer"]
        self.step = int(t["step"])
        self.nan_skips = int(t["nan_skips"])
        self.scheduler.last_epoch = int(t["scheduler_epoch"])
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.noise_gen.set_state(t["noise_rng"])
        torch.set_rng_state(t["torch_rng"])

    def save(self) -> Path:
        # DCP fills tensors in place on load, so optimizer state must exist: it does after step 1.
        return save_checkpoint(
            self.state_dict(), self.out_dir, self.step, keep_last=self.config.keep_last
        )

    def ema_model(self) -> DualForceDiT | None:
        """The EMA weights in a plain CPU model (gathered from the shards: every rank must call
        this); None on ranks other than 0."""
        full = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in self.ema.items()
        }
        if self.rank != 0:
            return None
        with torch.device("meta"):
            model = DualForceDiT(self.config.model)
        model.to_empty(device="cpu")
        model.load_state_dict(full)
        return model

    def export_ema(self, directory: str | Path) -> Path:
        """Writes the EMA weights as a ``save_pretrained`` directory (model only; every rank
        must call it, rank 0 writes)."""
        model = self.ema_model()
        if model is not None:
            model.save_pretrained(directory)
        _barrier(self.world_size)
        return Path(directory)

    def export_bundle(self, directory: str | Path) -> Path:
        """Writes the inference bundle (``df_models.bundle``): EMA model, the store's codec and
        ``inference.json`` (every rank must call it, rank 0 writes); see
        :func:`df_train.export.export_bundle`."""
        from df_train.export import export_bundle

        return export_bundle(self, directory)

    def resume(self) -> bool:
        """Loads the newest complete checkpoint of ``out_dir``; False when there is none. The
        run's own ``struct_stats.json`` (the normalisation it trained with) replaces the
        store's, should the store have changed since."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = self.state_dict()
        load_checkpoint(state, path)
        self.load_state_dict(state)
        run_stats = self.out_dir / STRUCT_STATS_NAME
        if self.struct_stats is not None and run_stats.is_file():
            stats = StructStats.from_dict(json.loads(run_stats.read_text()), source=str(run_stats))
            if stats != self.struct_stats:
                log.warning(
                    "%s differs from the store's struct stats (the store changed): keeping the "
                    "run's, so that training continues in the same units",
                    run_stats,
                )
                self.dataset.struct_stats = stats
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # The objective -----------------------------------------------------------------------------

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, g = self.config, self.noise_gen
        dev = self.device
        x0_v = batch["latents"].to(dev)
        B, T = x0_v.shape[:2]
        # Step 1: per-frame noise levels with one shared clean-context prefix, drawn for the
        # global batch (GB clips); this rank's clips are rows rank, rank + world, ...
        GB, mine = B * self.world_size, slice(self.rank, None, self.world_size)
        prefix_G = clean_prefix_lengths(GB, T, generator=g, prob=c.noise.clean_prefix_prob)
        prefix = prefix_G[mine]
        n = c.noise
        sigma_v_G, sigma_s_G = sample_dual_sigmas(
            GB,
            T,
            generator=g,
            distribution=n.distribution,
            loc=n.loc,
            scale=n.scale,
            shift=n.shift,
            sigma_s_max=n.sigma_s_max,
            struct_tail_prob=n.struct_tail_prob,
            temporal=n.temporal,
            sigma_ctx=n.sigma_ctx,
            prefix_B=prefix_G,
        )
        sigma_v, sigma_s = sigma_v_G[mine], sigma_s_G[mine]
        valid = torch.arange(T)[None, :] >= prefix[:, None]  # context frames carry no loss
        eps_v = torch.randn((GB, *x0_v.shape[1:]), generator=g)[mine]
        drop_audio = (torch.rand(GB, generator=g) < c.loss.audio_drop_prob)[mine]
        drop_ref = (torch.rand(GB, generator=g) < c.loss.ref_drop_prob)[mine]
        x_v = add_noise(x0_v, eps_v.to(dev), sigma_v.to(dev))
        s_args, x0_s, eps_s = {"s_BTDs": None, "sigma_s_BT": None}, None, None
        if c.model.struct_enabled:
            x0_s = batch["struct"].to(dev)
            eps_s = torch.randn((GB, *x0_s.shape[1:]), generator=g)[mine].to(dev)
            s_args = {
                "s_BTDs": add_noise(x0_s, eps_s, sigma_s.to(dev)),
                "sigma_s_BT": sigma_s.to(dev),
            }
        # Step 2: the training forward.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=c.precision == "bf16"):
            v_v, v_s = self.model(
                x_v,
                sigma_v_BT=sigma_v.to(dev),
                audio_BTLDa=batch["audio"].to(dev),
                ref_latent_BCHW=batch["ref_latent"].to(dev),
                drop_audio_B=drop_audio.to(dev),
                drop_ref_B=drop_ref.to(dev) if c.model.ref_tokens_enabled else None,
                **s_args,
            )
        # Step 3: velocity losses, per token averaged per frame, context frames excluded.
        valid = valid.to(dev)
        loss_v = reduce_frame_loss(
            self._video_frame_mse(batch, v_v, eps_v.to(dev) - x0_v), valid_BT=valid
        )
        terms = {"loss_video": loss_v}
        total = loss_v
        if v_s is not None:
            loss_s = reduce_frame_loss(frame_mse(v_s, eps_s - x0_s), valid_BT=valid)
            terms["loss_struct"] = loss_s
            total = total + c.loss.lambda_struct * loss_s
            # L_aux: the struct stream's clean estimate against the clip's 3-D labels (SynthTalk:
            # its exact ground truth), with a weight that decays so the stream can drift from them.
            # Labels and estimate are both in the normalised units the struct stream sees.
            w_aux = aux_weight(self.step, c.loss.lambda_aux, c.loss.aux_decay_steps)
            if c.loss.lambda_aux > 0:
                s0_hat = s_args["s_BTDs"] - s_args["sigma_s_BT"][..., None] * v_s.float()
                terms["loss_aux"] = aux_struct_loss(s0_hat, x0_s, valid)
                total = total + w_aux * terms["loss_aux"]
        if self.weighting is not None:
            total, _ = self.weighting(terms)
        # Step 4: L_lip on the predicted clean latents, where the clip has mouth boxes.
        if self.lip is not None and bool(batch["has_mouth_box"].any()):
            lip_terms = self._lip_terms(batch, x_v, v_v, sigma_v, valid, drop_audio)
            terms.update(lip_terms)
            total = total + lip_terms["loss_lip_heads"] + c.loss.lambda_lip * lip_terms["loss_lip"]
        return total, terms

    def _mouth_boxes(self, batch: dict, latent_size: tuple[int, int]) -> torch.Tensor:
        """The batch's mouth boxes in latent pixels, ``[B, T, 4]``."""
        sizes = set(map(tuple, batch["image_size"]))
        if len(sizes) != 1:
            raise ValueError(f"mouth boxes of one batch refer to several frame sizes {sizes}")
        return mouth_box_to_latent(batch["mouth_box"].to(self.device), sizes.pop(), latent_size)

    def _video_frame_mse(
        self, batch: dict, v_pred: torch.Tensor, v_target: torch.Tensor
    ) -> torch.Tensor:
        """Per-frame video velocity MSE ``[B, T]``: a plain mean over the frame, or, with
        ``LossConfig.mouth_weight > 1``, a weighted mean with the mouth box weighted up (clips
        without a box keep uniform weights)."""
        weight = self.config.loss.mouth_weight
        if weight == 1.0 or not bool(batch["has_mouth_box"].any()):
            return frame_mse(v_pred, v_target)
        H, W = v_pred.shape[-2:]
        w_BTHW = mouth_weight_map(self._mouth_boxes(batch, (H, W)), H, W, weight)
        has_box_B = batch["has_mouth_box"].to(self.device)
        w_BTHW = torch.where(has_box_B[:, None, None, None], w_BTHW, torch.ones_like(w_BTHW))
        return weighted_frame_mse(v_pred, v_target, w_BTHW)

    def _lip_terms(
        self,
        batch: dict,
        x_v: torch.Tensor,
        v_v: torch.Tensor,
        sigma_v: torch.Tensor,
        valid: torch.Tensor,
        drop_audio: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``loss_lip_heads``: the heads' InfoNCE on ground-truth latents (trains the heads
        only); ``loss_lip``: the generator's InfoNCE on ``x0_hat = x_sigma - sigma * v_hat``
        against the same heads, frozen (trains the model only), on frames that carry loss, with
        a box, with audio (not dropped for CFG) and ``sigma_v <= lip_sigma_max``."""
        dev = self.device
        box = self._mouth_boxes(batch, tuple(x_v.shape[-2:]))
        audio = batch["audio"].to(dev)
        has_box = batch["has_mouth_box"].to(dev)[:, None].expand(valid.shape)
        x0_v = batch["latents"].to(dev)
        heads, _ = self.lip(x0_v, box, audio, has_box)
        sigma_v = sigma_v.to(dev)
        gen_valid = (
            has_box
            & valid.to(dev)
            & ~drop_audio.to(dev)[:, None]
            & (sigma_v <= self.config.loss.lip_sigma_max)
        )
        x0_hat = x_v - sigma_v[:, :, None, None, None] * v_v.float()
        gen, _ = self.lip(x0_hat, box, audio, gen_valid, heads_grad=False)
        return {"loss_lip_heads": heads, "loss_lip": gen}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks skip a step together: one rank
        going on alone would wait forever in FSDP's collectives)."""
        finite = torch.isfinite(loss.detach())
        if _distributed(self.world_size):
            flag = finite.float().reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            return bool(flag.item() > 0)
        return bool(finite)

    def _reduce_aux_grads(self) -> None:
        """Averages the gradients of the parameters FSDP does not manage (learned loss weights,
        lip heads) over the ranks; a rank without a gradient contributes zeros."""
        if not _distributed(self.world_size):
            return
        for module in (self.weighting, self.lip):
            if module is None:
                continue
            for p in module.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def _clip_gradients(self) -> torch.Tensor:
        """Clips the model's gradients to ``grad_clip`` (global norm over all shards)."""
        max_norm = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else float("inf")
        if not self._fsdp:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):  # a partial norm of the local shards: reduce it
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def _reduce_for_logging(self, values: dict[str, float]) -> dict[str, float]:
        if not _distributed(self.world_size) or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, (t / self.world_size).tolist(), strict=True))

    def train_step(self, batches: list[dict]) -> StepMetrics:
        c = self.config
        self.model.train()
        total, terms_sum = 0.0, {}
        finite = True
        for batch in batches:
            loss, terms = self.loss(batch)
            if not self._all_finite(loss):
                finite = False
                break
            (loss / len(batches)).backward()
            total += float(loss.detach()) / len(batches)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / len(batches)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nan_skips += 1
            self.step += 1
            self.scheduler.step()
            if self.nan_skips > c.optim.max_nan_skips:
                raise TrainingAbortedError(
                    f"{self.nan_skips} non-finite losses (OptimConfig.max_nan_skips={c.optim.max_nan_skips}); "
                    "lower optim.lr, use precision=fp32, or check the store with `dualforce data inspect`"
                )
            log.warning(
                "non-finite loss at step %d: skipped (%d so far)", self.step, self.nan_skips
            )
            nan = float("nan")
            return StepMetrics(nan, nan, nan, nan, self.scheduler.get_last_lr()[0], True)
        self._reduce_aux_grads()
        grad_norm = self._clip_gradients()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        with torch.no_grad():
            d = c.optim.ema_decay
            for k, v in self.model.state_dict().items():
                self.ema[k].mul_(d).add_(v.float(), alpha=1 - d)
        logged = self._reduce_for_logging({"loss": total, **terms_sum})
        return StepMetrics(
            logged["loss"],
            logged.get("loss_video", 0.0),
            logged.get("loss_struct", 0.0),
            float(grad_norm),
            lr,
            False,
            loss_aux=logged.get("loss_aux", 0.0),
            loss_lip=logged.get("loss_lip", 0.0),
            loss_lip_heads=logged.get("loss_lip_heads", 0.0),
        )

    # The loop ----------------------------------------------------------------------------------

    def _loader(self, start_sample: int) -> DataLoader:
        c = self.config
        total = c.steps * c.batch_size * c.grad_accum
        sampler = ResumableSampler(
            total, start=start_sample, rank=self.rank, world_size=self.world_size
        )
        return DataLoader(
            self.dataset,
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=c.data.num_workers,
            collate_fn=collate_windows,
        )

    def fit(
        self,
        *,
        max_steps: int | None = None,
        progress: bool = True,
        step_guard=contextlib.nullcontext,
    ) -> list[StepMetrics]:
        """Trains from the current step to ``config.steps`` (or ``max_steps``, to stop early).

        ``step_guard`` wraps each optimiser step (the launcher defers preemption signals with it
        so that a checkpoint taken on preemption is always at a step boundary).

        Each step's record in ``metrics.jsonl`` has the loss terms, ``tokens_per_s`` (all ranks)
        and, where MFU is reported (``TrainConfig.mfu``), ``tflops`` (per rank) and ``mfu``.
        """
        c = self.config
        stop = min(c.steps, max_steps if max_steps is not None else c.steps)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(c.to_json())
            run_stats = self.out_dir / STRUCT_STATS_NAME
            if self.struct_stats is not None and not run_stats.is_file():
                write_json_atomic(run_stats, self.struct_stats.to_dict())
        metrics_path = self.out_dir / "metrics.jsonl"
        loader = iter(self._loader(self.step * c.batch_size * c.grad_accum))
        history = []
        tokens_per_step = (
            self.world_size
            * c.batch_size
            * c.grad_accum
            * (c.data.frames + 1)
            * (c.model.video_tokens + c.model.struct_tokens)
        )
        sync = self.device.type == "cuda" and self.step_flops is not None
        bar = tqdm(
            total=stop,
            initial=self.step,
            desc=c.name,
            disable=not progress or self.rank != 0,
            unit="step",
        )
        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(
                log_dir=str(self.out_dir / "tensorboard"), purge_step=self.step + 1
            )
        t0 = time.perf_counter()
        while self.step < stop:
            batches = [next(loader) for _ in range(c.grad_accum)]
            with step_guard():
                m = self.train_step(batches)
                history.append(m)
                if sync:
                    torch.cuda.synchronize(self.device)
                elapsed = max(time.perf_counter() - t0, 1e-9)
                t0 = time.perf_counter()
                if self.rank == 0:
                    record = {"step": self.step, **m.__dict__, "tokens_per_s": 0.0}
                    record["tokens_per_s"] = tokens_per_step / elapsed
                    postfix = {"loss": f"{m.loss:.4f}", "tok_s": f"{record['tokens_per_s']:.0f}"}
                    if self.step_flops is not None:
                        record["tflops"] = self.step_flops / elapsed / 1e12
                        record["mfu"] = record["tflops"] / self.peak_tflops
                        postfix["mfu"] = f"{record['mfu']:.1%}"
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    for key, value in record.items():
                        if key != "step" and isinstance(value, float):
                            writer.add_scalar(f"train/{key}", value, self.step)
                    bar.set_postfix(postfix)
                    bar.update(1)
                if self.step % c.ckpt_every == 0 or self.step == stop:
                    self.save()
        bar.close()
        if writer is not None:
            writer.close()
        return history
