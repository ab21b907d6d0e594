"""``dualforce generate``: a reference image and a speech recording -> a talking-head mp4."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce generate",
        description="Stream a talking-head video from a reference image and audio.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="inference bundle directory")
    p.add_argument("--ref", type=Path, required=True, help="reference face image (png, jpg, ...)")
    p.add_argument("--audio", type=Path, required=True, help="speech (wav/flac/ogg, any rate)")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per frame (K)")
    p.add_argument("--chunk", type=int, default=1, help="frames generated together")
    p.add_argument(
        "--stagger",
        type=int,
        default=None,
        help="iterations between chunk starts (< steps: pipelined)",
    )
    p.add_argument(
        "--window", type=int, default=None, help="cache window in frames (default: trained)"
    )
    p.add_argument(
        "--cfg", type=float, default=1.0, help="classifier-free guidance on audio (1 = off)"
    )
    p.add_argument(
        "--cfg-struct",
        type=float,
        default=None,
        help="the structure stream's audio guidance (default: --cfg)",
    )
    p.add_argument("--shift", type=float, default=None, help="schedule shift (default: training's)")
    p.add_argument(
        "--clean-pass",
        choices=("exact", "approx"),
        default="exact",
        help="exact: clean frames rewrite the cache at sigma 0; approx: reuse the last step",
    )
    p.add_argument(
        "--fuse-clean",
        action="store_true",
        help="exact: the clean frame rides in the next frame's first pass (one pass fewer, but "
        "masked; its own pass is faster on an H100, BENCHMARKS.md)",
    )
    p.add_argument(
        "--struct-finish-step", type=int, default=None, help="structure clean after this step"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--compile",
        choices=("none", "blocks", "stream", "stream-graphs"),
        default="none",
        help="torch.compile the hot loop (stream-graphs: the streaming pass as CUDA graphs "
        "and the decoder compiled, the fastest on GPU; compiling takes minutes for large "
        "models)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from df_infer.generate import generate_video
    from df_infer.pipeline import StreamingGenerator

    try:
        for name in ("ref", "audio"):
            path = getattr(args, name)
            if not path.is_file():
                raise ValueError(f"--{name} {str(path)!r} does not exist")
        gen = StreamingGenerator.from_bundle(args.checkpoint, device=args.device)
        gen.compile(args.compile)
        overrides = dict(
            steps=args.steps,
            chunk=args.chunk,
            stagger=args.stagger,
            cfg_audio=args.cfg,
            cfg_struct=args.cfg_struct,
            clean_pass=args.clean_pass,
            fuse_clean=args.fuse_clean,
            struct_finish_step=args.struct_finish_step,
            seed=args.seed,
        )
        if args.shift is not None:
            overrides["shift"] = args.shift
        sampler = gen.default_sampler(**overrides)
        summary = generate_video(
            gen,
            args.ref,
            args.audio,
            args.out,
            sampler,
            window=args.window,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"dualforce generate: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0
