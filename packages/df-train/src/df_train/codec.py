"""Training the embedded default codec: a ``TinyAutoencoder`` on SynthTalk frames.

The codec is trained on individual frames of the corpus's training clips (the test clips are
held out for the reported PSNR) with a reconstruction loss (MSE + L1) and a small L2 penalty on
the raw latents, which keeps the latent scale bounded for the diffusion model. At the end the
per-channel latent statistics are estimated and stored in the codec, so ``encode`` gives
normalised latents, and the codec is written with ``save_pretrained`` (atomic).

Frame ``i`` of the sampling stream is a pure function of ``(seed, i)``, so runs are
deterministic.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from df_data.media import read_video
from df_models.codecs import TinyAutoencoder, TinyAutoencoderConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecTrainConfig:
    name: str = "codec_synthtalk"
    corpus: str = ""  # SynthTalk corpus directory (dualforce data synth), train/ and test/
    out_dir: str = "runs/codec"  # the codec is written to <out_dir>/codec
    codec: TinyAutoencoderConfig = field(default_factory=TinyAutoencoderConfig)
    steps: int = 2000  # optimiser steps
    batch_size: int = 32  # frames per step
    lr: float = 1e-3  # AdamW, cosine-decayed to 10%
    latent_l2: float = 1e-4  # weight of the raw-latent L2 penalty
    l1_weight: float = 0.5  # weight of the L1 term beside the MSE
    frame_stride: int = 2  # use every k-th frame of each clip
    seed: int = 0
    device: str = "auto"
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "frame_stride", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"CodecTrainConfig.{name} must be a positive integer, got {value!r}"
                )
        for name in ("lr", "latent_l2", "l1_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"CodecTrainConfig.{name} must be >= 0, got {getattr(self, name)!r}"
                )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def load_frames(corpus: str | Path, split: str, stride: int) -> torch.Tensor:
    """Every ``stride``-th frame of every clip of a split: uint8 ``[N, 3, H, W]``."""
    videos = sorted((Path(corpus) / split).glob("*/video.mp4"))
    if not videos:
        raise ValueError(
            f"{Path(corpus) / split}: no clips (*/video.mp4); run `dualforce data synth` first"
        )
    frames = [read_video(v)[0][::stride] for v in videos]
    return torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = float(((recon - target) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _to_video(frames_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return (frames_u8.to(device).float() / 127.5 - 1.0)[:, None]  # [N, 1, 3, H, W]


def train_codec(config: CodecTrainConfig, *, progress: bool = True) -> dict:
    """Trains, normalises and saves the codec; returns the summary (also in summary.json)."""
    c = config
    if not c.corpus:
        raise ValueError(
            "corpus is not set: pass --set corpus=DIR (a `dualforce data synth` corpus)"
        )
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    )
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(c.to_json())
    train = load_frames(c.corpus, "train", c.frame_stride)
    test_dir = Path(c.corpus) / "test"
    test = load_frames(c.corpus, "test", c.frame_stride) if test_dir.is_dir() else train[:0]
    torch.manual_seed(c.seed)
    codec = TinyAutoencoder(c.codec).to(device)
    codec.init_weights()
    opt = torch.optim.AdamW(codec.parameters(), lr=c.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / c.steps)))
    )
    g = torch.Generator().manual_seed(c.seed)
    metrics = (out / "metrics.jsonl").open("w")
    t0 = time.perf_counter()
    bar = tqdm(range(c.steps), desc=c.name, disable=not progress, unit="step")
    for step in bar:
        idx = torch.randint(0, train.shape[0], (c.batch_size,), generator=g)
        x = _to_video(train[idx], device)
        recon, z = codec(x)
        rec = (recon - x).pow(2).mean() + c.l1_weight * (recon - x).abs().mean()
        loss = rec + c.latent_l2 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
            record = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "recon": float(rec.detach()),
                "lr": sched.get_last_lr()[0],
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.set_postfix(loss=f"{float(loss):.4f}")
    metrics.close()
    codec.eval()
    with torch.no_grad():
        batches = (_to_video(train[i : i + 256], device) for i in range(0, train.shape[0], 256))
        codec.set_normalization(*codec.estimate_normalization(batches, max_batches=16))
        held = test if test.shape[0] else train[:256]
        x = _to_video(held[:512], device)
        recon = codec.decode(codec.encode(x, check_range=False))
        z = codec.encode(x, check_range=False)
    codec.cpu()
    path = codec.save_pretrained(out / "codec")
    summary = {
        "codec": str(path),
        "train_frames": int(train.shape[0]),
        "heldout_frames": int(min(512, held.shape[0])),
        "heldout_psnr_db": psnr(recon, x),
        "normalised_latent_mean": float(z.mean()),
        "normalised_latent_std": float(z.std()),
        "latent_shape": list(z.shape[2:]),
        "seconds": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("codec: %s", summary)
    return summary
