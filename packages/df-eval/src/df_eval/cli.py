"""``dualforce eval``: score generated videos and write metrics, a report and plots.

Two modes: the default scores SynthTalk test clips with the probe (``--pred DIR --data DIR``);
``--real`` scores any folder of mp4s against reference mp4s of the same names with the field's
metrics (FID, FVD, LPIPS, Sync-C/Sync-D, CSIM) from the published weight files in
``--weights DIR`` (``df_eval.real``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from df_eval.real import METRICS, WINDOWS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce eval",
        description=(
            "Score generated videos of SynthTalk test clips. --pred holds <clip_id>.mp4 per "
            "test clip (clip_id: the clip's directory name under <data>/test/, e.g. "
            "clip_00003.mp4), each driven by that clip's audio. With --real: score any folder "
            "of mp4s with audio against --ref (same file names) with FID, FVD, LPIPS, "
            "Sync-C/Sync-D and CSIM."
        ),
    )
    p.add_argument("--pred", type=Path, required=True, help="directory of <clip_id>.mp4 videos")
    p.add_argument("--data", type=Path, default=None, help="SynthTalk corpus directory")
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
    real = p.add_argument_group("real videos (--real)")
    real.add_argument("--real", action="store_true", help="the field's metrics on real videos")
    real.add_argument("--ref", type=Path, default=None, help="reference mp4s, same names as --pred")
    real.add_argument(
        "--weights", type=Path, default=None, help="folder of the published weight files"
    )
    real.add_argument(
        "--faces",
        type=Path,
        default=None,
        help="folder of <name>.faces.json for --pred (default: beside each mp4)",
    )
    real.add_argument(
        "--ref-faces", type=Path, default=None, help="the same for --ref (default: beside each mp4)"
    )
    real.add_argument(
        "--detector",
        choices=("retinaface", "none"),
        default="retinaface",
        help="faces of videos without a faces file: RetinaFace (the data prepare detector), "
        "or none (such videos skip Sync and CSIM)",
    )
    real.add_argument(
        "--metrics", default=",".join(METRICS), help=f"comma list of {', '.join(METRICS)}"
    )
    real.add_argument(
        "--windows", default=",".join(map(str, WINDOWS)), help="long-sequence window lengths"
    )
    real.add_argument("--vshift", type=int, default=15, help="SyncNet offset search, frames")
    real.add_argument("--device", default="cpu", help="torch device for the networks")
    return p


def _main_real(args: argparse.Namespace) -> int:
    from df_eval.real.evaluate import RealEvalConfig, evaluate_real

    if args.ref is None or args.weights is None:
        raise ValueError("--real needs --ref DIR and --weights DIR")
    try:
        windows = tuple(int(w) for w in args.windows.split(",") if w)
    except ValueError as e:
        raise ValueError(f"--windows must be comma-separated integers, got {args.windows!r}") from e
    config = RealEvalConfig(
        metrics=tuple(m for m in args.metrics.split(",") if m),
        windows=windows,
        vshift=args.vshift,
        device=args.device,
    )
    out = args.out if args.out is not None else args.pred / "eval"
    doc = evaluate_real(
        args.pred,
        args.ref,
        out,
        weights_dir=args.weights,
        config=config,
        faces_dir=args.faces,
        ref_faces_dir=args.ref_faces,
        detector=None if args.detector == "none" else args.detector,
        name=args.name,
        progress=not args.no_progress,
    )
    agg = doc["aggregate"]
    shown = ", ".join(
        f"{k} {agg[k]:.3f}"
        for k in ("fid", "fvd", "lpips", "lse_c", "lse_d", "csim")
        if isinstance(agg.get(k), float)
    )
    print(f"{out / 'report.md'}: {agg['videos']} videos; {shown}; {len(doc['skips'])} skips")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.max_offset < 0:
        print(f"dualforce eval: --max-offset must be >= 0, got {args.max_offset}", file=sys.stderr)
        return 2
    if args.real:
        try:
            return _main_real(args)
        except ValueError as e:  # user errors: bad paths, missing weights files, bad input
            print(f"dualforce eval: {e}", file=sys.stderr)
            return 2
    try:
        if args.data is None:
            raise ValueError("--data DIR (the SynthTalk corpus) is required without --real")
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
