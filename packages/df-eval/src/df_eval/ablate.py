"""``dualforce ablate``: the proposal's ablation table on SynthTalk, in one resumable command.

Every variant is the ``full`` model with the fields the variant names changed, trained with the
same data (one corpus, codec and store, those of a ``dualforce demo`` preset), the same budget
and the same seeds, and scored by the same probe on the same held-out identities:

- short clips: the demo's held-out test clips (every metric of ``df_eval.evaluate``);
- long sequences: held-out clips of ``max(long_frames)`` frames (the test identities, other
  speech and motion), scored at every length of ``long_frames`` (32, 128, 256, 512: the first
  ``L`` frames of one stream: the model is causal, so they are the video a stream of ``L``
  frames makes, up to the audio context of its last frames), with identity distance, pose
  error and jitter against frame index (the drift curves).

The ``full`` model is the demo preset's recipe with both auxiliary losses on (``L_lip`` and
``L_aux`` at ``hdtf_base``'s weights), so that "without L_lip" and "without L_aux" remove
something. A variant whose configuration equals another's (``n_fusion`` 3/5 of a 4-block model
is capped by the structure stream's depth, ``struct_tokens_4`` is the full model's own) is
trained once and reported under both names.

Layout of ``--out``: ``shared/`` (the demo run up to its store: corpus, codec, store), ``long/``
(the long held-out clips), ``baselines.json`` (the still frame and the real videos, scored
once), ``variants/<name>[__seed<s>]/`` (``stages/{train,generate,evaluate}.json``, recorded
atomically: a finished stage, and so a finished variant, is skipped on a rerun; an interrupted
training resumes from its newest checkpoint), then ``ablation.md``, ``ablation.json`` and
``plots/``.

Spread: with several seeds, the standard deviation over seeds of each metric's mean; with one,
the standard deviation over clips. The reading calls a difference from ``full`` only when its
margin is larger than the spread: over seeds, larger than the larger of the two standard
deviations; over clips, larger than twice the standard error of the per-clip paired difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from df_core.checks import non_negative_float, positive_int
from df_eval.demo import PRESETS as DEMO_PRESETS
from df_eval.demo import (
    Demo,
    DemoPreset,
    _device,
    _write_record,
    check_run_preset,
    stage_path,
    stage_record,
)
from df_models.io import write_json_atomic

log = logging.getLogger(__name__)

STAGES = ("train", "generate", "evaluate")
# The metrics of the table, with the direction in which each is better.
SHORT_METRICS = {
    "sync_corr": "higher",
    "id_dist": "lower",
    "fd": "lower",
    "jitter": "lower",
    "pose_err": "lower",
    "pose_div": "higher",
    "psnr": "higher",
    "ssim": "higher",
}
LONG_METRICS = {"id_dist": "lower", "pose_err": "lower", "jitter": "lower", "sync_corr": "higher"}
# What the reading judges each variant on.
READ_METRICS = ("sync_corr", "id_dist", "fd", "jitter", "pose_err")


@dataclass(frozen=True, kw_only=True, slots=True)
class AblatePreset:
    name: str
    demo: str  # the DemoPreset whose corpus, codec, store, recipe and sampler are shared
    train_steps: int  # every variant's budget
    eval_clips: int  # short held-out clips scored per variant
    long_clips: int  # long held-out clips per variant
    long_frames: tuple[int, ...] = (32, 128, 256, 512)  # lengths the long clips are scored at
    seeds: tuple[int, ...] = (0,)
    lambda_lip: float = 0.05  # the full model's L_lip weight (hdtf_base's)
    lambda_aux: float = 0.1  # the full model's L_aux weight (hdtf_base's)

    def __post_init__(self) -> None:
        for name in ("train_steps", "eval_clips", "long_clips"):
            positive_int(f"AblatePreset.{name}", getattr(self, name))
        if not self.long_frames or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 3 for n in self.long_frames
        ):
            raise ValueError(
                f"AblatePreset.long_frames must be integers of at least 3, got {self.long_frames}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"AblatePreset.seeds must be distinct and not empty: {self.seeds}")
        for name in ("lambda_lip", "lambda_aux"):
            non_negative_float(f"AblatePreset.{name}", getattr(self, name))
        if self.demo not in DEMO_PRESETS:
            raise ValueError(f"AblatePreset.demo must be one of {sorted(DEMO_PRESETS)}")
        if self.eval_clips > DEMO_PRESETS[self.demo].test_clips:
            raise ValueError(
                f"AblatePreset.eval_clips={self.eval_clips} exceeds the {self.demo} demo's "
                f"test_clips={DEMO_PRESETS[self.demo].test_clips}"
            )


PRESETS: dict[str, AblatePreset] = {
    # 11 distinct trainings of 500 steps on the demo's corpus and codec: 52 min on one core
    # for one seed (measured); --seeds 0,1 --jobs 2 then adds seed 1 in 28 min on two cores.
    "cpu": AblatePreset(name="cpu", demo="cpu", train_steps=500, eval_clips=4, long_clips=2),
    # Sized for one H200: the gpu demo trains 1,500 steps in 192 s, so a variant's stages
    # should fit one 10-minute call (each stage resumes if not); not run yet.
    "gpu": AblatePreset(
        name="gpu", demo="gpu", train_steps=1500, eval_clips=8, long_clips=4, seeds=(0, 1)
    ),
    "smoke": AblatePreset(
        name="smoke", demo="smoke", train_steps=4, eval_clips=1, long_clips=1, long_frames=(8, 16)
    ),
}


# Variants -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    question: str  # the claim of the proposal it tests
    sets: tuple[str, ...]  # ``section.field=value`` changes to the full model's TrainConfig


def fusion_blocks(config, fifths: int) -> int:
    """``n_fusion`` at ``fifths``/5 of the video depth (the proposal's 4/8/12 of 20), at least
    1 and at most the structure stream's depth."""
    m = config.model
    return min(max(1, round(m.video_depth * fifths / 5)), m.struct_depth)


def variants(config) -> dict[str, Variant]:
    """The proposal's table for the full model ``config`` (a :class:`TrainConfig`)."""
    out = [
        Variant("full", "the full model", ()),
        Variant(
            "no_struct", "does the 3-D structure stream help?", ("model.struct_enabled=false",)
        ),
        Variant(
            "struct_to_video",
            "is the bidirectional bridge better than structure -> video alone?",
            ("model.bridge=struct_to_video",),
        ),
        Variant("no_bridge", "does fusing the two streams help?", ("model.bridge=off",)),
    ]
    for k in (1, 2, 3):
        n = fusion_blocks(config, k)
        out.append(
            Variant(
                f"fusion_{k}of5",
                f"how deep should the fusion be? ({n} of {config.model.video_depth} blocks)",
                (f"model.n_fusion={n}",),
            )
        )
    for s in ("0.5", "0.7", "1.0"):
        out.append(
            Variant(
                f"sigma_s_{s}",
                "does the asymmetric structure noise help? (sigma_s_max, and the sampler's "
                "structure start, at this level)",
                (f"noise.sigma_s_max={s}",),
            )
        )
    for n in (1, 4, 8):
        out.append(
            Variant(
                f"struct_tokens_{n}",
                "how many structure tokens per frame?",
                (f"model.struct_tokens={n}",),
            )
        )
    out.append(Variant("no_lip", "does L_lip help?", ("loss.lambda_lip=0",)))
    out.append(Variant("no_aux", "does L_aux help?", ("loss.lambda_aux=0",)))
    return {v.name: v for v in out}


def config_diff(a, b, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """The dotted fields where two configs (nested dataclasses) differ: ``{path: (a, b)}``."""
    diff = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            diff.update(config_diff(x, y, f"{path}."))
        elif x != y:
            diff[path] = (x, y)
    return diff


def select(config, names: list[str] | None) -> list[Variant]:
    """The variants ``names`` (default all), ``full`` first; unknown names are a ValueError
    naming them and the known ones."""
    table = variants(config)
    if names is None:
        return list(table.values())
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(table)}")
    return [table["full"]] + [table[n] for n in dict.fromkeys(names) if n != "full"]


# The runner ---------------------------------------------------------------------------------


class Ablation:
    """The table's runs in ``out``; ``run()`` does what is not done yet and writes the report."""

    def __init__(
        self,
        out: str | Path,
        preset: AblatePreset,
        *,
        variant_names: list[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.out = Path(out)
        self.preset = preset
        self.progress = progress
        self.demo_preset: DemoPreset = replace(
            DEMO_PRESETS[preset.demo], train_steps=preset.train_steps
        )
        self.shared = Demo(self.out / "shared", self.demo_preset, progress=progress)
        self.long = self.out / "long"
        self.full_config = self._full_config()
        self.variants = select(self.full_config, variant_names)

    def _full_config(self):
        config = self.shared.train_config()
        loss = replace(
            config.loss, lambda_lip=self.preset.lambda_lip, lambda_aux=self.preset.lambda_aux
        )
        return replace(config, loss=loss)

    def variant_config(self, variant: Variant, seed: int):
        """The full model's config with the variant's changes (and the seed), nothing else."""
        from df_train.config import apply_overrides

        return apply_overrides(replace(self.full_config, seed=seed), list(variant.sets))

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "variants" / (name if seed == 0 else f"{name}__seed{seed}")

    # Shared work: the demo's corpus, codec and store; the long clips; the probe; baselines.
    def prepare(self) -> None:
        from df_data.synthtalk import generate_corpus

        self.out.mkdir(parents=True, exist_ok=True)
        _check_preset(self.out, self.preset)
        self.shared.run(until="store")
        p, d = self.preset, self.demo_preset
        generate_corpus(
            self.long,
            clips=1,  # generate_corpus writes a train split too; only the test clips are used
            seconds=max(p.long_frames) / 25,
            size=d.size,
            test_clips=p.long_clips,
            seed=d.seed + 1,  # the test identities, other speech and motion
            workers=min(d.workers, p.long_clips),
            progress=self.progress,
        )
        self.probe()

    def probe(self):
        from df_eval.probe import ProbeConfig, load_or_train_probe

        d = self.demo_preset
        config = ProbeConfig(size=d.size, steps=d.probe_steps, seed=d.seed)
        return load_or_train_probe(self.shared.corpus, config, progress=self.progress)

    def short_clips(self) -> list[Path]:
        return _test_clips(self.shared.corpus, self.preset.eval_clips)

    def long_clips(self) -> list[Path]:
        return _test_clips(self.long, self.preset.long_clips)

    def baselines(self) -> dict:
        """The still reference frame and the real videos, scored once (``baselines.json``)."""
        path = self.out / "baselines.json"
        if path.is_file():
            return json.loads(path.read_text())
        from df_data.media import read_video

        probe = self.probe()
        result = {}
        for kind, dirs, corpus in (
            ("short", self.short_clips(), self.shared.corpus),
            ("long", self.long_clips(), self.long),
        ):
            real = {d.name: read_video(d / "video.mp4")[0] for d in dirs}
            still = {c: np.repeat(v[:1], len(v), axis=0) for c, v in real.items()}
            result[kind] = {
                name: _scores(
                    frames, corpus, probe, self.preset.long_frames if kind == "long" else None
                )
                for name, frames in (("still", still), ("ground_truth", real))
            }
        write_json_atomic(path, result)
        return result

    # One variant at one seed: train, generate, evaluate (each stage recorded, skipped when done).
    def run_variant(self, variant: Variant, seed: int) -> dict:
        out = self.run_dir(variant.name, seed)
        (out / "stages").mkdir(parents=True, exist_ok=True)
        config = replace(self.variant_config(variant, seed), out_dir=str(out / "train"))
        records = {}
        for stage in STAGES:
            record = stage_record(out, stage)
            if record is None:
                log.info("ablate: %s seed %d: %s", variant.name, seed, stage)
                t0 = time.perf_counter()
                summary = getattr(self, f"_{stage}")(out, config)
                record = {
                    "stage": stage,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "summary": summary,
                }
                _write_record(stage_path(out, stage), record)
            records[stage] = record
        return records

    def _train(self, out: Path, config) -> dict:
        from df_train.trainer import Trainer

        trainer = Trainer(config)
        trainer.resume()
        history = trainer.fit(progress=self.progress)
        trainer.export_bundle(out / "bundle", sampler=self.shared.recommended_sampler())
        losses = [m.loss for m in history]
        return {
            "steps": trainer.step,
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "config": asdict(config),
        }

    def _generate(self, out: Path, config) -> dict:
        from df_data.media import read_video
        from df_infer.generate import generate_videos
        from df_infer.pipeline import StreamingGenerator

        gen = StreamingGenerator.from_bundle(
            out / "bundle", device=_device(self.demo_preset.device)
        )
        sampler = gen.default_sampler(seed=config.seed)
        clips = [("short", d) for d in self.short_clips()] + [
            ("long", d) for d in self.long_clips()
        ]
        for kind in ("short", "long"):
            (out / "pred" / kind).mkdir(parents=True, exist_ok=True)
            for tmp in (out / "pred" / kind).glob(".*.tmp-*"):
                tmp.unlink()  # an interrupted run's writer temporaries
        todo = [(k, d) for k, d in clips if not (out / "pred" / k / f"{d.name}.mp4").is_file()]
        results = []
        if todo:
            # One batch: the long clips set its length, the short ones ride along.
            results = generate_videos(
                gen,
                [read_video(d / "video.mp4", indices=[0])[0][0] for _, d in todo],
                [d / "audio.wav" for _, d in todo],
                [out / "pred" / k / f"{d.name}.mp4" for k, d in todo],
                sampler,
                progress=self.progress,
            )
        return {
            "clips": len(todo),
            "frames": sum(r.frames for r in results),
            "sampler": asdict(sampler),
        }

    def _evaluate(self, out: Path, config) -> dict:
        from df_eval.evaluate import read_pred_dir

        probe = self.probe()
        short, _ = read_pred_dir(out / "pred" / "short", self.shared.corpus)
        long, _ = read_pred_dir(out / "pred" / "long", self.long)
        return {
            "short": _scores(short, self.shared.corpus, probe, None),
            "long": _scores(long, self.long, probe, self.preset.long_frames),
        }

    def run(self, *, jobs: int = 1) -> Path:
        """Everything not done yet, then the report; returns the report's path. ``jobs > 1``
        runs that many variant trainings at once, each in its own process (on one thread, as
        the demo's ops are small: two jobs use two cores)."""
        positive_int("jobs", jobs)
        self.prepare()
        baselines = self.baselines()
        todo, alias, seen = [], {}, {}
        for variant in self.variants:
            for seed in self.preset.seeds:
                key = json.dumps(
                    asdict(self.variant_config(variant, seed)), sort_keys=True, default=str
                )
                if key in seen:  # the same training as another variant's
                    alias[(variant.name, seed)] = seen[key]
                else:
                    seen[key] = (variant.name, seed)
                    todo.append((variant, seed))
        if jobs == 1:
            done = {(v.name, s): self.run_variant(v, s) for v, s in todo}
        else:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            args = (str(self.out), self.preset, [v.name for v in self.variants])
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
                futures = {(v.name, s): pool.submit(_run_one, *args, v.name, s) for v, s in todo}
                done = {k: f.result() for k, f in futures.items()}
        results = {
            k: {
                "evaluate": records["evaluate"]["summary"],
                "seconds": sum(r["seconds"] for r in records.values()),
            }
            for k, records in done.items()
        }
        for k, original in alias.items():
            results[k] = {**results[original], "same_as": original[0]}
        return write_ablation_report(self, results, baselines)


def _run_one(out: str, preset: AblatePreset, names: list[str], name: str, seed: int) -> dict:
    """One variant's stages in a worker process (``Ablation.run(jobs=...)``)."""
    import torch

    torch.set_num_threads(1)
    ablation = Ablation(out, preset, variant_names=names, progress=False)
    variant = next(v for v in ablation.variants if v.name == name)
    return ablation.run_variant(variant, seed)


def _test_clips(corpus: Path, count: int) -> list[Path]:
    dirs = sorted(d for d in (corpus / "test").iterdir() if (d / "video.mp4").is_file())
    if len(dirs) < count:
        raise RuntimeError(f"{corpus / 'test'} has {len(dirs)} clips, the ablation needs {count}")
    return dirs[:count]


def _scores(frames: dict[str, np.ndarray], corpus: Path, probe, lengths) -> dict:
    """Per clip and aggregate metrics of ``frames``; with ``lengths``, the same for the first
    ``L`` frames of every clip at each length, and the per-frame curves."""
    from df_eval.evaluate import evaluate_frames

    common = {"probe": probe, "progress": False}
    if lengths is None:
        r = evaluate_frames(frames, corpus, **common)
        return {"clips": r["clips"], "aggregate": r["aggregate"]}
    by_length = {}
    for L in lengths:
        r = evaluate_frames({c: f[:L] for c, f in frames.items()}, corpus, **common)
        by_length[str(L)] = {"clips": r["clips"], "aggregate": r["aggregate"]}
    whole = evaluate_frames(frames, corpus, **common)
    curves = {k: whole["curves"][k] for k in ("id_drift", "pose_err", "jitter")}
    return {"lengths": by_length, "curves": curves}


def _check_preset(out: Path, preset: AblatePreset) -> None:
    """An ablation directory belongs to one preset (mixing budgets would compare nothing);
    its seeds may change: each seed's runs have their own directories, so a run with more
    seeds trains only the new ones."""
    check_run_preset(out / "ablate.json", preset, "ablation preset", free=("seeds",))


# The report ---------------------------------------------------------------------------------


def _stat(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std()) if len(a) > 1 else float("nan")


def summarise(ablation: Ablation, results: dict) -> dict:
    """Per variant: mean and spread of every metric (short clips; long clips per length), and
    the reading against ``full``."""
    seeds = ablation.preset.seeds
    table = {}
    for variant in ablation.variants:
        runs = [results[(variant.name, s)] for s in seeds]
        row: dict[str, Any] = {
            "question": variant.question,
            "sets": list(variant.sets),
            "same_as": runs[0].get("same_as"),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
        }
        for metric in SHORT_METRICS:
            row[metric] = _metric_stat(runs, seeds, lambda e: e["short"], metric)
        for L in ablation.preset.long_frames:
            for metric in LONG_METRICS:
                row[f"{metric}@{L}"] = _metric_stat(
                    runs, seeds, lambda e, L=L: e["long"]["lengths"][str(L)], metric
                )
        table[variant.name] = row
    full = [results[("full", s)] for s in seeds]
    for variant in ablation.variants:
        if variant.name == "full" or table[variant.name]["same_as"] == "full":
            continue  # the full model itself: nothing to compare
        runs = [results[(variant.name, s)] for s in seeds]
        table[variant.name]["reading"] = {
            m: _reading(full, runs, seeds, m, SHORT_METRICS[m]) for m in READ_METRICS
        }
        last = max(ablation.preset.long_frames)
        table[variant.name]["reading"][f"id_dist@{last}"] = _reading(
            full, runs, seeds, "id_dist", "lower", long=str(last)
        )
    return table


def _metric_stat(runs, seeds, part, metric) -> dict:
    """``{"mean", "spread", "over"}``: over seeds (several), else over clips (``fd`` is a
    distribution distance of all clips together: no spread with one seed)."""
    if len(seeds) > 1:
        mean, spread = _stat([part(r["evaluate"])["aggregate"][metric] for r in runs])
        return {"mean": mean, "spread": spread, "over": "seeds"}
    agg = part(runs[0]["evaluate"])
    mean = float(agg["aggregate"][metric])
    per_clip = [c[metric] for c in agg["clips"].values() if metric in c]
    spread = _stat(per_clip)[1] if per_clip else float("nan")
    return {"mean": mean, "spread": spread, "over": "clips"}


def _reading(full, runs, seeds, metric, better, long: str | None = None) -> dict:
    """Is ``full`` better than the variant on ``metric`` by more than the spread?"""

    def part(e):
        return e["long"]["lengths"][long] if long is not None else e["short"]

    sign = 1.0 if better == "lower" else -1.0  # margin > 0: the full model is better
    if len(seeds) > 1:
        f = [part(r["evaluate"])["aggregate"][metric] for r in full]
        v = [part(r["evaluate"])["aggregate"][metric] for r in runs]
        margin = sign * (np.mean(v) - np.mean(f))
        spread = max(np.std(f), np.std(v))
        over = "seed-to-seed standard deviation"
    else:
        fa, va = part(full[0]["evaluate"]), part(runs[0]["evaluate"])
        margin = sign * (va["aggregate"][metric] - fa["aggregate"][metric])
        clips = sorted(set(fa["clips"]) & set(va["clips"]))
        if metric in fa["clips"][clips[0]] and len(clips) > 1:
            d = np.array([va["clips"][c][metric] - fa["clips"][c][metric] for c in clips])
            spread = 2 * float(d.std(ddof=1) / np.sqrt(len(d)))
            over = "twice the standard error of the per-clip difference"
        else:
            spread, over = float("nan"), "no spread (one seed; a whole-set metric or one clip)"
    margin, spread = float(margin), float(spread)
    if not np.isfinite(spread):
        verdict = "no spread"
    elif margin > spread:
        verdict = "full better"
    elif margin < -spread:
        verdict = "variant better"
    else:
        verdict = "within spread"
    return {"margin": margin, "spread": spread, "over": over, "verdict": verdict}


def _cell(stat: dict) -> str:
    mean, spread = stat["mean"], stat["spread"]
    return f"{mean:.4g} ± {spread:.2g}" if np.isfinite(spread) else f"{mean:.4g}"


def write_ablation_report(ablation: Ablation, results: dict, baselines: dict) -> Path:
    from df_eval.report import plt, save_figure

    p = ablation.preset
    table = summarise(ablation, results)
    plots = ablation.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    # Drift curves over the long clips: every distinct variant on one plot per quantity (the
    # mean over seeds; a variant equal to another is drawn once, as that one).
    drawn = [v for v in ablation.variants if table[v.name]["same_as"] in (None, v.name)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 3.8))
    window = max(1, max(p.long_frames) // 32)
    # One colour per variant (more variants than matplotlib's default cycle of 10).
    colour = {v.name: plt.cm.tab20(i % 20) for i, v in enumerate(drawn)}
    for variant in drawn:
        style = {"lw": 2.2} if variant.name in ("full", "no_struct") else {"lw": 0.9, "alpha": 0.7}
        style["color"] = colour[variant.name]
        for ax, key in zip(axes, ("id_drift", "pose_err", "jitter"), strict=True):
            runs = [results[(variant.name, s)]["evaluate"]["long"]["curves"][key] for s in p.seeds]
            n = min(len(r) for r in runs)
            curve = np.mean([np.asarray(r[:n], np.float64) for r in runs], axis=0)
            ax.plot(_smooth(curve, window), label=variant.name, **style)
    for ax, (key, label) in zip(
        axes,
        (("id_drift", "identity distance"), ("pose_err", "head-pose error"), ("jitter", "jitter")),
        strict=True,
    ):
        gt = baselines["long"]["ground_truth"]["curves"][key]
        ax.plot(_smooth(gt, window), color="black", ls="--", label="real video")
        ax.set(xlabel="frame", ylabel=label, title=f"{label} against frame ({window}-frame mean)")
        ax.grid(alpha=0.3)
    # The legend beside the plots, not over the curves.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1, 0.5))
    save_figure(fig, plots / "drift.png")
    # Long-sequence metrics against length.
    fig, axes = plt.subplots(1, len(LONG_METRICS), figsize=(4 * len(LONG_METRICS) + 1, 3.5))
    for variant in drawn:
        row = table[variant.name]
        style = {"lw": 2.2} if variant.name in ("full", "no_struct") else {"lw": 0.9}
        style["color"] = colour[variant.name]
        for ax, metric in zip(axes, LONG_METRICS, strict=True):
            ys = [row[f"{metric}@{L}"]["mean"] for L in p.long_frames]
            ax.plot(p.long_frames, ys, marker="o", label=variant.name, **style)
    for ax, metric in zip(axes, LONG_METRICS, strict=True):
        ax.set(xscale="log", xlabel="frames", title=metric)
        ax.set_xticks(p.long_frames, [str(L) for L in p.long_frames])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1, 0.5))
    save_figure(fig, plots / "lengths.png")

    lines = [
        "# The ablation table",
        "",
        f"Preset `{p.name}` (the `{p.demo}` demo's corpus, codec and store; {p.train_steps} "
        f"training steps per variant; seeds {list(p.seeds)}; {p.eval_clips} short and "
        f"{p.long_clips} long held-out clips). Every variant is `full` with the fields it names "
        "changed. Spread: "
        + (
            "the standard deviation over seeds."
            if len(p.seeds) > 1
            else "the standard deviation over clips."
        ),
        "",
        "## Short clips",
        "",
        "| variant | changes | "
        + " | ".join(f"{m} ({d})" for m, d in SHORT_METRICS.items())
        + " |",
        "|---|---|" + "---|" * len(SHORT_METRICS),
    ]
    for name, row in table.items():
        changes = ", ".join(f"`{s}`" for s in row["sets"]) or "(none)"
        if row["same_as"] and row["same_as"] != name:
            changes += f" (= `{row['same_as']}`)"
        lines.append(
            f"| {name} | {changes} | " + " | ".join(_cell(row[m]) for m in SHORT_METRICS) + " |"
        )
    for base in ("still", "ground_truth"):
        agg = baselines["short"][base]["aggregate"]
        lines.append(f"| *{base}* | | " + " | ".join(f"{agg[m]:.4g}" for m in SHORT_METRICS) + " |")
    lines += [
        "",
        f"## Long sequences ({', '.join(str(L) for L in p.long_frames)} frames)",
        "",
        "| variant | " + " | ".join(f"{m}@{L}" for m in LONG_METRICS for L in p.long_frames) + " |",
        "|---|" + "---|" * (len(LONG_METRICS) * len(p.long_frames)),
    ]
    for name, row in table.items():
        cells = [_cell(row[f"{m}@{L}"]) for m in LONG_METRICS for L in p.long_frames]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![drift](plots/drift.png)", "", "![lengths](plots/lengths.png)", ""]
    lines += ["## Reading: does each variant differ from `full` by more than the spread?", ""]
    lines.append(
        "| variant | question | "
        + " | ".join(next((list(r["reading"]) for r in table.values() if "reading" in r), []))
        + " |"
    )
    keys = next((list(r["reading"]) for r in table.values() if "reading" in r), [])
    lines.append("|---|---|" + "---|" * len(keys))
    for name, row in table.items():
        if "reading" not in row:
            continue
        cells = [
            f"{row['reading'][k]['verdict']} ({row['reading'][k]['margin']:+.3g} vs "
            f"{row['reading'][k]['spread']:.2g})"
            for k in keys
        ]
        lines.append(f"| {name} | {row['question']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: the verdict, then the margin (how much better `full` is than the variant, "
        "in the metric's units; negative: the variant is better) against the spread. *full "
        "better* / *variant better*: the margin is larger than the spread. *Within spread*: "
        "this scale does not tell them apart. *No spread*: one seed and a metric of all clips "
        "together (Fréchet distance) or one clip: nothing to judge the margin against.",
    ]
    write_json_atomic(ablation.out / "ablation.json", {"preset": asdict(p), "table": table})
    path = ablation.out / "ablation.md"
    from df_models.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def _smooth(values: list[float], window: int) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if window <= 1 or len(a) < window:
        return a
    return np.convolve(a, np.ones(window) / window, mode="valid")


# CLI ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualforce ablate",
        description="The proposal's ablation table on SynthTalk: every variant trained with "
        "the same data, budget and seeds, scored on the same held-out identities, short "
        "clips and long sequences. Resumable: finished variants are skipped.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="default runs/ablate-<preset>")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated variant names (default: all; full is always run)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    p.add_argument(
        "--jobs", type=int, default=1, help="variants trained at once, one process (thread) each"
    )
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        preset = PRESETS[args.preset]
        if args.seeds is not None:
            try:
                seeds = tuple(int(s) for s in args.seeds.split(","))
            except ValueError:
                raise ValueError(
                    f"--seeds: expected comma-separated integers, got {args.seeds!r}"
                ) from None
            preset = replace(preset, seeds=seeds)
        names = (
            None
            if args.variants is None
            else [n.strip() for n in args.variants.split(",") if n.strip()]
        )
        out = args.out or Path(f"runs/ablate-{preset.name}")
        ablation = Ablation(out, preset, variant_names=names, progress=not args.no_progress)
        if args.list:
            for v in ablation.variants:
                print(f"{v.name:18s} {' '.join(v.sets) or '(the full model)'}: {v.question}")
            return 0
        t0 = time.perf_counter()
        path = ablation.run(jobs=args.jobs)
    except ValueError as e:
        print(f"dualforce ablate: {e}", file=sys.stderr)
        return 2
    print(f"ablation ({preset.name}) in {out} ({time.perf_counter() - t0:.0f} s this run)")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
