"""``dualforce bench stream``: end-to-end streaming speed of a preset with random weights.

Runs :class:`~df_infer.pipeline.StreamingGenerator` exactly as ``dualforce generate`` does:
audio features computed incrementally from a waveform, K denoising passes per chunk plus the
clean pass (its own pass, or with ``--fuse-clean`` riding in the next chunk's first step), the
KV cache with sink and rolling window, and decoding of every frame to uint8 pixels on the host.
Only the mp4 encoding is left out.

Weights are random (``init_weights`` plus noise on every parameter, so gates are open and every
path costs what it would trained). The codec is a random TinyAutoencoder of the preset's
latent shape (8x, ``latent_channels``), or with ``--frames-per-latent 4`` the causal
TemporalTinyAutoencoder of the same spatial shape (4 video frames per latent frame after the
first; the model then reads each group's audio); the audio encoder is the 80-bin log-mel one (pretrained
HuBERT weights cannot be downloaded here), so the preset's ``audio_dim`` is set to 80; global
reference tokens, when the preset has them, are 257 random DINOv2-L-sized features.

Reports video frames/s, latent frames/s and megapixels/s, first-frame latency, per-frame
latency against frame index (flat once the window is full; a chunk's frames arrive together,
so it is the gap between chunks over their frames), peak memory and utilisation: model FLOPs per frame (counted once with
``FlopCounterMode`` on the eager passes of one steady-state frame, dense attention over the
cache view) over the measured time per frame, against the H100's measured bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from df_core import latent_frames_covering, video_span
from df_data.features import LogMelEncoder
from df_infer.fp8 import check_fp8, fp8_linear_names
from df_infer.pipeline import COMPILE_MODES, StreamingGenerator
from df_infer.sampler import SamplerConfig
from df_models.bundle import InferenceMeta
from df_models.codecs import (
    TemporalAutoencoderConfig,
    TemporalTinyAutoencoder,
    TinyAutoencoder,
    TinyAutoencoderConfig,
)
from df_models.config import PRESETS
from df_models.dit import DualForceDiT
from df_models.testing import randomize

log = logging.getLogger(__name__)
PEAK_TFLOPS = 771.0  # measured H100 bf16 dense matmul peak (DESIGN.md)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dualforce bench stream", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--stagger", type=int, default=None)
    p.add_argument("--frames", type=int, default=500, help="video frames to stream")
    p.add_argument(
        "--frames-per-latent",
        type=int,
        choices=(1, 4),
        default=1,
        help="video frames per latent frame: 4 is the causal temporal codec (1 + 4n layout; "
        "base_t4 has it already)",
    )
    p.add_argument("--clean-pass", choices=("exact", "approx"), default="exact")
    p.add_argument(
        "--fuse-clean",
        action="store_true",
        help="exact clean pass riding in the next frame's first pass (masked) instead of its own",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="FP8 video-token linears (df_infer.fp8), checked against the bf16 model first",
    )
    p.add_argument(
        "--no-modulation-cache",
        action="store_true",
        help="compute the AdaLN modulations in every pass (default: once per noise level)",
    )
    p.add_argument(
        "--full-clean-pass",
        action="store_true",
        help="the clean pass runs every block and head (default: keys/values of the last block "
        "only, as its outputs are discarded)",
    )
    p.add_argument(
        "--decode-stream",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="decode on a second CUDA stream, beside the next chunk's passes (the same frames); "
        "both: time the stream without, then with it, after one compile",
    )
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--backend", default="auto", help="attention backend: auto, flex, sdpa, dense")
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="torch.compile each block, or the whole streaming forward (stream-graphs: with "
        "CUDA graphs, mode=reduce-overhead)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--profile", type=int, default=0, help="also profile this many frames; print the top ops"
    )
    args = p.parse_args(argv)
    for name in ("steps", "chunk", "frames"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def build(
    preset: str, device, dtype, backend: str, frames_per_latent: int = 1
) -> StreamingGenerator:
    config = PRESETS[preset]()
    if config.frames_per_latent > 1:  # a preset over a temporal codec (base_t4)
        frames_per_latent = config.frames_per_latent
        config = config.replace(struct_raw_dim=config.struct_raw_dim // frames_per_latent)
    config = config.replace(
        audio_dim=80,
        audio_layers=1,
        window=config.window or 8,
        frames_per_latent=frames_per_latent,
        struct_raw_dim=config.struct_raw_dim * frames_per_latent,  # each frame of a group's
    )
    with torch.device(device):
        model = DualForceDiT(config)
    model.init_weights()
    randomize(model, seed=0, std=0.02)
    model.attn_backend = backend
    f = 8
    spatial = TinyAutoencoderConfig(latent_channels=config.latent_channels, num_down=3)
    if frames_per_latent == 1:
        codec = TinyAutoencoder(spatial)
    else:
        codec = TemporalTinyAutoencoder(
            TemporalAutoencoderConfig(spatial=spatial, frames_per_latent=frames_per_latent)
        )
    codec.init_weights()
    meta = InferenceMeta(
        audio_encoder=LogMelEncoder().identity(),
        image_size=(config.latent_height * f, config.latent_width * f),
        noise_shift=3.0,
    )
    return StreamingGenerator(model, codec, meta, device=device, dtype=dtype)


def count_frame_flops(gen: StreamingGenerator, cfg: SamplerConfig, audio, ref, feats) -> float:
    """Model FLOPs of one video frame in the steady state (window full), eager, dense
    attention."""
    from torch.utils.flop_counter import FlopCounterMode

    window = gen.model.config.window or 8
    k = gen.codec.frames_per_latent
    per = cfg.chunk * k  # video frames of one chunk
    warm = k * (window + 2 * cfg.chunk + cfg.steps)
    # Frames further on than the counted one: the generator queues the next chunk's passes
    # before handing a chunk out, so one chunk's worth of next() runs one chunk's passes.
    frames = gen.frames(ref, audio, cfg, max_frames=warm + 3 * per, ref_feats_BRD=feats)
    backend = gen.model.attn_backend
    gen.model.attn_backend = "sdpa"
    try:
        for i, _ in enumerate(frames):
            if i + 1 == warm:
                break
        counter = FlopCounterMode(display=False)
        with counter:
            for _ in range(per):
                next(frames)
    finally:
        gen.model.attn_backend = backend
        frames.close()
    return counter.get_total_flops() / per


def first_frame_parts(gen: StreamingGenerator, ref, feats) -> dict:
    """What a stream does before its first pass, timed alone (median of 5, synchronised):
    encoding the reference image, and the sink prefill (the reference through every block
    into the KV cache)."""

    def timed(fn) -> float:
        times = []
        for _ in range(5):
            if gen.device.type == "cuda":
                torch.cuda.synchronize(gen.device)
            t = time.perf_counter()
            out = fn()
            if gen.device.type == "cuda":
                torch.cuda.synchronize(gen.device)
            times.append((time.perf_counter() - t) * 1e3)
        del out
        return float(np.median(times))

    cache = gen._cache  # the stream's own: batch 2 with guidance (the unconditional half)
    b = cache.batch
    latent = gen.encode_reference(ref).to(gen.dtype).expand(b, -1, -1, -1)
    tokens = None if feats is None else feats.expand(b, -1, -1)
    with torch.no_grad():
        prefill = timed(lambda: gen.model.prefill(cache, latent, tokens))
    return {"encode_reference": timed(lambda: gen.encode_reference(ref)), "prefill": prefill}


def fp8_accuracy(gen: StreamingGenerator, cfg: SamplerConfig, audio, ref, feats) -> dict:
    """Converts ``gen`` to FP8 (:meth:`StreamingGenerator.fp8`) and compares it with itself in
    bf16 before: one training-forward pass on random inputs (relative L2 error of the video
    velocity) and the frames of a short stream past the window from the same noise (PSNR of
    the decoded pixels against the bf16 stream's: all frames, the first, the last)."""
    from df_models.testing import random_inputs

    model = gen.model
    n = video_span(2 * (model.config.window or 8) - 1, gen.codec.frames_per_latent)[1]
    x = {
        k: None if v is None else v.to(gen.device, torch.float32 if "sigma" in k else gen.dtype)
        for k, v in random_inputs(model.config, 1, 4, seed=0).items()
    }

    def run() -> tuple[torch.Tensor, np.ndarray]:
        with torch.no_grad():
            v = model(**x)[0].float()
        stream = gen.frames(ref, audio, cfg, max_frames=n, ref_feats_BRD=feats)
        return v, np.stack([f.image for f in stream]).astype(np.float64)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        mse = float(np.mean((a - b) ** 2))
        return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))

    v16, f16 = run()
    converted = len(fp8_linear_names(model))
    gen.fp8()
    v8, f8 = run()
    return {
        "linears": converted,
        "pass_velocity_rel_err": float((v8 - v16).norm() / v16.norm().clamp_min(1e-12)),
        "stream_frames": int(n),
        "stream_psnr_db": psnr(f8, f16),
        "first_frame_psnr_db": psnr(f8[0], f16[0]),
        "last_frame_psnr_db": psnr(f8[-1], f16[-1]),
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("dualforce bench stream: CUDA is not available", file=sys.stderr)
        return 2
    if args.decode_stream != "off" and device.type != "cuda":
        # One stream of work off CUDA: a figure labelled with it would be the plain stream's.
        print(
            f"dualforce bench stream: --decode-stream {args.decode_stream} needs a CUDA device "
            f"(its second stream runs beside the passes), got --device {args.device}",
            file=sys.stderr,
        )
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    gen = build(args.preset, device, dtype, args.backend, args.frames_per_latent)
    if args.fp8:
        try:
            check_fp8(gen.model)
        except ValueError as e:
            print(f"dualforce bench stream: --fp8: {e}", file=sys.stderr)
            return 2
    k = gen.codec.frames_per_latent
    c = gen.model.config
    cfg = SamplerConfig(
        steps=args.steps,
        chunk=args.chunk,
        stagger=args.stagger,
        clean_pass=args.clean_pass,
        fuse_clean=args.fuse_clean,
        cfg_audio=args.cfg,
    )  # the noise settings (shift 3) from the bundle's InferenceMeta
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(640 * args.frames)).astype(np.float32)
    ref = rng.integers(0, 255, (*gen.meta.image_size, 3), dtype=np.uint8)
    feats = None
    if c.ref_tokens_enabled:
        feats = torch.randn(1, 257, c.ref_feature_dim, device=device, dtype=dtype)
    gen.cache_modulations = not args.no_modulation_cache
    gen.key_only_clean = not args.full_clean_pass
    gen.decode_stream = args.decode_stream == "on"
    # FLOPs are counted on the eager model, before compiling (a dispatch mode around a
    # compiled model would run it differently from the timed stream).
    t = time.perf_counter()
    flops = count_frame_flops(gen, cfg, audio, ref, feats)
    log.info("FLOPs counted in %.1f s", time.perf_counter() - t)
    fp8_check = None
    if args.fp8:
        t = time.perf_counter()
        fp8_check = fp8_accuracy(gen, cfg, audio, ref, feats)
        log.info("fp8 against bf16 (%.1f s): %s", time.perf_counter() - t, fp8_check)
    graphs_before = _compiled_graphs()
    gen.compile(args.compile)
    # Warm-up (compilation, allocator, cuDNN autotuning) on a short clip past the window,
    # whose last chunk is as long as the timed clip's (a shorter tail is one more pass shape
    # to compile, which would otherwise happen inside the timed run).
    # In latent frames; the warm-up clip's video frames end with its last latent frame's group.
    warm = 2 * (c.window or 8) + args.chunk
    warm += (latent_frames_covering(args.frames, k) - warm) % args.chunk
    warm = video_span(warm - 1, k)[1]
    log.info("warm-up: %d video frames (compiling every pass shape, with --compile)", warm)
    warm_start = time.perf_counter()
    for _ in gen.frames(ref, audio[: 640 * warm], cfg, ref_feats_BRD=feats):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = time.perf_counter() - warm_start  # compiling every pass shape, with --compile
    log.info("warm-up (compilation) took %.1f s", warmup_s)
    settle = ((c.window or 8) + args.steps) // args.chunk + 2
    timed = _timed_stream(gen, ref, audio, cfg, feats, settle)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    graphs = {k: v - graphs_before[k] for k, v in _compiled_graphs().items()}
    per_frame_s = timed["per_frame_ms_mean"] / 1e3
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "backend": args.backend,
        "compile": args.compile,
        "steps": args.steps,
        "chunk": args.chunk,
        "stagger": args.stagger,
        "clean_pass": args.clean_pass,
        "fuse_clean": args.fuse_clean,
        "cfg": args.cfg,
        "fp8": args.fp8,
        "fp8_check": fp8_check,
        "modulation_cache": gen.cache_modulations,
        "key_only_clean": gen.key_only_clean,
        "decode_stream": gen.decode_stream,
        "frames_per_latent": gen.codec.frames_per_latent,
        **timed,
        "warmup_s": warmup_s,
        "peak_memory_gib": peak,
        "cache_mib": gen._cache.memory_bytes() / 2**20,
        "gflop_per_frame": flops / 1e9,
        "mfu": flops / per_frame_s / (args.peak_tflops * 1e12),
        "image_size": list(gen.meta.image_size),
        # compiled graphs and CUDA-graph skips, for checking that the compile covered the
        # whole pass (graph breaks show up as extra graphs)
        **graphs,
    }
    if args.decode_stream == "both":
        # The same compiled passes and decoder, decoded beside them: no recompile.
        gen.decode_stream = True
        result["with_decode_stream"] = _timed_stream(gen, ref, audio, cfg, feats, settle)
        gen.decode_stream = False
    result["first_frame_parts_ms"] = first_frame_parts(gen, ref, feats)
    print(json.dumps(result, indent=2))
    print(
        f"| {args.preset} | {args.steps} | {args.chunk} | {args.clean_pass}"
        f"{' fused' if args.fuse_clean else ''} | "
        f"{args.compile} {args.backend} | {result['fps']:.1f} | "
        f"{result['first_frame_ms']:.0f} | {result['per_frame_ms_p50']:.1f} "
        f"({result['per_frame_ms_first_quarter']:.1f} -> {result['per_frame_ms_last_quarter']:.1f}) | "
        f"{peak:.1f} | {result['gflop_per_frame']:.0f} | {100 * result['mfu']:.1f}% |"
    )
    if "with_decode_stream" in result:
        side = result["with_decode_stream"]
        print(
            f"| with --decode-stream | {side['fps']:.1f} | {side['first_frame_ms']:.0f} | "
            f"{side['per_frame_ms_p50']:.1f} ({side['per_frame_ms_first_quarter']:.1f} -> "
            f"{side['per_frame_ms_last_quarter']:.1f}) |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    if args.profile:
        profile(gen, cfg, audio, ref, feats, args.profile)
    return 0


def _timed_stream(gen, ref, audio, cfg, feats, settle: int) -> dict:
    """One timed stream of the whole ``audio``: frames/s (video, latent, pixels), the first
    frame's latency and the per-video-frame latency once ``settle`` chunks have passed."""
    k = gen.codec.frames_per_latent
    ready = []
    start = time.perf_counter()
    for frame in gen.frames(ref, audio, cfg, ref_feats_BRD=feats):
        ready.append(frame.ready_s)
    wall = time.perf_counter() - start
    ready = np.asarray(ready)
    # Frames of one chunk arrive together (one time stamp): the latency per frame is the gap
    # between chunks over the later chunk's frames (chunk x k video frames).
    times, counts = np.unique(ready, return_counts=True)
    gaps = np.diff(times) * 1e3 / counts[1:]
    steady = gaps[settle:] if len(gaps) > settle + 10 else gaps
    quarter = max(len(steady) // 4, 1)
    latent = latent_frames_covering(len(ready), k)
    H, W = gen.meta.image_size
    return {
        "frames": len(ready),
        "fps": len(ready) / wall,
        # Codecs and resolutions compared honestly: a codec of k video frames per latent frame
        # streams k times fewer latent frames, and frames of other sizes hold other pixels.
        "latent_frames": latent,
        "latent_fps": latent / wall,
        "megapixels_per_s": len(ready) * H * W / wall / 1e6,
        "first_frame_ms": float(ready[0] * 1e3),
        "per_frame_ms_mean": float(np.mean(steady)),
        "per_frame_ms_p50": float(np.median(steady)),
        "per_frame_ms_p95": float(np.percentile(steady, 95)),
        "per_frame_ms_first_quarter": float(np.mean(steady[:quarter])),
        "per_frame_ms_last_quarter": float(np.mean(steady[-quarter:])),
    }


def _compiled_graphs() -> dict:
    from torch._dynamo.utils import counters

    return {
        "compiled_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
    }


def profile(gen, cfg, audio, ref, feats, frames: int) -> None:
    """Prints the top operators (device and host time) of ``frames`` steady-state frames."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    warm = (gen.model.config.window or 8) + cfg.steps
    stream = gen.frames(ref, audio, cfg, max_frames=warm + frames, ref_feats_BRD=feats)
    for i, _ in enumerate(stream):
        if i + 1 == warm:
            break
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=acts) as prof:
        for _ in stream:
            pass
    for key in ("self_cuda_time_total", "self_cpu_time_total"):
        print(prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
