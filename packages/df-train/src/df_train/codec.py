"""Training the embedded default codec: a ``TinyAutoencoder`` on SynthTalk frames.

The codec is trained on individual frames of the corpus's training clips (the test clips are
held out for the reported PSNR) with a reconstruction loss (MSE + L1) and a small L2 penalty on
the raw latents, which keeps the latent scale bounded for the diffusion model.

Two options make a small codec generalise to identities it never saw (issue 14):

- ``colour_aug``: each training frame gets a random channel permutation, per-channel gain and
  offset (:func:`colour_augment`). A SynthTalk corpus has few identities (the demo's: 20), and
  without it the codec learns *their* colours rather than colour: on the demo corpus the
  held-out frames' face colour was off by 14/255 per channel after 700 steps (dark skin decoded
  beige), 2/255 with it, at the same held-out PSNR cost per step.
- ``crop``: train on random crops (:func:`random_crop`). The codec is fully convolutional, so
  a 32 x 32 crop of a 64 x 64 frame costs a quarter of the step and teaches the same filters;
  the saved steps buy a wider codec (measured: 28.8 dB held out in 232 CPU-seconds, against
  21.1 dB for the uncropped narrow codec in 100 s). At the end the
per-channel latent statistics are estimated and stored in the codec, so ``encode`` gives
normalised latents, and the codec is written with ``save_pretrained`` (atomic).

Frame ``i`` of the sampling stream is a pure function of ``(seed, i)``, so runs are
deterministic.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from df_data.media import read_video
from df_models.codecs import (
    TemporalAutoencoderConfig,
    TemporalTinyAutoencoder,
    TinyAutoencoder,
    TinyAutoencoderConfig,
)

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
    colour_aug: bool = False  # random channel permutation, gain and offset per frame
    crop: int = 0  # train on random crops of this size (a multiple of the spatial factor); 0 = off
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    # > 1: the causal TemporalTinyAutoencoder (``codec`` is its per-frame part), trained on
    # windows of 1 + frames_per_latent * (window_latents - 1) consecutive frames (batch_size
    # frames a step, in whole windows; frame_stride does not apply).
    frames_per_latent: int = 1
    window_latents: int = 3
    # A trained per-frame TinyAutoencoder (its directory) that the temporal codec is inflated
    # from (TemporalTinyAutoencoder.inflate) instead of a random start; its config must be
    # ``codec``. "" = random initialisation.
    init_from: str = ""

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "frame_stride",
            "log_every",
            "frames_per_latent",
            "window_latents",
        ):
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

        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"CodecTrainConfig.crop must be an integer >= 0, got {self.crop!r}")
        if self.crop and self.crop % self.codec.spatial_factor:
            raise ValueError(
                f"CodecTrainConfig.crop must be 0 or a multiple of the codec's spatial factor "
                f"{self.codec.spatial_factor}, got {self.crop!r}"
            )
        if self.init_from and self.frames_per_latent == 1:
            raise ValueError(
                "CodecTrainConfig.init_from inflates a per-frame codec into a temporal one: it "
                "needs frames_per_latent > 1"
            )
        if not isinstance(self.colour_aug, bool):
            raise ValueError(
                f"CodecTrainConfig.colour_aug must be true or false, got {self.colour_aug!r}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def window_frames(self) -> int:
        """Video frames per training sample: 1 for a per-frame codec."""
        if self.frames_per_latent == 1:
            return 1
        return 1 + self.frames_per_latent * (self.window_latents - 1)

    def build_codec(self) -> TinyAutoencoder | TemporalTinyAutoencoder:
        if self.frames_per_latent == 1:
            return TinyAutoencoder(self.codec)
        config = TemporalAutoencoderConfig(
            spatial=self.codec, frames_per_latent=self.frames_per_latent
        )
        return TemporalTinyAutoencoder(config)


def load_frames(
    corpus: str | Path, split: str, stride: int, *, lengths: list[int] | None = None
) -> torch.Tensor:
    """Every ``stride``-th frame of every clip of a split: uint8 ``[N, 3, H, W]``, the clips
    one after another (``lengths``, when given, receives each clip's frame count)."""
    videos = sorted((Path(corpus) / split).glob("*/video.mp4"))
    if not videos:
        raise ValueError(
            f"{Path(corpus) / split}: no clips (*/video.mp4); run `dualforce data synth` first"
        )
    # Files decode in parallel (PyAV releases the GIL while decoding; each file on one thread).
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        frames = list(pool.map(lambda v: read_video(v)[0][::stride], videos))
    if lengths is not None:
        lengths.extend(len(f) for f in frames)
    return torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()


def colour_augment(x_N1CHW: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random colours for frames in [-1, 1]: a channel permutation, a gain in [0.6, 1.4] and an
    offset in [-0.15, 0.15] per frame and channel, clamped back to [-1, 1]. Input and target of
    the reconstruction loss are the same augmented frame, so the codec must reproduce any colour
    instead of the training identities' colours."""
    N, C = x_N1CHW.shape[0], x_N1CHW.shape[2]
    perm_NC = torch.argsort(torch.rand(N, C, generator=generator), dim=1).to(x_N1CHW.device)
    x = torch.gather(x_N1CHW, 2, perm_NC[:, None, :, None, None].expand_as(x_N1CHW))
    gain = (0.6 + 0.8 * torch.rand(N, 1, C, 1, 1, generator=generator)).to(x.device)
    offset = (0.3 * (torch.rand(N, 1, C, 1, 1, generator=generator) - 0.5)).to(x.device)
    return ((x + 1.0) * gain - 1.0 + offset).clamp(-1.0, 1.0)


def random_crop(
    x_N1CHW: torch.Tensor, size: int, align: int, generator: torch.Generator
) -> torch.Tensor:
    """One random ``size x size`` crop of the batch, its corner on a multiple of ``align`` (the
    codec's spatial factor, so the crop's latent grid is the frame's)."""
    H, W = x_N1CHW.shape[-2:]
    if size > min(H, W):
        raise ValueError(f"crop {size} is larger than the frames ({H}x{W})")
    i0 = int(torch.randint(0, (H - size) // align + 1, (1,), generator=generator)) * align
    j0 = int(torch.randint(0, (W - size) // align + 1, (1,), generator=generator)) * align
    return x_N1CHW[..., i0 : i0 + size, j0 : j0 + size]


def face_colour_error(recon: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-channel error of the mean colour in the centre box of the frame (half its height and
    width: where a SynthTalk face is), in 0-255 units, averaged over the frames: the codec's
    colour fidelity, which PSNR alone hides (a decoded face of the wrong skin tone can keep a
    fair PSNR)."""
    H, W = target.shape[-2:]
    box = (..., slice(H // 4, 3 * H // 4), slice(W // 4, 3 * W // 4))
    diff_NC = (recon[box] - target[box]).flatten(0, -4).mean(dim=(-1, -2)) * 127.5
    return [float(v) for v in diff_NC.abs().mean(dim=0)]


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = float(((recon - target) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _window_starts(lengths: list[int], window: int) -> torch.Tensor:
    """Index (into the concatenated frames) of every window of ``window`` consecutive frames
    that lies inside one clip."""
    starts, offset = [], 0
    for n in lengths:
        if n >= window:
            starts.append(torch.arange(offset, offset + n - window + 1))
        offset += n
    return torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long)


def _windows(frames_u8: torch.Tensor, starts: torch.Tensor, window: int, device) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(window)[None, :]
    return frames_u8[idx.to(frames_u8.device)].to(device).float() / 127.5 - 1.0


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
    W = c.window_frames
    stride = c.frame_stride if W == 1 else 1  # windows need consecutive frames
    train_lengths: list[int] = []
    train = load_frames(c.corpus, "train", stride, lengths=train_lengths)
    starts = _window_starts(train_lengths, W)  # first frame of every window inside one clip
    if starts.numel() == 0:
        raise ValueError(f"{c.corpus}/train: no clip has the {W} frames a training window needs")
    test_dir = Path(c.corpus) / "test"
    test_lengths: list[int] = []
    test = (
        load_frames(c.corpus, "test", stride, lengths=test_lengths)
        if test_dir.is_dir()
        else train[:0]
    )
    if device.type == "cuda":
        # uint8 frames resident on the GPU: a step then gathers its batch there instead of
        # indexing and copying it on the host (the gpu demo's 40,000 frames are 0.5 GB).
        train = train.to(device)
    torch.manual_seed(c.seed)
    if c.init_from:
        frame = TinyAutoencoder.from_pretrained(c.init_from)
        if frame.config != c.codec:
            raise ValueError(
                f"CodecTrainConfig.init_from {c.init_from}: its config {frame.config} is not "
                f"CodecTrainConfig.codec {c.codec}"
            )
        codec = TemporalTinyAutoencoder.inflate(frame, c.frames_per_latent).to(device)
    else:
        codec = c.build_codec().to(device)
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
        if W == 1:
            idx = torch.randint(0, train.shape[0], (c.batch_size,), generator=g)
            x = _to_video(train[idx.to(train.device)], device)
        else:  # whole windows of consecutive frames: [B, W, 3, H, W]
            pick = torch.randint(0, starts.numel(), (max(1, c.batch_size // W),), generator=g)
            idx = starts[pick][:, None] + torch.arange(W)[None, :]
            x = train[idx.to(train.device)].to(device).float() / 127.5 - 1.0
        if c.colour_aug:
            x = colour_augment(x, g)
        if c.crop:
            x = random_crop(x, c.crop, c.codec.spatial_factor, g)
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
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    metrics.close()
    codec.eval()
    with torch.no_grad():
        if W == 1:
            batches = (_to_video(train[i : i + 256], device) for i in range(0, train.shape[0], 256))
            held = test if test.shape[0] else train[:256]
            x = _to_video(held[:512], device)
        else:  # windows: the first of every clip for the statistics, all held-out ones
            n = max(1, 256 // W)
            first = starts[torch.linspace(0, starts.numel() - 1, 16 * n).long()]
            batches = (
                _windows(train, first[i : i + n], W, device) for i in range(0, first.numel(), n)
            )
            held_starts = _window_starts(test_lengths, W) if test.shape[0] else starts
            held_frames = test if test.shape[0] else train
            pick = held_starts[:: max(1, held_starts.numel() // max(1, 512 // W))][: 512 // W]
            x = _windows(held_frames, pick, W, device)
        codec.set_normalization(*codec.estimate_normalization(batches, max_batches=16))
        recon = codec.decode(codec.encode(x, check_range=False))
        z = codec.encode(x, check_range=False)
    codec.cpu()
    path = codec.save_pretrained(out / "codec")
    summary = {
        "codec": str(path),
        "train_frames": int(train.shape[0]),
        "heldout_frames": int(x.shape[0] * x.shape[1]),
        "frames_per_latent": c.frames_per_latent,
        "heldout_psnr_db": psnr(recon, x),
        "heldout_face_colour_error": face_colour_error(recon, x),
        "normalised_latent_mean": float(z.mean()),
        "normalised_latent_std": float(z.std()),
        "latent_shape": list(z.shape[2:]),
        "seconds": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("codec: %s", summary)
    return summary
