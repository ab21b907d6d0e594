"""The DualForce trainer: the loop, its state, the EMA and the checkpoints.

One loop for a CPU, one GPU, and many GPUs (``torchrun``/SLURM): the model is built on the
meta device, materialised, initialised, then parallelised from outside. Each optimiser step
sums the loss of ``grad_accum`` micro-batches (the multi-modal Diffusion Forcing objective,
:class:`df_train.objective.Objective`), skips the step if the loss is not finite on any rank
(counted; too many abort), else clips gradients, steps AdamW and the warmup-cosine schedule,
and updates the EMA weights.

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
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset

from df_data.dataset import ResumableSampler, WindowConfig, WindowDataset, collate_windows
from df_data.store import STRUCT_STATS_NAME, StructStats, read_metadata
from df_models import DualForceDiT
from df_models.io import write_json_atomic
from df_train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from df_train.collectives import (
    all_finite,
    average_gradients,
    barrier,
    clip_gradients,
    distributed,
    mean_over_ranks,
)
from df_train.config import TrainConfig
from df_train.export import export_bundle
from df_train.lipsync import LipSyncLoss
from df_train.objective import Objective
from df_train.optim import param_groups, warmup_cosine
from df_train.parallel import parallelize
from df_train.run_log import RunLog
from df_train.throughput import peak_tflops, train_step_flops
from df_train.weighting import UncertaintyWeighting

log = logging.getLogger(__name__)


class TrainingAbortedError(RuntimeError):
    """Too many non-finite losses."""


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
        self.rank, self.world_size = rank, world_size
        if world_size > 1 and not distributed(world_size):
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
        self.step_flops = self.peak_tflops = None
        if self._mfu_enabled():
            self.step_flops = train_step_flops(
                model,
                collate_windows([self.dataset[0]] * c.batch_size),
                struct_enabled=c.model.struct_enabled,
                grad_accum=c.grad_accum,
                precision=c.precision,
                device=self.device,
            )
            self.peak_tflops = peak_tflops(c.peak_tflops, c.precision, self.device)
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
            self.lip = LipSyncLoss(m.latent_channels, m.audio_dim, m.audio_window, c.loss.lip)
            self.lip = self.lip.to(self.device)
            groups += param_groups(self.lip, c.optim.weight_decay)
        self.trainables = Trainables(self.model, self.weighting, self.lip)
        self.objective = Objective(
            c,
            device=self.device,
            weighting=self.weighting,
            lip=self.lip,
            rank=rank,
            world_size=world_size,
        )
        # On CUDA the fused kernel (as torchtitan): the multi-tensor AdamW was 60% of a
        # synthtalk_small step's GPU time on the H200 (batch 32). That step is bound by the
        # host's kernel launches, so its wall time did not change (`dualforce bench train
        # --preset synthtalk_small --frames 8 --batch 32 --precision fp32`: 68 ms before, 74 ms
        # after, within run-to-run noise); GPU-bound steps (large batches) gain. The CPU keeps
        # the default implementation.
        self.optimizer = torch.optim.AdamW(
            groups, lr=c.optim.lr, betas=c.optim.betas, fused=self.device.type == "cuda" or None
        )
        self.scheduler = warmup_cosine(
            self.optimizer,
            warmup=c.optim.warmup_steps,
            total=c.steps,
            min_ratio=c.optim.min_lr_ratio,
        )
        # The same state on every rank: each draws the global batch's noise and keeps its rows.
        # It lives on the training device: drawn on the host, a 256-clip batch's noise took 30
        # ms of a 133 ms H200 step plus a pageable copy (issue 14 profile; BENCHMARKS.md).
        self.noise_gen = torch.Generator(device=self.device).manual_seed(c.seed * 1000)
        self.step = 0
        self.nan_skips = 0

    def _window_dataset(self) -> WindowDataset:
        return window_dataset(self.config)

    @property
    def struct_stats(self) -> StructStats | None:
        return getattr(self.dataset, "struct_stats", None)

    def _mfu_enabled(self) -> bool:
        mode = self.config.mfu
        return mode == "on" or (mode == "auto" and self.device.type == "cuda")

    # Checks ------------------------------------------------------------------------------------

    def _check_store_matches_model(self) -> None:
        check_store_matches_model(self.config, self.dataset)

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
        barrier(self.world_size)
        return Path(directory)

    def export_bundle(self, directory: str | Path, *, sampler=None) -> Path:
        """Writes the inference bundle (``df_models.bundle``): EMA model, the store's codec and
        ``inference.json`` with the recommended ``sampler`` settings, if given (every rank must
        call it, rank 0 writes); see :func:`df_train.export.export_bundle`."""
        return export_bundle(self, directory, sampler=sampler)

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

    # The step ----------------------------------------------------------------------------------

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on ``batch`` at the current step, drawing from the run's noise RNG."""
        return self.objective(self.model, batch, generator=self.noise_gen, step=self.step)

    def train_step(self, batches: list[dict]) -> StepMetrics:
        c = self.config
        self.model.train()
        total, terms_sum = 0.0, {}
        finite = True
        for batch in batches:
            loss, terms = self.loss(batch)
            if not all_finite(loss, self.world_size):
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
        average_gradients((self.weighting, self.lip), self.world_size)
        grad_norm = clip_gradients(self.model, c.optim.grad_clip, sharded=self._fsdp)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self._update_ema()
        logged = mean_over_ranks({"loss": total, **terms_sum}, self.world_size, self.device)
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

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``ema = d * ema + (1 - d) * weights``, as two multi-tensor (foreach) ops: one kernel
        launch per op and dtype group instead of two per tensor (the same arithmetic, so the
        same values, as the per-tensor loop)."""
        d = self.config.optim.ema_decay
        state = self.model.state_dict()
        emas = [self.ema[k] for k in state]
        torch._foreach_mul_(emas, d)
        torch._foreach_add_(emas, [v.float() for v in state.values()], alpha=1 - d)

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
            pin_memory=self.device.type == "cuda",  # page-locked batches copy faster to the GPU
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
        so that a checkpoint taken on preemption is always at a step boundary). Each step is
        logged to ``metrics.jsonl`` and TensorBoard (:class:`df_train.run_log.RunLog`).
        """
        c = self.config
        stop = min(c.steps, max_steps if max_steps is not None else c.steps)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(c.to_json())
            run_stats = self.out_dir / STRUCT_STATS_NAME
            if self.struct_stats is not None and not run_stats.is_file():
                write_json_atomic(run_stats, self.struct_stats.to_dict())
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
        run_log = RunLog(
            self.out_dir,
            name=c.name,
            start=self.step,
            stop=stop,
            enabled=self.rank == 0,
            progress=progress,
            tokens_per_step=tokens_per_step,
            step_flops=self.step_flops,
            peak_tflops=self.peak_tflops,
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
                run_log.step(self.step, dataclasses.asdict(m), elapsed)
                if self.step % c.ckpt_every == 0 or self.step == stop:
                    self.save()
        run_log.close()
        return history


def window_dataset(c: TrainConfig) -> WindowDataset:
    """The training windows of ``c.data.store`` as ``c`` asks for them (no model needed)."""
    return WindowDataset(
        c.data.store,
        WindowConfig(
            frames=c.data.frames,
            audio_context=c.model.audio_context,
            ref_other_prob=c.data.ref_other_prob,
            hflip_prob=c.data.hflip_prob,
            normalize_struct=c.data.normalize_struct and c.model.struct_enabled,
            ref_tokens=c.model.ref_tokens_enabled,
            cache_clips=c.data.cache_clips,
        ),
        seed=c.seed,
    )


def check_store_matches_model(config: TrainConfig, dataset) -> None:
    """The store's latents, structure, audio windows, encoders and reference tokens are what
    ``config.model`` and ``config.data.encoders`` expect (``ValueError`` naming the field)."""
    sample = dataset[0]
    m = config.model
    expected = (m.latent_channels, m.latent_height, m.latent_width)
    got = tuple(sample["latents"].shape[1:])
    store = config.data.store
    if got != expected:
        raise ValueError(
            f"store {store}: latents are {got} per frame but the model expects {expected} "
            "(model.latent_channels/latent_height/latent_width)"
        )
    check_store_structure(config, dataset)  # before the shapes that follow from it
    if m.struct_enabled and sample["struct"].shape[-1] != m.struct_raw_dim:
        k = m.frames_per_latent
        per_frame = sample["struct"].shape[-1] // k
        group = f" ({k} video frames of {per_frame} dims per latent frame)" if k > 1 else ""
        raise ValueError(
            f"store {store}: structure has {sample['struct'].shape[-1]} dims{group}, "
            f"model.struct_raw_dim is {m.struct_raw_dim}"
        )
    layers = (m.audio_layers,) if m.audio_layers > 1 else ()
    expected_audio = (m.audio_window, *layers, m.audio_dim)
    if tuple(sample["audio"].shape[1:]) != expected_audio:
        raise ValueError(
            f"store {store}: audio windows are {tuple(sample['audio'].shape[1:])}, the model "
            f"expects {expected_audio} (model.audio_window from audio_context, "
            "model.audio_layers: the encoder's stacked layers, model.audio_dim)"
        )
    check_store_encoders(config, dataset)
    if m.ref_tokens_enabled and sample["ref_tokens"].shape[-1] != m.ref_feature_dim:
        raise ValueError(
            f"store {store}: reference tokens have dim {sample['ref_tokens'].shape[-1]}, "
            f"model.ref_feature_dim is {m.ref_feature_dim}"
        )


def check_store_structure(config: TrainConfig, dataset) -> None:
    """The store's structure is ``data.struct`` (when set) and its frames per latent frame
    ``model.frames_per_latent``. Stores of other data (benchmarks) are not checked."""
    entries = getattr(dataset, "entries", None)
    if not entries:
        return
    m, store = config.model, config.data.store
    meta = read_metadata(dataset.store_dir, entries[0]["clip_id"])
    struct = meta.get("struct_extractor", "gt")
    if config.data.struct and struct != config.data.struct:
        raise ValueError(
            f"store {store}: its structure is {struct!r} ({len(meta['struct_names'])} dims), "
            f"data.struct asks for {config.data.struct!r}: extract the store with "
            f"'dualforce data extract --struct {config.data.struct}'"
        )
    fpl = int(meta.get("frames_per_latent", 1))
    if fpl != m.frames_per_latent:
        raise ValueError(
            f"store {store}: its codec puts {fpl} video frames in a latent frame "
            f"(frames_per_latent={fpl}; 4 for the Wan VAE) but the model has "
            f"model.frames_per_latent={m.frames_per_latent}: set it to {fpl}"
        )


def check_store_encoders(config: TrainConfig, dataset) -> None:
    """The store's encoders are the kinds (and audio layer) ``data.encoders`` names; the
    weights may come from anywhere (a hub id or a folder holding a copy), the model's
    widths are checked against the features themselves. Stores of other data
    (benchmarks) are not checked."""
    entries = getattr(dataset, "entries", None)
    if not entries:
        return
    spec, store = config.data.encoders, config.data.store
    meta = read_metadata(dataset.store_dir, entries[0]["clip_id"])
    audio, ref = meta.get("audio_encoder") or {}, meta.get("ref_encoder") or {}
    found = {
        "audio_encoder": audio.get("name"),
        "audio_layer": audio.get("layer", "last"),
        "ref_encoder": ref.get("name", "none"),
    }
    for key, value in found.items():
        wanted = getattr(spec, key)
        if value != wanted:
            raise ValueError(
                f"store {store} was extracted with {key}={value!r}, but "
                f"data.encoders.{key} is {wanted!r}: extract with `dualforce data extract "
                f"{' '.join(spec.cli_args())}` or set data.encoders to the store's encoders"
            )
