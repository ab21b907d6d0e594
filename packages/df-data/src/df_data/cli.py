"""``dualforce data``: generate the SynthTalk corpus, extract a clip store, inspect a store."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualforce data", description="DualForce data pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate a SynthTalk corpus (mp4 + wav + ground truth)")
    synth.add_argument(
        "--out", type=Path, required=True, help="corpus directory (train/ and test/)"
    )
    synth.add_argument("--clips", type=int, required=True, help="training clips")
    synth.add_argument(
        "--test-clips", type=int, default=None, help="test clips (default clips // 10, at least 1)"
    )
    synth.add_argument("--seconds", type=float, default=8.0, help="length of each clip")
    synth.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=1, help="processes")
    synth.add_argument(
        "--espeak", action="store_true", help="drive the mouth with espeak-ng speech"
    )

    extract = sub.add_parser("extract", help="encode a corpus into a clip store")
    extract.add_argument(
        "--src", type=Path, required=True, help="corpus directory (searched for video.mp4)"
    )
    extract.add_argument("--out", type=Path, required=True, help="clip store directory")
    extract.add_argument("--codec", type=Path, required=True, help="codec checkpoint directory")
    extract.add_argument("--device", default="cpu")

    inspect = sub.add_parser("inspect", help="validate a clip store and print a summary")
    inspect.add_argument("store", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    for name in ("clips", "workers", "size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(
                f"dualforce data {args.command}: --{name} must be at least 1, got {value}",
                file=sys.stderr,
            )
            return 2
    if getattr(args, "seconds", 1.0) <= 0:
        print(
            f"dualforce data synth: --seconds must be positive, got {args.seconds}", file=sys.stderr
        )
        return 2
    try:
        if args.command == "synth":
            from df_data.synthtalk import generate_corpus

            dirs = generate_corpus(
                args.out,
                clips=args.clips,
                seconds=args.seconds,
                size=args.size,
                test_clips=args.test_clips,
                seed=args.seed,
                workers=args.workers,
                use_espeak=args.espeak,
            )
            print(f"{len(dirs)} clips in {args.out}")
        elif args.command == "extract":
            from df_data.extract import extract_store

            summary = extract_store(args.src, args.out, codec=args.codec, device=args.device)
            print(json.dumps(summary, indent=2, default=str))
        else:
            from df_data.inspect_store import format_report, inspect_store

            report = inspect_store(args.store)
            print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    except ValueError as e:  # user errors (bad paths, bad files) carry their own message
        print(f"dualforce data {args.command}: {e}", file=sys.stderr)
        return 2
    return 0
