"""``dualforce demo``: the whole job end to end on SynthTalk, in one resumable command.

Stages (each records its completion atomically in ``<out>/stages/<stage>.json``; a rerun skips
the finished ones, and an interrupted training resumes from its newest checkpoint):

1. ``corpus``   SynthTalk clips (``df_data.synthtalk.generate_corpus``), train and test identities
2. ``codec``    the latent codec (``df_train.codec.train_codec``) on the train frames
3. ``store``    the clip store (``df_data.extract.extract_store``): latents, audio features, struct
4. ``train``    DualForce (``df_train.trainer.Trainer``); exports two inference bundles, the
                step-0 (untrained) model and the trained EMA model
5. ``generate`` videos of held-out identities from their audio, streaming (``df_infer``), for the
                trained model, the untrained model, and a still reference frame
6. ``evaluate`` SynthTalk probe metrics of each (``df_eval.evaluate``)
7. ``report``   ``<out>/report.md``: videos, plots and the comparison table

Presets: ``cpu`` (default, ~15 minutes on two cores), ``gpu`` (more data and steps, CUDA) and
``smoke`` (a few minutes; CI). ``--set field=value`` changes a preset field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from df_core.checks import (
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    unit_float,
)
from df_eval.demo_report import write_report
from df_models.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

STAGES = ("corpus", "codec", "store", "train", "generate", "evaluate", "report")
VARIANTS = ("trained", "untrained", "still")  # the model and its two baselines
JAW = 6  # index of "jaw" in df_data.synthtalk.STRUCT_NAMES


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoPreset:
    name: str = "cpu"
    train_clips: int = 40  # SynthTalk training clips (over train_clips // 2 identities)
    test_clips: int = 4  # held-out clips (over test_clips // 2 unseen identities)
    seconds: float = 6.0  # length of each clip
    size: int = 64  # frame height and width (the demo codec makes 16x16 latents of it)
    codec_recipe: str = "codec_synthtalk_demo"  # df_train.recipes name
    codec_steps: int = 3000  # codec optimiser steps (32 x 32 crops: see codec_synthtalk_demo)
    # 4: the codec compresses time too (issue 18): the per-frame codec above is trained first,
    # then inflated into the causal TemporalTinyAutoencoder (temporal_codec_recipe) and trained
    # on windows for temporal_codec_steps; the model gets frames_per_latent 4 and the structure
    # of all 4 frames of a group.
    frames_per_latent: int = 1
    temporal_codec_recipe: str = "codec_synthtalk_demo_temporal"
    temporal_codec_steps: int = 1500
    train_recipe: str = "synthtalk_demo"  # df_train.recipes name
    train_steps: int = 1200  # DualForce optimiser steps
    batch_size: int = 8  # DualForce clips per step
    sampler_steps: int = 4  # denoising steps per frame at generation
    cfg_audio: float = 1.0  # classifier-free guidance scale on audio at generation; 1 = off
    cfg_struct: float = 1.0  # the structure stream's own audio guidance; 1 = off
    noise_share: float = 0.0  # shared part of every frame's initial video noise; 0 = independent
    eval_clips: int = 4  # test clips generated and scored per variant
    probe_steps: int = 700  # optimiser steps of the evaluation probe
    device: str = "cpu"  # cpu | cuda | auto
    workers: int = 2  # corpus synthesis processes
    threads: int = 1  # torch CPU threads; 0 = torch's default. The demo's ops are small, so
    # one thread loses little, and it avoids OpenMP spinning when the cores are shared (10x
    # slower streaming measured with 2 threads on a loaded 2-core machine)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "train_clips",
            "test_clips",
            "size",
            "codec_steps",
            "train_steps",
            "batch_size",
            "sampler_steps",
            "eval_clips",
            "probe_steps",
            "workers",
            "temporal_codec_steps",
        ):
            positive_int(f"DemoPreset.{name}", getattr(self, name))
        one_of("DemoPreset.frames_per_latent", self.frames_per_latent, (1, 4))
        non_negative_int("DemoPreset.threads", self.threads)
        non_negative_int("DemoPreset.seed", self.seed)
        non_negative_float("DemoPreset.cfg_audio", self.cfg_audio)  # 1 = no guidance
        non_negative_float("DemoPreset.cfg_struct", self.cfg_struct)
        unit_float("DemoPreset.noise_share", self.noise_share)
        positive_float("DemoPreset.seconds", self.seconds)
        if self.eval_clips > self.test_clips:
            raise ValueError(
                f"DemoPreset.eval_clips={self.eval_clips} exceeds test_clips={self.test_clips}"
            )
        one_of("DemoPreset.device", self.device, ("cpu", "cuda", "auto"))


PRESETS: dict[str, DemoPreset] = {
    # Audio guidance: the demo's small model follows the audio in its structure stream without
    # it, its video much better with it (issue 7, one trained model: probe sync_corr 0.36 at
    # 1, 0.65 at 3, 0.72 at 5). The structure stream gets none: guided, its jaw overshoots
    # (RMSE to the truth 0.11 unguided, 0.33 at 3, 0.59 at 5), and the video keeps its sync
    # without it (0.63 at 3 / 1, 0.72 at 5 / 1).
    #
    # Shared noise (issue 14, one trained cpu model, 4 held-out clips): the frame-to-frame
    # flicker of independent per-frame noise is what makes the head-pose jitter (probe, at
    # share 0 / 0.6 / 0.7 / 0.8 / 1: 2.53, 1.65, 1.45, 1.22, 0.57; the real videos' 0.56), while
    # the structure stream's own jitter is unchanged by it. The cost is variety: the Fréchet
    # distance rises (14.9, 17.3, 17.9, 18.7, 21.2; the still frame's 23.4) and head-pose
    # diversity falls (0.47, 0.38, 0.35, 0.33, 0.26; the real videos' 0.44). Lip sync (0.83,
    # 0.89, 0.89, 0.90, 0.91) and identity (0.073, 0.066, 0.065, 0.064, 0.064) improve.
    "cpu": DemoPreset(cfg_audio=5.0, cfg_struct=1.0, noise_share=0.7),
    # One H200 in one 10-minute device call (issue 14): the CPU demo's design at the size
    # the GPU trains in about five minutes (df_train.recipes.synthtalk_gpu), on 10x the clips.
    "gpu": DemoPreset(
        name="gpu",
        train_clips=400,
        test_clips=8,
        seconds=8.0,
        codec_recipe="codec_synthtalk_gpu",
        codec_steps=3000,
        train_recipe="synthtalk_gpu",
        train_steps=1500,
        batch_size=256,
        sampler_steps=4,
        cfg_audio=5.0,
        cfg_struct=1.0,
        noise_share=0.7,
        eval_clips=8,
        probe_steps=1500,
        device="cuda",
        workers=16,
        threads=0,
    ),
    # The codec that compresses time (issue 18), otherwise the presets above.
    "cpu-t4": DemoPreset(
        name="cpu-t4", cfg_audio=5.0, cfg_struct=1.0, noise_share=0.7, frames_per_latent=4
    ),
    "smoke": DemoPreset(
        name="smoke",
        train_clips=4,
        test_clips=2,
        seconds=2.0,
        codec_steps=30,
        train_steps=30,
        batch_size=4,
        sampler_steps=2,
        cfg_audio=5.0,
        cfg_struct=1.0,
        eval_clips=1,
        probe_steps=40,
        workers=1,
    ),
}


def apply_sets(preset: DemoPreset, items: list[str]) -> DemoPreset:
    """``field=value`` overrides, parsed by the type of the field's current value, applied
    together (so their order does not matter: the preset is validated once, with all of them)."""
    known = {f.name: f for f in dataclasses.fields(DemoPreset)}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD in {sorted(known)}")
        current = getattr(preset, key)
        try:
            parsed = type(current)(value) if not isinstance(current, str) else value
        except ValueError as e:
            raise ValueError(
                f"--set {key}: cannot parse {value!r} as {type(current).__name__}"
            ) from e
        changes[key] = parsed
    return replace(preset, **changes)


# Stage bookkeeping --------------------------------------------------------------------------


def _write_record(path: Path, data: Any) -> None:
    write_json_atomic(path, data, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def stage_path(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def stage_record(out: Path, stage: str) -> dict | None:
    """The completion record of ``stage``, or None when it has not finished."""
    path = stage_path(out, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def _check_preset(out: Path, preset: DemoPreset) -> None:
    """A run directory belongs to one preset: resuming it with another would mix stages."""
    check_run_preset(out / "demo.json", preset, "preset")


def check_run_preset(path: Path, preset: Any, what: str, *, free: tuple[str, ...] = ()) -> None:
    """``path`` records the preset (a dataclass) a run directory was made with: written on the
    first run, compared on every later one (a ValueError naming the fields that differ). A
    field added to the dataclass since the run was made counts as recorded at its default
    (the run was made with that behaviour); a field that no longer exists is a difference.
    Fields in ``free`` may change from run to run (the record is then rewritten): they select
    work within the directory without changing what is already there."""
    mine = json.loads(json.dumps(asdict(preset), default=_jsonable))  # tuples as lists
    if not path.is_file():
        _write_record(path, {"preset": mine})
        return
    recorded = json.loads(path.read_text())["preset"]
    defaults = {f.name: f.default for f in dataclasses.fields(preset)}
    added = {k: json.loads(json.dumps(defaults[k])) for k in mine if k not in recorded}
    recorded = {**added, **recorded}
    keys = {*recorded, *mine}
    diff = sorted(k for k in keys if k not in free and recorded.get(k) != mine.get(k))
    if diff:
        raise ValueError(
            f"{path.parent} was made with another {what} (fields differ: {diff}); pass a new "
            "--out or delete the directory"
        )
    if any(recorded.get(k) != mine.get(k) for k in free):
        _write_record(path, {"preset": mine})


# Stages -------------------------------------------------------------------------------------


class Demo:
    """The stages of one demo run in ``out``; ``run()`` executes the unfinished ones."""

    def __init__(self, out: str | Path, preset: DemoPreset, *, progress: bool = True) -> None:
        self.out = Path(out)
        self.preset = preset
        self.progress = progress
        self.corpus = self.out / "corpus"
        self.codec_run = self.out / "codec"
        self.codec_dir = self.codec_run / "codec"
        self.store = self.out / "store"
        self.train_dir = self.out / "train"
        self.bundles = {v: self.out / "bundles" / v for v in ("trained", "untrained")}
        self.pred = {v: self.out / "pred" / v for v in VARIANTS}
        self.structs = {v: self.out / "structs" / v for v in ("trained", "untrained")}
        self.eval_dir = self.out / "eval"

    def run(self, *, until: str | None = None) -> dict[str, dict]:
        """Runs every unfinished stage (up to ``until``); returns every stage's record."""
        if until is not None and until not in STAGES:
            raise ValueError(f"until must be one of {STAGES}, got {until!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        _check_preset(self.out, self.preset)
        if self.preset.threads:
            import torch

            torch.set_num_threads(self.preset.threads)
        records = {}
        for stage in STAGES:
            record = stage_record(self.out, stage)
            if record is None:
                log.info("demo: stage %s", stage)
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                summary = getattr(self, f"stage_{stage}")()
                record = {
                    "stage": stage,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "load_start": round(load, 2),
                    "load_end": round(os.getloadavg()[0], 2),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "summary": summary,
                }
                _write_record(stage_path(self.out, stage), record)
                log.info("demo: stage %s done in %.1f s", stage, record["seconds"])
            else:
                log.info("demo: stage %s already done (%s s), skipped", stage, record["seconds"])
            records[stage] = record
            if stage == until:
                break
        return records

    # Step 1: the corpus.
    def stage_corpus(self) -> dict:
        from df_data.synthtalk import generate_corpus

        p = self.preset
        dirs = generate_corpus(
            self.corpus,
            clips=p.train_clips,
            seconds=p.seconds,
            size=p.size,
            test_clips=p.test_clips,
            seed=p.seed,
            workers=p.workers,
            progress=self.progress,
        )
        return {"clips": len(dirs), "dir": str(self.corpus)}

    # Step 2: the codec.
    def stage_codec(self) -> dict:
        from df_train.codec import train_codec
        from df_train.recipes import get_recipe

        p = self.preset
        common = {"corpus": str(self.corpus), "device": p.device, "seed": p.seed}
        frame_run = self.codec_run if p.frames_per_latent == 1 else self.out / "codec_frame"
        frame = frame_run / "codec"
        if p.frames_per_latent == 1 or not (frame / "config.json").is_file():
            config = replace(
                get_recipe(p.codec_recipe), out_dir=str(frame_run), steps=p.codec_steps, **common
            )
            summary = train_codec(config, progress=self.progress)
            if p.frames_per_latent == 1:
                return summary
        # The temporal codec starts as the trained per-frame codec (TemporalTinyAutoencoder
        # .inflate): from a random start it reached 21.3 dB held out, inflated 27.5 dB.
        config = replace(
            get_recipe(p.temporal_codec_recipe),
            out_dir=str(self.codec_run),
            steps=p.temporal_codec_steps,
            init_from=str(frame),
            **common,
        )
        return train_codec(config, progress=self.progress)

    # Step 3: the clip store.
    def stage_store(self) -> dict:
        from df_data.extract import extract_store

        device = _device(self.preset.device)
        summary = extract_store(
            self.corpus,
            self.store,
            codec=self.codec_dir,
            device=device,
            progress=self.progress,
            read_workers=min(8, self.preset.workers),  # decoding is the store's bottleneck
            # The store is rebuilt from the corpus if lost: one sync at its end instead of
            # fsyncs per clip (12 of 26 s for 120 of the gpu demo's clips on the H200 host).
            sync_each_clip=False,
        )
        if summary["failed"]:
            raise RuntimeError(
                f"extraction failed for {summary['failed']} clips ({summary['failures']}); see "
                f"{self.store / 'failures.jsonl'}"
            )
        return summary

    def train_config(self):
        from df_train.recipes import get_recipe

        p = self.preset
        config = get_recipe(p.train_recipe)
        if p.frames_per_latent > 1:
            k, m = p.frames_per_latent, config.model
            # Every frame of a group's structure (df_data.dataset): k x the store's dims.
            model = m.replace(frames_per_latent=k, struct_raw_dim=k * m.struct_raw_dim)
            config = replace(config, model=model)
        return replace(
            config,
            data=replace(config.data, store=str(self.store)),
            out_dir=str(self.train_dir),
            steps=p.train_steps,
            batch_size=p.batch_size,
            device=p.device,
            seed=p.seed,
            ckpt_every=min(config.ckpt_every, p.train_steps),
        )

    # Step 4: DualForce, and the untrained model's bundle (its step-0 weights).
    def stage_train(self) -> dict:
        from df_models.bundle import META_NAME
        from df_train.trainer import Trainer

        config = self.train_config()
        sampler = self.recommended_sampler()
        if not (self.bundles["untrained"] / META_NAME).is_file():
            Trainer(config).export_bundle(self.bundles["untrained"], sampler=sampler)
        trainer = Trainer(config)
        resumed = trainer.resume()
        start = trainer.step
        history = trainer.fit(progress=self.progress)
        trainer.export_bundle(self.bundles["trained"], sampler=sampler)
        losses = [m.loss for m in history]
        return {
            "steps": trainer.step,
            "resumed_from_step": start if resumed else None,
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "bundle": str(self.bundles["trained"]),
        }

    def recommended_sampler(self) -> dict[str, Any]:
        """The sampler settings the demo evaluates with, recorded in both bundles."""
        p = self.preset
        return {
            "steps": p.sampler_steps,
            "cfg_audio": p.cfg_audio,
            "cfg_struct": p.cfg_struct,
            "noise_share": p.noise_share,
        }

    def eval_clip_dirs(self) -> list[Path]:
        dirs = sorted(d for d in (self.corpus / "test").iterdir() if (d / "video.mp4").is_file())
        if len(dirs) < self.preset.eval_clips:
            raise RuntimeError(
                f"{self.corpus / 'test'} has {len(dirs)} clips, the demo scores "
                f"{self.preset.eval_clips}"
            )
        return dirs[: self.preset.eval_clips]

    # Step 5: videos of held-out identities from their audio (reference = the clip's first frame).
    def stage_generate(self) -> dict:
        from df_data.media import VideoWriter, read_video, read_wav
        from df_infer.generate import generate_videos
        from df_infer.pipeline import StreamingGenerator

        p = self.preset
        clips = self.eval_clip_dirs()
        summary: dict[str, Any] = {"clips": [d.name for d in clips]}
        # An interrupted run (killed, not unwound) can leave writers' temporaries behind; they
        # are not videos, and the evaluation reads every *.mp4 of a directory.
        for directory in (*self.pred.values(), *self.structs.values()):
            for tmp in directory.glob(".*.tmp-*"):
                log.info("removing %s, left by an interrupted run", tmp)
                tmp.unlink()
        for variant in ("trained", "untrained"):
            gen = StreamingGenerator.from_bundle(self.bundles[variant], device=_device(p.device))
            # Both models get the same sampler, guidance included (the one their bundles
            # recommend, which `dualforce generate` uses too): the baseline is the untrained
            # network, not a weaker sampler.
            sampler = gen.default_sampler(seed=p.seed)
            todo = [
                d
                for d in clips
                if not (
                    (self.pred[variant] / f"{d.name}.mp4").is_file()
                    and (self.structs[variant] / f"{d.name}.npy").is_file()
                )
            ]
            results = []
            if todo:
                # All clips in one batch (each still its own seed-p.seed noise: the videos
                # are those generated one at a time, to float rounding); on one CPU thread 4
                # of the cpu preset's clips took 24 s, one alone 23 s.
                results = generate_videos(
                    gen,
                    [read_video(d / "video.mp4", indices=[0])[0][0] for d in todo],
                    [d / "audio.wav" for d in todo],
                    [self.pred[variant] / f"{d.name}.mp4" for d in todo],
                    sampler,
                    progress=self.progress,
                )
            for d, result in zip(todo, results, strict=True):
                _save_structs(self.structs[variant] / f"{d.name}.npy", result.structs)
            summary[variant] = {
                "frames": sum(r.frames for r in results),
                "clips_together": len(todo),
                "fps": results[0].fps if results else None,  # frames of all clips / wall time
                "sampler": asdict(sampler),
            }
        for d in clips:  # the still baseline: the reference frame, repeated, with the audio
            mp4 = self.pred["still"] / f"{d.name}.mp4"
            if mp4.is_file():
                continue
            video, _ = read_video(d / "video.mp4")
            audio = read_wav(d / "audio.wav")
            with VideoWriter(mp4) as writer:
                writer.set_audio(audio)
                for _ in range(len(video)):
                    writer.write(video[0])
        return summary

    # Step 6: the probe metrics, and the structure-stream jaw proxy.
    def stage_evaluate(self) -> dict:
        from df_eval.evaluate import evaluate_ground_truth, evaluate_videos
        from df_eval.probe import ProbeConfig, load_or_train_probe

        p = self.preset
        config = ProbeConfig(size=p.size, steps=p.probe_steps, seed=p.seed)
        probe = load_or_train_probe(self.corpus, config, progress=self.progress)
        common = {"probe": probe, "progress": self.progress}
        results: dict[str, Any] = {"probe": {"config": asdict(config), **probe.info}}
        for variant in VARIANTS:
            scores = evaluate_videos(self.pred[variant], self.corpus, **common)
            _write_record(self.eval_dir / variant / "metrics.json", scores)
            results[variant] = {"metrics": scores["aggregate"], "curves": scores["curves"]}
        clips = [d.name for d in self.eval_clip_dirs()]
        truth = evaluate_ground_truth(self.corpus, clips, **common)
        _write_record(self.eval_dir / "ground_truth" / "metrics.json", truth)
        results["ground_truth"] = {"metrics": truth["aggregate"], "curves": truth["curves"]}
        for variant in ("trained", "untrained"):
            results[variant]["struct_jaw"] = self.struct_jaw_sync(variant)
        return results

    def struct_jaw_sync(self, variant: str) -> dict:
        """Pearson correlation (and RMSE) of the generated structure's jaw with the ground
        truth's, per clip and averaged: the model's own account of its lip sync, beside the
        probe's reading of its pixels."""
        from safetensors.numpy import load_file

        per_clip = {}
        for d in self.eval_clip_dirs():
            gen = np.load(self.structs[variant] / f"{d.name}.npy")[:, JAW]
            gt = load_file(str(d / "gt.safetensors"))["struct"][:, JAW]
            n = min(len(gen), len(gt))
            per_clip[d.name] = {
                "corr": _corr(gen[:n], gt[:n]),
                "rmse": float(np.sqrt(np.mean((gen[:n] - gt[:n]) ** 2))),
            }
        return {
            "corr": float(np.mean([v["corr"] for v in per_clip.values()])),
            "rmse": float(np.mean([v["rmse"] for v in per_clip.values()])),
            "per_clip": per_clip,
        }

    # Step 7: the report.
    def stage_report(self) -> dict:
        records = {s: stage_record(self.out, s) for s in STAGES if s != "report"}
        path = write_report(self.out, self.preset, records)
        return {"report": str(path)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _save_structs(path: Path, array: np.ndarray | None) -> None:
    if array is None:
        raise RuntimeError(f"{path}: the model generated no structure (struct stream disabled?)")
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# CLI ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce demo",
        description="SynthTalk end to end: corpus, codec, store, training, streaming "
        "generation, evaluation against two baselines, report. Resumable.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory (default runs/demo, or runs/demo-<preset> for other presets)",
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu", help="cpu (default), gpu or smoke"
    )
    p.add_argument(
        "--smoke", action="store_true", help="the few-minute CI version (--preset smoke)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a preset field, e.g. train_steps=2000 (repeatable)",
    )
    p.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.smoke and args.preset != "cpu":
            raise ValueError("--smoke is --preset smoke; pass one of them")
        preset = apply_sets(PRESETS["smoke" if args.smoke else args.preset], args.sets)
        if args.out is None:
            args.out = Path("runs/demo" if preset.name == "cpu" else f"runs/demo-{preset.name}")
        t0 = time.perf_counter()
        records = Demo(args.out, preset, progress=not args.no_progress).run(until=args.until)
    except ValueError as e:
        print(f"dualforce demo: {e}", file=sys.stderr)
        return 2
    ran = sum(r["seconds"] for r in records.values())
    print(
        f"demo ({preset.name}) in {args.out}: {len(records)} stages, "
        f"{ran:.0f} s of stage time ({time.perf_counter() - t0:.0f} s this run)"
    )
    if "report" in records:
        print(f"report: {records['report']['summary']['report']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
