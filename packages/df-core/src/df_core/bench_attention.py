"""``dualforce bench attention``: block-causal attention, FlexAttention against dense-mask SDPA.

The layout is the base video stream's: a reference sink frame then ``T`` frames of ``N``
tokens, heads of ``Dh`` channels. Both backends are checked against a float32 reference
(max abs error), then timed with CUDA events. "Useful" TFLOP/s count only the query-key pairs
the mask allows (``4 * B * Hd * Dh`` FLOPs per allowed pair), so a backend that skips masked
blocks is credited only for the work that matters.

``--stream`` times a streaming pass instead: one frame of queries against the sink plus a full
window of ``--window`` frames (8 by default), where every key is visible and no mask is needed.
It compares df-core's mask-free SDPA (cuDNN attention first, for inference on CUDA), flash
attention alone and FlexAttention without a mask, each timed over calls queued back to back
(the mean; one call of ~0.1 ms timed alone measures the host's launch).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from df_core.attention import attention
from df_core.masks import block_causal_mask, token_frames

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dualforce bench attention", description=__doc__.splitlines()[0]
    )
    p.add_argument("--frames", type=int, default=16, help="T, frames after the sink")
    p.add_argument("--tokens", type=int, default=1024, help="N, tokens per frame")
    p.add_argument("--heads", type=int, default=12, help="Hd")
    p.add_argument("--head-dim", type=int, default=128, help="Dh")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--window", type=int, default=None, help="sliding window in frames (default: none)"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="one frame of queries against sink + a full window, no mask (--frames is ignored)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    for name in ("frames", "tokens", "heads", "head_dim", "batch", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.window is not None and args.window < 1:
        p.error("--window must be at least 1")
    return args


def _time(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _time_back_to_back(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Mean seconds per call over ``iters`` calls queued back to back: for kernels of ~0.1 ms,
    timing calls one by one would time the host's launch instead."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _reference(q, k, v, mask=None) -> torch.Tensor:
    """Float32 attention, one head at a time (it materialises ``[Lq, Lkv]`` logits)."""
    heads = [
        attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], mask, backend="math")
        for h in range(q.shape[1])
    ]
    return torch.cat(heads, dim=1).float()


@torch.no_grad()
def run_stream(args: argparse.Namespace) -> dict:
    """One frame of queries against the sink + ``window`` frames: every key visible."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    g = torch.Generator(device=device).manual_seed(0)
    window = args.window or 8
    lq, lkv = args.tokens, (1 + window) * args.tokens
    q = torch.randn(
        args.batch, args.heads, lq, args.head_dim, generator=g, device=device, dtype=dtype
    )
    k, v = (
        torch.randn(
            args.batch, args.heads, lkv, args.head_dim, generator=g, device=device, dtype=dtype
        )
        for _ in range(2)
    )
    reference = _reference(q, k, v)
    flops = 4 * args.batch * args.heads * args.head_dim * lq * lkv
    calls = {
        "sdpa": lambda: attention(q, k, v, None, backend="sdpa"),
        "flex_no_mask": lambda: attention(q, k, v, None, backend="flex"),
    }
    if device.type == "cuda" and dtype != torch.float32:

        def flash_only():  # PyTorch's SDPA directly: df-core's would set its own order
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)

        calls["sdpa_flash_only"] = flash_only
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "layout": {
            "query_tokens": lq,
            "key_tokens": lkv,
            "window": window,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "batch": args.batch,
        },
        "backends": {},
    }
    for name, fn in calls.items():
        out = fn()
        seconds = _time_back_to_back(fn, device, args.warmup, args.iters)
        results["backends"][name] = {
            "max_abs_error_vs_fp32": float((out.float() - reference).abs().max()),
            "ms": seconds * 1e3,
            "tflops": flops / seconds / 1e12,
        }
    return results


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    g = torch.Generator(device=device).manual_seed(0)
    frames = token_frames(args.frames, args.tokens, sink_tokens=args.tokens, device=device)
    mask = block_causal_mask(frames, window=args.window)
    L = frames.numel()
    shape = (args.batch, args.heads, L, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))

    block_mask = mask.block_mask(compile=device.type == "cuda")
    reference = _reference(q, k, v, mask)
    flex = attention(q, k, v, mask, backend="flex", block_mask=block_mask)
    dense = attention(q, k, v, mask, backend="dense")
    allowed = int(mask.dense().sum())
    flops = 4 * args.batch * args.heads * args.head_dim * allowed

    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "layout": {
            "frames": args.frames,
            "tokens_per_frame": args.tokens,
            "sink_tokens": args.tokens,
            "sequence": L,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "batch": args.batch,
            "window": args.window,
        },
        "mask_density": allowed / (L * L),
        "backends": {},
    }
    for name, out, fn in (
        ("flex", flex, lambda: attention(q, k, v, mask, backend="flex", block_mask=block_mask)),
        ("sdpa_dense_mask", dense, lambda: attention(q, k, v, mask, backend="dense")),
    ):
        seconds = _time(fn, device, args.warmup, args.iters)
        results["backends"][name] = {
            "max_abs_error_vs_fp32": float((out.float() - reference).abs().max()),
            "ms": seconds * 1e3,
            "useful_tflops": flops / seconds / 1e12,
        }
    b = results["backends"]
    results["flex_speedup"] = b["sdpa_dense_mask"]["ms"] / b["flex"]["ms"]
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.stream:
        results = run_stream(args)
        lay = results["layout"]
        print(
            f"streaming attention on {results['device']} ({results['dtype']}, torch "
            f"{results['torch']}): {lay['query_tokens']} queries against {lay['key_tokens']} keys "
            f"(sink + {lay['window']} frames), {lay['heads']} heads x {lay['head_dim']}, no mask"
        )
        print(f"{'backend':<18}{'ms':>10}{'TFLOP/s':>10}{'max |err| vs fp32':>20}")
        for name, r in results["backends"].items():
            print(
                f"{name:<18}{r['ms']:>10.3f}{r['tflops']:>10.1f}{r['max_abs_error_vs_fp32']:>20.2e}"
            )
        _write_json(args.json, results)
        return 0
    results = run(args)
    lay = results["layout"]
    print(
        f"block-causal attention on {results['device']} ({results['dtype']}, torch {results['torch']}): "
        f"{lay['frames']} frames x {lay['tokens_per_frame']} tokens + sink = {lay['sequence']} tokens, "
        f"{lay['heads']} heads x {lay['head_dim']}, window {lay['window']}, "
        f"mask density {results['mask_density']:.3f}"
    )
    print(f"{'backend':<18}{'ms':>10}{'useful TFLOP/s':>16}{'max |err| vs fp32':>20}")
    for name, r in results["backends"].items():
        print(
            f"{name:<18}{r['ms']:>10.3f}{r['useful_tflops']:>16.1f}{r['max_abs_error_vs_fp32']:>20.2e}"
        )
    print(f"FlexAttention speed-up over dense-mask SDPA: {results['flex_speedup']:.2f}x")
    _write_json(args.json, results)
    return 0


def _write_json(path: Path | None, results: dict) -> None:
    if path is not None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main(sys.argv[1:]))
