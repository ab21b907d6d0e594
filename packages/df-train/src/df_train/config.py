"""Training configuration: frozen dataclasses, validated, with ``key=value`` overrides.

Recipes (:mod:`df_train.recipes`) are Python functions returning a :class:`TrainConfig`;
``dualforce train --set optim.lr=3e-4 --set model.window=4`` changes fields by dotted path,
with values parsed by the type of the field they replace.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from df_models.config import DualForceConfig
from df_train.parallel import ParallelConfig


def _positive(
    owner: str, name: str, value, *, integer: bool = False, zero_ok: bool = False
) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not zero_ok):
        kind = "integer" if integer else "number"
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{owner}.{name} must be a {kind} {bound}, got {value!r}")


def _unit(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    store: str = ""  # clip store directory (dualforce data extract)
    frames: int = 8  # latent frames per training window
    audio_context: int = 2  # video frames of audio context on each side
    ref_other_prob: float = 0.2  # reference frame other than the first
    hflip_prob: float = 0.0  # horizontal flips in latent space
    num_workers: int = 0  # DataLoader workers
    normalize_struct: bool = True  # structure as (raw - mean) / std of the store's train split
    codec_dir: str = ""  # codec for the inference bundle (default: the store's store.json)

    def __post_init__(self) -> None:
        _positive("DataConfig", "frames", self.frames, integer=True)
        _positive("DataConfig", "audio_context", self.audio_context, integer=True, zero_ok=True)
        _positive("DataConfig", "num_workers", self.num_workers, integer=True, zero_ok=True)
        _unit("DataConfig", "ref_other_prob", self.ref_other_prob)
        _unit("DataConfig", "hflip_prob", self.hflip_prob)


@dataclass(frozen=True)
class NoiseConfig:
    distribution: str = "logit_normal"  # uniform | logit_normal (per-frame sigma_v)
    loc: float = 0.0  # logit-normal location
    scale: float = 1.0  # logit-normal scale
    shift: float = 1.0  # SD3/Wan shift of the training levels
    sigma_s_max: float = 0.7  # structure is trained up to this level
    struct_tail_prob: float = 0.05  # structure frames drawn from [sigma_s_max, 1]
    temporal: str = "independent"  # independent | sorted | pyramid
    clean_prefix_prob: float = 0.2  # clips with a clean-context prefix (as at inference)
    sigma_ctx: float = 0.0  # context frames get a level in [0, sigma_ctx]

    def __post_init__(self) -> None:
        if self.distribution not in ("uniform", "logit_normal"):
            raise ValueError(
                f"NoiseConfig.distribution must be uniform or logit_normal, got {self.distribution!r}"
            )
        if self.temporal not in ("independent", "sorted", "pyramid"):
            raise ValueError(
                f"NoiseConfig.temporal must be independent, sorted or pyramid, got {self.temporal!r}"
            )
        _positive("NoiseConfig", "scale", self.scale)
        _positive("NoiseConfig", "shift", self.shift)
        for name in ("sigma_s_max", "struct_tail_prob", "clean_prefix_prob", "sigma_ctx"):
            _unit("NoiseConfig", name, getattr(self, name))


@dataclass(frozen=True)
class LossConfig:
    lambda_struct: float = 1.0  # weight of the structure velocity loss
    lambda_aux: float = 0.0  # weight of the auxiliary 3-D label loss (decays)
    aux_decay_steps: int = 10_000  # steps over which lambda_aux decays to 0
    lambda_lip: float = 0.0  # weight of the contrastive audio-mouth loss
    lip_sigma_max: float = 1.0  # L_lip only on frames with sigma_v <= this (x0_hat is blurry)
    mouth_weight: float = 1.0  # video loss weight inside the mouth box, 1 elsewhere (1 = off)
    uncertainty_weighting: bool = False  # learn the weights (Kendall et al.) instead
    audio_drop_prob: float = 0.1  # conditioning dropout for audio CFG
    ref_drop_prob: float = 0.0  # conditioning dropout of reference tokens

    def __post_init__(self) -> None:
        for name in ("lambda_struct", "lambda_aux", "lambda_lip"):
            _positive("LossConfig", name, getattr(self, name), zero_ok=True)
        _positive("LossConfig", "aux_decay_steps", self.aux_decay_steps, integer=True)
        _unit("LossConfig", "audio_drop_prob", self.audio_drop_prob)
        _unit("LossConfig", "lip_sigma_max", self.lip_sigma_max)
        _unit("LossConfig", "ref_drop_prob", self.ref_drop_prob)
        w = self.mouth_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 1.0 <= w < math.inf:
            raise ValueError(f"LossConfig.mouth_weight must be a finite number >= 1, got {w!r}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01  # not applied to norms, biases, gates and embeddings
    warmup_steps: int = 100  # linear warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema_decay: float = 0.999  # EMA of the weights, exported for inference
    max_nan_skips: int = 20  # abort after this many non-finite losses in a run

    def __post_init__(self) -> None:
        _positive("OptimConfig", "lr", self.lr)
        _positive("OptimConfig", "weight_decay", self.weight_decay, zero_ok=True)
        _positive("OptimConfig", "warmup_steps", self.warmup_steps, integer=True, zero_ok=True)
        _unit("OptimConfig", "min_lr_ratio", self.min_lr_ratio)
        _positive("OptimConfig", "grad_clip", self.grad_clip, zero_ok=True)
        _unit("OptimConfig", "ema_decay", self.ema_decay)
        _positive("OptimConfig", "max_nan_skips", self.max_nan_skips, integer=True, zero_ok=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"  # recipe name, for logs
    model: DualForceConfig = field(default_factory=DualForceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    steps: int = 1000  # optimiser steps
    batch_size: int = 8  # clips per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    seed: int = 0
    out_dir: str = "runs/train"  # checkpoints, logs, exported weights
    log_every: int = 10  # steps between log lines
    ckpt_every: int = 200  # steps between checkpoints (and at the end)
    keep_last: int = 3  # checkpoints kept
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    mfu: str = "auto"  # report model FLOPs utilisation: auto (on CUDA) | on | off
    peak_tflops: float = 771.0  # MFU's peak: H100 bf16 dense matmul, measured; 0 = measure

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_last"):
            _positive("TrainConfig", name, getattr(self, name), integer=True)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"TrainConfig.precision must be fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.mfu not in ("auto", "on", "off"):
            raise ValueError(f"TrainConfig.mfu must be auto, on or off, got {self.mfu!r}")
        _positive("TrainConfig", "peak_tflops", self.peak_tflops, zero_ok=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _parse(value: str, current: Any, key: str) -> Any:
    if value.lower() in ("none", "null") and (current is None or key.endswith("window")):
        return None
    if isinstance(current, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {key}: expected true or false, got {value!r}")
    try:
        if isinstance(current, int) or (current is None and value.lstrip("-").isdigit()):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            return tuple(type(current[0])(v) for v in value.strip("()[]").split(","))
    except ValueError as e:
        raise ValueError(f"--set {key}: cannot parse {value!r} as {type(current).__name__}") from e
    return value


def apply_overrides(config, overrides: list[str]):
    """Applies ``section.field=value`` (or ``field=value``) overrides to any config dataclass
    (:class:`TrainConfig`, ``CodecTrainConfig``); unknown keys are errors."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        path = key.strip().split(".")
        objs = [config]
        for part in path[:-1]:
            obj = objs[-1]
            if not dataclasses.is_dataclass(obj) or part not in {
                f.name for f in dataclasses.fields(obj)
            }:
                raise ValueError(f"--set {key}: unknown section {part!r}")
            objs.append(getattr(obj, part))
        leaf, name = objs[-1], path[-1]
        if not dataclasses.is_dataclass(leaf) or name not in {
            f.name for f in dataclasses.fields(leaf)
        }:
            fields = sorted(f.name for f in dataclasses.fields(leaf))
            raise ValueError(f"--set {key}: unknown field {name!r}; fields here: {fields}")
        new = dataclasses.replace(leaf, **{name: _parse(value.strip(), getattr(leaf, name), key)})
        for obj, part in zip(reversed(objs[:-1]), reversed(path[:-1]), strict=True):
            new = dataclasses.replace(obj, **{part: new})
        config = new
    return config
