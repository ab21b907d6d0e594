"""The demo's ``report.md``: stage times, the lip-sync comparison with the two baselines, every
metric side by side, the videos and the plots.

The report is written from the stage records alone (``<out>/stages/*.json``), so it can be
rebuilt without rerunning anything.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

# report.py selects the Agg backend before pyplot is imported; use its pyplot
from df_eval.demo_bars import check_bars
from df_eval.report import contact_sheet, plot_drift, plot_loss, plot_sync, plt, save_figure
from df_models.io import atomic_path

VARIANT_LABELS = {
    "trained": "DualForce (trained)",
    "untrained": "untrained model (step 0)",
    "still": "still reference frame",
}
COLUMNS = {**VARIANT_LABELS, "ground_truth": "ground-truth video (probe ceiling)"}


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a.b.c": value}`` (lists are skipped:
    they are curves, plotted rather than tabulated)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _better(direction: str, a: float, b: float) -> float:
    """How much ``a`` is better than ``b`` (> 0: better) for a metric of ``direction``."""
    if direction == "higher":
        return a - b
    if direction == "lower":
        return b - a
    return abs(b) - abs(a)  # "zero": closer to 0 is better


def lip_sync_rows(evaluate: dict) -> list[tuple[str, str, str, dict[str, float | None]]]:
    """``(metric, meaning, direction, {variant: value})`` of the lip-sync metrics: the probe's
    reading of the generated pixels (every variant and the ground truth) and the structure
    stream's own jaw track (the two models)."""
    from df_eval.metric_names import METRICS

    rows = []
    for key, direction, meaning in METRICS:
        if key.startswith("sync_"):
            values = {v: evaluate[v]["metrics"].get(key) for v in COLUMNS}
            rows.append((key, meaning, direction, values))
    for key, direction, meaning in (
        ("corr", "higher", "Pearson r of the generated structure's jaw vs the ground truth"),
        ("rmse", "lower", "RMSE of the generated structure's jaw vs the ground truth"),
    ):
        values = {v: evaluate.get(v, {}).get("struct_jaw", {}).get(key) for v in COLUMNS}
        rows.append((f"struct_jaw_{key}", meaning, direction, values))
    return rows


def margins(rows) -> list[str]:
    """Sentences saying by how much the trained model beats (or trails) each baseline."""
    lines = []
    for key, _, direction, values in rows:
        t = values.get("trained")
        if t is None:
            continue
        for base in ("still", "untrained"):
            b = values.get(base)
            if b is None:
                continue
            gain = _better(direction, t, b)
            verdict = "ties with" if gain == 0 else "beats" if gain > 0 else "does NOT beat"
            line = (
                f"- `{key}`: trained {_fmt(t)} vs {VARIANT_LABELS[base]} {_fmt(b)}: "
                f"{verdict} it" + ("" if gain == 0 else f" by {_fmt(abs(gain))}")
            )
            # How much of the way from the baseline to the ground-truth video (the ceiling as
            # the probe reads it) the trained model goes: the size of the margin, in context.
            ceiling = values.get("ground_truth")
            gap = None if ceiling is None else _better(direction, ceiling, b)
            if gap is not None and gap > 0:
                line += f", {100 * gain / gap:.0f}% of the gap to the ground-truth video"
            lines.append(line)
    return lines


def _plot_jaw(out: Path, clip: str, paths: dict[str, Path], gt: np.ndarray) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3))
    t = np.arange(len(gt)) / 25.0
    ax.plot(t, gt, label="ground truth", color="black", lw=1.5)
    for variant, path in paths.items():
        jaw = np.load(path)[:, 6]
        ax.plot(np.arange(len(jaw)) / 25.0, jaw, label=VARIANT_LABELS[variant], lw=1)
    ax.set(xlabel="seconds", ylabel="jaw opening")
    ax.set_title(f"generated structure vs ground truth, test {clip}")
    ax.legend(fontsize=8)
    path = out / "plots" / f"jaw_{clip}.png"
    save_figure(fig, path)
    return path


def _plot_pose(out: Path, clip: str, paths: dict[str, Path], gt: np.ndarray) -> Path:
    """Head yaw and pitch of the generated structure against the ground truth's (``gt`` is the
    clip's raw structure ``[T, 11]``): the head motion the jitter bar measures, over time."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, (dim, name) in zip(axes, ((0, "yaw"), (1, "pitch")), strict=True):
        ax.plot(
            np.arange(len(gt)) / 25.0,
            np.degrees(gt[:, dim]),
            label="ground truth",
            color="black",
            lw=1.5,
        )
        for variant, path in paths.items():
            pose = np.load(path)[:, dim]
            ax.plot(
                np.arange(len(pose)) / 25.0, np.degrees(pose), label=VARIANT_LABELS[variant], lw=1
            )
        ax.set(ylabel=f"{name} (degrees)")
    axes[-1].set(xlabel="seconds")
    axes[0].set_title(f"generated head pose vs ground truth, test {clip}")
    axes[0].legend(fontsize=8)
    path = out / "plots" / f"pose_{clip}.png"
    save_figure(fig, path)
    return path


def bar_table(rows: list[dict]) -> list[str]:
    """The pass/fail table of :func:`df_eval.demo_bars.check_bars`, as markdown lines."""
    lines = ["| bar | measured | target | result |", "|---|---|---|---|"]
    for r in rows:
        op = ">=" if r["higher"] else "<="
        result = {True: "**pass**", False: "**FAIL**", None: "not measured"}[r["passed"]]
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {op} {_fmt(r['target'])} | {result} |")
    passed = sum(r["passed"] is True for r in rows)
    lines += ["", f"{passed} of {len(rows)} bars pass."]
    return lines


def _sheets(out: Path, clips: list[str]) -> list[str]:
    """Writes ``plots/sheet_<clip>.png`` for every test clip; returns the clips."""
    from df_data.media import read_video

    for clip in clips:
        truth, _ = read_video(out / "corpus" / "test" / clip / "video.mp4")
        rows = {"reference": truth[0], "ground truth": truth}
        for variant in VARIANT_LABELS:
            rows[VARIANT_LABELS[variant]], _ = read_video(out / "pred" / variant / f"{clip}.mp4")
        contact_sheet(rows, out / "plots" / f"sheet_{clip}.png")
    return clips


def write_report(out: Path, preset, records: dict[str, dict | None]) -> Path:
    """Writes ``<out>/report.md`` (atomically) from the finished stages' records."""
    from safetensors.numpy import load_file

    missing = [s for s, r in records.items() if r is None]
    if missing:
        raise RuntimeError(f"cannot write the report: stages {missing} have not finished")
    gen, ev = records["generate"]["summary"], records["evaluate"]["summary"]
    clips = gen["clips"]
    rows = lip_sync_rows(ev)
    total = sum(r["seconds"] for r in records.values())
    md = [
        "# DualForce demo on SynthTalk",
        "",
        f"Preset `{preset.name}`; the {len(records)} stages before this report took "
        f"{total / 60:.1f} minutes "
        f"on {os.cpu_count()} CPUs. Videos are generated from the audio of {len(clips)} held-out "
        "test clips (identities never seen in training), streaming, with each clip's first frame "
        "as the reference image, and scored by the SynthTalk probe (trained on the train split "
        "only) against the clip's ground truth. The ground-truth column is the real video scored "
        "the same way: the ceiling of each metric as the probe measures it.",
        "",
        "## Bars",
        "",
        *bar_table(check_bars(preset.name, records)),
        "",
        "## What the videos look like",
        "",
        "Per test clip, 8 frames evenly spaced over the clip; rows: the reference image, the "
        "ground-truth video, the trained model, the untrained model, the still frame.",
        "",
        *(f"![plots/sheet_{clip}.png](plots/sheet_{clip}.png)" for clip in _sheets(out, clips)),
        "",
        "## Lip sync: the trained model against two baselines",
        "",
        "| metric | better | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for key, meaning, direction, values in rows:
        cells = " | ".join(_fmt(values[v]) for v in COLUMNS)
        md.append(f"| `{key}`: {meaning} | {direction} | {cells} |")
    md += ["", *margins(rows), ""]
    from df_eval.metric_names import AGGREGATE_ONLY, METRICS

    md += [
        "## Every metric (mean over the test clips)",
        "",
        "| metric | better | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for key, direction, meaning in (*METRICS, *AGGREGATE_ONLY):
        cells = " | ".join(_fmt(ev[v]["metrics"].get(key)) for v in COLUMNS)
        md.append(f"| `{key}`: {meaning} | {direction} | {cells} |")
    md += ["", "## Videos", ""]
    for clip in clips:
        links = ", ".join(f"[{VARIANT_LABELS[v]}](pred/{v}/{clip}.mp4)" for v in VARIANT_LABELS)
        md.append(f"- test `{clip}`: {links}, [ground truth](corpus/test/{clip}/video.mp4)")
    md += ["", "## Plots", ""]
    gt = load_file(str(out / "corpus" / "test" / clips[0] / "gt.safetensors"))["struct"]
    structs = {v: out / "structs" / v / f"{clips[0]}.npy" for v in ("trained", "untrained")}
    systems = {label: ev[variant] for variant, label in COLUMNS.items()}
    plots = [
        plot_sync(systems, out / "plots" / "sync.png"),
        plot_drift(systems, out / "plots" / "id_drift.png"),
        _plot_jaw(out, clips[0], structs, gt[:, 6]),
        _plot_pose(out, clips[0], structs, gt),
    ]
    train_log = out / "train" / "metrics.jsonl"
    if train_log.is_file():
        plots.append(plot_loss(train_log, out / "plots" / "train_loss.png"))
    for plot in plots:
        rel = os.path.relpath(plot, out)
        md.append(f"![{rel}]({rel})")
    md += [
        "",
        "## Stages",
        "",
        "| stage | seconds | load average (start / end) |",
        "|---|---|---|",
    ]
    for stage, r in records.items():
        md.append(f"| {stage} | {r['seconds']:.1f} | {r['load_start']} / {r['load_end']} |")
    md += [
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(_settings(preset, records), indent=2, sort_keys=True),
        "```",
        "",
    ]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(md))
    return path


def _settings(preset, records: dict[str, Any]) -> dict:
    train = records["train"]["summary"]
    return {
        "preset": asdict(preset),
        "codec_heldout_psnr_db": records["codec"]["summary"].get("heldout_psnr_db"),
        "model_parameters": train.get("parameters"),
        "train_final_loss": train.get("final_loss"),
        "sampler": records["generate"]["summary"]["trained"].get("sampler"),
    }
