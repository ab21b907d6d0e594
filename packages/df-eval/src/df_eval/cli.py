"""``dualforce eval``: score generated SynthTalk videos and write metrics, a report and plots."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce eval",
        description=(
            "Score generated videos of SynthTalk test clips. --pred holds <clip_id>.mp4 per "
            "test clip (clip_id: the clip's directory name under <data>/test/, e.g. "
            "clip_00003.mp4), each driven by that clip's audio."
        ),
    )
    p.add_argument("--pred", type=Path, required=True, help="directory of <clip_id>.mp4 videos")
    p.add_argument("--data", type=Path, required=True, help="SynthTalk corpus directory")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <pred>/eval)")
    p.add_argument("--train-log", type=Path, default=None, help="trainer metrics.jsonl to plot")
    p.add_argument("--name", default="pred", help="label of the generated videos in the report")
    p.add_argument("--max-offset", type=int, default=5, help="lip-sync offset search, frames")
    p.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="a trained probe directory (default: the corpus's cached probe, trained if missing)",
    )
    p.add_argument("--probe-steps", type=int, default=None, help="probe training steps")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.max_offset < 0:
        print(f"dualforce eval: --max-offset must be >= 0, got {args.max_offset}", file=sys.stderr)
        return 2
    try:
        from df_eval.evaluate import evaluate
        from df_eval.probe import Probe, ProbeConfig

        config = ProbeConfig() if args.probe_steps is None else ProbeConfig(steps=args.probe_steps)
        if args.train_log is not None and not args.train_log.is_file():
            raise ValueError(f"{args.train_log}: training log does not exist")
        out = args.out if args.out is not None else args.pred / "eval"
        doc = evaluate(
            args.pred,
            args.data,
            out,
            train_log=args.train_log,
            probe=None if args.probe is None else Probe.from_pretrained(args.probe),
            probe_config=config,
            max_offset=args.max_offset,
            name=args.name,
            progress=not args.no_progress,
        )
    except ValueError as e:  # user errors (bad paths, bad files) carry their own message
        print(f"dualforce eval: {e}", file=sys.stderr)
        return 2
    agg = doc["systems"][args.name]["aggregate"]
    print(
        f"{out / 'report.md'}: sync_corr {agg['sync_corr']:.3f}, offset {agg['sync_offset']}, "
        f"pose_err {agg['pose_err']:.3f}, id_dist {agg['id_dist']:.3f}, psnr {agg['psnr']:.2f}"
    )
    return 0
