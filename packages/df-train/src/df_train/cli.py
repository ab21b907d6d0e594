"""``dualforce train``: train a recipe locally, with overrides and resume."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from df_train.codec import CodecTrainConfig, train_codec
from df_train.config import TrainConfig, apply_overrides
from df_train.recipes import RECIPES, get_recipe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce train", description="Train DualForce with a recipe."
    )
    p.add_argument("--recipe", required=True, help=f"one of: {', '.join(sorted(RECIPES))}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by dotted path, e.g. optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<recipe>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    p.add_argument("--no-progress", action="store_true")
    launch = p.add_argument_group("submitit (SLURM or local executor)")
    launch.add_argument("--slurm", action="store_true", help="submit to SLURM through submitit")
    launch.add_argument(
        "--local", action="store_true", help="run through submitit's local executor"
    )
    launch.add_argument("--nodes", type=int, default=1)
    launch.add_argument("--gpus-per-node", type=int, default=1)
    launch.add_argument("--partition", default=None)
    launch.add_argument(
        "--time", default="24:00:00", help="time limit HH:MM:SS (requeued on timeout)"
    )
    launch.add_argument("--account", default=None)
    launch.add_argument("--qos", default=None)
    return p


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        config = apply_overrides(get_recipe(args.recipe), args.overrides)
        out = args.out if args.out is not None else Path("runs") / config.name
        config = replace(config, out_dir=str(out))
        if isinstance(config, CodecTrainConfig):
            summary = train_codec(config, progress=not args.no_progress)
            print(f"codec in {summary['codec']}: held-out PSNR {summary['heldout_psnr_db']:.2f} dB")
            return 0
        if not config.data.store:
            raise ValueError(
                "data.store is not set: pass --set data.store=DIR (a `dualforce data extract` store)"
            )
        if args.slurm or args.local:
            if not isinstance(config, TrainConfig):
                raise ValueError("--slurm/--local launch DualForce recipes; train codecs directly")
            if args.slurm and args.local:
                raise ValueError("--slurm and --local: choose one executor")
            from df_train.launch import make_executor, submit
            from df_train.preflight import check_run, require_slurm

            found = check_run(config)  # before the queue, not after it
            if args.slurm:
                require_slurm()
            logging.getLogger(__name__).info(
                "checked: %d training clips, codec %s", found["clips"], found["codec_dir"]
            )

            executor = make_executor(
                out / "submitit",
                local=args.local,
                nodes=args.nodes,
                gpus_per_node=args.gpus_per_node,
                partition=args.partition,
                time=args.time,
                account=args.account,
                qos=args.qos,
            )
            job = submit(config, executor)
            print(f"submitted job {job.job_id}; logs in {out / 'submitit'}")
            if args.local:
                print(job.result())
            return 0
        return _train(config, out, resume=args.resume, progress=not args.no_progress)
    except ValueError as e:
        print(f"dualforce train: {e}", file=sys.stderr)
        return 2
    return 0


def _train(config: TrainConfig, out: Path, *, resume: bool, progress: bool) -> int:
    """Trains in this process, or as one rank of a torchrun/srun launch (FSDP2 over all of
    them), then exports the inference bundle to ``<out>/bundle``. The codec the bundle needs is
    located before training, so a missing one fails at once, not after the run."""
    from df_train.export import find_codec_dir, store_clip_metadata
    from df_train.parallel import destroy_distributed, init_distributed
    from df_train.trainer import Trainer

    rank, world, _, device = init_distributed()
    try:
        trainer = Trainer(
            config, rank=rank, world_size=world, device=str(device) if world > 1 else None
        )
        find_codec_dir(trainer, store_clip_metadata(trainer))
        if resume and not trainer.resume():
            logging.getLogger(__name__).info("no checkpoint in %s: starting from scratch", out)
        trainer.fit(progress=progress)
        path = trainer.export_bundle(out / "bundle")
        if rank == 0:
            print(f"trained {config.name} to step {trainer.step}; inference bundle in {path}")
    finally:
        destroy_distributed()
    return 0
