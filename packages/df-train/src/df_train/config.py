"""Training configuration: frozen dataclasses, validated, with ``key=value`` overrides.

Recipes (:mod:`df_train.recipes`) are Python functions returning a :class:`TrainConfig`;
``dualforce train --set optim.lr=3e-4 --set model.window=4`` changes fields by dotted path,
with values parsed by the type of the field they replace.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from df_core import SIGMA_S_MAX
from df_core.checks import (
    boolean,
    float_at_least,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    unit_float,
)
from df_data.encoders.spec import EncoderSpec
from df_models.config import DualForceConfig
from df_train.lipsync import LipSyncConfig
from df_train.parallel import ParallelConfig

NOISE_DISTRIBUTIONS = ("uniform", "logit_normal")
NOISE_TEMPORAL = ("independent", "sorted", "pyramid")

# Fields that moved, by their old dotted path: one source for each setting.
MOVED_FIELDS = {
    "data.audio_context": "model.audio_context (the model's audio window is the data's)",
}


STRUCTURES = ("gt", "mesh", "liveportrait")  # df_data.structure.STRUCT_EXTRACTORS


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    store: str = ""  # clip store directory (dualforce data extract)
    frames: int = 8  # latent frames per training window
    ref_other_prob: float = 0.2  # reference frame other than the first
    hflip_prob: float = 0.0  # horizontal flips in latent space
    num_workers: int = 0  # DataLoader workers
    cache_clips: int = 64  # decoded clips each worker keeps in memory (LRU)
    normalize_struct: bool = True  # structure as (raw - mean) / std of the store's train split
    codec_dir: str = ""  # codec for the inference bundle (default: the store's store.json)
    struct: str = ""  # structure the store must hold: gt | mesh | liveportrait; "" any
    # The encoders the store must have been extracted with (`dualforce data extract` flags:
    # EncoderSpec.cli_args()); the trainer checks the store's records against them.
    encoders: EncoderSpec = field(default_factory=EncoderSpec)

    def __post_init__(self) -> None:
        if self.struct:
            one_of("DataConfig.struct", self.struct, STRUCTURES)
        positive_int("DataConfig.frames", self.frames)
        non_negative_int("DataConfig.num_workers", self.num_workers)
        positive_int("DataConfig.cache_clips", self.cache_clips)
        unit_float("DataConfig.ref_other_prob", self.ref_other_prob)
        unit_float("DataConfig.hflip_prob", self.hflip_prob)
        boolean("DataConfig.normalize_struct", self.normalize_struct)


@dataclass(frozen=True, kw_only=True, slots=True)
class NoiseConfig:
    distribution: str = "logit_normal"  # uniform | logit_normal (per-frame sigma_v)
    loc: float = 0.0  # logit-normal location
    scale: float = 1.0  # logit-normal scale
    shift: float = 1.0  # SD3/Wan shift of the training levels
    sigma_s_max: float = SIGMA_S_MAX  # structure is trained up to this level
    struct_tail_prob: float = 0.05  # structure frames drawn from [sigma_s_max, 1]
    temporal: str = "independent"  # independent | sorted | pyramid
    clean_prefix_prob: float = 0.2  # clips with a clean-context prefix (as at inference)
    sigma_ctx: float = 0.0  # context frames get a level in [0, sigma_ctx]

    def __post_init__(self) -> None:
        one_of("NoiseConfig.distribution", self.distribution, NOISE_DISTRIBUTIONS)
        one_of("NoiseConfig.temporal", self.temporal, NOISE_TEMPORAL)
        positive_float("NoiseConfig.scale", self.scale)
        positive_float("NoiseConfig.shift", self.shift)
        for name in ("sigma_s_max", "struct_tail_prob", "clean_prefix_prob", "sigma_ctx"):
            unit_float(f"NoiseConfig.{name}", getattr(self, name))


@dataclass(frozen=True, kw_only=True, slots=True)
class LossConfig:
    lambda_struct: float = 1.0  # weight of the structure velocity loss
    lambda_aux: float = 0.0  # weight of the auxiliary 3-D label loss (decays)
    aux_decay_steps: int = 10_000  # steps over which lambda_aux decays to 0
    lambda_lip: float = 0.0  # weight of the contrastive audio-mouth loss
    lip_sigma_max: float = 1.0  # L_lip only on frames with sigma_v <= this (x0_hat is blurry)
    lip: LipSyncConfig = field(default_factory=LipSyncConfig)  # the lip-sync heads and InfoNCE
    mouth_weight: float = 1.0  # video loss weight inside the mouth box, 1 elsewhere (1 = off)
    uncertainty_weighting: bool = False  # learn the weights (Kendall et al.) instead
    audio_drop_prob: float = 0.1  # conditioning dropout for audio CFG
    ref_drop_prob: float = 0.0  # conditioning dropout of reference tokens (needs them enabled)

    def __post_init__(self) -> None:
        for name in ("lambda_struct", "lambda_aux", "lambda_lip"):
            non_negative_float(f"LossConfig.{name}", getattr(self, name))
        positive_int("LossConfig.aux_decay_steps", self.aux_decay_steps)
        unit_float("LossConfig.audio_drop_prob", self.audio_drop_prob)
        unit_float("LossConfig.lip_sigma_max", self.lip_sigma_max)
        unit_float("LossConfig.ref_drop_prob", self.ref_drop_prob)
        float_at_least("LossConfig.mouth_weight", self.mouth_weight, 1.0)
        boolean("LossConfig.uncertainty_weighting", self.uncertainty_weighting)


@dataclass(frozen=True, kw_only=True, slots=True)
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
        positive_float("OptimConfig.lr", self.lr)
        non_negative_float("OptimConfig.weight_decay", self.weight_decay)
        non_negative_int("OptimConfig.warmup_steps", self.warmup_steps)
        unit_float("OptimConfig.min_lr_ratio", self.min_lr_ratio)
        non_negative_float("OptimConfig.grad_clip", self.grad_clip)
        unit_float("OptimConfig.ema_decay", self.ema_decay)
        non_negative_int("OptimConfig.max_nan_skips", self.max_nan_skips)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
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
            positive_int(f"TrainConfig.{name}", getattr(self, name))
        one_of("TrainConfig.precision", self.precision, ("fp32", "bf16"))
        one_of("TrainConfig.device", self.device, ("auto", "cpu", "cuda"))
        one_of("TrainConfig.mfu", self.mfu, ("auto", "on", "off"))
        non_negative_float("TrainConfig.peak_tflops", self.peak_tflops)
        if self.loss.ref_drop_prob > 0 and not self.model.ref_tokens_enabled:
            raise ValueError(
                f"TrainConfig.loss.ref_drop_prob is {self.loss.ref_drop_prob}, but the model has "
                "no reference tokens to drop (model.ref_tokens_enabled=False): set "
                "loss.ref_drop_prob=0"
            )

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
        key = key.strip()
        if key in MOVED_FIELDS:
            raise ValueError(f"--set {key}: the setting is {MOVED_FIELDS[key]}")
        path = key.split(".")
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
