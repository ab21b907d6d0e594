"""``dualforce bench model``: one training step (forward + backward) of a DualForce preset, and
the streaming-equals-training check in low precision, on the GPU.

Weights are random: ``init_weights`` and then small noise on every parameter (zero-initialised
gates and heads included), so all paths carry signal. The step runs under bf16 autocast with
fp32 master weights, as a single-GPU trainer does. The streaming check casts the model to the
benchmark dtype and compares, against a float32 reference of the same weights, the training
forward and the frame-by-frame streaming forward (sink, rolling window, eviction included):
streaming must be as accurate as training, up to a small margin.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

from df_core import SIGMA_S_MAX
from df_models.config import PRESETS
from df_models.dit import DualForceDiT
from df_models.testing import randomize

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dualforce bench model", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--frames", type=int, default=16, help="latent frames of the training clip")
    p.add_argument("--stream-frames", type=int, default=12, help="frames of the streaming check")
    p.add_argument(
        "--ref-tokens",
        action="store_true",
        help="with global reference tokens (off in every preset: no clip store holds the features)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    for name in ("frames", "stream_frames", "batch", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def make_inputs(config, batch: int, frames: int, device, dtype, seed: int = 0) -> dict:
    c = config
    g = torch.Generator(device=device).manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    return {
        "z_BTCHW": r(batch, frames, c.latent_channels, c.latent_height, c.latent_width),
        "s_BTDs": r(batch, frames, c.struct_raw_dim) if c.struct_enabled else None,
        "sigma_v_BT": torch.rand(batch, frames, generator=g, device=device),
        "sigma_s_BT": torch.rand(batch, frames, generator=g, device=device) * SIGMA_S_MAX
        if c.struct_enabled
        else None,
        "audio_BTLDa": r(batch, frames, c.audio_window, c.audio_dim),
        "ref_latent_BCHW": r(batch, c.latent_channels, c.latent_height, c.latent_width),
        "ref_feats_BRD": r(batch, 16, c.ref_feature_dim) if c.ref_tokens_enabled else None,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_timing(model, inputs, device, dtype, warmup: int, iters: int) -> dict:
    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            v, s = model(**inputs)
            loss = v.float().square().mean() + (s.float().square().mean() if s is not None else 0.0)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"step_ms": seconds * 1e3, "peak_memory_gib": peak / 2**30}


def stream_check(model32, config, frames: int, device, dtype) -> dict:
    """Relative errors of the low-precision training and streaming forwards against fp32."""
    x32 = make_inputs(config, 1, frames, device, torch.float32, seed=1)
    low = copy.deepcopy(model32).to(dtype)
    x = {
        k: (v.to(dtype) if v is not None and v.is_floating_point() and "sigma" not in k else v)
        for k, v in x32.items()
    }
    with torch.no_grad():
        ref_v, ref_s = model32(**x32)
        train_v, train_s = low(**x)
        cache = low.new_cache(1, window=config.window or frames, device=device, dtype=dtype)
        low.prefill(cache, x["ref_latent_BCHW"], x["ref_feats_BRD"])
        outs_v, outs_s = [], []
        for t in range(frames):
            part = {
                k: v[:, t : t + 1]
                for k, v in x.items()
                if k not in ("ref_latent_BCHW", "ref_feats_BRD") and v is not None
            }
            if not config.struct_enabled:
                part.update(s_BTDs=None, sigma_s_BT=None)
            v, s = low.forward_stream(cache, **part, commit=True, ref_feats_BRD=x["ref_feats_BRD"])
            outs_v.append(v)
            outs_s.append(s)
    stream_v = torch.cat(outs_v, 1)

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    result = {
        "frames": frames,
        "window": cache.window,
        "train_rel_err_video": rel(train_v, ref_v),
        "stream_rel_err_video": rel(stream_v, ref_v),
        "stream_vs_train_max_abs_video": float((stream_v.float() - train_v.float()).abs().max()),
    }
    if config.struct_enabled:
        stream_s = torch.cat(outs_s, 1)
        result["train_rel_err_struct"] = rel(train_s, ref_s)
        result["stream_rel_err_struct"] = rel(stream_s, ref_s)
    result["passed"] = all(
        result[f"stream_rel_err_{m}"] <= 2 * result[f"train_rel_err_{m}"] + 2e-3
        for m in (("video", "struct") if config.struct_enabled else ("video",))
    )
    return result


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    config = PRESETS[args.preset]()
    if args.ref_tokens:
        config = config.replace(ref_tokens_enabled=True)
    with torch.device(device):
        model = DualForceDiT(config)
    model.init_weights()
    randomize(model, seed=0, std=0.02)
    params = sum(p.numel() for p in model.parameters())
    tokens = args.batch * (args.frames + 1) * (config.video_tokens + config.struct_tokens)
    inputs = make_inputs(config, args.batch, args.frames, device, torch.float32)
    timing = train_step_timing(model.train(), inputs, device, dtype, args.warmup, args.iters)
    # 6 FLOPs per parameter and token for the matmuls of forward + backward (attention excluded).
    dense_flops = 6 * params * tokens
    timing["tokens_per_s"] = tokens / (timing["step_ms"] / 1e3)
    timing["dense_tflops"] = dense_flops / (timing["step_ms"] / 1e3) / 1e12
    check = stream_check(model.eval(), config, args.stream_frames, device, dtype)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "ref_tokens": config.ref_tokens_enabled,
        "dtype": args.dtype,
        "parameters": params,
        "frames": args.frames,
        "batch": args.batch,
        "tokens_per_step": tokens,
        "train_step": timing,
        "stream_check": check,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    r = run(args)
    t, s = r["train_step"], r["stream_check"]
    print(
        f"{r['preset']} ({r['parameters'] / 1e9:.3f} B parameters) on {r['device']}, {r['dtype']}, "
        f"torch {r['torch']}: {r['frames']} frames + sink, batch {r['batch']}, "
        f"{r['tokens_per_step']} tokens"
    )
    print(
        f"train step (forward + backward): {t['step_ms']:.1f} ms, {t['tokens_per_s']:.0f} tokens/s, "
        f"{t['dense_tflops']:.0f} TFLOP/s in dense matmuls, peak memory {t['peak_memory_gib']:.1f} GiB"
    )
    print(
        f"streaming check over {s['frames']} frames (window {s['window']}): relative error vs fp32, "
        f"training {s['train_rel_err_video']:.2e} / streaming {s['stream_rel_err_video']:.2e} (video)"
        + (
            f", training {s['train_rel_err_struct']:.2e} / streaming {s['stream_rel_err_struct']:.2e} (struct)"
            if "train_rel_err_struct" in s
            else ""
        )
        + f"; {'PASS' if s['passed'] else 'FAIL'}"
    )
    if args.json is not None:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(r, indent=2))
        tmp.replace(args.json)
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main(sys.argv[1:]))
