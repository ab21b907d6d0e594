"""The DualForce trainer: multi-modal Diffusion Forcing on a clip store.

One loop for a CPU, one GPU, and many GPUs (``torchrun``/SLURM): the model is built on the
meta device, materialised, initialised, then parallelised from outside. Each optimiser step:

1. draws per-frame noise levels for video and structure (df-core), sharing one clean-context
   prefix between the modalities, and noises both;
2. runs the training forward (whole clip, block-causal) with audio/reference dropout for CFG;
3. computes the velocity losses per frame (context frames excluded) and their weighted sum;
4. skips the step if the loss is not finite (counted; too many abort), else clips gradients,
   steps AdamW and the warmup-cosine schedule, and updates the EMA weights.

Exact resume: the sample position is ``step * batch * grad_accum`` (the dataset is a pure
function of the sample index) and every RNG the loop draws from is in the checkpoint, so N
steps, stop, resume, N steps equals 2N steps.
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from df_core import (
    add_noise,
    clean_prefix_lengths,
    frame_mse,
    reduce_frame_loss,
    sample_frame_sigmas,
)
from df_data.dataset import ResumableSampler, WindowConfig, WindowDataset, collate_windows
from df_models import DualForceDiT
from df_train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from df_train.config import TrainConfig
from df_train.losses import UncertaintyWeighting, aux_struct_loss, aux_weight

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


class Trainer:
    def __init__(
        self, config: TrainConfig, *, rank: int = 0, world_size: int = 1, device: str | None = None
    ) -> None:
        self.config = c = config
        self.rank, self.world_size = rank, world_size
        dev = device or c.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        torch.manual_seed(c.seed)
        with torch.device("meta"):
            model = DualForceDiT(c.model)
        model.to_empty(device=self.device)
        model.init_weights()
        self.model = model
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        # Learned loss weights (Kendall et al. 2018), when asked for instead of fixed weights.
        self.weighting = None
        groups = param_groups(model, c.optim.weight_decay)
        if c.loss.uncertainty_weighting:
            names = ["loss_video"] + (["loss_struct"] if c.model.struct_enabled else [])
            names += ["loss_aux"] if c.loss.lambda_aux > 0 and c.model.struct_enabled else []
            self.weighting = UncertaintyWeighting(names).to(self.device)
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=c.optim.lr, betas=c.optim.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(
                s, warmup=c.optim.warmup_steps, total=c.steps, min_ratio=c.optim.min_lr_ratio
            ),
        )
        self.noise_gen = torch.Generator().manual_seed(c.seed * 1000 + rank)
        self.step = 0
        self.nan_skips = 0
        self.out_dir = Path(c.out_dir)
        self.dataset = WindowDataset(
            c.data.store,
            WindowConfig(
                frames=c.data.frames,
                audio_context=c.data.audio_context,
                ref_other_prob=c.data.ref_other_prob,
                hflip_prob=c.data.hflip_prob,
            ),
            seed=c.seed,
        )
        self._check_store_matches_model()

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
        extra = {"weighting": self.weighting.state_dict()} if self.weighting is not None else {}
        return {
            **extra,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
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
        self.model.load_state_dict(state["model"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
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

    def export_ema(self, directory: str | Path) -> Path:
        """Writes the EMA weights as a ``save_pretrained`` directory for inference."""
        with torch.device("meta"):
            model = DualForceDiT(self.config.model)
        model.to_empty(device="cpu")
        model.load_state_dict({k: v.cpu() for k, v in self.ema.items()})
        return model.save_pretrained(directory)

    def resume(self) -> bool:
        """Loads the newest complete checkpoint of ``out_dir``; False when there is none."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        if not self.optimizer.state:  # create AdamW state so DCP has tensors to load into
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    self.optimizer.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
        state = self.state_dict()
        load_checkpoint(state, path)
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # The objective -----------------------------------------------------------------------------

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c, g = self.config, self.noise_gen
        dev = self.device
        x0_v = batch["latents"].to(dev)
        B, T = x0_v.shape[:2]
        # Step 1: per-frame noise levels with one shared clean-context prefix.
        prefix = clean_prefix_lengths(B, T, generator=g, prob=c.noise.clean_prefix_prob)
        n = c.noise
        common = dict(
            generator=g,
            distribution=n.distribution,
            loc=n.loc,
            scale=n.scale,
            shift=n.shift,
            temporal=n.temporal,
            prefix_B=prefix,
            sigma_ctx=n.sigma_ctx,
        )
        sigma_v = sample_frame_sigmas(B, T, sigma_max=1.0, **common)
        valid = torch.arange(T)[None, :] >= prefix[:, None]  # context frames carry no loss
        eps_v = torch.randn(x0_v.shape, generator=g)
        drop_audio = torch.rand(B, generator=g) < c.loss.audio_drop_prob
        drop_ref = torch.rand(B, generator=g) < c.loss.ref_drop_prob
        x_v = add_noise(x0_v, eps_v.to(dev), sigma_v.to(dev))
        s_args, x0_s, eps_s = {"s_BTDs": None, "sigma_s_BT": None}, None, None
        if c.model.struct_enabled:
            sigma_s = sample_frame_sigmas(
                B, T, sigma_max=n.sigma_s_max, tail_prob=n.struct_tail_prob, **common
            )
            x0_s = batch["struct"].to(dev)
            eps_s = torch.randn(x0_s.shape, generator=g).to(dev)
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
        loss_v = reduce_frame_loss(frame_mse(v_v, eps_v.to(dev) - x0_v), valid_BT=valid)
        terms = {"loss_video": loss_v}
        total = loss_v
        if v_s is not None:
            loss_s = reduce_frame_loss(frame_mse(v_s, eps_s - x0_s), valid_BT=valid)
            terms["loss_struct"] = loss_s
            total = total + c.loss.lambda_struct * loss_s
            # L_aux: the struct stream's clean estimate against the clip's 3-D labels (SynthTalk:
            # its exact ground truth), with a weight that decays so the stream can drift from them.
            w_aux = aux_weight(self.step, c.loss.lambda_aux, c.loss.aux_decay_steps)
            if c.loss.lambda_aux > 0:
                s0_hat = s_args["s_BTDs"] - s_args["sigma_s_BT"][..., None] * v_s.float()
                terms["loss_aux"] = aux_struct_loss(s0_hat, x0_s, valid)
                total = total + w_aux * terms["loss_aux"]
        if self.weighting is not None:
            total, _ = self.weighting(terms)
        return total, terms

    def train_step(self, batches: list[dict]) -> StepMetrics:
        c = self.config
        self.model.train()
        total, terms_sum = 0.0, {}
        finite = True
        for batch in batches:
            loss, terms = self.loss(batch)
            if not torch.isfinite(loss):
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
            return StepMetrics(
                float("nan"),
                float("nan"),
                float("nan"),
                float("nan"),
                self.scheduler.get_last_lr()[0],
                True,
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), c.optim.grad_clip if c.optim.grad_clip > 0 else float("inf")
        )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        with torch.no_grad():
            d = c.optim.ema_decay
            for k, v in self.model.state_dict().items():
                self.ema[k].mul_(d).add_(v.float(), alpha=1 - d)
        return StepMetrics(
            total,
            terms_sum.get("loss_video", 0.0),
            terms_sum.get("loss_struct", 0.0),
            float(grad_norm),
            lr,
            False,
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
        """
        c = self.config
        stop = min(c.steps, max_steps if max_steps is not None else c.steps)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(c.to_json())
        metrics_path = self.out_dir / "metrics.jsonl"
        loader = iter(self._loader(self.step * c.batch_size * c.grad_accum))
        history = []
        tokens_per_step = (
            c.batch_size
            * c.grad_accum
            * (c.data.frames + 1)
            * (c.model.video_tokens + c.model.struct_tokens)
        )
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
                elapsed = time.perf_counter() - t0
                t0 = time.perf_counter()
                if self.rank == 0:
                    record = {
                        "step": self.step,
                        **m.__dict__,
                        "tokens_per_s": tokens_per_step / max(elapsed, 1e-9),
                    }
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    for key in (
                        "loss",
                        "loss_video",
                        "loss_struct",
                        "grad_norm",
                        "lr",
                        "tokens_per_s",
                    ):
                        writer.add_scalar(f"train/{key}", record[key], self.step)
                    bar.set_postfix(loss=f"{m.loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    bar.update(1)
                if self.step % c.ckpt_every == 0 or self.step == stop:
                    self.save()
        bar.close()
        if writer is not None:
            writer.close()
        return history
