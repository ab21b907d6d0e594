"""``dualforce generate``: a reference image and a speech recording -> a talking-head mp4."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

# The SamplerConfig field each flag sets: (argparse dest, flag).
SAMPLER_FLAGS = {
    "steps": ("steps", "--steps"),
    "chunk": ("chunk", "--chunk"),
    "stagger": ("stagger", "--stagger"),
    "cfg_audio": ("cfg", "--cfg"),
    "cfg_struct": ("cfg_struct", "--cfg-struct"),
    "shift": ("shift", "--shift"),
    "clean_pass": ("clean_pass", "--clean-pass"),
    "fuse_clean": ("fuse_clean", "--fuse-clean"),
    "struct_finish_step": ("struct_finish_step", "--struct-finish-step"),
    "noise_share": ("noise_share", "--noise-share"),
    "seed": ("seed", "--seed"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce generate",
        description="Stream a talking-head video from a reference image and audio.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="inference bundle directory")
    p.add_argument("--ref", type=Path, required=True, help="reference face image (png, jpg, ...)")
    p.add_argument(
        "--no-face-crop",
        action="store_true",
        help="use the whole reference image (centre-cropped) instead of its face crop",
    )
    p.add_argument("--audio", type=Path, required=True, help="speech (wav/flac/ogg, any rate)")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps per frame (K; default: the bundle's)",
    )
    p.add_argument("--chunk", type=int, default=None, help="frames generated together")
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
        "--cfg",
        type=float,
        default=None,
        help="classifier-free guidance on audio (1 = off; default: the bundle's)",
    )
    p.add_argument(
        "--cfg-struct",
        type=float,
        default=None,
        help="the structure stream's audio guidance (default: the bundle's, else --cfg)",
    )
    p.add_argument("--shift", type=float, default=None, help="schedule shift (default: training's)")
    p.add_argument(
        "--clean-pass",
        choices=("exact", "approx"),
        default=None,
        help="exact: clean frames rewrite the cache at sigma 0; approx: reuse the last step",
    )
    p.add_argument(
        "--fuse-clean",
        action="store_const",
        const=True,
        default=None,
        help="exact: the clean frame rides in the next frame's first pass (one pass fewer, but "
        "masked; its own pass is faster on an H100, BENCHMARKS.md)",
    )
    p.add_argument(
        "--struct-finish-step", type=int, default=None, help="structure clean after this step"
    )
    p.add_argument(
        "--noise-share",
        type=float,
        default=None,
        help="shared part of every frame's initial video noise in [0, 1]: more is steadier, "
        "less varied (default: the bundle's)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--audio-model",
        default=None,
        help="where the bundle's speech encoder is (hub id or folder; default: as recorded); "
        "its weights must be the ones the model was trained with",
    )
    p.add_argument(
        "--ref-model",
        default=None,
        help="where the bundle's reference image encoder is (default: as recorded)",
    )
    p.add_argument(
        "--compile",
        choices=("none", "blocks", "stream", "stream-graphs"),
        default="none",
        help="torch.compile the hot loop (stream-graphs: the streaming pass as CUDA graphs "
        "and the decoder compiled, the fastest on GPU; compiling takes minutes for large "
        "models)",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="the video-token linears in FP8 with rowwise scales (torchao; a GPU of compute "
        "capability 8.9+: Ada, Hopper)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return _generate(args)
    except KeyboardInterrupt:
        return 130  # the video writer is atomic: no partial file is left
    except ValueError as e:
        print(f"dualforce generate: {e}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from df_infer.generate import check_output, generate_video
    from df_infer.pipeline import StreamingGenerator
    from df_models.bundle import read_bundle

    for name in ("ref", "audio"):
        path = getattr(args, name)
        if not path.is_file():
            raise ValueError(f"--{name} {str(path)!r} does not exist")
    check_output(args.out)  # before the model loads, not after the video is generated
    sampler = _sampler(read_bundle(args.checkpoint)[2], args)
    gen = StreamingGenerator.from_bundle(
        args.checkpoint, device=args.device, audio_model=args.audio_model, ref_model=args.ref_model
    )
    if args.fp8:
        gen.fp8()
    gen.compile(args.compile)
    reference = args.ref if args.no_face_crop else _face_crop(args.ref)
    summary = generate_video(
        gen, reference, args.audio, args.out, sampler, window=args.window, progress=not args.quiet
    )
    print(summary.line())
    return 0


def _face_crop(path: Path):
    """The reference's face, cut as the training clips are (``df_data.prepare.reference``)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from df_data.prepare.reference import crop_reference

    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"reference image {str(path)!r} is not a readable image ({e})") from e
    try:
        return crop_reference(image)[0]
    except ValueError as e:
        raise ValueError(f"--ref {str(path)!r}: {e}") from None


def _sampler(meta, args: argparse.Namespace):
    """The bundle's recommended sampler with the flags given; errors name the flag (or the
    bundle's setting) instead of the SamplerConfig field."""
    from df_infer.sampler_config import bundle_sampler

    given = {
        field: getattr(args, dest)
        for field, (dest, _) in SAMPLER_FLAGS.items()
        if getattr(args, dest) is not None
    }

    def name(match: re.Match) -> str:
        field = match.group(1)
        if field in given:
            return SAMPLER_FLAGS[field][1]
        if field in meta.sampler:
            return f"{match.group(0)} (the bundle's inference.json sampler)"
        return match.group(0)

    try:
        return bundle_sampler(meta, **given)
    except ValueError as e:
        raise ValueError(re.sub(r"SamplerConfig\.(\w+)", name, str(e))) from None
