"""The SynthTalk probe: a small CNN that reads pose, expression and identity from any frame.

It regresses the 11 structure parameters (``STRUCT_NAMES``, normalised per dimension with the
train split's mean and std) and SynthTalk's identity parameter vector (``Identity.vector()``,
44 values in [0, 1], normalised the same way). The identity embedding is that regressed vector,
not a metric embedding: the ground truth is exact and continuous, so plain regression trains
in the same loss as the structure, needs no pair mining, and generalises to held-out speakers
from few training identities (a triplet/contrastive embedding needs many identities to be
meaningful); its distances are in interpretable units (fraction of each parameter's range).
The penultimate activations (``feature_dim``) are the feature space of the Fréchet distance.

Training is deterministic (fixed seed, deterministic algorithms, CPU) and cached beside the
corpus in ``<corpus>/.probe/<key>/`` (``config.json`` + ``model.safetensors``), where ``key``
hashes the corpus manifest and the probe config, so a changed corpus or config trains anew.

Legend: B batch, T frames, H W pixels, Ds structure dimension, Di identity dimension,
F feature dimension.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from df_core.checks import (
    boolean,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from df_data.synthtalk import IDENTITY_DIM, STRUCT_DIM, STRUCT_NAMES
from df_eval.corpus import clip_dirs, load_ground_truth, manifest_hash
from df_models.pretrained import load_pretrained_state, read_config, save_pretrained

log = logging.getLogger(__name__)

KIND = "SynthTalkProbe"
CACHE_DIR = ".probe"


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeConfig:
    size: int = 64  # frames are resized to size x size before the network
    width: int = 16  # channels of the first conv stage (doubling twice)
    feature_dim: int = 64  # F: penultimate width, the Fréchet feature space
    steps: int = 1000  # optimiser steps (the training budget)
    batch_size: int = 32
    lr: float = 3e-3  # AdamW peak learning rate (cosine decay to 0 after 5% warm-up)
    weight_decay: float = 1e-4
    identity_weight: float = 1.0  # loss weight of the identity regression
    augment: bool = True  # pixel noise and blur, so codec/generator artefacts do not fool it
    max_train_frames: int = 20000  # strided subsample of the train split above this
    seed: int = 0

    def __post_init__(self) -> None:
        if positive_int("ProbeConfig.size", self.size) % 16:
            raise ValueError(f"ProbeConfig.size must be a multiple of 16 >= 16, got {self.size}")
        for name in ("width", "feature_dim", "steps", "batch_size", "max_train_frames"):
            positive_int(f"ProbeConfig.{name}", getattr(self, name))
        positive_float("ProbeConfig.lr", self.lr)
        non_negative_float("ProbeConfig.weight_decay", self.weight_decay)
        non_negative_float("ProbeConfig.identity_weight", self.identity_weight)
        boolean("ProbeConfig.augment", self.augment)
        non_negative_int("ProbeConfig.seed", self.seed)


class ProbeNet(nn.Module):
    """Four stride-2 conv stages (size -> size/16), a linear feature layer and two heads."""

    def __init__(self, config: ProbeConfig):
        super().__init__()
        w = config.width
        # One conv at half resolution (the costliest level), two at each coarser one.
        stages = [nn.Conv2d(3, w, 3, stride=2, padding=1), nn.SiLU()]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)):
            stages += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                nn.GroupNorm(8 if cout % 8 == 0 else 1, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.SiLU(),
            ]
        self.stages = nn.Sequential(*stages)
        # Flatten rather than pool: head position (tx, ty) is a spatial quantity.
        side = config.size // 16
        self.feature = nn.Linear(4 * w * side * side, config.feature_dim)
        self.struct_head = nn.Linear(config.feature_dim, STRUCT_DIM)
        self.identity_head = nn.Linear(config.feature_dim, IDENTITY_DIM)

    def forward(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x_BCHW`` in [-1, 1] -> (features ``[B, F]``, normalised struct ``[B, Ds]``,
        normalised identity ``[B, Di]``)."""
        h = self.stages(x_BCHW).flatten(1)
        f_BF = F.silu(self.feature(h))
        return f_BF, self.struct_head(f_BF), self.identity_head(f_BF)


def to_input(frames_THWC: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float ``[T, 3, size, size]`` in [-1, 1] (antialiased
    bilinear resize when the frame size differs)."""
    x = torch.as_tensor(np.asarray(frames_THWC))
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


@dataclass(frozen=True)
class ProbeOutput:
    struct: np.ndarray  # float32 [T, Ds] in the units of STRUCT_UNITS
    identity: np.ndarray  # float32 [T, Di] in Identity.vector() units ([0, 1] per parameter)
    features: np.ndarray  # float32 [T, F]


class Probe:
    """A trained probe with its normalisation statistics and held-out errors."""

    def __init__(self, net: ProbeNet, config: ProbeConfig, stats: dict, info: dict | None = None):
        self.net = net.eval()
        self.config = config
        self.struct_mean = np.asarray(stats["struct_mean"], np.float32)  # [Ds]
        self.struct_std = np.asarray(stats["struct_std"], np.float32)  # [Ds]
        self.identity_mean = np.asarray(stats["identity_mean"], np.float32)  # [Di]
        self.identity_std = np.asarray(stats["identity_std"], np.float32)  # [Di]
        self.info = dict(info or {})  # "heldout" errors, "train_seconds", "corpus_hash"
        self.directory: Path | None = None

    @property
    def stats(self) -> dict:
        return {
            "struct_mean": self.struct_mean.tolist(),
            "struct_std": self.struct_std.tolist(),
            "identity_mean": self.identity_mean.tolist(),
            "identity_std": self.identity_std.tolist(),
        }

    @torch.no_grad()
    def predict(self, frames_THWC: np.ndarray, batch_size: int = 256) -> ProbeOutput:
        """Reads uint8 frames ``[T, H, W, 3]`` (any size; resized to ``config.size``)."""
        feats, structs, idents = [], [], []
        for i in range(0, len(frames_THWC), batch_size):
            f, s, d = self.net(to_input(frames_THWC[i : i + batch_size], self.config.size))
            feats.append(f)
            structs.append(s)
            idents.append(d)
        if not feats:
            raise ValueError("predict needs at least one frame")
        s = torch.cat(structs).numpy() * self.struct_std + self.struct_mean
        d = torch.cat(idents).numpy() * self.identity_std + self.identity_mean
        return ProbeOutput(
            struct=s.astype(np.float32),
            identity=d.astype(np.float32),
            features=torch.cat(feats).numpy().astype(np.float32),
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        config = {"kind": KIND, "config": asdict(self.config), "stats": self.stats, **self.info}
        return save_pretrained(self.net, config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Probe:
        raw = read_config(directory, kind=KIND)
        try:
            config = ProbeConfig(**raw["config"])
            stats = raw["stats"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{Path(directory) / 'config.json'}: bad probe config ({e})") from e
        net = load_pretrained_state(ProbeNet(config), directory)
        info = {k: v for k, v in raw.items() if k not in ("kind", "config", "stats")}
        probe = cls(net, config, stats, info)
        probe.directory = Path(directory)
        return probe


def _load_split(corpus_dir: Path, split: str, max_frames: int | None, progress: bool):
    """Frames ``[N, H, W, 3]``, struct ``[N, Ds]``, identity ``[N, Di]`` and per-frame identity
    seeds ``[N]`` of every clip of ``split`` (strided down to ``max_frames``)."""
    frames, structs, idents, seeds = [], [], [], []
    for d in tqdm(
        clip_dirs(corpus_dir, split).values(), desc=f"probe: read {split}", disable=not progress
    ):
        gt = load_ground_truth(d)
        video = gt.video()
        T = min(len(video), gt.frames_count)
        frames.append(video[:T])
        structs.append(gt.struct[:T])
        idents.append(np.repeat(gt.identity[None], T, axis=0))
        seeds.append(np.full(T, gt.identity_seed))
    x, s, i, k = (np.concatenate(a) for a in (frames, structs, idents, seeds))
    if max_frames is not None and len(x) > max_frames:
        keep = np.linspace(0, len(x) - 1, max_frames).round().astype(int)
        x, s, i, k = x[keep], s[keep], i[keep], k[keep]
    return x, s, i, k


@contextlib.contextmanager
def _deterministic(seed: int):
    # torch.use_deterministic_algorithms is not used: on the CPU the conv kernels it would
    # replace are already deterministic for a fixed thread count, and it slowed steps by ~5x.
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _augment(x_BCHW: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-sample blur (half the batch) and Gaussian pixel noise of std U(0, 0.06)."""
    B = x_BCHW.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3).contiguous()
    blurred = F.conv2d(F.pad(x_BCHW, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    use_blur = (torch.rand(B, 1, 1, 1, generator=g) < 0.5).float()
    x = use_blur * blurred + (1 - use_blur) * x_BCHW
    std = torch.rand(B, 1, 1, 1, generator=g) * 0.06
    return x + std * torch.randn(x.shape, generator=g)


def train_probe(
    corpus_dir: str | Path, config: ProbeConfig = ProbeConfig(), *, progress: bool = True
) -> Probe:
    """Trains a probe on the train split of a SynthTalk corpus and measures it on the test
    split (``probe.info["heldout"]``, see ``heldout_errors``). Deterministic in ``config``."""
    corpus_dir = Path(corpus_dir)
    t0 = time.perf_counter()
    x, s, i, _ = _load_split(corpus_dir, "train", config.max_train_frames, progress)
    stats = {
        "struct_mean": s.mean(0).tolist(),
        "struct_std": np.maximum(s.std(0), 1e-6).tolist(),
        "identity_mean": i.mean(0).tolist(),
        "identity_std": np.maximum(i.std(0), 1e-6).tolist(),
    }
    with _deterministic(config.seed):
        net = ProbeNet(config)
        X = torch.from_numpy(
            x
        )  # uint8, converted per batch (float32 frames would take 4x the memory)
        S = torch.from_numpy(
            (s - np.asarray(stats["struct_mean"])) / np.asarray(stats["struct_std"])
        ).float()
        ID = torch.from_numpy(
            (i - np.asarray(stats["identity_mean"])) / np.asarray(stats["identity_std"])
        ).float()
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warm = max(1, config.steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda k: (
                min(1.0, (k + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, k / config.steps)))
            ),
        )
        g = torch.Generator().manual_seed(config.seed)
        net.train()
        bar = tqdm(range(config.steps), desc="probe: train", disable=not progress)
        for _ in bar:
            idx = torch.randint(len(X), (config.batch_size,), generator=g)
            xb = to_input(X[idx], config.size)
            xb = _augment(xb, g) if config.augment else xb
            _, s_hat, id_hat = net(xb)
            loss = F.mse_loss(s_hat, S[idx]) + config.identity_weight * F.mse_loss(id_hat, ID[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    probe = Probe(net, config, stats)
    train_seconds = time.perf_counter() - t0
    probe.info = {
        "heldout": heldout_errors(probe, corpus_dir, progress=progress),
        "train_seconds": train_seconds,
    }
    log.info(
        "probe trained in %.1f s; held-out %s", train_seconds, probe.info["heldout"]["summary"]
    )
    return probe


def identity_distance(a_TDi: np.ndarray, b_Di: np.ndarray) -> np.ndarray:
    """RMS difference ``[T]`` between identity vectors ``[T, Di]`` and one vector ``[Di]`` (or
    row-wise ``[T, Di]``), in identity-parameter units (fraction of each parameter's range)."""
    return np.sqrt(
        np.mean((np.asarray(a_TDi, np.float64) - np.asarray(b_Di, np.float64)) ** 2, axis=-1)
    )


def heldout_errors(probe: Probe, corpus_dir: str | Path, *, progress: bool = False) -> dict:
    """The probe's errors on the test split (held-out identities).

    Per structure dimension: RMSE in its own units and R² (1 - MSE / variance of the truth).
    Identity: RMSE of the identity vector, the RMSE of always predicting the train mean (the
    chance level), and the separation ratio: mean identity distance between frames of different
    speakers over that between frames of the same speaker (> 1: the embedding tells speakers
    apart; ``nan`` with a single test speaker).
    """
    x, s, i, seeds = _load_split(Path(corpus_dir), "test", None, progress)
    out = probe.predict(x)
    err = out.struct - s
    var = s.var(0)
    per_dim = {
        name: {
            "rmse": float(np.sqrt(np.mean(err[:, k] ** 2))),
            "r2": float(1 - np.mean(err[:, k] ** 2) / var[k]) if var[k] > 0 else float("nan"),
        }
        for k, name in enumerate(STRUCT_NAMES)
    }
    id_rmse = float(np.sqrt(np.mean((out.identity - i) ** 2)))
    chance = float(np.sqrt(np.mean((probe.identity_mean - i) ** 2)))
    rng = np.random.default_rng(0)
    a, b = rng.integers(len(x), size=(2, min(20000, len(x) ** 2)))
    d = identity_distance(out.identity[a], out.identity[b])
    same = seeds[a] == seeds[b]
    separation = (
        float(d[~same].mean() / max(d[same & (a != b)].mean(), 1e-12))
        if (~same).any() and (same & (a != b)).any()
        else float("nan")
    )
    summary = ", ".join(f"{n} R² {v['r2']:.3f}" for n, v in per_dim.items())
    return {
        "frames": len(x),
        "struct": per_dim,
        "identity": {"rmse": id_rmse, "chance_rmse": chance, "separation": separation},
        "summary": summary,
    }


def probe_key(corpus_dir: str | Path, config: ProbeConfig) -> str:
    """The cache key: a hash of the corpus manifest and the probe config."""
    text = manifest_hash(corpus_dir) + json.dumps(asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_train_probe(
    corpus_dir: str | Path, config: ProbeConfig = ProbeConfig(), *, progress: bool = True
) -> Probe:
    """The probe for this corpus and config: loaded from ``<corpus>/.probe/<key>/`` when
    present, else trained and written there atomically (built in a temporary sibling
    directory, then renamed; a concurrent writer's finished copy wins)."""
    corpus_dir = Path(corpus_dir)
    key = probe_key(corpus_dir, config)
    final = corpus_dir / CACHE_DIR / key
    if (final / "config.json").is_file():
        log.info("probe: reusing %s", final)
        return Probe.from_pretrained(final)
    probe = train_probe(corpus_dir, config, progress=progress)
    probe.info["corpus_hash"] = manifest_hash(corpus_dir)
    tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        probe.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    probe.directory = final
    log.info("probe: wrote %s", final)
    return probe
