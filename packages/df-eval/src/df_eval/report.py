"""Evaluation outputs: ``metrics.json``, ``report.md`` and PNG plots (matplotlib, Agg backend).

``write_report(out_dir, systems, ...)`` takes one or more scored systems (``evaluate_frames``
results keyed by a name such as ``trained``, ``still_reference``, ``ground_truth``) so that the
demo can compare a model with its baselines in one table and one set of curves. Every file is
written atomically.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

from df_eval.metric_names import AGGREGATE_ONLY, METRICS
from df_eval.probe import Probe
from df_models.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

PLOTS = {"drift": "identity_drift.png", "sync": "sync_curve.png", "loss": "train_loss.png"}
_ARROW = {"higher": "↑", "lower": "↓", "zero": "→0"}


def _json_ready(x):
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(x, Mapping):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_ready(v) for v in x]
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | Path, obj) -> Path:
    """Writes strict JSON atomically."""
    return write_json_atomic(path, _json_ready(obj), indent=1, sort_keys=False, allow_nan=False)


def read_train_log(path: str | Path) -> tuple[list[int], list[float]]:
    """Steps and losses from a trainer's ``metrics.jsonl`` (lines with ``"step"`` and
    ``"loss"``; other lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: training log does not exist")
    steps, losses = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        if isinstance(rec, dict) and "step" in rec and "loss" in rec:
            steps.append(int(rec["step"]))
            losses.append(float(rec["loss"]))
    if not steps:
        raise ValueError(f"{path}: no lines with both 'step' and 'loss'")
    return steps, losses


def save_figure(fig, path: Path) -> None:
    """Writes ``fig`` to ``path`` as PNG, atomically, and closes it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def contact_sheet(
    rows: Mapping[str, np.ndarray], path: Path, *, frames: int = 8, scale: int = 2
) -> Path:
    """A PNG of ``frames`` evenly spaced frames per row, one row per video, labelled: what a
    person would look at before reading any metric.

    Args:
        rows: ``{label: uint8 [T, H, W, 3]}`` (a single image ``[H, W, 3]`` is repeated); all
            the same ``H, W``.
        scale: nearest-neighbour upscaling, so that 64-pixel frames stay legible.
    """
    from PIL import Image, ImageDraw

    strips, labels = [], []
    for label, video in rows.items():
        v = np.asarray(video)
        if v.ndim == 3:
            v = v[None]
        idx = np.linspace(0, len(v) - 1, frames).round().astype(int)
        strips.append(np.concatenate(list(v[idx]), axis=1))
        labels.append(label)
    shapes = {s.shape for s in strips}
    if len(shapes) != 1:
        raise ValueError(f"contact sheet rows differ in frame size: {sorted(shapes)}")
    H = strips[0].shape[0] * scale
    margin = 150
    sheet = Image.new("RGB", (margin + strips[0].shape[1] * scale, H * len(strips)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (strip, label) in enumerate(zip(strips, labels, strict=True)):
        img = Image.fromarray(strip).resize(
            (strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST
        )
        sheet.paste(img, (margin, i * H))
        draw.text((4, i * H + H // 2 - 6), label, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def plot_drift(systems: Mapping[str, dict], path: Path) -> Path:
    """Identity distance to the reference vs frame index, one line per system."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, result in systems.items():
        ax.plot(result["curves"]["id_drift"], label=name)
    ax.set(xlabel="frame", ylabel="identity distance to reference", title="Identity drift")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    return path


def plot_sync(systems: Mapping[str, dict], path: Path) -> Path:
    """Jaw correlation vs audio-visual offset, one line per system."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, result in systems.items():
        c = result["curves"]
        ax.plot(c["sync_offsets"], c["sync"], marker="o", label=name)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="offset (frames; > 0: mouth lags)", ylabel="jaw correlation", title="Lip sync")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    return path


def plot_loss(train_log: str | Path, path: Path) -> Path:
    """Training loss vs step (log scale when all losses are positive)."""
    steps, losses = read_train_log(train_log)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    if min(losses) > 0:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


def metrics_table(systems: Mapping[str, dict]) -> str:
    """A markdown table: one row per system, one column per aggregate metric."""
    keys = [(k, d) for k, d, _ in METRICS] + [(k, d) for k, d, _ in AGGREGATE_ONLY]
    head = "| system | " + " | ".join(f"{k} {_ARROW[d]}" for k, d in keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    rows = [
        f"| {name} | " + " | ".join(_fmt(r["aggregate"].get(k)) for k, _ in keys) + " |"
        for name, r in systems.items()
    ]
    return "\n".join([head, rule, *rows])


def clips_table(result: dict) -> str:
    """A markdown table of one system's per-clip scalars."""
    keys = ["frames"] + [k for k, _, _ in METRICS]
    head = "| clip | " + " | ".join(keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    rows = [
        f"| {clip} | " + " | ".join(_fmt(s[k]) for k in keys) + " |"
        for clip, s in result["clips"].items()
    ]
    return "\n".join([head, rule, *rows])


def _probe_section(probe: Probe) -> list[str]:
    held = probe.info.get("heldout")
    if not held:
        return []
    lines = [
        "## Probe",
        "",
        f"Probe {probe.directory or '(in memory)'}; trained in "
        f"{probe.info.get('train_seconds', float('nan')):.1f} s. Held-out (test split, "
        f"{held['frames']} frames of unseen speakers) error per structure dimension:",
        "",
        "| dim | RMSE | R² |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {_fmt(v['rmse'])} | {_fmt(v['r2'])} |" for n, v in held["struct"].items()]
    ident = held["identity"]
    lines += [
        "",
        f"Identity vector RMSE {_fmt(ident['rmse'])} (predicting the train mean: "
        f"{_fmt(ident['chance_rmse'])}); different-speaker / same-speaker distance ratio "
        f"{_fmt(ident['separation'])}.",
        "",
    ]
    return lines


def write_report(
    out_dir: str | Path,
    systems: Mapping[str, dict],
    *,
    probe: Probe | None = None,
    data_dir: str | Path | None = None,
    train_log: str | Path | None = None,
    title: str = "DualForce evaluation on SynthTalk",
) -> dict:
    """Writes ``metrics.json``, the plots and ``report.md`` into ``out_dir`` and returns the
    ``metrics.json`` content (``{"systems": ..., "probe": ..., "data": ..., "plots": ...}``)."""
    if not systems:
        raise ValueError("write_report: no systems to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "drift": plot_drift(systems, out / PLOTS["drift"]).name,
        "sync": plot_sync(systems, out / PLOTS["sync"]).name,
    }
    if train_log is not None:
        plots["loss"] = plot_loss(train_log, out / PLOTS["loss"]).name
    doc = {
        "systems": dict(systems),
        "metrics": {k: {"better": d, "meaning": m} for k, d, m in METRICS + AGGREGATE_ONLY},
        "probe": None if probe is None else {"directory": str(probe.directory), **probe.info},
        "data": None if data_dir is None else str(data_dir),
        "plots": plots,
    }
    write_json(out / "metrics.json", doc)
    lines = [f"# {title}", ""]
    if data_dir is not None:
        lines += [f"Corpus: `{data_dir}` (test split).", ""]
    lines += ["## Metrics (mean over clips)", "", metrics_table(systems), ""]
    lines += ["Definitions (↑ higher is better, ↓ lower is better):", ""]
    lines += [f"- `{k}` {_ARROW[d]}: {m}" for k, d, m in METRICS + AGGREGATE_ONLY]
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({name})" for key, name in plots.items()]
    lines += [""]
    for name, result in systems.items():
        lines += [f"## Per clip: {name}", "", clips_table(result), ""]
    if probe is not None:
        lines += _probe_section(probe)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    log.info("wrote %s", out / "report.md")
    return _json_ready(doc)
