"""``dualforce bench train``: real :class:`~df_train.trainer.Trainer` steps of a preset on
synthetic in-memory windows; tokens/s, step time, model FLOPs utilisation and peak memory.

Each step is the trainer's own: per-frame noise, the training forward (FlexAttention on the
GPU), the losses, backward, clipping, AdamW, the warmup-cosine schedule and the EMA update. The
data are random windows of the preset's shapes, so the figure is the model and optimiser, not
the loader. FLOPs are counted once (:mod:`df_train.throughput`: attention over the pairs its
mask allows); MFU is against ``--peak-tflops`` (the measured H100 bf16 matmul rate by default,
or measured here with ``--peak-tflops 0``). The result is printed as a markdown table row.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from df_models.config import PRESETS, DualForceConfig
from df_train.config import DataConfig, LossConfig, OptimConfig, TrainConfig
from df_train.parallel import ParallelConfig

log = logging.getLogger(__name__)
HEADER = (
    "| preset | params | frames | batch | precision | ac | compile | device | tokens/step "
    "| step (ms) | tokens/s | TFLOP/s | MFU | peak memory (GiB) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


class SyntheticWindows(Dataset):
    """Random training windows shaped like :class:`df_data.dataset.WindowDataset`'s samples for
    ``config``; sample ``i`` is a pure function of ``(seed, i)``. Legend: T latent frames, C H W
    latent shape, Ds structure dim, La audio window, Da audio dim."""

    def __init__(self, config: DualForceConfig, frames: int, *, seed: int = 0, length: int = 64):
        self.config, self.frames, self.seed, self.length = config, frames, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        c, T = self.config, self.frames
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shape = (c.latent_channels, c.latent_height, c.latent_width)
        layers = (c.audio_layers,) if c.audio_layers > 1 else ()
        extra = {"ref_tokens": torch.randn(5, c.ref_feature_dim, generator=g)}  # [R, Dr]
        return {
            **(extra if c.ref_tokens_enabled else {}),
            "latents": torch.randn(T, *shape, generator=g),  # [T, C, H, W]
            "struct": torch.randn(T, c.struct_raw_dim, generator=g),  # [T, Ds]
            "audio": torch.randn(
                T, c.audio_window, *layers, c.audio_dim, generator=g
            ),  # [T, La, (K,) Da]
            "ref_latent": torch.randn(*shape, generator=g),  # [C, H, W]
            "mouth_box": torch.zeros(T, 4),
            "has_mouth_box": False,
            "image_size": (0, 0),
            "clip_id": f"synthetic-{index}",
            "start": 0,
            "ref_index": 0,
            "flipped": False,
            "index": index,
        }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dualforce bench train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--frames", type=int, default=16, help="latent frames per training window")
    p.add_argument("--batch", type=int, default=1, help="clips per step")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ac", choices=("none", "full"), default="none", help="activation ckpt")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument(
        "--peak-tflops", type=float, default=771.0, help="MFU's peak (0: measure with a matmul)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    for name in ("frames", "batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.peak_tflops < 0:
        p.error("--warmup and --peak-tflops must be >= 0")
    return args


def bench_config(args: argparse.Namespace, out_dir: str) -> TrainConfig:
    # Presets come without reference tokens (clip stores hold no global reference features
    # yet); the reference enters as the sink frame.
    model = PRESETS[args.preset]()
    return TrainConfig(
        name=f"bench_{args.preset}",
        model=model,
        data=DataConfig(frames=args.frames, normalize_struct=False),
        loss=LossConfig(),
        optim=OptimConfig(warmup_steps=1),
        parallel=ParallelConfig(activation_checkpointing=args.ac, compile=args.compile),
        steps=args.warmup + args.steps,
        batch_size=args.batch,
        out_dir=out_dir,
        device="cuda" if args.device.startswith("cuda") else "cpu",
        precision=args.precision,
        mfu="on",
        peak_tflops=args.peak_tflops,
    )


def run(args: argparse.Namespace) -> dict:
    from df_train.trainer import Trainer

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as out:
        config = bench_config(args, out)
        data = SyntheticWindows(config.model, args.frames, length=config.steps * args.batch)
        trainer = Trainer(config, device=str(device), dataset=data)
        loader = iter(trainer._loader(0))

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        times = []
        for i in range(config.steps):
            if i == args.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            batch = next(loader)
            sync()
            t0 = time.perf_counter()
            metrics = trainer.train_step([batch])
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            if metrics.skipped:
                raise RuntimeError(f"step {i} had a non-finite loss: the benchmark is invalid")
    step_s = statistics.median(times)
    tokens = (
        args.batch * (args.frames + 1) * (config.model.video_tokens + config.model.struct_tokens)
    )
    tflops = trainer.step_flops / step_s / 1e12
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "preset": args.preset,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "frames": args.frames,
        "batch": args.batch,
        "precision": args.precision,
        "ac": args.ac,
        "compile": args.compile,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tokens_per_step": tokens,
        "step_ms": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "tokens_per_s": tokens / step_s,
        "flops_per_step": trainer.step_flops,
        "tflops": tflops,
        "peak_tflops": trainer.peak_tflops,
        "mfu": tflops / trainer.peak_tflops,
        "peak_memory_gib": peak,
        "last_loss": metrics.loss,
    }


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def markdown_row(r: dict) -> str:
    memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
    return (
        f"| {r['preset']} | {_si(r['parameters'], '')} | {r['frames']} | {r['batch']} "
        f"| {r['precision']} | {r['ac']} | {r['compile']} | {r['device']} | {r['tokens_per_step']} "
        f"| {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops']:.3g} "
        f"| {r['mfu']:.1%} of {r['peak_tflops']:.3g} | {memory} |"
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = run(args)
    print(HEADER)
    print(markdown_row(result))
    if args.json is not None:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main(sys.argv[1:]))
